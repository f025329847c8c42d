"""PCK, the percentage of correct keypoints, from per-pair keypoint errors.

A transferred keypoint is correct when its distance to the true target keypoint
is strictly below ``alpha * max(h, w)`` of the target box (both in canvas
pixels, as the authors' ``eval_spair.py``). The paper pools keypoints per
category and averages the categories unweighted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01)
AVERAGES: tuple[str, ...] = ("category", "point", "image")


@dataclass(frozen=True)
class PairResult:
    """Per-pair outcome: keypoint errors and the PCK reference length, in canvas pixels."""

    category: str
    errors: np.ndarray  # N, distance predicted -> true target keypoint
    box_length: float  # max(h, w) of the target box
    accepted: np.ndarray  # N bool: False where the mutual check rejected the match


def pck(results: Iterable[PairResult], alphas: Sequence[float] = ALPHAS, average: str = "category") -> dict[float, float]:
    """PCK in percent per alpha: correct when ``error < alpha * box_length`` (strictly, as the authors) and accepted.

    ``average``: "category" (pool keypoints per category, unweighted mean over
    categories; the authors' protocol), "point" (pool all keypoints) or "image"
    (mean over pairs of each pair's PCK). Pairs without keypoints are ignored.
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; choose one of {', '.join(AVERAGES)}")
    results = [r for r in results if len(r.errors)]
    if not results:
        raise ValueError("no keypoints to score")
    out = {}
    for alpha in alphas:
        correct = [((r.errors < alpha * r.box_length) & r.accepted) for r in results]
        if average == "point":
            score = np.concatenate(correct).mean()
        elif average == "image":
            score = np.mean([c.mean() for c in correct])
        else:
            by_category: dict[str, list[np.ndarray]] = defaultdict(list)
            for r, c in zip(results, correct):
                by_category[r.category].append(c)
            score = np.mean([np.concatenate(cs).mean() for cs in by_category.values()])
        out[alpha] = 100.0 * float(score)
    return out
