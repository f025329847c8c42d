"""Shared benchmark fixtures: random weights on disk and cached engines (settings: benchlib.py).

Nothing here is autouse: bench files that do not ask for these fixtures are unaffected.
"""

from __future__ import annotations

import pytest

from benchlib import BACKBONE, DEVICE, skip_reason


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """(backbone .pth, LiFT .safetensors): random dino_s8 weights, seed 0, shared by every bench."""
    from lift_rt.eval.pck import random_weight_files

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
