"""Execution backends: one small interface, several implementations.

A backend is built from a :class:`~lift_rt.pipeline.LiftPipeline` (the
reference), a device and a precision, and is called on ``B x 3 x H x W``
float32 images in [0, 1] already on that device. It returns the lifted
features ``B x C x 2^k h x 2^k w`` in the precision's dtype.

Backends that need optional software (onnxruntime, TensorRT, Triton) live
beside that software (``lift_rt.export``, ``lift_rt.kernels``) and are
imported only when asked for.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar

import torch

from lift_rt.pipeline import LiftPipeline
from lift_rt.preprocess import precision_dtype


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (missing package or device); the message says why."""


class Backend:
    """Base class: subclasses set ``name`` and implement ``run``."""

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


class TorchBackend(Backend):
    """Eager PyTorch: the reference pipeline itself, cast to the precision."""

    name = "torch"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32") -> None:
        super().__init__(pipeline, device=device, precision=precision)
        self.module = pipeline.to(self.device, self.dtype).eval()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.dtype))


class CompileBackend(TorchBackend):
    """``torch.compile`` of the reference pipeline (compiled on first call per shape)."""

    name = "compile"

    def __init__(self, pipeline: LiftPipeline, *, device: torch.device, precision: str = "fp32", mode: str | None = None) -> None:
        super().__init__(pipeline, device=device, precision=precision)
        self.compiled = torch.compile(self.module, mode=mode or ("max-autotune-no-cudagraphs" if self.device.type == "cuda" else None), dynamic=False)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        return self.compiled(images.to(self.dtype))


# name -> "module:Class"; optional backends are imported on demand.
BACKENDS: dict[str, str] = {
    "torch": "lift_rt.backends:TorchBackend",
    "compile": "lift_rt.backends:CompileBackend",
    "onnxruntime": "lift_rt.export.ort_backend:OnnxRuntimeBackend",
    "tensorrt": "lift_rt.export.trt_backend:TensorRTBackend",
    "triton": "lift_rt.kernels.backend:TritonBackend",
}

# Fastest first. On a GPU: the order. On a CPU: measured by bench/test_bench_backends_cpu.py
# (dino_s8, 224, batch 1, fp32, quiet 2-core Xeon with AVX-512, several runs): onnxruntime 0.92-1.01x
# eager torch, torch.compile 1.00-1.14x (all near the cores' fp32 peak), so eager torch, which needs
# no export and no compilation (compile's first call per shape takes about a minute). Under CPU
# contention onnxruntime was 1.4-3.3x eager: pick it explicitly on a busy machine. On a CPU with
# AMX, precision="bf16" is the big lever (2.3-3.1x fp32, same bench).
AUTO_ORDER_GPU: tuple[str, ...] = ("tensorrt", "triton", "compile", "onnxruntime", "torch")
AUTO_ORDER_CPU: tuple[str, ...] = ("torch", "onnxruntime")


def backend_class(name: str) -> type[Backend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} is not available: {exc}") from exc
    return getattr(module, class_name)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    try:
        cls = backend_class(name)
    except BackendUnavailable as exc:
        return str(exc)
    return cls.unavailable_reason(torch.device(device))


def auto_order(device: torch.device) -> tuple[str, ...]:
    """The backends ``auto`` tries on ``device``, fastest first."""
    return AUTO_ORDER_GPU if torch.device(device).type == "cuda" else AUTO_ORDER_CPU


def choose_backend(device: torch.device) -> tuple[str, list[str]]:
    """The fastest backend present for ``device``, and why the faster ones were skipped."""
    skipped = []
    for name in auto_order(device):
        reason = unavailable_reason(name, device)
        if reason is None:
            return name, skipped
        skipped.append(f"{name}: {reason}")
    raise BackendUnavailable("no backend can run here:\n" + "\n".join(skipped))


def check_backend_options(cls: type[Backend], name: str, options: dict[str, Any]) -> None:
    """TypeError naming the options backend ``name`` does not take, and the ones it does."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
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
    LiFT only, say); returns it with why faster ones were skipped (``"name: reason"`` lines)."""
    options = options or {}
    if name != "auto":
        cls = backend_class(name)
        reason = cls.unavailable_reason(device)
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
            except BackendUnavailable as exc:
                reason = str(exc)
        skipped.append(f"{candidate}: {reason}")
    raise BackendUnavailable("no backend can run here:\n" + "\n".join(skipped))
