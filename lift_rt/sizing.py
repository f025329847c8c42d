"""Image size policy: how an image of any size becomes a ViT input, and which feature cells are its own.

A ViT needs sides that are multiples of its patch size ``p``; photos rarely are. A
:class:`SizePolicy` says what to do, and :meth:`SizePolicy.plan` gives the exact geometry
for one ``H x W`` image as a :class:`SizePlan`:

1. Scale. ``resize=S`` scales the shorter side to ``S`` and the longer one alike (the authors'
   ``load_size``); ``max_side=M`` then caps the longer side at ``M`` (images are only ever
   scaled down by it). Without either the image keeps its size.
2. Round. Without ``pad``, each scaled side is rounded to the nearest multiple of ``p`` (at
   least ``p``), so the aspect ratio moves by at most half a patch per side. With ``pad``, each
   side is rounded to the nearest pixel and the aspect is kept. Resampling is Lanczos (PIL's
   filter, as the authors' extractor), per channel in float32, clamped to [0, 1].
3. Pad (``pad=True`` only). Zeros (black) are added at the bottom and right up to the next
   multiple of ``p``; the image stays at the top-left, so pixel ``(y, x)`` of the resized image
   is pixel ``(y, x)`` of the ViT input.
4. Crop. Features with ``u`` cells per patch (``u = 2^k`` after ``k`` LiFT steps; 1 for the
   backbone) have cells ``p / u`` pixels wide. The returned features keep the cells that
   overlap the image: ``ceil(h * u / p) x ceil(w * u / p)`` for a resized ``h x w`` image, so
   every pixel has a cell (pixel ``(y, x)`` lies in cell ``(floor(y * u / p), floor(x * u / p))``)
   and only the last row and column of cells may also cover padding. Without padding, nothing
   is cropped.

``SizePolicy()`` (the default) does none of this: a size that is not a multiple of ``p`` is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lift_rt.backbones import BackboneSpec, check_resolution


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


@dataclass(frozen=True)
class SizePlan:
    """The geometry of one image under a :class:`SizePolicy` (sizes are ``(height, width)`` in pixels)."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    patch_size: int

    def cells(self, upscale: int = 1) -> tuple[int, int]:
        """Rows and columns of the returned features with ``upscale`` cells per patch (``2^k`` after k LiFT steps)."""
        return tuple(-(-side * upscale // self.patch_size) for side in self.resized)  # ceil division

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` in [0, 1] (the original size) -> ``B x 3 x padded`` ViT input."""
        if tuple(images.shape[-2:]) != self.original:
            raise ValueError(f"images are {tuple(images.shape[-2:])}, this plan is for {self.original}")
        if self.resized != self.original:
            images = lanczos_resize(images, self.resized)
        pad_h, pad_w = self.padded[0] - self.resized[0], self.padded[1] - self.resized[1]
        return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    def crop(self, features: torch.Tensor) -> torch.Tensor:
        """Features of the padded input ``... x C x U*Hp/p x U*Wp/p`` -> ``... x C x cells(U)`` (a view)."""
        upscale = features.shape[-1] * self.patch_size // self.padded[1]
        rows, cols = self.cells(upscale)
        return features[..., :rows, :cols]


@dataclass(frozen=True)
class SizePolicy:
    """How images of any size are fitted to the patch grid (see the module docstring for the exact rules).

    Args:
        resize: shorter side in pixels after resizing (the authors' ``load_size``), or None.
        max_side: largest longer side in pixels (larger images are scaled down), or None.
        pad: keep the aspect ratio and zero-pad bottom/right to the patch multiple, features
            cropped to the image's cells; else resized sides are rounded to the patch multiple.
    """

    resize: int | None = None
    max_side: int | None = None
    pad: bool = False

    def __post_init__(self) -> None:
        for name in ("resize", "max_side"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (pixels) or None, got {value!r}")
        if not isinstance(self.pad, bool):
            raise TypeError(f"pad must be True or False, got {self.pad!r}")

    def check(self, spec: BackboneSpec) -> None:
        """Raise unless the policy fits ``spec``: without padding, ``resize`` and ``max_side`` must be patch multiples."""
        p = spec.patch_size
        for name in ("resize", "max_side"):
            value = getattr(self, name)
            if value is not None and not self.pad and value % p:
                below, above = value // p * p, (value // p + 1) * p
                raise ValueError(f"{name}={value} is not a multiple of {spec.name}'s patch size {p}: use e.g. "
                                 f"{below or above} or {above}, or pad=True")

    def plan(self, height: int, width: int, spec: BackboneSpec) -> SizePlan:
        """The geometry of an ``height x width`` image; the default policy raises for a size off the patch grid."""
        self.check(spec)
        p = spec.patch_size
        scale = 1.0
        if self.resize is not None:
            scale = self.resize / min(height, width)
        if self.max_side is not None and max(height, width) * scale > self.max_side:
            scale = self.max_side / max(height, width)
        if self.pad:
            resized = tuple(max(1, _round_half_up(side * scale)) for side in (height, width))
            padded = tuple(-(-side // p) * p for side in resized)
        elif self.resize is None and self.max_side is None:
            check_resolution(spec, height, width)
            resized = padded = (height, width)
        else:
            resized = padded = tuple(max(1, _round_half_up(side * scale / p)) * p for side in (height, width))
        return SizePlan((height, width), resized, padded, p)

    def describe(self) -> str:
        """One line for logs and manifests, e.g. ``shorter side 224, sides rounded to the patch``."""
        parts = [f"shorter side {self.resize}"] if self.resize is not None else []
        if self.max_side is not None:
            parts.append(f"longer side at most {self.max_side}")
        if self.pad:
            parts.append("aspect kept, zero-padded bottom/right, features cropped to the image")
        elif parts:
            parts.append("sides rounded to the patch multiple")
        return ", ".join(parts) or "as given (sides must be patch multiples)"


def lanczos_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x 3 x H x W`` float in [0, 1] -> ``B x 3 x h x w`` (``size = (h, w)``) with PIL's Lanczos filter.

    Each channel is resampled in float32 (PIL mode ``F``), so no uint8 rounding is added; like PIL
    on 8-bit images, it resamples the width then the height and clamps to [0, 1] after each pass
    (Lanczos overshoots at edges). Returned on ``images``' device.
    """
    height, width = size
    planes = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty(planes.shape[:2] + (height, width), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, c]))  # float32 -> mode F
            # Horizontal then vertical pass, clamped after each as PIL clamps 8-bit images between its passes.
            across = np.clip(np.asarray(plane.resize((width, plane.height), Image.Resampling.LANCZOS)), 0.0, 1.0)
            out[b, c] = np.asarray(Image.fromarray(across).resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).clamp_(0.0, 1.0).to(images.device)
