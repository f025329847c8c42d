"""Engine backends beyond eager torch: onnxruntime, TensorRT, torch.compile, and the ``auto`` choice."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lift_rt import backends
from lift_rt.backends import (
    AUTO_ORDER_CPU, AUTO_ORDER_GPU, Backend, BackendUnavailable, CompileBackend, TorchBackend, auto_order, build_backend,
    unavailable_reason,
)
from lift_rt.engine import Engine, build_pipeline
from lift_rt.preprocess import precision_dtype

CPU = torch.device("cpu")


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """Shared with tests/test_export.py: same seed, same weights hash, so its graphs are reused."""
    return tmp_path_factory.getbasetemp() / "lift_rt_onnx_cache"


# Relative to the output's scale. fp32: measured ~9e-7 (same kernels, reassociated sums); fp16: ~7e-4.
@pytest.mark.parametrize("layer,precision,tolerance", [(None, "fp32", 1e-5), (3, "fp16", 1e-2)])
def test_onnxruntime_backend_matches_torch(onnx_cache, layer, precision, tolerance):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)  # the weights of tests/test_export.py's pipelines: their graphs are in onnx_cache
    engine = Engine("dino_s16", random_init=True, layer=layer, backend="onnxruntime", precision=precision, device="cpu",
                    cache_dir=onnx_cache)
    assert engine.backend_name == "onnxruntime"
    images = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    out = engine(images)
    with torch.inference_mode():
        reference = engine.pipeline(images)
    assert isinstance(out, torch.Tensor) and out.device == CPU and out.dtype == engine.backend.dtype
    assert out.shape == (3, 384, 14, 14)
    assert relative_error(out, reference) <= tolerance
    with pytest.raises(ValueError, match="multiple of 16"):
        engine(torch.rand(1, 3, 100, 112))


def test_onnxruntime_backend_keeps_one_graph_per_resolution(tmp_path):
    """Each input size gets its own graph and session; going back to a size reuses its session."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    engine = Engine("dino_s16", random_init=True, layer=0, backend="onnxruntime", device="cpu", cache_dir=tmp_path)
    generator = torch.Generator().manual_seed(3)
    for height, width in [(64, 64), (48, 96), (64, 64)]:
        images = torch.rand(2, 3, height, width, generator=generator)
        out = engine(images)
        with torch.inference_mode():
            reference = engine.pipeline(images)
        assert out.shape == (2, 384, height // 8, width // 8)
        assert relative_error(out, reference) <= 1e-5
    assert sorted(engine.backend.artifacts) == [(48, 96), (64, 64)]
    assert len(list(tmp_path.rglob("*.onnx"))) == 2


def test_onnxruntime_backend_refuses_bf16():
    pytest.importorskip("onnxruntime")
    from lift_rt.backends import OnnxRuntimeBackend

    pipeline = build_pipeline("dino_s16", random_init=True, layer=0)
    with pytest.raises(BackendUnavailable, match="not bf16"):
        OnnxRuntimeBackend(pipeline, device=CPU, precision="bf16")


@pytest.mark.parametrize("threads", [-1, 1.5, "2", True])
def test_onnxruntime_backend_refuses_bad_thread_counts(threads, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        Engine("dino_s16", random_init=True, layer=0, backend="onnxruntime", device="cpu", cache_dir=tmp_path, threads=threads)
    assert not any(tmp_path.iterdir())  # refused before any export


def test_onnxruntime_cuda_needs_the_cuda_provider():
    ort = pytest.importorskip("onnxruntime")
    from lift_rt.backends import OnnxRuntimeBackend

    reason = OnnxRuntimeBackend.unavailable_reason(torch.device("cuda"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert reason is None
    else:
        assert "onnxruntime-gpu" in reason
    assert OnnxRuntimeBackend.unavailable_reason(CPU) is None


def test_onnxruntime_cuda_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a CUDA device and onnxruntime-gpu")
    torch.manual_seed(0)
    engine = Engine("dino_s16", random_init=True, backend="onnxruntime", device="cuda", cache_dir=tmp_path, layer=3)
    images = torch.rand(2, 3, 112, 112, device="cuda")
    out = engine(images)
    with torch.inference_mode():
        reference = engine.pipeline.cuda()(images)
    assert out.device.type == "cuda" and relative_error(out, reference) <= 1e-3  # cuDNN may use TF32


def test_tensorrt_backend_says_what_is_missing():
    from lift_rt.backends import TensorRTBackend
    from lift_rt.export.trt_engine import tensorrt_unavailable_reason

    reason = TensorRTBackend.unavailable_reason(torch.device("cuda"))
    assert reason == tensorrt_unavailable_reason("cuda")
    assert TensorRTBackend.unavailable_reason(CPU)  # never on a CPU
    if reason is not None:
        assert "tensorrt" in reason.lower() or "CUDA" in reason
        torch.manual_seed(0)
        with pytest.raises(BackendUnavailable, match="cannot run"):
            Engine("dino_s16", random_init=True, layer=0, backend="tensorrt", device="cpu")


def test_tensorrt_backend_matches_torch(tmp_path):
    from lift_rt.export.trt_engine import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason("cuda")
    if reason is not None:
        print(f"TensorRT test skipped: {reason}")
        pytest.skip(reason)
    torch.manual_seed(0)
    for precision, tolerance in (("fp32", 5e-3), ("fp16", 1e-2)):
        engine = Engine("dino_s16", random_init=True, backend="tensorrt", precision=precision, device="cuda",
                        cache_dir=tmp_path, max_batch=4)
        images = torch.rand(5, 3, 112, 112, device="cuda")  # 5 > max_batch: runs in chunks
        out = engine(images)
        with torch.inference_mode():
            reference = engine.pipeline.cuda().float()(images)
        assert out.dtype == engine.backend.dtype and relative_error(out, reference) <= tolerance


# fp32: measured ~1e-6 of the output's scale. bf16 (the CPU's AMX lever): measured ~6e-3, as eager bf16.
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_compile_backend_matches_torch(precision, tolerance):
    """torch.compile against the eager fp32 pipeline (the backends cast their pipeline in place: a copy each)."""
    torch.manual_seed(0)
    pipeline = build_pipeline("dino_s16", random_init=True, layer=0)  # one block: compiles in seconds
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    reference = TorchBackend(copy.deepcopy(pipeline), device=CPU)(images)
    out = CompileBackend(copy.deepcopy(pipeline), device=CPU, precision=precision)(images)
    assert out.dtype == precision_dtype(precision) and torch.isfinite(out).all()
    scale = reference.abs().max().item()
    torch.testing.assert_close(out.float(), reference, rtol=tolerance, atol=tolerance * scale)


def fake_backend(backend_name: str, present: set[str]) -> type[Backend]:
    """A backend class that runs nothing and is present when its name is in ``present``."""

    class Fake(Backend):
        name = backend_name

        @classmethod
        def unavailable_reason(cls, device):
            return None if backend_name in present else f"{backend_name} missing"

    return Fake


def test_auto_takes_the_first_present_backend_in_order(monkeypatch):
    present = {"compile", "onnxruntime", "torch"}
    monkeypatch.setattr(backends, "BACKENDS", {name: fake_backend(name, present) for name in backends.BACKENDS})
    backend, skipped = build_backend(None, "auto", device=torch.device("cuda"))
    assert AUTO_ORDER_GPU[:3] == ("tensorrt", "triton", "compile")
    assert backend.name == "compile" and skipped == ["tensorrt: tensorrt missing", "triton: triton missing"]
    assert build_backend(None, "auto", device=CPU)[0].name == next(n for n in AUTO_ORDER_CPU if n in present)
    present.clear()
    with pytest.raises(BackendUnavailable, match="no backend can run here"):
        build_backend(None, "auto", device=CPU)


def first_present(device: torch.device) -> str:
    return next(name for name in auto_order(device) if unavailable_reason(name, device) is None)


def test_auto_on_cpu_is_the_measured_best():
    # bench/test_bench_backends_cpu.py on a quiet CPU (dino_s8, 224, batch 1): eager torch is level with
    # or ahead of onnxruntime and needs no export; compile is never chosen (a minute per new shape).
    assert AUTO_ORDER_CPU[0] == "torch" and "compile" not in AUTO_ORDER_CPU
    torch.manual_seed(0)
    engine = Engine("dino_s16", random_init=True, layer=0, backend="auto", device="cpu")
    assert engine.backend_name == first_present(CPU)
    assert engine.backend_name in repr(engine)
