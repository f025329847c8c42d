"""Turn user images into the float tensor every backend consumes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}") from None


def pil_to_rgb(image: Any) -> np.ndarray:
    """A PIL image -> ``H x W x 3`` uint8 RGB.

    8-bit modes (greyscale, palette, RGB(A), CMYK, ...) go through PIL's own conversion; 16-bit
    greyscale (``I;16*``) is scaled to 0..255. 32-bit integer (``I``) and float (``F``) images are
    refused: their value range is not defined, and PIL's conversion would clip them.
    """
    if image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float32)
        return np.repeat((grey / 257.0).round().astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        raise TypeError(f"PIL images of mode {image.mode!r} (32-bit {'integer' if image.mode == 'I' else 'float'}) have no "
                        "defined range: convert them to 8-bit RGB yourself, or pass a float array in [0, 1]")
    return np.asarray(image.convert("RGB"))


def _from_pil(image: Any) -> torch.Tensor:
    return torch.from_numpy(pil_to_rgb(image).copy()).permute(2, 0, 1)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """numpy images are channels-last: H x W x 3 or B x H x W x 3."""
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"numpy images must be H x W x 3 or B x H x W x 3, got shape {array.shape}")
    if array.dtype != np.uint8 and array.dtype.kind != "f":  # named here as numpy's dtype, not torch's
        raise TypeError(f"images must be uint8 (0..255) or floating point (0..1), got numpy {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)


def to_image_tensor(images: Any) -> torch.Tensor:
    """Images -> ``B x 3 x H x W`` float32 in [0, 1] (CPU or the tensor's own device).

    Accepts a torch tensor (``3 x H x W`` or ``B x 3 x H x W``; uint8 in 0..255 or
    float in 0..1), a numpy array (``H x W x 3`` / ``B x H x W x 3``), a PIL image,
    or a list of PIL images / arrays of one size.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("empty list of images")
        parts = [to_image_tensor(image) for image in images]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"images in one batch must share one size, got {sorted(shapes)}")
        return torch.cat(parts)
    if hasattr(images, "convert") and hasattr(images, "size"):
        tensor = _from_pil(images)
    elif isinstance(images, np.ndarray):
        tensor = _from_numpy(images)
    elif isinstance(images, torch.Tensor):
        tensor = images
    else:
        raise TypeError(f"images must be a torch tensor, numpy array or PIL image, not {type(images).__name__}")
    if tensor.device.type == "meta":
        raise ValueError("images are meta tensors (a shape without data); pass real pixel values")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W (RGB), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("empty batch of images")
    if tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise ValueError(f"images have no pixels: shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or floating point (0..1), got {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError("images contain NaN or infinite values")
    low, high = tensor.aminmax()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"float images must lie in [0, 1] (got {low.item():.3g}..{high.item():.3g}); pass uint8 for 0..255 "
            "images, and do not normalise them yourself: the engine applies the backbone's mean/std"
        )
    return tensor
