"""``backend="onnxruntime"``: the fused ViT + LiFT ONNX graph run by onnxruntime (CPU or CUDA provider)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lift_rt.backends.base import BackendUnavailable, PerResolutionBackend
from lift_rt.export.onnx_export import INPUT_NAME, ORT_PRECISIONS, OUTPUT_NAME, cached_onnx
from lift_rt.pipeline import LiftPipeline

NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def session_options(threads: int | None = None) -> Any:
    """All graph optimisations; ``threads`` intra-op threads (default: torch's thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return options


class OnnxRuntimeBackend(PerResolutionBackend[Any]):
    """One ONNX graph and session per input resolution, exported (or read from the cache) on first use.

    fp32 and fp16 graphs run; the output is a torch tensor on the engine's device in the precision's
    dtype. Options: ``cache_dir`` (where graphs are kept; default ``~/.cache/lift_rt``), ``threads``
    (intra-op threads). An export is announced on the ``lift_rt.export`` logger (INFO).
    """

    name = "onnxruntime"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        super().__init__(pipeline, device=device, precision=precision, cache_dir=cache_dir)
        if precision not in ORT_PRECISIONS:
            raise BackendUnavailable(f"onnxruntime runs {' and '.join(ORT_PRECISIONS)} graphs, not {precision}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise ValueError(f"threads must be an integer >= 0 (0: torch's thread count), got {threads!r}")
        self.threads = threads

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime (or onnxruntime-gpu)"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        if device.type not in ("cpu", "cuda"):
            return f"onnxruntime backend runs on cpu or cuda, not {device.type}"
        return None

    @property
    def providers(self) -> list[Any]:
        if self.device.type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def build(self, height: int, width: int) -> Any:
        """An ``onnxruntime.InferenceSession`` of the graph for ``height x width`` images."""
        import onnxruntime as ort

        path = cached_onnx(self.pipeline, (height, width), precision=self.precision, cache_dir=self.cache_dir)
        return ort.InferenceSession(str(path), sess_options=session_options(self.threads), providers=self.providers)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        b, _, height, width = images.shape
        session = self.artifact(height, width)
        images = images.to(self.device, torch.float32).contiguous()
        if self.device.type == "cpu":
            out = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
            return torch.from_numpy(out)
        # CUDA: bind torch's buffers so nothing crosses to the host.
        out = torch.empty(self.pipeline.output_shape(b, height, width), dtype=self.dtype, device=self.device)
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(images.shape), images.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, NUMPY_DTYPES[self.precision], tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return out
