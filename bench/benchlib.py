"""Shared benchmark settings and helpers (fixtures are in conftest.py).

CPU runs use CPU-sized cases (so ``pytest bench/ --benchmark-only`` fits a
2-core machine); a CUDA device gets the full sizes. A benchmark's own JSON
record goes to bench/results/ only when ``LIFT_BENCH_RECORD=1`` is set
(:func:`write_record`); otherwise it is printed.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
BACKBONE = "dino_s8"
# (resolution, batch) cases and precisions of the pipeline throughput benchmark.
PIPELINE_CASES = [(r, b) for r in (56, 112, 224, 448) for b in (1, 8)] if ON_GPU else [(56, 1), (56, 8), (112, 1), (112, 8), (224, 1)]
PRECISIONS = ("fp32", "fp16", "bf16") if ON_GPU else ("fp32",)
PCK_RESOLUTIONS = (56, 112, 224, 448) if ON_GPU else (56, 112)
PCK_PAIRS_PER_CATEGORY = 20 if ON_GPU else 2
PARITY_RESOLUTION = 224 if ON_GPU else 112
PCK_PARITY_POINTS = {"fp32": 0.1, "fp16": 0.5, "bf16": 0.5}  # largest PCK difference, in points
# torch.compile recompiles per shape: ~80 s each on a 2-core CPU. bench/test_bench_backends_cpu.py
# times it at 224 px; set LIFT_BENCH_COMPILE_CPU=1 to include it in every CPU case here too.
COMPILE_ON_CPU = bool(os.environ.get("LIFT_BENCH_COMPILE_CPU"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = Path(ROOT) / "bench" / "results"


def write_record(name: str, record: dict) -> Path | None:
    """Write ``record`` as ``bench/results/<name>`` when ``LIFT_BENCH_RECORD=1``, so that a plain benchmark run
    leaves the work tree alone; returns the path, or None (the record printed) when not asked."""
    text = json.dumps(record, indent=1) + "\n"
    if os.environ.get("LIFT_BENCH_RECORD") != "1":
        print(f"\n{text}(not written: set LIFT_BENCH_RECORD=1 to keep it as bench/results/{name})")
        return None
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    return path


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files differ from it."""
    try:
        run = dict(cwd=ROOT, capture_output=True, text=True, check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """CPU model, core count and torch threads."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def device_name() -> str:
    """The device the benchmarks run on: the GPU's name, else :func:`cpu_name`."""
    return torch.cuda.get_device_name(DEVICE) if ON_GPU else cpu_name()


def skip_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` at ``precision`` is not benchmarked here, or None."""
    from lift_rt.backends import unavailable_reason

    reason = unavailable_reason(backend, DEVICE)
    if reason is not None:
        return f"{backend}: {reason}"
    if backend == "compile" and not ON_GPU and not COMPILE_ON_CPU:
        return "compile on CPU: ~80 s per shape; timed at 224 px by test_bench_backends_cpu.py (LIFT_BENCH_COMPILE_CPU=1 runs it here)"
    return None


@lru_cache(maxsize=None)
def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to("meta")


def gflops(module: torch.nn.Module, batch: int, size: int) -> float:
    """FLOPs (2 per multiply-add, torch.utils.flop_counter) of ``module`` on ``batch x 3 x size x size``, in G."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta = _meta_copy(module)
        dtype = next(meta.parameters()).dtype
        meta(torch.empty(batch, 3, size, size, device="meta", dtype=dtype))
    return counter.get_total_flops() / 1e9


def timed(fn):
    """``fn`` made synchronous on a GPU, so that the benchmark times the device work."""
    if not ON_GPU:
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run

# Largest ||output - eager fp32|| / ||eager fp32|| a backend's pipeline output may have, by precision and device.
# On a GPU, fp32 backends may run convolutions and matmuls in TF32 (cuDNN's and TensorRT's defaults).
PARITY_TOLERANCE = {("cpu", "fp32"): 1e-5, ("cpu", "bf16"): 1e-2, ("cpu", "fp16"): 1e-2,
                    ("cuda", "fp32"): 5e-3, ("cuda", "bf16"): 1e-2, ("cuda", "fp16"): 1e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in fp32; asserts the shapes agree and ``got`` is finite."""
    got, want = got.float(), want.float()
    assert got.shape == want.shape and torch.isfinite(got).all()
    return ((got - want).norm() / want.norm()).item()
