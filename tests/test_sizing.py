"""The image size policy (lift_rt.sizing) and Engine's resize / max_side / pad options, on hand-made cases."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lift_rt import Engine, get_spec
from lift_rt.sizing import SizePolicy, lanczos_resize

S8, S16 = get_spec("dino_s8"), get_spec("dino_s16")


@pytest.mark.parametrize(
    "policy, spec, resized, padded, cells_1, cells_2",
    [
        # 224 x 298: the width is no multiple of 8 or 16.
        (SizePolicy(resize=224), S8, (224, 296), (224, 296), (28, 37), (56, 74)),  # 298 / 8 = 37.25 -> 37
        (SizePolicy(resize=224), S16, (224, 304), (224, 304), (14, 19), (28, 38)),  # 298 / 16 = 18.6 -> 19
        (SizePolicy(pad=True), S8, (224, 298), (224, 304), (28, 38), (56, 75)),  # ceil(298 / 8) = 38, ceil(298 / 4) = 75
        (SizePolicy(pad=True), S16, (224, 298), (224, 304), (14, 19), (28, 38)),
        (SizePolicy(resize=112, pad=True), S8, (112, 149), (112, 152), (14, 19), (28, 38)),  # 298 / 2 = 149
        (SizePolicy(max_side=160, pad=True), S8, (120, 160), (120, 160), (15, 20), (30, 40)),  # 224 * 160 / 298 = 120.3
        (SizePolicy(max_side=160), S16, (128, 160), (128, 160), (8, 10), (16, 20)),  # 120.3 / 16 = 7.5 -> 8
        (SizePolicy(resize=224, max_side=256), S8, (192, 256), (192, 256), (24, 32), (48, 64)),  # 298 capped at 256
        (SizePolicy(max_side=448, pad=True), S8, (224, 298), (224, 304), (28, 38), (56, 75)),  # never scaled up
    ],
)
def test_plan_of_224_by_298(policy, spec, resized, padded, cells_1, cells_2):
    plan = policy.plan(224, 298, spec)
    assert (plan.original, plan.resized, plan.padded) == ((224, 298), resized, padded)
    assert plan.cells(1) == cells_1 and plan.cells(2) == cells_2


def test_default_policy_refuses_sizes_off_the_grid():
    with pytest.raises(ValueError, match="width 298: e.g. 296 or 304"):
        SizePolicy().plan(224, 298, S8)
    plan = SizePolicy().plan(224, 296, S8)
    assert plan.resized == plan.padded == (224, 296) and plan.cells(2) == (56, 74)


@pytest.mark.parametrize("kwargs, message", [
    (dict(resize=0), "resize must be a positive integer"),
    (dict(max_side=1.5), "max_side must be a positive integer"),
    (dict(resize=True), "resize must be a positive integer"),
])
def test_bad_policies(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SizePolicy(**kwargs)


def test_resize_off_the_patch_multiple_needs_pad():
    with pytest.raises(ValueError, match=r"resize=225 is not a multiple of dino_s8's patch size 8: use e.g. 224 or 232"):
        Engine("dino_s8", random_init=True, device="cpu", resize=225)
    plan = SizePolicy(resize=225, pad=True).plan(224, 298, S8)
    assert plan.resized == (225, 299) and plan.padded == (232, 304)


def test_lanczos_matches_pil_on_rgb_images():
    """The float resize is PIL's Lanczos: equal to resizing the uint8 RGB image (the authors' load_size) up to rounding."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    by_pil = np.asarray(Image.fromarray(rgb).resize((29, 21), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    ours = lanczos_resize(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, (21, 29))[0].permute(1, 2, 0)
    assert ours.shape == (21, 29, 3)
    assert np.abs(ours.numpy() - by_pil).max() <= 1.5 / 255  # two uint8 roundings in PIL


@pytest.fixture(scope="module")
def engine_s8():
    return Engine("dino_s8", random_init=True, device="cpu")


def test_pad_equals_padding_and_cropping_by_hand(engine_s8):
    """A 56 x 75 image, patch 8, one LiFT step: padded to 56 x 80, features 14 x 20 cropped to ceil(75 / 4) = 19 columns."""
    image = torch.rand(2, 3, 56, 75)
    padded = Engine("dino_s8", random_init=True, device="cpu", pad=True)(image)
    assert padded.shape == (2, 384, 14, 19) and padded.is_contiguous()
    by_hand = engine_s8(F.pad(image, (0, 5, 0, 0)))
    assert by_hand.shape == (2, 384, 14, 20)
    torch.testing.assert_close(padded, by_hand[..., :19], rtol=1e-5, atol=1e-5)


def test_resize_equals_resizing_by_hand(engine_s8):
    image = torch.rand(1, 3, 45, 61)  # shorter side 45 -> 48; 61 * 48 / 45 = 65.1 -> 64
    resized = Engine("dino_s8", random_init=True, device="cpu", resize=48)(image)
    assert resized.shape == (1, 384, 12, 16)
    torch.testing.assert_close(resized, engine_s8(lanczos_resize(image, (48, 64))), rtol=1e-5, atol=1e-5)


def test_engine_224_by_298():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 298, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="resize=224 or pad=True"):
        Engine("dino_s16", random_init=True, device="cpu")(image)
    assert Engine("dino_s16", random_init=True, device="cpu", resize=224)(image).shape == (1, 384, 28, 38)
    assert Engine("dino_s16", random_init=True, device="cpu", iterations=2, pad=True, max_side=149)(image).shape == (1, 384, 28, 38)
