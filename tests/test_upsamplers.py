"""The paper's baselines share LiFT's interface and behave as their definitions say."""

import pytest
import torch
import torch.nn.functional as F

from lift_rt.upsamplers import UPSAMPLERS, JointBilateral, build_upsampler


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_shapes(name):
    up = build_upsampler(name, dim=16, patch_size=8).eval()
    out = up(torch.randn(2, 3, 40, 56), torch.randn(2, 16, 5, 7))
    assert out.shape == (2, 16, 10, 14)
    assert torch.isfinite(out).all()


def test_bilinear_is_interpolate():
    feats = torch.randn(1, 8, 4, 4)
    out = build_upsampler("bilinear", 8, 16)(torch.randn(1, 3, 64, 64), feats)
    torch.testing.assert_close(out, F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False))


def test_resize_conv_starts_as_nearest():
    feats = torch.randn(1, 8, 4, 4)
    out = build_upsampler("rc", 8, 16)(torch.randn(1, 3, 64, 64), feats)
    torch.testing.assert_close(out, feats.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_jbu_keeps_constants_and_follows_edges():
    jbu = JointBilateral(dim=1, patch_size=8, radius=1, sigma_spatial=1.0, sigma_range=0.1)
    const = torch.full((1, 1, 4, 4), 3.0)
    torch.testing.assert_close(jbu(torch.rand(1, 3, 32, 32), const), const.repeat_interleave(2, -1).repeat_interleave(2, -2))
    # A vertical colour edge at x = 16 px (between feature columns 1 and 2): features left = 0, right = 1.
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0
    feats = torch.zeros(1, 1, 4, 4)
    feats[..., 2:] = 1.0
    out = jbu(image, feats)
    bilinear = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
    # Output columns 3 and 4 touch the edge: JBU keeps them on their own side, bilinear blurs them.
    assert out[..., 3].max() < 0.01 and out[..., 4].min() > 0.99
    assert bilinear[..., 3].max() > 0.2


def test_unknown_upsampler():
    with pytest.raises(ValueError, match="unknown upsampler"):
        build_upsampler("bicubic", 8, 16)
