"""LiFT forward on the Triton kernels: image branch, fused up step, second conv, head.

Launch sequence per LiFT step (5 kernels with the image branch, 3 without):
``conv2d`` x 3 (image branch, stride 2), ``up_conv`` (transposed conv +
concat + conv + BN + ReLU), ``conv2d`` (conv + BN + ReLU), ``conv2d`` (1x1 head).
All activations are NHWC; the result is returned as a ``B x C x 2h x 2w`` view
of NHWC memory (``torch.channels_last``), which is what the next LiFT step
(iterative use) reads without a copy.
"""

from __future__ import annotations

import torch

from lift_rt.kernels.conv2d import conv2d_nhwc
from lift_rt.kernels.fold import FoldedConv, FoldedLiFT
from lift_rt.kernels.runtime import check_tensor
from lift_rt.kernels.up_conv import up_conv
from lift_rt.model import scale_adapter, tokens_to_grid, upsample_iteratively


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _run(x: torch.Tensor, conv: FoldedConv, relu: bool = True) -> torch.Tensor:
    return conv2d_nhwc(x, conv.weight, conv.bias, stride=conv.stride, relu=relu)


class TritonLiFT:
    """Callable with :class:`lift_rt.model.LiFT`'s interface, on folded weights.

    ``(image B x 3 x H x W, feats B x C x h x w or tokens B x T x C)`` ->
    ``B x C x 2h x 2w`` in the weights' dtype (channels_last memory).
    """

    def __init__(self, folded: FoldedLiFT) -> None:
        self.folded = folded
        self.dim = folded.dim
        self.patch_size = folded.patch_size

    @property
    def device(self) -> torch.device:
        return self.folded.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.folded.head.weight.dtype

    def image_features(self, image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """NHWC ``img1`` (``B x 2h x 2w x 32``) and ``img2`` (``B x h x w x 32``)."""
        x = _nhwc(image)
        for conv in self.folded.image:
            x = _run(x, conv)
        x = _nhwc(scale_adapter(x.permute(0, 3, 1, 2), self.patch_size, grid)).contiguous()
        if x.shape[1:3] != (2 * grid[0], 2 * grid[1]):
            raise ValueError(f"image branch gives a {tuple(x.shape[1:3])} grid, the features need {(2 * grid[0], 2 * grid[1])}")
        img2 = x
        for conv in self.folded.image2:
            img2 = _run(img2, conv)
        return x, img2

    def __call__(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        check_tensor("image", image, 4, self.device)
        if image.shape[1] != 3:
            raise ValueError(f"image must be B x 3 x H x W, got shape {tuple(image.shape)}")
        feats = tokens_to_grid(feats, image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        check_tensor("feats", feats, 4, self.device)
        if feats.shape[0] != image.shape[0] or feats.shape[1] != self.dim:
            raise ValueError(f"feats must be {image.shape[0]} x {self.dim} x h x w, got shape {tuple(feats.shape)}")
        grid = (feats.shape[-2], feats.shape[-1])
        img1 = img2 = None
        if self.folded.use_image:
            img1, img2 = self.image_features(image, grid)
        x = up_conv(_nhwc(feats), img2, img1, self.folded.up)
        x = _run(x, self.folded.conv2)
        return _run(x, self.folded.head, relu=False).permute(0, 3, 1, 2)

    def lift(self, image: torch.Tensor, feats: torch.Tensor, iterations: int = 1) -> torch.Tensor:
        """``iterations`` LiFT steps, as :func:`lift_rt.model.upsample_iteratively`."""
        return upsample_iteratively(self, image, feats, iterations)
