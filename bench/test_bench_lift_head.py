"""The LiFT head alone (image branch + up step + double conv + 1x1 head), dino_s8 geometry.

GPU cases (skipped without CUDA): 224 and 448 px, batch 1 and 32, for eager fp32,
eager bf16, torch.compile bf16 (mode max-autotune, CUDA graphs included) and the
Triton kernels in bf16 in both loop forms ("triton": nested, "tritonflat": flat),
replayed as a CUDA graph as the triton backend does for small batches. Each case
prints and records its byte and FLOP floor on an H100, and its relative error
against eager fp32 (checked after the timing). CPU cases (eager and
torch.compile fp32 at 56 px) keep the file useful on CI.

    pytest bench/test_bench_lift_head.py --benchmark-only -s \
        --benchmark-json=bench/results/lift_head_<device>_<date>.json
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch

from benchlib import relative_error
from lift_rt.backbones import get_spec
from lift_rt.model import IMAGE_CHANNELS, LiFT

GPU = torch.cuda.is_available()
SPEC = get_spec("dino_s8")

# NVIDIA H100 SXM5 (80 GB) datasheet, dense (no sparsity) tensor-core peaks and HBM3 bandwidth:
# https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
H100_PEAK_FLOPS = {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.float32: 494.7e12}  # fp32 convs run as TF32 (cuDNN default)
H100_BYTES_PER_S = 3.35e12


def lift_macs(dim: int, patch: int, height: int, width: int) -> int:
    """Multiply-adds of one LiFT forward on an ``height x width`` image (reference architecture, no folding)."""
    h, w = height // patch, width // patch
    fine, coarse = 4 * h * w, h * w
    cx, cup, half = dim + IMAGE_CHANNELS, (dim + IMAGE_CHANNELS) // 2, dim // 2
    half_res = -(-height // 2) * -(-width // 2)
    quarter_res = -(-height // 4) * -(-width // 4)
    image = half_res * 27 * IMAGE_CHANNELS + quarter_res * 9 * IMAGE_CHANNELS**2 + coarse * 9 * IMAGE_CHANNELS**2
    up = fine * cx * cup  # each fine pixel: one (a, b) slice of the transposed conv
    conv1 = fine * 9 * (cup + IMAGE_CHANNELS) * half
    conv2 = fine * 9 * half * half
    head = fine * half * dim
    return image + up + conv1 + conv2 + head


def lift_floor(dim: int, patch: int, height: int, batch: int, dtype: torch.dtype) -> dict[str, float]:
    """Minimal bytes (image + features + weights + output, each once), FLOPs (2 x MACs), and the H100 time floor."""
    elem = torch.finfo(dtype).bits // 8
    h = height // patch
    params = sum(p.numel() for p in LiFT(dim, patch).parameters())
    nbytes = elem * (batch * 3 * height * height + batch * dim * h * h + params + batch * dim * 4 * h * h)
    flops = 2 * batch * lift_macs(dim, patch, height, height)
    seconds = max(nbytes / H100_BYTES_PER_S, flops / H100_PEAK_FLOPS[dtype])
    return {"bytes": nbytes, "flops": flops, "floor_ms": seconds * 1e3}


def make_case(height: int, batch: int, device: str, dtype: torch.dtype) -> tuple[LiFT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lift = LiFT(SPEC.dim, SPEC.patch_size).eval().to(device, dtype)
    h = height // SPEC.patch_size
    image = torch.randn(batch, 3, height, height, device=device, dtype=dtype)
    feats = torch.randn(batch, h * h, SPEC.dim, device=device, dtype=dtype).transpose(1, 2).reshape(batch, SPEC.dim, h, h)
    return lift, image, feats  # feats: a view of B x T x C tokens, as the backbone gives them


def cuda_graph(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Warm ``fn`` up (autotuning happens here), capture it, return the replay (which returns the graph's output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


# Largest ||variant - eager fp32|| / ||eager fp32|| accepted, by the variant's dtype and device. The oracle runs
# with TF32 off; eager fp32 on a GPU runs its convolutions in TF32 (cuDNN's default), hence 2e-3 there.
PARITY_TOLERANCE = {("cpu", torch.float32): 1e-5, ("cuda", torch.float32): 2e-3,
                    ("cuda", torch.bfloat16): 1e-2, ("cuda", torch.float16): 1e-2}


def relative_error_vs_fp32(lift: LiFT, image: torch.Tensor, feats: torch.Tensor, out: torch.Tensor) -> float:
    """Relative L2 error of ``out`` against eager fp32 (TF32 off) on the same weights and inputs."""
    oracle = copy.deepcopy(lift).float()
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = oracle(image.float(), feats.float())
    return relative_error(out, want)


def runner(variant: str, lift: LiFT, image: torch.Tensor, feats: torch.Tensor) -> Callable[[], object]:
    if variant.startswith("triton"):
        from lift_rt.kernels.fold import fold_lift
        from lift_rt.kernels.lift_head import TritonLiFT

        head = TritonLiFT(fold_lift(lift, image.dtype, image.device))
        return cuda_graph(lambda: head(image, feats))
    if variant.startswith("compile"):
        mode = "max-autotune" if image.is_cuda else None
        compiled = torch.compile(lift, mode=mode, dynamic=False)
        return lambda: compiled(image, feats)
    return lambda: lift(image, feats)


def run_case(benchmark, variant: str, height: int, batch: int, device: str, dtype: torch.dtype, rounds: int) -> None:
    lift, image, feats = make_case(height, batch, device, dtype)
    floor = lift_floor(SPEC.dim, SPEC.patch_size, height, batch, dtype)
    with torch.inference_mode():
        fn = runner(variant, lift, image, feats)
        for _ in range(2):
            fn()  # compilation / autotuning outside the timing
        if device == "cuda":
            import triton.testing

            def timed() -> None:
                fn()
                torch.cuda.synchronize()

            event_ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        else:
            timed, event_ms = fn, None
        benchmark.extra_info.update(floor, kind="lift_head", variant=variant, height=height, batch=batch, dtype=str(dtype), device_ms=event_ms)
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=2, iterations=1)
        rel = relative_error_vs_fp32(lift, image, feats, fn())
    benchmark.extra_info["rel_err_vs_eager_fp32"] = rel
    print(
        f"\n[{variant} {str(dtype)[6:]} {height}px b{batch}] floor {floor['floor_ms']:.4f} ms "
        f"({floor['bytes'] / 1e6:.2f} MB, {floor['flops'] / 1e9:.2f} GFLOP on H100)"
        + (f", CUDA-event median {event_ms:.4f} ms = {event_ms / floor['floor_ms']:.1f}x floor" if event_ms else "")
        + f", relative error vs eager fp32 {rel:.1e}"
    )
    assert rel <= PARITY_TOLERANCE[(device, dtype)], (variant, rel)  # after the timing, so a miss keeps its numbers


GPU_VARIANTS = [("eager_fp32", torch.float32), ("eager_bf16", torch.bfloat16), ("compile_bf16", torch.bfloat16), ("triton_bf16", torch.bfloat16),
                ("tritonflat_bf16", torch.bfloat16)]
# The Triton kernels' loop form per variant (LIFT_TRITON_LOOP, lift_rt.kernels.runtime.flat_loops): "tritonflat" is the
# candidate form, timed beside the default until one of them is dropped.
TRITON_LOOP = {"triton": "nested", "tritonflat": "flat"}


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (the Triton kernels and the targets are GPU-only)")
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("height", [224, 448])
@pytest.mark.parametrize("variant, dtype", GPU_VARIANTS, ids=[v for v, _ in GPU_VARIANTS])
def test_lift_head_gpu(benchmark, monkeypatch, variant, dtype, height, batch):
    variant = variant.split("_")[0]
    if variant in TRITON_LOOP:
        monkeypatch.setenv("LIFT_TRITON_LOOP", TRITON_LOOP[variant])
    run_case(benchmark, variant, height, batch, "cuda", dtype, rounds=50)


@pytest.mark.parametrize("variant", ["eager", "compile"])
def test_lift_head_cpu(benchmark, variant):
    """CPU-sized case: dino_s8 geometry at 56 px (7 x 7 patch grid), batch 1, fp32."""
    run_case(benchmark, variant, 56, 1, "cpu", torch.float32, rounds=10)
