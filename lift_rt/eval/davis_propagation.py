"""Label propagation for semi-supervised video object segmentation (DINO's protocol, as the LiFT
authors ran it on DAVIS-2017).

Each new frame's feature cells look up their ``k`` most similar cells (cosine) among the context
frames (the first frame and the last ``context`` propagated ones), restricted to a square
neighbourhood of ``radius`` cells around their own position; the weights are a softmax of the
similarities divided by ``temperature`` over those ``k`` cells, and the frame's soft labels are the
weighted mean of the context cells' labels.

The top-k goes through :func:`lift_rt.matching.topk` without the (cells x context cells) affinity
matrix: each context frame is laid out once in a padded, row-major buffer in which the union of
the windows of a tile of query cells is one strided slice (:class:`PaddedFrame`); the matcher
returns each cell's best candidates in that slice, those outside the cell's own window are
dropped, and the rare cell whose top-k the candidates cannot settle is recomputed exactly
(:func:`propagate_labels`). The result equals the dense formulation; its PyTorch reference is
:mod:`lift_rt.eval.davis_reference`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lift_rt.matching import MAX_K, topk


@dataclass(frozen=True)
class PropagationSettings:
    """The authors' defaults: 7 previous frames, 12-cell neighbourhood, top-5, temperature 0.1."""

    context: int = 7
    radius: int = 12
    k: int = 5
    temperature: float = 0.1
    tile: int = 8  # query cells per tile side in the matcher's search (speed only, not the result)
    search: int = MAX_K  # candidates the matcher returns per cell and frame (speed only, not the result)

    def __post_init__(self) -> None:
        if self.context < 0 or self.radius < 0 or not 1 <= self.k <= MAX_K or not self.temperature > 0 or self.tile < 1 \
                or not self.k <= self.search <= MAX_K:
            raise ValueError(f"propagation settings out of range: {self}")


