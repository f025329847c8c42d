"""Pure-PyTorch references of :mod:`lift_rt.matching` (same conventions, same tie rule).

They compute the similarity matrix in row chunks (``chunk`` source rows at a time), so they are
exact but slow and need O(chunk x M) memory: for tests and small inputs only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift_rt.matching import EPS


def similarities(src: Tensor, tgt: Tensor, *, normalize: bool = True, mask: Optional[Tensor] = None,
                 eps: float = EPS) -> Tensor:
    """B x N x M float32 similarities; NaN and masked-out targets become -inf."""
    a, t = src.float(), tgt.float()
    if normalize:
        a, t = F.normalize(a, dim=-1, eps=eps), F.normalize(t, dim=-1, eps=eps)
    s = a @ t.transpose(-1, -2)
    s = s.masked_fill(torch.isnan(s), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask.unsqueeze(-2), float("-inf"))
    return s


def topk_reference(src: Tensor, tgt: Tensor, k: int, *, normalize: bool = True, mask: Optional[Tensor] = None,
                   eps: float = EPS, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """B x N x D, B x M x D -> index, similarity B x N x k; descending, ties by lowest index."""
    idx_parts, sim_parts = [], []
    for a in src.split(chunk, dim=-2):
        s = similarities(a, tgt, normalize=normalize, mask=mask, eps=eps)
        vals, idx = torch.sort(s, dim=-1, descending=True, stable=True)
        vals, idx = vals[..., :k], idx[..., :k]
        idx_parts.append(idx.masked_fill(vals == float("-inf"), -1))
        sim_parts.append(vals)
    if not idx_parts:  # N == 0
        shape = (*src.shape[:-1], k)
        return src.new_empty(shape, dtype=torch.int64), src.new_empty(shape, dtype=torch.float32)
    return torch.cat(idx_parts, dim=-2), torch.cat(sim_parts, dim=-2)


def nearest_reference(src: Tensor, tgt: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    index, sim = topk_reference(src, tgt, 1, **kwargs)
    return index[..., 0], sim[..., 0]


def mutual_reference(src: Tensor, tgt: Tensor, *, normalize: bool = True, src_mask: Optional[Tensor] = None,
                     tgt_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    index, sim = nearest_reference(src, tgt, normalize=normalize, mask=tgt_mask)
    back, _ = nearest_reference(tgt, src, normalize=normalize, mask=src_mask)
    rows = torch.arange(src.shape[-2]).expand_as(index)
    return index, sim, (index >= 0) & (torch.gather(back, -1, index.clamp_min(0)) == rows)


def soft_argmax_reference(src: Tensor, tgt: Tensor, index: Tensor, grid_size: tuple[int, int], *, radius: int = 2,
                          temperature: float = 0.02, normalize: bool = True, mask: Optional[Tensor] = None,
                          eps: float = EPS) -> Tensor:
    """B x N x 2 expected (x, y) cells over the window around ``index`` (see matching.soft_argmax)."""
    h, w = grid_size
    offs = torch.arange(-radius, radius + 1)
    cy, cx = (index // w).unsqueeze(-1), (index % w).unsqueeze(-1)
    ys = (cy.unsqueeze(-1) + offs.view(-1, 1)).expand(*index.shape, offs.numel(), offs.numel()).flatten(-2)
    xs = (cx.unsqueeze(-1) + offs.view(1, -1)).expand(*index.shape, offs.numel(), offs.numel()).flatten(-2)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    flat = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1))  # B x N x W
    a, t = src.float(), tgt.float()
    if normalize:
        a, t = F.normalize(a, dim=-1, eps=eps), F.normalize(t, dim=-1, eps=eps)
    tw = torch.gather(t.unsqueeze(1).expand(-1, flat.shape[1], -1, -1), 2,
                      flat.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))
    s = torch.einsum("bnd,bnwd->bnw", a, tw)
    valid = inside & ~torch.isnan(s)
    if mask is not None:
        valid &= torch.gather(mask.unsqueeze(1).expand(-1, flat.shape[1], -1), 2, flat)
    wgt = torch.softmax((s / temperature).masked_fill(~valid, float("-inf")), dim=-1)
    xy = torch.stack([(wgt * xs).sum(-1), (wgt * ys).sum(-1)], dim=-1)
    return xy.masked_fill(((index < 0) | ~valid.any(-1)).unsqueeze(-1), float("nan"))


def cell_coordinate_reference(pixel: Tensor, pixels: int, cells: int) -> Tensor:
    """One axis, pixel -> cell coordinate: ``pixels`` pixels are covered by ``cells`` equal cells, and pixel
    ``i`` spans ``[i, i + 1)`` in edge coordinates, so its centre ``i + 0.5`` lies at edge position
    ``(i + 0.5) * cells / pixels`` on the grid, whose cell centres are at ``j + 0.5``."""
    return (pixel + 0.5) * cells / pixels - 0.5


def pixel_coordinate_reference(cell: Tensor, pixels: int, cells: int) -> Tensor:
    """One axis, cell -> pixel coordinate (the inverse of :func:`cell_coordinate_reference`)."""
    return (cell + 0.5) * pixels / cells - 0.5


def sample_descriptors_reference(feats: Tensor, kps: Tensor, image_size: tuple[int, int]) -> Tensor:
    """B x D x h x w features at B x K x 2 pixel keypoints (x, y) of an H x W image -> B x K x D float32:
    bilinear between the four surrounding cell centres, coordinates clamped to the grid (border values)."""
    (H, W), (h, w) = image_size, feats.shape[-2:]
    u = cell_coordinate_reference(kps[..., 0].double(), W, w).clamp(0, w - 1)
    v = cell_coordinate_reference(kps[..., 1].double(), H, h).clamp(0, h - 1)
    u0, v0 = u.floor().long(), v.floor().long()
    u1, v1 = (u0 + 1).clamp(max=w - 1), (v0 + 1).clamp(max=h - 1)
    fu, fv = (u - u0).unsqueeze(-1), (v - v0).unsqueeze(-1)
    grid = feats.double().flatten(2).transpose(1, 2)  # B x (h w) x D

    def at(vi: Tensor, ui: Tensor) -> Tensor:
        return torch.gather(grid, 1, (vi * w + ui).unsqueeze(-1).expand(-1, -1, grid.shape[-1]))

    top = at(v0, u0) * (1 - fu) + at(v0, u1) * fu
    bottom = at(v1, u0) * (1 - fu) + at(v1, u1) * fu
    return (top * (1 - fv) + bottom * fv).float()


def match_keypoints_reference(src_feats: Tensor, tgt_feats: Tensor, src_kps: Tensor, image_size: tuple[int, int], *,
                              tgt_image_size: Optional[tuple[int, int]] = None, normalize: bool = True,
                              refine_radius: int = 0, temperature: float = 0.02) -> tuple[Tensor, Tensor]:
    tgt_image_size = image_size if tgt_image_size is None else tgt_image_size
    th, tw = tgt_feats.shape[-2:]
    tgt = tgt_feats.flatten(2).transpose(1, 2)
    src = sample_descriptors_reference(src_feats, src_kps, image_size).to(tgt.dtype)
    index, sim = nearest_reference(src, tgt, normalize=normalize)
    if refine_radius > 0:
        uv = soft_argmax_reference(src, tgt, index, (th, tw), radius=refine_radius, temperature=temperature,
                                   normalize=normalize)
    else:
        uv = torch.stack([index % tw, index // tw], dim=-1).float()
    xy = torch.stack([pixel_coordinate_reference(uv[..., 0], tgt_image_size[1], tw),
                      pixel_coordinate_reference(uv[..., 1], tgt_image_size[0], th)], dim=-1)
    return xy, sim
