"""The LiFT network (Suri, Walmer et al.), exactly as published.

Module and parameter names follow the authors' released checkpoints
(``image_convs_1``, ``image_convs_2``, ``up1.up``, ``up1.conv_1.double_conv``,
``outc``) so their ``.pth`` files load without renaming.

Scale adapter, per patch size ``p`` (it maps the image branch, which sits at
H/4, onto the 2x feature grid 2H/p):

* p = 8: identity (H/4 is already 2H/8);
* p = 16: 2x2 max pooling (the authors' choice);
* any other p (14 for DINOv2): adaptive max pooling onto the 2x grid. Max
  pooling is the paper's own operator for the one downscaling case it has; the
  adaptive variant reduces to it when the ratio is an integer, so p = 16 and
  p = 32 behave the same way as the original. It is computed by
  :func:`adaptive_max_pool2d_static` (fixed windows), which ONNX and TensorRT
  accept where they have no adaptive pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_CHANNELS = 32


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=True),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class DoubleConv(nn.Module):
    """Twice (3x3 conv without bias -> BN -> ReLU)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """2x transposed-conv upsample, concat with the skip tensor, double conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv_1 = DoubleConv(in_ch // 2 + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_1(torch.cat([self.up(x), skip], dim=1))


class LiFT(nn.Module):
    """Lift ViT patch features to twice their resolution.

    Args:
        dim: feature width C of the backbone (384 for ViT-S, 768 for ViT-B).
        patch_size: the backbone's patch size p.
        use_image: False builds the paper's 'No Img.' ablation: the image
            branches are absent and the network sees the features alone.

    ``forward(image, feats)``: image ``B x 3 x H x W`` (the normalised image the
    ViT saw), feats ``B x C x h x w`` or tokens ``B x T x C`` with
    ``T = h*w`` or ``1 + h*w`` (a leading CLS token is dropped), ``h = H/p``.
    Returns ``B x C x 2h x 2w``.
    """

    def __init__(self, dim: int = 384, patch_size: int = 16, use_image: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.use_image = use_image
        img_ch = IMAGE_CHANNELS if use_image else 0
        if use_image:
            self.image_convs_1 = nn.Sequential(*conv_bn_relu(3, IMAGE_CHANNELS, 2), *conv_bn_relu(IMAGE_CHANNELS, IMAGE_CHANNELS, 2))
            self.image_convs_2 = nn.Sequential(*conv_bn_relu(IMAGE_CHANNELS, IMAGE_CHANNELS, 2))
        self.up1 = Up(dim + img_ch, img_ch, dim // 2)
        self.outc = nn.Conv2d(dim // 2, dim, kernel_size=1)

    def image_features(self, image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image branches: (img1 on the 2x grid, img2 on the feature grid)."""
        img1 = scale_adapter(self.image_convs_1(image), self.patch_size, grid)
        return img1, self.image_convs_2(img1)

    def forward(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        feats = tokens_to_grid(feats, image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        grid = (feats.shape[-2], feats.shape[-1])
        if not self.use_image:
            return self.outc(self.up1(feats, feats.new_empty(feats.shape[0], 0, 2 * grid[0], 2 * grid[1])))
        img1, img2 = self.image_features(image, grid)
        x = torch.cat([feats, img2], dim=1)
        return self.outc(self.up1(x, img1))

    def lift(self, image: torch.Tensor, feats: torch.Tensor, iterations: int = 1) -> torch.Tensor:
        """Apply LiFT ``iterations`` times (2**iterations upsampling); see :func:`upsample_iteratively`."""
        return upsample_iteratively(self, image, feats, iterations)


def upsample_iteratively(upsampler: nn.Module, image: torch.Tensor, feats: torch.Tensor, iterations: int) -> torch.Tensor:
    """Apply a 2x upsampler ``iterations`` times: ``B x C x h x w`` -> ``B x C x 2^k h x 2^k w``.

    Between steps the image is bilinearly upsampled 2x, as the authors do, so
    each step sees an image whose patch grid matches its input features.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    out = upsampler(image, feats)
    for _ in range(iterations - 1):
        image = F.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False)
        out = upsampler(image, out)
    return out


def scale_adapter(img1: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Map the image branch ``B x 32 x H/4 x W/4`` onto the 2x feature grid ``B x 32 x 2h x 2w`` (module docstring)."""
    if patch_size == 8:
        return img1
    if patch_size == 16:
        return F.max_pool2d(img1, 2)
    return adaptive_max_pool2d_static(img1, (2 * grid[0], 2 * grid[1]))


def adaptive_max_pool2d_static(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, output_size)`` (bit for bit) as a max over a few fixed gathers per axis.

    ``x``: ``B x C x H x W`` -> ``B x C x h x w``. Output cell ``i`` of an axis of
    ``n`` inputs and ``m`` outputs covers inputs ``floor(i n / m)`` to
    ``ceil((i + 1) n / m) - 1``, as in PyTorch; rectangular windows make the
    2-D max the max over rows of the max over columns. Every index is fixed by
    the shapes, so exporters write plain Gather and Max nodes (ONNX and
    TensorRT have no adaptive pooling); the gathers run on ``x``'s device, so
    CUDA graph capture works.
    """
    for dim, size_out in ((-2, output_size[0]), (-1, output_size[1])):
        x = _adaptive_max_along(x, dim, size_out)
    return x


def _adaptive_max_along(x: torch.Tensor, dim: int, size_out: int) -> torch.Tensor:
    """Adaptive max pooling of ``x`` along one axis ``dim`` onto ``size_out`` cells."""
    size_in = x.shape[dim]
    if size_out <= 0 or size_in <= 0:
        raise ValueError(f"adaptive max pooling needs positive sizes, got {size_in} -> {size_out}")
    width = max(-(-(i + 1) * size_in // size_out) - i * size_in // size_out for i in range(size_out))
    cell = torch.arange(size_out, device=x.device)
    start = cell * size_in // size_out
    last = ((cell + 1) * size_in + size_out - 1) // size_out - 1
    out = x.index_select(dim, start)
    for offset in range(1, width):  # shorter windows repeat their last input: the max is unchanged
        out = torch.maximum(out, x.index_select(dim, torch.minimum(start + offset, last)))
    return out


def tokens_to_grid(feats: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``B x T x C`` tokens (optionally with a leading CLS) -> ``B x C x h x w``.

    A 4-D input must already be ``B x C x h x w`` and is checked against the grid.
    """
    if feats.dim() == 4:
        if feats.shape[-2:] != (h, w):
            raise ValueError(f"feature grid {tuple(feats.shape[-2:])} does not match the image: expected {(h, w)}")
        return feats
    if feats.dim() != 3:
        raise ValueError(f"features must be B x C x h x w or B x T x C, got shape {tuple(feats.shape)}")
    b, t, c = feats.shape
    if t == h * w + 1:
        feats = feats[:, 1:]
    elif t != h * w:
        raise ValueError(f"{t} tokens do not fit a {h} x {w} grid (expected {h * w} or {h * w + 1} with CLS)")
    return feats.transpose(1, 2).reshape(b, c, h, w)
