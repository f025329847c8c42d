"""PCK on synthetic warped pairs per upsampler and resolution (with FLOPs), and PCK parity per backend.

Random dino_s8 / LiFT weights (no pretrained weights in CI): the PCK values
show the harness working and the parity holding, not the paper's numbers.
Each PCK result carries ``pck`` (alpha -> points) and ``gflops`` per image in
its extra_info: PCK against GFLOPs is the supplemental's Fig. 1.

    pytest bench/test_bench_pck.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchlib import (
    BACKBONE, DEVICE, PARITY_RESOLUTION, PCK_PAIRS_PER_CATEGORY, PCK_PARITY_POINTS, PCK_RESOLUTIONS, PRECISIONS,
    device_name, gflops, skip_reason,
)
from lift_rt.backends import BACKENDS
from lift_rt.engine import build_pipeline
from lift_rt.eval.parity import reference_pck, runtime_pck
from lift_rt.eval.pck import ALPHAS, pck
from lift_rt.eval.transfer import evaluate_pairs
from lift_rt.eval.synthetic import PHOTOS, synthetic_pairs

ROWS = ("none", "bilinear", "2x input", "lift")


class TwiceInput(nn.Module):
    """The backbone alone on the image bilinearly upsampled 2x (the costly alternative to LiFT)."""

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipeline(F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False))


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(PCK_PAIRS_PER_CATEGORY * len(PHOTOS), seed=0)


@pytest.fixture(scope="module")
def row_model(random_weights):
    backbone_weights, lift = random_weights
    cache: dict[str, nn.Module] = {}

    def get(row: str) -> nn.Module:
        if row not in cache:
            upsampler = "none" if row == "2x input" else row
            model = build_pipeline(BACKBONE, lift if row == "lift" else None, upsampler=upsampler, backbone_weights=backbone_weights)
            cache[row] = (TwiceInput(model) if row == "2x input" else model).to(DEVICE).eval()
        return cache[row]

    return get


@pytest.mark.parametrize("size", PCK_RESOLUTIONS)
@pytest.mark.parametrize("row", ROWS)
def test_pck_synthetic(benchmark, pairs, row_model, row, size):
    model = row_model(row)
    benchmark.group = f"pck synthetic {size}px"
    results = benchmark.pedantic(lambda: evaluate_pairs(pairs, model, size, matcher="auto", device=DEVICE), rounds=1, iterations=1)
    scores = pck(results, ALPHAS)
    benchmark.extra_info.update(
        kind="pck", upsampler=row, size=size, pairs=len(pairs), keypoints=int(sum(len(r.errors) for r in results)),
        pck={str(a): v for a, v in scores.items()}, gflops=gflops(model, 1, size), device=device_name(), weights="random",
    )
    assert all(0.0 <= v <= 100.0 for v in scores.values())


@pytest.fixture(scope="module")
def reference(pairs, random_weights):
    """PCK of the pure-Python reference (eager fp32 + PyTorch matching), computed once."""
    backbone_weights, lift = random_weights
    return reference_pck(pairs, PARITY_RESOLUTION, BACKBONE, lift=lift, backbone_weights=backbone_weights, device=DEVICE)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_pck_parity(benchmark, pairs, random_weights, reference, backend, precision):
    reason = skip_reason(backend, precision)
    if reason is not None:
        pytest.skip(reason)
    backbone_weights, lift = random_weights
    benchmark.group = f"pck parity {PARITY_RESOLUTION}px"
    got = benchmark.pedantic(
        lambda: runtime_pck(pairs, PARITY_RESOLUTION, BACKBONE, lift=lift, backbone_weights=backbone_weights,
                            backend=backend, precision=precision, device=DEVICE),
        rounds=1, iterations=1,
    )
    diff = max(abs(reference[a] - got[a]) for a in reference)
    benchmark.extra_info.update(
        kind="parity", backend=backend, precision=precision, size=PARITY_RESOLUTION, pairs=len(pairs), device=device_name(),
        reference={str(a): v for a, v in reference.items()}, runtime={str(a): v for a, v in got.items()}, max_diff=diff,
    )
    assert diff <= PCK_PARITY_POINTS[precision], (reference, got)
