"""Execution backends: one small interface (:class:`~lift_rt.backends.base.Backend`), one file each.

============  ==================================  ==========================================
name          class (module)                      runs
============  ==================================  ==========================================
torch         ``TorchBackend`` (torch_eager)       the reference pipeline, eager PyTorch
compile       ``CompileBackend`` (torch_compile)   ``torch.compile`` of it
onnxruntime   ``OnnxRuntimeBackend``               the fused ONNX graph (``lift_rt.export``)
              (onnxruntime_graph)
tensorrt      ``TensorRTBackend`` (tensorrt_engine) a TensorRT engine of that graph
triton        ``TritonBackend`` (triton_kernels)   the ViT in PyTorch, LiFT on ``lift_rt.kernels``
============  ==================================  ==========================================

Every backend module imports only torch at load time; onnxruntime, TensorRT and
Triton are imported when a backend that needs them is built, so asking
:func:`unavailable_reason` never compiles or loads anything heavy.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lift_rt.backends.base import Backend, BackendUnavailable
from lift_rt.backends.onnxruntime_graph import OnnxRuntimeBackend
from lift_rt.backends.tensorrt_engine import TensorRTBackend
from lift_rt.backends.torch_compile import CompileBackend
from lift_rt.backends.torch_eager import TorchBackend
from lift_rt.backends.triton_kernels import TritonBackend
from lift_rt.pipeline import LiftPipeline

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (TorchBackend, CompileBackend, OnnxRuntimeBackend, TensorRTBackend, TritonBackend)
}

# Fastest first. On a GPU: the order. On a CPU: measured by bench/test_bench_backends_cpu.py
# (dino_s8, 224, batch 1, fp32, quiet 2-core Xeon with AVX-512, several runs): onnxruntime 0.92-1.01x
# eager torch, torch.compile 1.00-1.14x (all near the cores' fp32 peak), so eager torch, which needs
# no export and no compilation (compile's first call per shape takes about a minute). Under CPU
# contention onnxruntime was 1.4-3.3x eager: pick it explicitly on a busy machine. On a CPU with
# AMX, precision="bf16" is the big lever (2.3-3.1x fp32, same bench).
AUTO_ORDER_GPU: tuple[str, ...] = ("tensorrt", "triton", "compile", "onnxruntime", "torch")
AUTO_ORDER_CPU: tuple[str, ...] = ("torch", "onnxruntime")

__all__ = [
    "AUTO_ORDER_CPU", "AUTO_ORDER_GPU", "BACKENDS", "Backend", "BackendUnavailable", "CompileBackend",
    "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend", "TritonBackend", "auto_order", "backend_class",
    "build_backend", "unavailable_reason",
]


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``; ValueError listing the names for an unknown one."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'") from None


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else why not."""
    return backend_class(name).unavailable_reason(torch.device(device))


def auto_order(device: torch.device) -> tuple[str, ...]:
    """The backends ``auto`` tries on ``device``, fastest first."""
    return AUTO_ORDER_GPU if torch.device(device).type == "cuda" else AUTO_ORDER_CPU


def check_backend_options(cls: type[Backend], name: str, options: dict[str, Any]) -> None:
    """TypeError naming the options backend ``name`` does not take, and the ones it does."""
    params = inspect.signature(cls.__init__).parameters
    accepted = sorted(k for k, p in params.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("device", "precision"))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"backend {name!r} takes no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(accepted) or 'none'})"
        )


def build_backend(pipeline: LiftPipeline, name: str, *, device: torch.device, precision: str = "fp32",
                  options: dict[str, Any] | None = None) -> tuple[Backend, list[str]]:
    """Backend ``name`` on ``pipeline``, or for ``"auto"`` the fastest present that accepts it (triton runs
    LiFT only, for one); returns it with why faster ones were skipped (``"name: reason"`` lines)."""
    options = options or {}
    if name != "auto":
        cls = backend_class(name)
        reason = cls.unavailable_reason(torch.device(device))
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} cannot run on {device}: {reason}")
        check_backend_options(cls, name, options)
        return cls(pipeline, device=device, precision=precision, **options), []
    skipped = []
    for candidate in auto_order(device):
        reason = unavailable_reason(candidate, device)
        if reason is None:
            try:
                return build_backend(pipeline, candidate, device=device, precision=precision, options=options)[0], skipped
            except BackendUnavailable as exc:  # present, but refuses this pipeline or precision
                reason = str(exc)
        skipped.append(f"{candidate}: {reason}")
    raise BackendUnavailable("no backend can run here:\n" + "\n".join(skipped))
