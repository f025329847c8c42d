"""lift_rt.kernels.conv2d (NHWC K x K conv + bias + ReLU) against F.conv2d in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_utils import DEVICE, DTYPES, GPU, assert_close  # sets TRITON_INTERPRET first

from lift_rt.kernels.conv2d import conv2d_nhwc
from lift_rt.kernels.fold import taps_major


def conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, relu: bool) -> torch.Tensor:
    """x ``B x Cin x H x W``, weight ``Cout x Cin x K x K`` -> ``B x Cout x Ho x Wo`` (float64, CPU)."""
    k = weight.shape[-1]
    y = F.conv2d(x.double().cpu(), weight.double().cpu(), bias.double().cpu(), stride=stride, padding=k // 2)
    return y.relu() if relu else y


# (batch, cin, cout, H, W, kernel, stride): the image branch's first layer (Cin = 3, stride 2),
# a stride-1 3x3, the 1x1 head; odd sizes, channel counts off the block sizes (40: two channel
# slices per tap, the second partial).
CASES = [
    (1, 3, 32, 9, 11, 3, 2),
    (5, 24, 16, 5, 7, 3, 1),
    (2, 40, 24, 4, 5, 3, 1),
    (5, 16, 40, 5, 7, 1, 1),
]
if GPU:
    CASES += [(2, 192, 192, 56, 56, 3, 1), (2, 192, 384, 56, 56, 1, 1), (2, 3, 32, 224, 224, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_c{}-{}_{}x{}_k{}s{}".format(*c))
def test_conv2d_matches_reference(case, dtype, loop_form):
    b, cin, cout, h, w, k, stride = case
    torch.manual_seed(0)
    x = torch.randn(b, cin, h, w).to(DEVICE, dtype)  # NCHW memory, read through strides
    weight = (torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(cout).to(DEVICE, dtype)
    relu = k == 3
    out = conv2d_nhwc(x.permute(0, 2, 3, 1), taps_major(weight), bias, stride=stride, relu=relu)
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out.permute(0, 3, 1, 2), conv2d_reference(x, weight, bias, stride, relu), dtype)


def test_conv2d_nhwc_input_and_fp32_input_to_half_weights():
    """A contiguous NHWC input gives the same result; an fp32 input is cast to the weights' dtype."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 7, 16, device=DEVICE)
    weight = torch.randn(9, 16, 16, device=DEVICE, dtype=torch.float16) / 12
    bias = torch.zeros(16, device=DEVICE, dtype=torch.float16)
    out = conv2d_nhwc(x, weight, bias)
    ref = conv2d_nhwc(x.half().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1), weight, bias)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, stride, dtype, match",
    [
        ((1, 5, 5, 8), (9, 16, 8), (8,), 1, torch.float32, "channels"),
        ((1, 5, 5, 16), (4, 16, 8), (8,), 1, torch.float32, "1 or 9 taps"),
        ((1, 5, 5, 16), (9, 16, 8), (8,), 3, torch.float32, "stride"),
        ((1, 5, 5, 16), (9, 16, 8), (9,), 1, torch.float32, "bias"),
        ((5, 5, 16), (9, 16, 8), (8,), 1, torch.float32, "4 dimensions"),
        ((1, 5, 5, 16), (9, 16, 8), (8,), 1, torch.int32, "float32, float16 or bfloat16"),
    ],
)
def test_conv2d_rejects_bad_inputs(x_shape, w_shape, b_shape, stride, dtype, match):
    x = torch.ones(x_shape, device=DEVICE).to(dtype)
    with pytest.raises((ValueError, TypeError), match=match):
        conv2d_nhwc(x, torch.ones(w_shape, device=DEVICE), torch.ones(b_shape, device=DEVICE), stride=stride)


def test_loop_form_is_checked(monkeypatch):
    monkeypatch.setenv("LIFT_TRITON_LOOP", "unrolled")
    x = torch.ones(1, 5, 5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="LIFT_TRITON_LOOP must be one of"):
        conv2d_nhwc(x, torch.ones(9, 8, 8, device=DEVICE), torch.ones(8, device=DEVICE))
