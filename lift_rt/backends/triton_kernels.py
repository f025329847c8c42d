"""``backend="triton"``: ViT backbone in PyTorch (SDPA attention), LiFT on the Triton kernels.

Small batches replay a CUDA graph captured per input shape (launch overhead
dominates a 5-kernel LiFT step at batch 1); larger batches run eagerly.
Kernel modules are imported only when the backend is built, so asking
:meth:`TritonBackend.unavailable_reason` never compiles anything.
"""

from __future__ import annotations

import importlib.util
import threading

import torch

from lift_rt.backends.base import Backend, BackendUnavailable
from lift_rt.pipeline import LiftPipeline


class TritonBackend(Backend):
    """Options: ``cuda_graph_max_batch`` (default 8; 0 turns CUDA graphs off).

    One CUDA graph (with its own memory pool) is kept per input shape up to that batch, for the
    engine's lifetime: an engine fed many resolutions holds one graph for each.
    """

    name = "triton"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32", cuda_graph_max_batch: int = 8) -> None:
        super().__init__(pipeline, device=device, precision=precision)
        reason = self.unavailable_reason(self.device)
        if reason is not None:
            raise BackendUnavailable(reason)
        from lift_rt.kernels.fold import fold_lift
        from lift_rt.kernels.lift_head import TritonLiFT
        from lift_rt.model import LiFT

        if pipeline.lift is not None and not isinstance(pipeline.lift, LiFT):
            raise BackendUnavailable(f"the Triton kernels implement LiFT only, not {type(pipeline.lift).__name__} "
                                     "(use backend='torch' or 'compile' for the other upsamplers)")

        self.lift = TritonLiFT(fold_lift(pipeline.lift, self.dtype, self.device)) if pipeline.lift is not None else None
        pipeline.to(self.device)  # normalise() reads the pipeline's mean/std buffers
        self.backbone = pipeline.backbone.to(self.dtype).eval()
        self.cuda_graph_max_batch = cuda_graph_max_batch
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._graph_lock = threading.Lock()  # one replay at a time: the static buffers are shared

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (pip install triton; Linux only)"
        if torch.device(device).type != "cuda":
            return f"the Triton kernels run on CUDA GPUs only, not on {torch.device(device).type} (use backend='torch' or 'onnxruntime' on a CPU)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible to PyTorch"
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x C x 2^k h x 2^k w`` (channels_last memory)."""
        image = self.pipeline.normalise(images.to(self.dtype))
        feats = self.backbone(image)
        if self.lift is None:
            return feats
        return self.lift.lift(image, feats, self.pipeline.iterations)

    def _graph(self, images: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        key = tuple(images.shape)
        if key not in self._graphs:
            static_in = images.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # autotuning and compilation happen here, outside the capture
                    self.forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        # Triton launches on the current device and stream: make them the engine's (cuda:1 included).
        with torch.cuda.device(self.device):
            if images.shape[0] > self.cuda_graph_max_batch:
                return self.forward(images)
            with self._graph_lock:
                graph, static_in, static_out = self._graph(images)
                static_in.copy_(images)
                graph.replay()
                return static_out.clone(memory_format=torch.preserve_format)
