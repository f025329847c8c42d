"""PCK parity: the runtime (an Engine backend + the C++ matcher) against the pure-Python reference.

Reference: the eager fp32 pipeline (:func:`lift_rt.engine.build_pipeline`) and
PyTorch matching (:mod:`lift_rt.matching_reference`). Both score the same pairs
with the same protocol, so any difference comes from the backend or the matcher.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from lift_rt.engine import Engine, build_pipeline
from lift_rt.eval.pairs import KeypointPair
from lift_rt.eval.pck import ALPHAS, pck
from lift_rt.eval.transfer import evaluate_pairs, get_matcher


def parity(
    pairs: Sequence[KeypointPair],
    size: int,
    backbone: str,
    *,
    lift: str | os.PathLike,
    backbone_weights: str | os.PathLike,
    backend: str,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    alphas: Sequence[float] = ALPHAS,
    **backend_options,
) -> tuple[dict[float, float], dict[float, float]]:
    """PCK of the pure-Python reference and of the runtime on the same pairs -> (reference, runtime)."""
    expected = reference_pck(pairs, size, backbone, lift=lift, backbone_weights=backbone_weights, device=device, alphas=alphas)
    got = runtime_pck(pairs, size, backbone, lift=lift, backbone_weights=backbone_weights, backend=backend,
                      precision=precision, device=device, alphas=alphas, **backend_options)
    return expected, got


def reference_pck(
    pairs: Sequence[KeypointPair], size: int, backbone: str, *, lift: str | os.PathLike, backbone_weights: str | os.PathLike,
    device: str | torch.device = "cpu", alphas: Sequence[float] = ALPHAS,
) -> dict[float, float]:
    """PCK of the pure-Python reference: eager fp32 pipeline + PyTorch matching (``get_matcher("torch")``)."""
    reference = build_pipeline(backbone, lift, backbone_weights=backbone_weights).to(device)
    return pck(evaluate_pairs(pairs, reference, size, matcher=get_matcher("torch"), device=device), alphas)


def runtime_pck(
    pairs: Sequence[KeypointPair], size: int, backbone: str, *, lift: str | os.PathLike, backbone_weights: str | os.PathLike,
    backend: str, precision: str = "fp32", device: str | torch.device = "cpu", alphas: Sequence[float] = ALPHAS, **backend_options,
) -> dict[float, float]:
    """PCK of the runtime: :class:`lift_rt.Engine` on ``backend`` at ``precision`` + the C++ matcher."""
    engine = Engine(backbone, lift, backend=backend, precision=precision, device=device, backbone_weights=backbone_weights, **backend_options)
    return pck(evaluate_pairs(pairs, engine, size, matcher=get_matcher("cpp"), device=device), alphas)
