"""lift_rt.kernels.up_conv (transposed conv + concat + 3x3 conv + BN + ReLU) against the eager LiFT modules."""

from __future__ import annotations

import copy

import pytest
import torch

from kernel_utils import DEVICE, DTYPES, GPU, assert_close, random_lift  # sets TRITON_INTERPRET first

from lift_rt.kernels.fold import compose_up_conv
from lift_rt.kernels.up_conv import up_conv
from lift_rt.model import LiFT


def up_conv_reference(lift: LiFT, x: torch.Tensor, img1: torch.Tensor | None) -> torch.Tensor:
    """``relu(bn(conv(cat(up(x), img1))))`` with the LiFT's own modules, float64 on CPU; NCHW in and out."""
    up = lift.up1.up.double().cpu()
    conv, bn, relu = list(lift.up1.conv_1.double_conv.double().cpu())[:3]
    u = up(x.double().cpu())
    if img1 is not None:
        u = torch.cat([u, img1.double().cpu()], dim=1)
    return relu(bn(conv(u)))


# (batch, C, h, w, use_image): odd grids, batch 1 and 5, C off the block sizes (40: two channel
# slices), the 'No Img.' variant.
CASES = [(1, 16, 5, 7, True), (5, 24, 3, 4, True), (1, 40, 3, 4, True), (2, 16, 4, 3, False)]
if GPU:
    CASES += [(2, 384, 28, 28, True), (1, 384, 56, 56, True)]


def make_inputs(lift: LiFT, b: int, h: int, w: int, dtype: torch.dtype):
    """NCHW feats, img2, img1 on the test device in ``dtype`` (img1 / img2 None without the image branch)."""
    torch.manual_seed(1)
    feats = torch.randn(b, lift.dim, h, w).to(DEVICE, dtype)
    if not lift.use_image:
        return feats, None, None
    img2 = torch.rand(b, 32, h, w).to(DEVICE, dtype)
    img1 = torch.rand(b, 32, 2 * h, 2 * w).to(DEVICE, dtype)
    return feats, img2, img1


def nhwc(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_c{}_{}x{}_img{}".format(*c))
def test_up_conv_matches_reference(case, dtype, loop_form):
    b, c, h, w, use_image = case
    lift = random_lift(c, use_image=use_image)
    d = lift.up1.conv_1.double_conv
    weights = compose_up_conv(lift.up1.up, d[0], d[1])
    weights.wx, weights.wb, weights.wimg, weights.bias = (t.to(DEVICE, dtype).contiguous() for t in (weights.wx, weights.wb, weights.wimg, weights.bias))
    feats, img2, img1 = make_inputs(lift, b, h, w, dtype)
    out = up_conv(feats.permute(0, 2, 3, 1), nhwc(img2), nhwc(img1), weights)  # feats: an NHWC view of NCHW memory
    assert out.shape == (b, 2 * h, 2 * w, c // 2) and out.dtype == dtype
    x = feats if img2 is None else torch.cat([feats, img2], dim=1)
    assert_close(out.permute(0, 3, 1, 2), up_conv_reference(lift, x, img1), dtype)


def test_up_conv_rejects_bad_inputs():
    lift = random_lift(16)
    d = lift.up1.conv_1.double_conv
    weights = compose_up_conv(lift.up1.up, d[0], d[1])
    weights.wx, weights.wb, weights.wimg, weights.bias = (t.float().to(DEVICE) for t in (weights.wx, weights.wb, weights.wimg, weights.bias))
    feats, img2, img1 = (nhwc(t) for t in make_inputs(lift, 1, 3, 3, torch.float32))
    with pytest.raises(ValueError, match="channels"):
        up_conv(feats[..., :8], img2, img1, weights)
    with pytest.raises(ValueError, match="img1 and img2 are required"):
        up_conv(feats, None, None, weights)
    with pytest.raises(ValueError, match="img2 must be"):
        up_conv(feats, img2, img1[:, :4], weights)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        up_conv(feats.to(torch.int32), img2, img1, weights)


def test_up_conv_weights_any_layout_and_checked(loop_form):
    """Weights given as non-contiguous views give the same result; weights that do not fit together are refused."""
    lift = random_lift(16)
    d = lift.up1.conv_1.double_conv
    weights = compose_up_conv(lift.up1.up, d[0], d[1])
    weights.wx, weights.wb, weights.wimg, weights.bias = (t.float().to(DEVICE) for t in (weights.wx, weights.wb, weights.wimg, weights.bias))
    feats, img2, img1 = (nhwc(t) for t in make_inputs(lift, 1, 3, 4, torch.float32))
    dense = up_conv(feats, img2, img1, weights)
    strided = copy.copy(weights)
    strided.wx = weights.wx.transpose(1, 2).contiguous().transpose(1, 2)  # same values, N-major memory
    assert not strided.wx.is_contiguous()
    torch.testing.assert_close(up_conv(feats, img2, img1, strided), dense, rtol=0, atol=0)
    for field, bad in (("wb", weights.wb[:, :-1]), ("bias", weights.bias.half()), ("wimg", weights.wimg[:8])):
        broken = copy.copy(weights)
        setattr(broken, field, bad)
        with pytest.raises(ValueError, match="composed weights do not fit together"):
            up_conv(feats, img2, img1, broken)