class PaddedFrame:
    """A context frame's features (and labels) in the layout :func:`neighbourhood_topk` slices.

    ``feats`` D x h x w -> an R x row x D buffer, NaN outside the frame: r rows above and r columns
    to the left of it, ``tile - 1`` spare columns to its right (row = w + r + tile - 1) and enough
    rows below for the last tile row; r is ``radius``, capped at the grid (a larger window is the
    whole grid). The union of the windows of the ``tile x tile`` query cells at tile (ti, tj) is
    then one strided slice: ``span`` buffer cells from ``ti * tile * row + tj * tile``, of which the
    offsets ``m`` with ``m % row < tile + 2 r`` form the square union window; its cells outside the
    frame read padding (NaN similarity: never chosen), also where the slice wraps past a row's end
    into the next row's left padding.
    """

    def __init__(self, feats: Tensor, radius: int, tile: int) -> None:
        d, h, w = feats.shape
        radius = min(radius, max(h, w) - 1)
        self.h, self.w, self.radius, self.tile = h, w, radius, tile
        self.tile_rows, self.tile_cols = -(-h // tile), -(-w // tile)
        self.row = w + radius + tile - 1
        buffer = feats.new_full((self.tile_rows * tile + 2 * radius + 1, self.row, d), float("nan"))
        buffer[radius:radius + h, radius:radius + w] = feats.permute(1, 2, 0)
        self.cells = buffer.view(-1, d)

    @property
    def span(self) -> int:
        """Buffer cells from a tile's union window's first cell to its last, inclusive."""
        return (self.tile + 2 * self.radius - 1) * self.row + self.tile + 2 * self.radius

    def window_mask(self) -> Tensor:
        """``span`` bool: which offsets of a tile's slice lie in its square union window."""
        offsets = torch.arange(self.span, device=self.cells.device)
        return offsets % self.row < self.tile + 2 * self.radius

    def tile_row_slices(self, ti: int) -> Tensor:
        """tile_cols x span x D strided view: the union-window slices of the tiles in tile row ``ti``."""
        d = self.cells.shape[1]
        offset = self.cells.storage_offset() + ti * self.tile * self.row * d
        return self.cells.as_strided((self.tile_cols, self.span, d), (self.tile * d, d, 1), offset)

    def cell_of(self, i: Tensor, j: Tensor) -> Tensor:
        """Buffer cell holding frame cell (i, j)."""
        return (i + self.radius) * self.row + j + self.radius

    def position_of(self, cell: Tensor) -> tuple[Tensor, Tensor]:
        """Frame position (i, j) of buffer cells (inverse of :meth:`cell_of`)."""
        return cell // self.row - self.radius, cell % self.row - self.radius

    def place(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """``values`` C x h x w in this buffer's layout -> (R x row) x C, ``fill`` outside the frame."""
        c = values.shape[0]
        out = values.new_full((self.cells.shape[0] // self.row, self.row, c), fill)
        out[self.radius:self.radius + self.h, self.radius:self.radius + self.w] = values.permute(1, 2, 0)
        return out.view(-1, c)


def query_tiles(query: Tensor, tile: int) -> Tensor:
    """D x h x w -> tile_rows x tile_cols x tile^2 x D (row-major cells in each tile; NaN past the edges)."""
    d, h, w = query.shape
    th, tw = -(-h // tile), -(-w // tile)
    padded = query.new_full((th * tile, tw * tile, d), float("nan"))
    padded[:h, :w] = query.permute(1, 2, 0)
    return padded.view(th, tile, tw, tile, d).permute(0, 2, 1, 3, 4).reshape(th, tw, tile * tile, d)


def untile(values: Tensor, h: int, w: int) -> Tensor:
    """tile_rows x tile_cols x tile^2 x K -> (h w) x K, the inverse of :func:`query_tiles`'s cell order."""
    th, tw, tt, k = values.shape
    tile = int(round(tt ** 0.5))
    full = values.view(th, tw, tile, tile, k).permute(0, 2, 1, 3, 4).reshape(th * tile, tw * tile, k)
    return full[:h, :w].reshape(h * w, k)


def neighbourhood_topk(query: Tensor, context: PaddedFrame, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best cosine matches of every query cell among the context cells of its tile's union
    window (a superset of its own window), then those inside its own window kept.

    ``query`` D x h x w (the context frame's grid) -> similarity (h w) x k float32 (-inf
    where the candidate lies outside the cell's window or is missing), buffer cells of ``context``
    (h w) x k (-1 where missing), and each cell's bound (h w): the k-th similarity of the union
    window (-inf when it holds fewer than k cells), which no unseen cell of the cell's window exceeds.
    """
    d, h, w = query.shape
    if (h, w) != (context.h, context.w):
        raise ValueError(f"query grid {h} x {w} differs from the context grid {context.h} x {context.w}")
    qi = torch.arange(h, device=query.device).repeat_interleave(w).view(-1, 1)
    qj = torch.arange(w, device=query.device).repeat(h).view(-1, 1)
    if h * w <= context.span:  # a small grid: the whole frame is a smaller superset than a tile's slice
        frame_cells = context.cell_of(qi.flatten(), qj.flatten())
        index, sim = topk(query.reshape(d, -1).t(), context.cells[frame_cells], min(k, h * w))
        cells = torch.where(index >= 0, frame_cells[index.clamp_min(0)], -1)
    else:
        k = min(k, context.span)
        tiles = query_tiles(query, context.tile)
        mask = context.window_mask().expand(context.tile_cols, -1)
        starts = torch.arange(context.tile_cols, device=query.device) * context.tile
        indices, sims = [], []
        for ti in range(context.tile_rows):
            index, sim = topk(tiles[ti], context.tile_row_slices(ti), k, mask=mask)
            start = (ti * context.tile * context.row + starts).view(-1, 1, 1)
            indices.append(torch.where(index >= 0, start + index, -1))
            sims.append(sim)
        cells, sim = untile(torch.stack(indices), h, w), untile(torch.stack(sims), h, w)
    bound = sim[:, -1].clone() if sim.shape[1] == k else torch.full_like(sim[:, 0], float("-inf"))
    ci, cj = context.position_of(cells)
    inside = (cells >= 0) & ((ci - qi).abs() <= context.radius) & ((cj - qj).abs() <= context.radius)
    return sim.masked_fill(~inside, float("-inf")), torch.where(inside, cells, -1), bound


def exact_neighbourhood_topk(query: Tensor, rows: Tensor, context: PaddedFrame, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of query cells ``rows`` (flat indices) within their own windows, by a dense product with
    the context frame's cells: the fallback for the few cells :func:`neighbourhood_topk` cannot
    settle. -> similarity len(rows) x k and buffer cells len(rows) x k, as there."""
    d, h, w = query.shape
    q = F.normalize(query.reshape(d, -1)[:, rows].t().float(), dim=1)
    i, j = torch.meshgrid(torch.arange(h, device=query.device), torch.arange(w, device=query.device), indexing="ij")
    cells = context.cell_of(i.flatten(), j.flatten())
    keys = F.normalize(context.cells[cells].float(), dim=1)
    sim = q @ keys.t()
    qi, qj = (rows // w).view(-1, 1), (rows % w).view(-1, 1)
    near = ((i.flatten() - qi).abs() <= context.radius) & ((j.flatten() - qj).abs() <= context.radius)
    sim, pick = sim.masked_fill(~near, float("-inf")).topk(min(k, h * w), dim=1)
    return sim, torch.where(sim > float("-inf"), cells[pick], -1)


def propagate_labels(query: Tensor, context: list[tuple[PaddedFrame, Tensor]], k: int, temperature: float,
                     search: int = MAX_K) -> Tensor:
    """Soft labels of the frame ``query`` D x h x w from context frames (buffer, labels in its layout
    (R x row) x C) -> (h w) x C: softmax(similarity / temperature) over each cell's ``k`` best
    matches in all context windows, times their labels.

    Each frame is searched for ``search`` >= k candidates per tile; a cell whose k-th best over all
    frames falls below some frame's bound (an unseen cell of its window could rank higher) is
    recomputed exactly by :func:`exact_neighbourhood_topk`.
    """
    frame_cells = context[0][0].cells.shape[0]
    sims, cells, bounds = [], [], []
    for f, (frame, _) in enumerate(context):
        sim, cell, bound = neighbourhood_topk(query, frame, max(k, search))
        sims.append(sim)
        cells.append(torch.where(cell >= 0, f * frame_cells + cell, -1))
        bounds.append(bound)
    sim, cell = torch.cat(sims, 1), torch.cat(cells, 1)
    best, pick = sim.topk(min(k, sim.shape[1]), dim=1)
    cell = torch.gather(cell, 1, pick)
    kth = best[:, -1] if best.shape[1] == k else torch.full_like(best[:, 0], float("-inf"))
    unsettled = (kth < torch.stack(bounds, 1).amax(1)).nonzero().flatten()
    if len(unsettled):
        sims, cells = [], []
        for f, (frame, _) in enumerate(context):
            sim_f, cell_f = exact_neighbourhood_topk(query, unsettled, frame, k)
            sims.append(sim_f)
            cells.append(torch.where(cell_f >= 0, f * frame_cells + cell_f, -1))
        exact, exact_pick = torch.cat(sims, 1).topk(best.shape[1], dim=1)
        best[unsettled] = exact
        cell[unsettled] = torch.gather(torch.cat(cells, 1), 1, exact_pick)
    labels = torch.cat([frame_labels for _, frame_labels in context])[cell.clamp_min(0)]  # N x k x C
    weights = torch.softmax(best / temperature, dim=1).nan_to_num(0.0)  # a cell without candidates: zeros
    return torch.einsum("nk,nkc->nc", weights, labels)


class LabelPropagator:
    """Propagates the first frame's labels through a video, frame by frame, with the matcher.

    ``first_feats`` D x h x w and ``first_labels`` C x h x w (one-hot, float) of the first frame;
    :meth:`step` takes the next frame's features D x h x w and returns its soft labels C x h x w
    (float32), which join the context.
    """

    def __init__(self, first_feats: Tensor, first_labels: Tensor, settings: PropagationSettings = PropagationSettings()) -> None:
        if first_feats.shape[1:] != first_labels.shape[1:]:
            raise ValueError(f"features {tuple(first_feats.shape)} and labels {tuple(first_labels.shape)} "
                             "must share the h x w grid")
        self.settings = settings
        self.first = self._context_entry(first_feats, first_labels)
        self.recent: deque = deque(maxlen=settings.context)

    def _context_entry(self, feats: Tensor, labels: Tensor) -> tuple[PaddedFrame, Tensor]:
        frame = PaddedFrame(feats, self.settings.radius, self.settings.tile)
        return frame, frame.place(labels.float())

    def step(self, feats: Tensor) -> Tensor:
        if tuple(feats.shape[1:]) != (self.first[0].h, self.first[0].w):
            raise ValueError(f"frame features {tuple(feats.shape)} do not match the first frame's grid "
                             f"{self.first[0].h} x {self.first[0].w}")
        s = self.settings
        out = propagate_labels(feats, [self.first, *self.recent], s.k, s.temperature, s.search)
        out = out.t().reshape(-1, *feats.shape[1:])
        if s.context:
            self.recent.append(self._context_entry(feats, out))
        return out
