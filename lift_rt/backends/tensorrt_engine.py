"""``backend="tensorrt"``: the fused ViT + LiFT graph as a TensorRT engine on a CUDA device."""

from __future__ import annotations

import os
from typing import Any

import torch

from lift_rt.backends.base import PerResolutionBackend
from lift_rt.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from lift_rt.export.trt_engine import DEFAULT_WORKSPACE_BYTES, check_batch_range, cached_engine, tensorrt_unavailable_reason
from lift_rt.pipeline import LiftPipeline


class TensorRTBackend(PerResolutionBackend[tuple[Any, Any]]):
    """One engine per input resolution, built (or loaded from the cache) on first use.

    Inputs are float32 images on the CUDA device; outputs are in the precision's dtype. Batches
    above ``max_batch`` run in chunks. Options: ``max_batch``, ``opt_batch`` (the optimisation
    profile), ``cache_dir``, ``workspace_bytes``.
    """

    name = "tensorrt"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp16", max_batch: int = 32,
                 opt_batch: int | None = None, cache_dir: str | os.PathLike | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        super().__init__(pipeline, device=device, precision=precision, cache_dir=cache_dir)
        self.opt_batch = check_batch_range(max_batch, opt_batch)
        self.max_batch = max_batch
        self.workspace_bytes = workspace_bytes

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        return tensorrt_unavailable_reason(device)

    def build(self, height: int, width: int) -> tuple[Any, Any]:
        """(ICudaEngine, IExecutionContext) of the engine for ``height x width`` images."""
        with torch.cuda.device(self.device):
            _, engine = cached_engine(
                self.pipeline, (height, width), precision=self.precision, max_batch=self.max_batch,
                opt_batch=self.opt_batch, cache_dir=self.cache_dir, workspace_bytes=self.workspace_bytes,
                device=self.device,
            )
            return engine, engine.create_execution_context()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32).contiguous()
        height, width = images.shape[-2:]
        context = self.artifact(height, width)[1]
        chunks = [self.run_chunk(context, part) for part in images.split(self.max_batch)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def run_chunk(self, context: Any, images: torch.Tensor) -> torch.Tensor:
        b, _, height, width = images.shape
        expected = self.pipeline.output_shape(b, height, width)
        if not context.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise RuntimeError(f"the TensorRT engine refused input shape {tuple(images.shape)} (its profile: batch 1..{self.max_batch})")
        shape = tuple(context.get_tensor_shape(OUTPUT_NAME))
        if shape != expected:  # the buffer below is sized for the pipeline's output: never let TensorRT write past it
            raise RuntimeError(f"the TensorRT engine gives a {shape} output where the pipeline gives {expected}; "
                               "rebuild it (delete the cached engine)")
        with torch.cuda.device(self.device):
            out = torch.empty(expected, dtype=self.dtype, device=self.device)
            context.set_tensor_address(INPUT_NAME, images.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise RuntimeError("TensorRT failed to enqueue the engine (see the TensorRT messages above)")
        return out
