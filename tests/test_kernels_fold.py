"""lift_rt.kernels.fold: batch-norm folding and the transposed-conv composition, exact in float64 (no Triton)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_utils import random_lift

from lift_rt.kernels.fold import FoldedUpConv, compose_up_conv, fold_conv, fold_lift


def composed_up_conv(w: FoldedUpConv, x: torch.Tensor, img1: torch.Tensor | None) -> torch.Tensor:
    """The composed weights applied with plain torch ops: x ``B x Cx x h x w`` -> ``B x N x 2h x 2w``."""
    b, _, h, wd = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    ones = F.pad(x.new_ones(b, 1, h, wd), (1, 1, 1, 1))  # the bias channel: 1 inside the grid, 0 in the padding
    out = x.new_zeros(b, w.bias.shape[0], 2 * h, 2 * wd)
    for a in range(2):
        for c in range(2):
            for ry in range(2):
                for rx in range(2):
                    k = (2 * a + c) * 4 + 2 * ry + rx
                    window = (slice(None), slice(None), slice(a + ry, a + ry + h), slice(c + rx, c + rx + wd))
                    out[:, :, a::2, c::2] += torch.einsum("bchw,cn->bnhw", xp[window], w.wx[k]) + ones[window] * w.wb[k][None, :, None, None]
    if img1 is not None:
        out += F.conv2d(img1, w.wimg.reshape(3, 3, *w.wimg.shape[1:]).permute(3, 2, 0, 1), padding=1)
    return torch.relu(out + w.bias[None, :, None, None])


@pytest.mark.parametrize("use_image", [True, False])
def test_composition_is_exact(use_image):
    lift = random_lift(16, use_image=use_image).double()
    d = lift.up1.conv_1.double_conv
    torch.manual_seed(0)
    x = torch.randn(2, 16 + 32 * use_image, 5, 7, dtype=torch.float64)
    img1 = torch.randn(2, 32, 10, 14, dtype=torch.float64) if use_image else None
    up = lift.up1.up(x)
    ref = d[2](d[1](d[0](torch.cat([up, img1], 1) if use_image else up)))
    out = composed_up_conv(compose_up_conv(lift.up1.up, d[0], d[1]), x, img1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_bn_folding_is_exact():
    lift = random_lift(16).double()
    conv, bn = lift.image_convs_1[0], lift.image_convs_1[1]
    folded = fold_conv(conv, bn)
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    w = folded.weight.reshape(3, 3, 3, -1).permute(3, 2, 0, 1)
    torch.testing.assert_close(F.conv2d(x, w, folded.bias, stride=2, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)
    assert folded.stride == 2 and folded.kernel_size == 3


def test_fold_lift_casts_and_needs_eval_mode():
    lift = random_lift(16)
    folded = fold_lift(lift, torch.float16)
    assert folded.up.wx.shape == (16, 48, 8) and folded.up.wx.dtype == torch.float16 and folded.up.wx.is_contiguous()
    assert folded.head.weight.shape == (1, 8, 16) and folded.use_image and folded.img_channels == 32
    assert not fold_lift(random_lift(16, use_image=False)).use_image
    with pytest.raises(ValueError, match="eval"):
        fold_lift(lift.train())


@pytest.mark.parametrize("change, match", [
    (lambda lift: setattr(lift.up1.conv_1.double_conv, "1", torch.nn.BatchNorm2d(192, affine=False).eval()), "cannot fold"),
    (lambda lift: setattr(lift.up1.conv_1.double_conv, "1", torch.nn.BatchNorm2d(192, track_running_stats=False)), "cannot fold"),
    (lambda lift: setattr(lift.up1.conv_1.double_conv, "0", torch.nn.Conv2d(240, 192, 3, padding=2, dilation=2, bias=False)), "3x3 conv"),
    (lambda lift: setattr(lift.up1, "up", torch.nn.ConvTranspose2d(416, 208, 2, stride=2, dilation=2)),
     "kernel-2 stride-2 transposed conv"),
])
def test_layers_the_kernels_do_not_implement_are_refused(change, match):
    lift = random_lift(384)
    change(lift)
    with pytest.raises(ValueError, match=match):
        fold_lift(lift.eval())
