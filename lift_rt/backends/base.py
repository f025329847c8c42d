"""The interface every backend implements, and the shared part of the two exported-graph backends."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

import torch

from lift_rt.pipeline import LiftPipeline
from lift_rt.preprocess import precision_dtype


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (missing package or device); the message says why."""


class Backend:
    """Built from a :class:`~lift_rt.pipeline.LiftPipeline` (the reference), a device and a precision.

    Called on ``B x 3 x H x W`` float32 images in [0, 1] already on that device, it returns the
    lifted features ``B x C x 2^k h x 2^k w`` in the precision's dtype. Subclasses set ``name``
    and implement ``run``; keyword-only ``__init__`` arguments beyond ``device`` and ``precision``
    are the backend's options (``Engine(..., **options)``).
    """

    name: ClassVar[str] = "base"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32") -> None:
        self.pipeline = pipeline
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = precision_dtype(precision)

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """None when this backend can run on ``device``, else a sentence saying why not."""
        return None

    def run(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place updates and autograd outside it
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


Artifact = TypeVar("Artifact")


class PerResolutionBackend(Backend, Generic[Artifact]):
    """A backend that runs one artifact per input resolution (an ONNX session, a TensorRT engine),
    made by :meth:`build` on first use (or read from the on-disk cache in ``cache_dir``) and kept."""

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str, cache_dir=None) -> None:
        super().__init__(pipeline, device=device, precision=precision)
        self.cache_dir = cache_dir
        self.artifacts: dict[tuple[int, int], Artifact] = {}

    def build(self, height: int, width: int) -> Artifact:
        raise NotImplementedError

    def artifact(self, height: int, width: int) -> Artifact:
        """The artifact for ``height x width`` images, built on first use."""
        if (height, width) not in self.artifacts:
            self.artifacts[(height, width)] = self.build(height, width)
        return self.artifacts[(height, width)]
