"""``backend="compile"``: ``torch.compile`` of the reference pipeline."""

from __future__ import annotations

import torch

from lift_rt.backends.torch_eager import TorchBackend
from lift_rt.pipeline import LiftPipeline


class CompileBackend(TorchBackend):
    """``torch.compile`` of the reference pipeline (compiled on first call per shape). Option: ``mode``."""

    name = "compile"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32", mode: str | None = None) -> None:
        super().__init__(pipeline, device=device, precision=precision)
        default_mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else None
        self.compiled = torch.compile(self.module, mode=mode or default_mode, dynamic=False)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return self.compiled(images.to(self.dtype))
