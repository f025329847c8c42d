"""Shared benchmark fixtures: random weights on disk and cached engines (settings: benchlib.py).

Nothing here is autouse: bench files that do not ask for these fixtures are unaffected.
With ``LIFT_BENCH_LOG=path.jsonl`` each finished benchmark is also appended there as one JSON
line (pytest-benchmark's own JSON is written only when the session ends, so a run stopped at a
time limit, as bench/gpu_session.sh's stages can be, would otherwise keep nothing).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from benchlib import BACKBONE, DEVICE, skip_reason

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers: weight_files


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """(backbone .pth, LiFT .safetensors): random dino_s8 weights, seed 0, shared by every bench."""
    from weight_files import random_weight_files

    return random_weight_files(BACKBONE, tmp_path_factory.mktemp("bench-weights"), seed=0)


@pytest.fixture(scope="session")
def engine_for(random_weights):
    """``engine_for(backend, precision)`` -> a cached :class:`lift_rt.Engine`, or skips with the reason."""
    from lift_rt.backends import BackendUnavailable
    from lift_rt.engine import Engine

    backbone_weights, lift = random_weights
    cache: dict[tuple[str, str], object] = {}

    def get(backend: str, precision: str):
        reason = skip_reason(backend, precision)
        if reason is not None:
            pytest.skip(reason)
        key = (backend, precision)
        if key not in cache:
            try:
                cache[key] = Engine(BACKBONE, lift, backend=backend, precision=precision, device=DEVICE, backbone_weights=backbone_weights)
            except BackendUnavailable as exc:
                cache[key] = str(exc)
        if isinstance(cache[key], str):
            pytest.skip(cache[key])
        return cache[key]

    return get


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    path = os.environ.get("LIFT_BENCH_LOG")
    bench = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
    if not path or call.when != "call" or bench is None or getattr(bench, "stats", None) is None:
        return
    stats = bench.stats.stats
    if not stats.data:
        return
    entry = {"name": item.name, "group": bench.group, "passed": outcome.get_result().passed,
             "stats": {"mean": stats.mean, "stddev": stats.stddev, "rounds": stats.rounds},
             "extra_info": dict(bench.extra_info)}
    with open(path, "a") as log:
        log.write(json.dumps(entry, default=str) + "\n")
