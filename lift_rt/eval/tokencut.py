"""TokenCut (Wang et al., 2022): one salient object from a feature map by a normalised cut.

The protocol of the LiFT authors' object-discovery evaluation: features
L2-normalised over channels, a graph on their cosine affinity (binary: an edge
of weight 1 where the cosine exceeds ``tau``, ``eps`` elsewhere), the second
smallest eigenvector of the generalised problem ``(D - A) x = lambda D x``,
split at its mean; the side holding the seed (the cell of largest ``|x|``) is
the foreground, and the box bounds the seed's 4-connected component, scaled
from feature cells to image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.linalg import eigh

TAU_VOC = 0.2
TAU_COCO = 0.3
EPS = 1e-5


@dataclass(frozen=True)
class Discovery:
    """TokenCut's result for one image.

    ``box``: (x1, y1, x2, y2) in image pixels (x2, y2 exclusive); ``mask``:
    ``h x w`` bool, the seed's connected component on the feature grid;
    ``seed``: (row, col) of the seed cell; ``eigenvector``: ``h x w``, signed
    so that the foreground side is positive.
    """

    box: tuple[float, float, float, float]
    mask: np.ndarray
    seed: tuple[int, int]
    eigenvector: np.ndarray


def affinity(feats: torch.Tensor, tau: float, eps: float = EPS, *, binary: bool = True) -> np.ndarray:
    """``C x h x w`` features -> ``N x N`` graph weights, N = h*w (cells row-major).

    Cosine similarity of the channel-normalised features, compared with ``tau``
    in fp32 as the authors; binary (float64): 1 where cos > tau, else ``eps``;
    weighted (their ablation, float32 as theirs): the cosine where cos >= tau, else ``eps``.
    """
    if feats.ndim != 3:
        raise ValueError(f"features must be C x h x w, got shape {tuple(feats.shape)}")
    if not torch.isfinite(feats).all():
        raise ValueError("features hold NaN or infinite values")
    tokens = F.normalize(feats.detach().float().flatten(1).t(), dim=1)  # N x C
    cos = (tokens @ tokens.t()).cpu().numpy()
    if binary:
        return np.where(cos > np.float32(tau), 1.0, eps)
    return np.where(cos < np.float32(tau), np.float32(eps), cos)


def second_eigenvector(weights: np.ndarray) -> np.ndarray:
    """Second smallest generalised eigenvector of ``(D - A) x = lambda D x``, ``N`` (the dtype of ``weights``).

    ``D`` is the diagonal degree matrix of ``A``; dense, as the authors (N >= 3).
    """
    n = weights.shape[0]
    if n < 3:
        raise ValueError(f"TokenCut needs a feature grid of at least 3 cells, got {n}; use a larger resolution")
    degree = np.diag(weights.sum(axis=1))
    _, vectors = eigh(degree - weights, degree, subset_by_index=[1, 2])
    return vectors[:, 0]


def tokencut(feats: torch.Tensor, image_size: tuple[int, int], tau: float = TAU_VOC, eps: float = EPS, *,
             binary: bool = True) -> Discovery:
    """One object box from ``C x h x w`` features of an image of ``image_size`` = (H, W) pixels.

    A feature cell spans ``H / h`` x ``W / w`` pixels; the box is clipped to the image.
    """
    _, h, w = feats.shape
    vector = second_eigenvector(affinity(feats, tau, eps, binary=binary))
    foreground = vector > vector.mean()
    seed = int(np.argmax(np.abs(vector)))
    if not foreground[seed]:
        vector, foreground = -vector, ~foreground
    components, _ = ndimage.label(foreground.reshape(h, w))
    seed_rc = np.unravel_index(seed, (h, w))
    rows, cols = np.nonzero(components == components[seed_rc])
    height, width = image_size
    scale_y, scale_x = height / h, width / w
    box = (scale_x * cols.min(), scale_y * rows.min(),
           min(scale_x * (cols.max() + 1), width), min(scale_y * (rows.max() + 1), height))
    return Discovery(tuple(float(v) for v in box), components == components[seed_rc],
                     (int(seed_rc[0]), int(seed_rc[1])), vector.reshape(h, w))
