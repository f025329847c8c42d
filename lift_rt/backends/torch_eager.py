"""``backend="torch"``: eager PyTorch, the reference pipeline itself."""

from __future__ import annotations

import torch

from lift_rt.backends.base import Backend
from lift_rt.pipeline import LiftPipeline


class TorchBackend(Backend):
    """Eager PyTorch: the reference pipeline itself, cast to the precision."""

    name = "torch"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32") -> None:
        super().__init__(pipeline, device=device, precision=precision)
        self.module = pipeline.to(self.device, self.dtype).eval()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.dtype))
