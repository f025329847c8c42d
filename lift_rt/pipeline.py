"""The whole forward pass as one module: normalise -> ViT facet -> LiFT (k times)."""

from __future__ import annotations

import torch
from torch import nn

from lift_rt.backbones import ViTFeatures, check_resolution
from lift_rt.arguments import integer_arg
from lift_rt.model import upsample_iteratively


class LiftPipeline(nn.Module):
    """``forward(images)``: ``B x 3 x H x W`` in [0, 1] -> ``B x C x 2^k H/p x 2^k W/p``.

    This module is the reference every backend is checked against, the graph
    that ONNX export traces, and what the torch / compile backends run.
    ``lift=None`` returns the backbone's own features (no upsampling).
    """

    def __init__(self, backbone: ViTFeatures, lift: nn.Module | None, iterations: int = 1) -> None:
        super().__init__()
        iterations = integer_arg("iterations", iterations, 1)  # numpy integers too; not 1.5, "2" or True
        self.backbone = backbone
        self.lift = lift
        self.iterations = iterations
        spec = backbone.spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def spec(self):
        return self.backbone.spec

    def output_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        h, w = check_resolution(self.spec, height, width)
        scale = 2**self.iterations if self.lift is not None else 1
        return batch, self.spec.dim, h * scale, w * scale

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = self.normalise(images)
        feats = self.backbone(image)
        if self.lift is None:
            return feats
        return upsample_iteratively(self.lift, image, feats, self.iterations)
