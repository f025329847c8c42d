"""Keypoint pairs and the letterbox that places an image on the ``S x S`` evaluation canvas.

Each image is resized so its longer side is the evaluation size S (Lanczos) and
zero-padded, centred, to ``S x S``; keypoints and boxes follow it into canvas
pixels. Two conventions (:data:`PROTOCOLS`) differ in how they do that:

- ``authors`` (the default; the authors' ``eval_spair.py``): both axes are scaled
  by the letterbox's own factor ``S / max(w, h)`` (in float32, as their script
  computes it), and a source keypoint's feature pixel is the floor of its canvas
  coordinate.
- ``exact``: each axis is scaled by its actual resize ratio (resized / original
  size, which differs from ``S / max(w, h)`` by the rounding of the resized
  size), and the feature pixel is the nearest one (rounded).

Both clamp the feature pixel into the canvas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

from lift_rt.preprocess import pil_to_rgb

ImageRef = Union[str, os.PathLike, np.ndarray]
Box = tuple[float, float, float, float]

PROTOCOLS: dict[str, str] = {
    "authors": "both axes scaled by S / max(w, h), the source keypoint's pixel is the floor of its coordinate "
               "(the authors' eval_spair.py)",
    "exact": "each axis scaled by its actual resize ratio, the source keypoint's pixel is the nearest one (rounded)",
}


def check_protocol(protocol: str) -> None:
    """Raise ValueError unless ``protocol`` is one of :data:`PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class KeypointPair:
    """Two images of one category with corresponding keypoints.

    Keypoints are ``N x 2`` float arrays of (x, y) in pixels of their own image,
    all visible in both images; boxes are (x1, y1, x2, y2) in pixels. Images are
    ``H x W x 3`` uint8 arrays or paths (read when evaluated).
    """

    category: str
    src_image: ImageRef
    trg_image: ImageRef
    src_kps: np.ndarray
    trg_kps: np.ndarray
    src_bbox: Box
    trg_bbox: Box
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("src_kps", "trg_kps"):
            kps = np.asarray(getattr(self, field_name), dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(kps).all():
                raise ValueError(f"pair {self.name!r}: {field_name} holds NaN or infinite values")
            object.__setattr__(self, field_name, kps)
        if len(self.src_kps) != len(self.trg_kps):
            raise ValueError(f"pair {self.name!r}: {len(self.src_kps)} source but {len(self.trg_kps)} target keypoints")
        for field_name in ("src_bbox", "trg_bbox"):
            box = tuple(float(v) for v in getattr(self, field_name))
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"pair {self.name!r}: {field_name} must be (x1, y1, x2, y2) with x2 >= x1, y2 >= y1, got {box}")
            object.__setattr__(self, field_name, box)


def load_rgb(image: ImageRef) -> np.ndarray:
    """A path or array -> ``H x W x 3`` uint8 RGB."""
    if isinstance(image, np.ndarray):
        array = image
    else:
        with Image.open(image) as pil:
            array = pil_to_rgb(pil)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"images must be H x W x 3 uint8, got {array.shape} {array.dtype}")
    return array


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed on the ``size x size`` evaluation canvas.

    ``scale`` is ``size / max(w, h)``; ``scale_x`` / ``scale_y`` are the actual
    resize ratios (resized / original width and height).
    """

    scale: float
    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int
    size: int

    def points(self, kps: np.ndarray, protocol: str = "authors") -> np.ndarray:
        """``N x 2`` (x, y) in original pixels -> canvas pixels (float64) under ``protocol``."""
        check_protocol(protocol)
        offset = np.array([self.offset_x, self.offset_y])
        if protocol == "authors":  # float32 arithmetic, so floor() picks their pixel where x * scale is an integer
            return (np.asarray(kps, np.float32) * np.float32(self.scale) + offset.astype(np.float32)).astype(np.float64)
        return kps * np.array([self.scale_x, self.scale_y]) + offset

    def box_length(self, box: Box, protocol: str = "authors") -> float:
        """max(h, w) of a box in canvas pixels under ``protocol``: the PCK reference length."""
        check_protocol(protocol)
        x1, y1, x2, y2 = box
        if protocol == "authors":
            return max(x2 - x1, y2 - y1) * self.scale
        return max((x2 - x1) * self.scale_x, (y2 - y1) * self.scale_y)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the longer side to ``size`` (Lanczos) and zero-pad centred -> ``size x size x 3`` uint8 and the placement."""
    h, w = image.shape[:2]
    longer = max(h, w)
    new_w, new_h = max(1, round(size * w / longer)), max(1, round(size * h / longer))  # half to even, as numpy's around
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))
    off_x, off_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[off_y : off_y + new_h, off_x : off_x + new_w] = resized
    return canvas, Letterbox(size / longer, new_w / w, new_h / h, off_x, off_y, size)


def pixel_index(points: np.ndarray, size: int, protocol: str = "authors") -> np.ndarray:
    """Canvas (x, y) -> the integer pixel (x, y) whose feature a source keypoint takes, clamped into the canvas.

    ``authors``: the floor of each coordinate; ``exact``: the nearest pixel.
    """
    check_protocol(protocol)
    pixel = np.floor(points) if protocol == "authors" else np.rint(points)
    return np.clip(pixel, 0, size - 1).astype(np.int64)
