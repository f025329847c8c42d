"""Image inputs of every accepted kind, and clear errors for the rest."""

import numpy as np
import pytest
import torch
from PIL import Image

from lift_rt.preprocess import precision_dtype, to_image_tensor


def test_accepted_inputs_agree():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    expected = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    for images in (array, array[None], Image.fromarray(array), [Image.fromarray(array)], torch.from_numpy(array).permute(2, 0, 1),
                   expected.clone()):
        out = to_image_tensor(images)
        assert out.shape == (1, 3, 32, 48) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected)
    assert to_image_tensor(Image.fromarray(array[..., 0])).shape == (1, 3, 32, 48)  # greyscale -> RGB


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    grey = np.array([[0, 257, 32896], [65535, 514, 1000]], dtype=np.uint16)
    out = to_image_tensor(Image.fromarray(grey))  # mode I;16
    expected = torch.from_numpy(np.round(grey / 257.0).astype(np.float32) / 255)
    assert out.shape == (1, 3, 2, 3)
    for channel in range(3):
        torch.testing.assert_close(out[0, channel], expected)


@pytest.mark.parametrize("mode, array", [("F", np.full((4, 4), 0.5, dtype=np.float32)), ("I", np.full((4, 4), 70000, dtype=np.int32))])
def test_pil_images_without_a_defined_range_are_refused(mode, array):
    image = Image.fromarray(array)
    assert image.mode == mode
    with pytest.raises(TypeError, match=f"mode '{mode}'.*no defined range"):
        to_image_tensor(image)


@pytest.mark.parametrize(
    "images, error, match",
    [
        (torch.rand(2, 4, 8, 8), ValueError, "B x 3 x H x W"),
        (torch.rand(8, 8), ValueError, "B x 3 x H x W"),
        (torch.rand(0, 3, 8, 8), ValueError, "empty"),
        (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.rand(1, 3, 8, 8) * 255, ValueError, r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.int32), TypeError, "uint8"),
        (np.zeros((8, 8, 4), dtype=np.uint8), ValueError, "H x W x 3"),
        ("image.png", TypeError, "torch tensor"),
        ([], ValueError, "empty"),
        ([torch.rand(3, 8, 8), torch.rand(3, 8, 16)], ValueError, "one size"),
        (torch.rand(1, 3, 0, 0), ValueError, "no pixels"),
        (torch.rand(1, 3, 8, 0), ValueError, "no pixels"),
        (np.full((8, 8, 3), None, dtype=object), TypeError, "numpy object"),
        (np.zeros((8, 8, 3), dtype=np.int64), TypeError, "numpy int64"),
        (torch.empty(1, 3, 8, 8, device="meta"), ValueError, "meta tensors"),
    ],
)
def test_bad_inputs(images, error, match):
    with pytest.raises(error, match=match):
        to_image_tensor(images)


def test_precisions():
    assert precision_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        precision_dtype("int8")
