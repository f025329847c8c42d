"""DAVIS region (J) and boundary (F) measures, as the DAVIS-2017 evaluation computes them.

J is the intersection over union of a predicted and a ground-truth object mask (1 when both are
empty). F is the F-measure of boundary precision and recall: boundaries are the one-pixel maps of
:func:`boundary_map` (each pixel that differs from its right, lower or lower-right neighbour, the
contour shifted half a pixel towards the origin, as Martin et al.'s seg2bmap), and a boundary pixel
counts as matched when the other boundary lies within ``ceil(0.008 x image diagonal)`` pixels
(dilation by a disk of that radius). An empty prediction of a present object scores F = 0, a
prediction of an absent one F = 0, both empty F = 1.

Per object, a sequence's score is the mean over its frames except the first and the last; the
data set's J (F) is the mean over all objects of all sequences, and J&F their average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.morphology import disk

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J: |gt & pred| / |gt | pred| for two H x W bool masks; 1 when both are empty."""
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in size: ground truth {gt.shape}, prediction {pred.shape}")
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """H x W bool -> H x W bool boundary: pixels unlike their right, lower or lower-right neighbour.

    The last row compares with the right neighbour only, the last column with the lower one, and
    the bottom-right pixel is never a boundary (the image border itself is not a boundary).
    """
    mask = mask.astype(bool)
    right = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below = np.zeros_like(mask)
    below[:-1] = mask[1:]
    diagonal = np.zeros_like(mask)
    diagonal[:-1, :-1] = mask[1:, 1:]
    edges = (mask != right) | (mask != below) | (mask != diagonal)
    edges[-1] = mask[-1] != right[-1]
    edges[:, -1] = mask[:, -1] != below[:, -1]
    edges[-1, -1] = False
    return edges


def boundary_radius(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching distance in pixels: ``tolerance`` of the diagonal, rounded up (a tolerance >= 1 is pixels)."""
    return int(tolerance) if tolerance >= 1 else math.ceil(tolerance * math.hypot(*shape))


def boundary_measure(gt: np.ndarray, pred: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two H x W bool masks (see the module docstring)."""
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in size: ground truth {gt.shape}, prediction {pred.shape}")
    gt_edges, pred_edges = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = np.count_nonzero(gt_edges), np.count_nonzero(pred_edges)
    if n_gt == 0 or n_pred == 0:
        return 1.0 if n_gt == n_pred else 0.0
    structure = disk(boundary_radius(gt.shape, tolerance)).astype(bool)
    precision = np.count_nonzero(pred_edges & binary_dilation(gt_edges, structure)) / n_pred
    recall = np.count_nonzero(gt_edges & binary_dilation(pred_edges, structure)) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class SequenceScores:
    """Per-object, per-scored-frame J and F of one sequence (objects 1..n)."""

    name: str
    objects: int
    j: list[list[float]] = field(default_factory=list)  # [object][frame]
    f: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.j = [[] for _ in range(self.objects)]
        self.f = [[] for _ in range(self.objects)]

    def add_frame(self, gt_labels: np.ndarray, pred_labels: np.ndarray) -> None:
        """Score one frame: H x W object ids of the ground truth and of the prediction."""
        for obj in range(1, self.objects + 1):
            gt, pred = gt_labels == obj, pred_labels == obj
            self.j[obj - 1].append(region_similarity(gt, pred))
            self.f[obj - 1].append(boundary_measure(gt, pred))

    def per_object(self) -> dict[str, dict[str, float]]:
        """``{"<seq>_<id>": {"J": mean, "F": mean}}`` over the scored frames."""
        return {f"{self.name}_{obj + 1}": {"J": float(np.mean(self.j[obj])), "F": float(np.mean(self.f[obj]))}
                for obj in range(self.objects)}


def summarise(sequences: list[SequenceScores]) -> dict[str, float]:
    """Data-set J, F and J&F means over all objects of all sequences."""
    objects = [scores for seq in sequences for scores in seq.per_object().values()]
    if not objects:
        raise ValueError("no scored object: nothing to summarise")
    j = float(np.mean([o["J"] for o in objects]))
    f = float(np.mean([o["F"] for o in objects]))
    return {"J": j, "F": f, "J&F": (j + f) / 2}
