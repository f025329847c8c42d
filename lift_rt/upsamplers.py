"""The paper's baseline upsamplers, behind LiFT's interface.

Each is a module with ``forward(image, feats) -> B x C x 2h x 2w`` where image
is ``B x 3 x H x W`` (normalised, as the ViT saw it) and feats ``B x C x h x w``
(or tokens ``B x T x C``), exactly like :class:`lift_rt.model.LiFT`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lift_rt.model import LiFT, tokens_to_grid


class _GridUpsampler(nn.Module):
    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size

    def forward(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        feats = tokens_to_grid(feats, image.shape[-2] // p, image.shape[-1] // p)
        return self.upsample(image, feats)

    def upsample(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Nearest(_GridUpsampler):
    """2x nearest-neighbour repetition."""

    def upsample(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return F.interpolate(feats, scale_factor=2.0, mode="nearest")


class Bilinear(_GridUpsampler):
    """2x bilinear interpolation (BL)."""

    def upsample(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return F.interpolate(feats, scale_factor=2.0, mode="bilinear", align_corners=False)


class ResizeConv(_GridUpsampler):
    """Resize-convolution (RC): 2x nearest resize, then a learned 3x3 conv (initialised to identity)."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__(dim, patch_size)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] = torch.eye(dim)
            self.conv.bias.zero_()

    def upsample(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(feats, scale_factor=2.0, mode="nearest"))


class JointBilateral(_GridUpsampler):
    """Joint bilateral upsampling (JBU, Kopf et al. 2007) guided by the image.

    Each output pixel averages the low-resolution features in a
    ``(2r+1) x (2r+1)`` window around it, weighted by a spatial Gaussian
    (``sigma_spatial``, in low-resolution cells) times a range Gaussian on the
    guidance colours (``sigma_range``, in normalised-image units).
    """

    def __init__(self, dim: int, patch_size: int, radius: int = 1, sigma_spatial: float = 1.0, sigma_range: float = 0.5) -> None:
        super().__init__(dim, patch_size)
        self.radius = radius
        self.sigma_spatial = sigma_spatial
        self.sigma_range = sigma_range

    def upsample(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        guide_hi = F.adaptive_avg_pool2d(image, (2 * h, 2 * w))  # guidance at output pixels
        guide_lo = F.adaptive_avg_pool2d(image, (h, w))  # guidance at feature cells
        dev, dt = feats.device, feats.dtype
        ys = torch.arange(2 * h, device=dev)
        xs = torch.arange(2 * w, device=dev)
        base_y, base_x = ys // 2, xs // 2
        # Output pixel centres in low-resolution cell units.
        cy = (ys.to(dt) + 0.5) / 2 - 0.5
        cx = (xs.to(dt) + 0.5) / 2 - 0.5
        acc = feats.new_zeros(b, c, 2 * h, 2 * w)
        norm = feats.new_zeros(b, 1, 2 * h, 2 * w)
        r = self.radius
        for dy in range(-r, r + 1):
            ny = base_y + dy
            vy = (ny >= 0) & (ny < h)
            ny = ny.clamp(0, h - 1)
            wy = torch.exp(-((cy - ny.to(dt)) ** 2) / (2 * self.sigma_spatial**2)) * vy
            for dx in range(-r, r + 1):
                nx = base_x + dx
                vx = (nx >= 0) & (nx < w)
                nx = nx.clamp(0, w - 1)
                wx = torch.exp(-((cx - nx.to(dt)) ** 2) / (2 * self.sigma_spatial**2)) * vx
                neighbour_feats = feats[:, :, ny][:, :, :, nx]
                neighbour_guide = guide_lo[:, :, ny][:, :, :, nx]
                colour = ((guide_hi - neighbour_guide) ** 2).sum(1, keepdim=True)
                weight = torch.exp(-colour / (2 * self.sigma_range**2)) * (wy[:, None] * wx[None, :])
                acc = acc + weight * neighbour_feats
                norm = norm + weight
        return acc / norm.clamp_min(1e-12)


UPSAMPLERS: dict[str, type[nn.Module]] = {
    "lift": LiFT,
    "bilinear": Bilinear,
    "nearest": Nearest,
    "rc": ResizeConv,
    "jbu": JointBilateral,
}


def build_upsampler(name: str, dim: int, patch_size: int) -> nn.Module:
    """An upsampler by name (lift, bilinear, nearest, rc, jbu) for width ``dim``."""
    try:
        cls = UPSAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown upsampler {name!r}; choose one of {', '.join(UPSAMPLERS)}") from None
    if cls is LiFT:
        return LiFT(dim=dim, patch_size=patch_size)
    return cls(dim, patch_size)
