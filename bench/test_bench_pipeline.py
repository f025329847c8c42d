"""Images/s of every available backend (Engine: ViT + LiFT) against the reference, per size and batch.

The reference is the eager PyTorch pipeline (backend ``torch`` at fp32). dino_s8,
random weights (throughput does not depend on them). Each result carries
``images_per_s``, ``gflops`` (per batch, FlopCounterMode) and ``rel_err_vs_eager_fp32`` in its
extra_info; the error is checked against benchlib.PARITY_TOLERANCE after the timing.

    pytest bench/test_bench_pipeline.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from benchlib import DEVICE, ON_GPU, PARITY_TOLERANCE, PIPELINE_CASES, PRECISIONS, device_name, gflops, relative_error, timed
from lift_rt.backends import BACKENDS

ROUNDS, WARMUP = (20, 3) if ON_GPU else (3, 1)


@pytest.mark.parametrize("size,batch", PIPELINE_CASES, ids=[f"{s}px-b{b}" for s, b in PIPELINE_CASES])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_pipeline_throughput(benchmark, engine_for, backend, precision, size, batch):
    engine = engine_for(backend, precision)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    benchmark.group = f"pipeline {size}px batch {batch}"
    benchmark.extra_info.update(
        kind="pipeline", backend=backend, precision=precision, size=size, batch=batch, device=device_name(),
        gflops=gflops(engine.pipeline, batch, size),
    )
    out = benchmark.pedantic(timed(lambda: engine(images)), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert out.shape == engine.pipeline.output_shape(batch, size, size)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean
    rel = relative_error(out, engine_for("torch", "fp32")(images))
    benchmark.extra_info["rel_err_vs_eager_fp32"] = rel
    assert rel <= PARITY_TOLERANCE[(DEVICE.type, precision)], (backend, precision, rel)
