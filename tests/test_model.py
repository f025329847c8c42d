"""The reference LiFT: shapes, parameter counts, token input, iterations, the 'No Img.' variant."""

import pytest
import torch

import torch.nn.functional as F

from lift_rt.model import LiFT, adaptive_max_pool2d_static, tokens_to_grid


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_vit_small():
    # C = 384, 32 image channels. Transposed conv 2x2, 416 -> 208 with bias; double conv 3x3 240 -> 192 -> 192
    # without bias, each followed by a batch norm (2 x 192); 1x1 head 192 -> 384 with bias; image branch:
    # three 3x3 convs with bias + batch norm, 3 -> 32 then 32 -> 32 twice. The paper's "1.2M parameters".
    up = 416 * 208 * 4 + 208
    double_conv = 240 * 192 * 9 + 2 * 192 + 192 * 192 * 9 + 2 * 192
    head = 192 * 384 + 384
    image = (3 * 32 * 9 + 32 + 2 * 32) + 2 * (32 * 32 * 9 + 32 + 2 * 32)
    lift = LiFT(dim=384, patch_size=8)
    assert n_params(lift.up1.up) == up == 346_320
    assert n_params(lift.up1.conv_1) == double_conv == 747_264
    assert n_params(lift.outc) == head == 74_112
    assert n_params(lift.image_convs_1) + n_params(lift.image_convs_2) == image == 19_584
    assert n_params(lift) == up + double_conv + head + image == 1_187_280


def test_parameter_count_vit_base():
    # C = 768: up 800->400 (1,280,400), double conv 432->384->384 (2,821,632), head (295,680), image (19,584).
    assert n_params(LiFT(dim=768, patch_size=16)) == 1_280_400 + 2_821_632 + 295_680 + 19_584


# 56 is not a multiple of 16: the backbone rejects it (tests/test_backbones.py).
@pytest.mark.parametrize("patch, size", [(8, 56), (8, 112), (8, 224), (8, 448), (16, 112), (16, 224), (16, 448)])
def test_output_shape(patch, size):
    lift = LiFT(dim=24, patch_size=patch).eval()
    h = size // patch
    out = lift(torch.randn(1, 3, size, size), torch.randn(1, 24, h, h))
    assert out.shape == (1, 24, 2 * h, 2 * h)
    assert torch.isfinite(out).all()


def test_rectangular_and_patch14():
    lift = LiFT(dim=16, patch_size=14).eval()
    out = lift(torch.randn(2, 3, 14 * 5, 14 * 3), torch.randn(2, 16, 5, 3))
    assert out.shape == (2, 16, 10, 6)


def test_static_adaptive_max_pool_equals_pytorch_bit_for_bit():
    # Every size the p = 14 image branch meets (H/4 = ceil(7 n / 2) onto 2n, ratio ~1.75), then any ratio
    # (down, equal, up) and rectangular outputs: exact equality, on fresh random inputs each.
    generator = torch.Generator().manual_seed(0)
    branch = [(-(-7 * n // 2), 2 * n) for n in range(1, 41)]
    anyratio = [(size_in, size_out) for size_in in range(1, 24) for size_out in range(1, 2 * size_in + 2)]
    for (h_in, h_out), (w_in, w_out) in zip(branch + anyratio, branch[::-1] * 30):
        x = torch.randn(2, 3, h_in, w_in, generator=generator)
        expected = F.adaptive_max_pool2d(x, (h_out, w_out))
        assert torch.equal(adaptive_max_pool2d_static(x, (h_out, w_out)), expected), (h_in, w_in, h_out, w_out)


def test_static_adaptive_max_pool_keeps_nan_and_refuses_empty_sizes():
    x = torch.randn(1, 2, 7, 7)
    x[0, 1, 3, 4] = float("nan")
    out = adaptive_max_pool2d_static(x, (4, 4))
    torch.testing.assert_close(out, F.adaptive_max_pool2d(x, (4, 4)), rtol=0, atol=0, equal_nan=True)
    # 7 -> 4 cells: windows 0-1, 1-3, 3-5, 5-6; row 3 lies in row cells 1 and 2, column 4 in column cell 2 only.
    assert out[0, 1].isnan().nonzero().tolist() == [[1, 2], [2, 2]]
    with pytest.raises(ValueError, match="positive sizes"):
        adaptive_max_pool2d_static(x, (0, 4))


def test_tokens_with_and_without_cls_match_grid():
    lift = LiFT(dim=16, patch_size=16).eval()
    image = torch.randn(2, 3, 64, 96)
    grid = torch.randn(2, 16, 4, 6)
    tokens = grid.flatten(2).transpose(1, 2)
    with_cls = torch.cat([torch.randn(2, 1, 16), tokens], dim=1)
    expected = lift(image, grid)
    torch.testing.assert_close(lift(image, tokens), expected)
    torch.testing.assert_close(lift(image, with_cls), expected)


def test_iterations_are_repeated_application():
    lift = LiFT(dim=16, patch_size=8).eval()
    image = torch.randn(1, 3, 64, 64)
    feats = torch.randn(1, 16, 8, 8)
    once = lift(image, feats)
    image_2x = torch.nn.functional.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False)
    torch.testing.assert_close(lift.lift(image, feats, iterations=2), lift(image_2x, once))
    assert lift.lift(image, feats, iterations=3).shape == (1, 16, 64, 64)
    with pytest.raises(ValueError, match="iterations"):
        lift.lift(image, feats, iterations=0)


def test_no_image_ablation_ignores_the_image():
    lift = LiFT(dim=16, patch_size=16, use_image=False).eval()
    assert not hasattr(lift, "image_convs_1")
    feats = torch.randn(1, 16, 3, 3)
    a = lift(torch.randn(1, 3, 48, 48), feats)
    b = lift(torch.zeros(1, 3, 48, 48), feats)
    torch.testing.assert_close(a, b)
    assert a.shape == (1, 16, 6, 6)


@pytest.mark.parametrize(
    "feats, match",
    [
        (torch.randn(1, 16, 3, 4), "feature grid"),
        (torch.randn(1, 11, 16), "tokens do not fit"),
        (torch.randn(16, 9), "B x C x h x w or B x T x C"),
    ],
)
def test_bad_feature_shapes(feats, match):
    with pytest.raises(ValueError, match=match):
        tokens_to_grid(feats, 3, 3)
