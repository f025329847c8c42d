"""Dense PyTorch reference of :mod:`lift_rt.eval.davis_propagation` (tests and benchmarks only).

It follows the authors' formulation literally: the full affinity exp(cos / temperature) between
the frame's cells and every context cell (T x N x N floats), zeroed outside each cell's square
neighbourhood, all but each cell's k largest entries zeroed, columns normalised to sum to one, and
the labels multiplied through. Memory grows as T N^2: small grids only. Entries tied with a cell's
k-th largest are all kept here, as in the authors' thresholding, where the matcher keeps exactly k;
with real-valued features such ties do not occur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lift_rt.eval.davis_propagation import PropagationSettings


def neighbourhood_mask(h: int, w: int, radius: int, device: torch.device | str = "cpu") -> Tensor:
    """(h w) x (h w) bool: cell a may take labels from cell b when both offsets are within ``radius``."""
    i, j = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    i, j = i.flatten(), j.flatten()
    return ((i[:, None] - i[None, :]).abs() <= radius) & ((j[:, None] - j[None, :]).abs() <= radius)


def propagate_dense(query: Tensor, context_feats: list[Tensor], context_labels: list[Tensor],
                    settings: PropagationSettings = PropagationSettings()) -> Tensor:
    """``query`` D x h x w, T context frames D x h x w with labels C x h x w -> soft labels C x h x w."""
    d, h, w = query.shape
    q = F.normalize(query.float().reshape(d, -1), dim=0)  # D x N
    keys = F.normalize(torch.stack(context_feats).float().reshape(len(context_feats), d, -1), dim=1)  # T x D x N
    affinity = torch.exp(torch.einsum("dn,tdm->tmn", q, keys) / settings.temperature)  # T x N(context) x N(query)
    affinity = affinity * neighbourhood_mask(h, w, settings.radius, query.device).t().float()
    affinity = affinity.reshape(-1, h * w)  # (T N) x N: one column per query cell
    kth = affinity.topk(settings.k, dim=0).values.min(dim=0).values
    affinity = torch.where(affinity < kth, torch.zeros_like(affinity), affinity)
    affinity = affinity / affinity.sum(dim=0, keepdim=True)
    labels = torch.stack(context_labels).float()  # T x C x h x w
    labels = labels.reshape(labels.shape[0], labels.shape[1], -1).permute(1, 0, 2).reshape(labels.shape[1], -1)
    return (labels @ affinity).reshape(-1, h, w)


class DenseLabelPropagator:
    """:class:`lift_rt.eval.davis_propagation.LabelPropagator` on :func:`propagate_dense`."""

    def __init__(self, first_feats: Tensor, first_labels: Tensor, settings: PropagationSettings = PropagationSettings()) -> None:
        self.settings = settings
        self.first = (first_feats, first_labels.float())
        self.recent: list[tuple[Tensor, Tensor]] = []

    def step(self, feats: Tensor) -> Tensor:
        context = [self.first, *self.recent]
        out = propagate_dense(feats, [c[0] for c in context], [c[1] for c in context], self.settings)
        if self.settings.context:
            self.recent = [*self.recent, (feats, out)][-self.settings.context:]
        return out
