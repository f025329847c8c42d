"""Keypoint transfer: features of two letterboxed images -> predicted target keypoints and their errors.

Features are L2-normalised over channels and bilinearly upsampled to ``S x S``
(not re-normalised); each source keypoint is matched to the argmax of the dot
product over all target pixels (one way). Its feature pixel follows the protocol
(:mod:`lift_rt.eval.pairs`). Matching: :mod:`lift_rt.matching` (C++) or its
PyTorch reference :mod:`lift_rt.matching_reference`.

Options: ``mutual=True`` (a match counts only if the target pixel's own nearest
source pixel lands back within one feature cell of the keypoint);
``soft_argmax=T`` (softmax-weighted mean position, temperature T, over a window
around the argmax).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lift_rt.eval.pairs import KeypointPair, check_protocol, letterbox, load_rgb, pixel_index
from lift_rt.eval.pck import PairResult

# (src B x N x D, tgt B x M x D, *, normalize) -> (index int64 B x N, similarity B x N)
Matcher = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# images B x 3 x S x S float in [0, 1] -> features B x C x h x w
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def get_matcher(name: str = "auto") -> Matcher:
    """``"torch"`` (pure PyTorch, :mod:`lift_rt.matching_reference`), ``"cpp"`` (:mod:`lift_rt.matching`), ``"auto"`` (cpp)."""
    if name == "torch":
        from lift_rt.matching_reference import nearest_reference

        return nearest_reference
    if name in ("cpp", "auto"):
        from lift_rt.matching import nearest

        return nearest
    raise ValueError(f"unknown matcher {name!r}; choose torch, cpp or auto")


def _dense(feats: torch.Tensor, size: int) -> torch.Tensor:
    """``C x h x w`` -> L2-normalised over channels, bilinearly upsampled -> ``size*size x C``."""
    feats = F.normalize(feats.float(), dim=0)[None].contiguous(memory_format=torch.channels_last)
    dense = F.interpolate(feats, size=(size, size), mode="bilinear", align_corners=False)  # channels_last
    return dense[0].permute(1, 2, 0).reshape(size * size, -1)  # a view: pixels x channels


def match_keypoints(
    src_feats: torch.Tensor,
    trg_feats: torch.Tensor,
    src_points: np.ndarray,
    size: int,
    *,
    protocol: str = "authors",
    matcher: Matcher | None = None,
    mutual: bool = False,
    soft_argmax: float | None = None,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Transfer keypoints from source to target.

    ``src_feats``/``trg_feats``: ``C x h x w`` features of the two ``size x size``
    canvases; ``src_points``: ``N x 2`` (x, y) canvas pixels, whose feature pixel
    follows ``protocol`` (:func:`lift_rt.eval.pairs.pixel_index`). Returns the
    predicted target points ``N x 2`` (x, y) and an ``N`` bool array of matches
    accepted by the mutual check (all True without it). ``soft_argmax=T``
    refines each match by :func:`lift_rt.matching.soft_argmax` at temperature T
    over a ``(2 window + 1)^2`` pixel window (default: one feature cell).
    """
    matcher = matcher or get_matcher("auto")
    cell = size / src_feats.shape[-1]  # one feature cell, in canvas pixels
    src_dense, trg_dense = _dense(src_feats, size), _dense(trg_feats, size)
    px = torch.from_numpy(pixel_index(src_points, size, protocol))
    src_desc = src_dense[(px[:, 1] * size + px[:, 0]).to(src_dense.device)]
    index, _ = matcher(src_desc[None], trg_dense[None], normalize=False)
    index = index[0].long()
    if soft_argmax is not None:
        from lift_rt.matching import soft_argmax as refine

        radius = round(cell) if window is None else window
        pred = refine(src_desc, trg_dense, index, (size, size), radius=radius, temperature=soft_argmax, normalize=False)
        pred = pred.cpu().numpy().astype(np.float64)
    else:
        pred = torch.stack([index % size, index // size], dim=-1).cpu().numpy().astype(np.float64)
    accepted = np.ones(len(px), dtype=bool)
    if mutual:
        back, _ = matcher(trg_dense[index][None], src_dense[None], normalize=False)
        back = back[0].long().cpu()
        back_xy = torch.stack([back % size, back // size], dim=-1)
        accepted = ((back_xy - px).float().norm(dim=-1) <= cell).numpy()
    return pred, accepted


def prepare_pair(
    pair: KeypointPair, size: int, protocol: str = "authors"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Letterbox both images -> (src canvas, trg canvas, src points, trg points, target box length), canvas pixels."""
    src, src_box = letterbox(load_rgb(pair.src_image), size)
    trg, trg_box = letterbox(load_rgb(pair.trg_image), size)
    return (src, trg, src_box.points(pair.src_kps, protocol), trg_box.points(pair.trg_kps, protocol),
            trg_box.box_length(pair.trg_bbox, protocol))


def _chunks(pairs: Sequence[KeypointPair], batch_pairs: int, progress: str | None) -> Iterable[Sequence[KeypointPair]]:
    """``pairs`` in slices of ``batch_pairs``; with ``progress`` a tqdm bar over pairs (to stderr) named so."""
    bar = tqdm(total=len(pairs), desc=progress, unit="pair", leave=False, disable=progress is None)
    with bar:
        for start in range(0, len(pairs), batch_pairs):
            chunk = pairs[start : start + batch_pairs]
            yield chunk
            bar.update(len(chunk))


def evaluate_pairs(
    pairs: Sequence[KeypointPair],
    features: FeatureFn,
    size: int,
    *,
    protocol: str = "authors",
    matcher: Matcher | str = "auto",
    batch_pairs: int = 4,
    device: torch.device | str = "cpu",
    mutual: bool = False,
    soft_argmax: float | None = None,
    window: int | None = None,
    progress: str | None = None,
) -> list[PairResult]:
    """Run ``features`` on every pair at ``size x size`` and transfer the keypoints.

    ``features``: ``B x 3 x size x size`` float images in [0, 1] on ``device`` ->
    ``B x C x h x w`` (any float dtype). Pairs go through in batches of
    ``batch_pairs`` (2 images each). ``protocol``: see :mod:`lift_rt.eval.pairs`.
    ``progress``: a label for a tqdm bar over the pairs (none by default).
    """
    check_protocol(protocol)
    if isinstance(matcher, str):
        matcher = get_matcher(matcher)
    results: list[PairResult] = []
    for chunk in _chunks(pairs, batch_pairs, progress):
        prepared = [prepare_pair(pair, size, protocol) for pair in chunk]
        canvases = np.stack([image for p in prepared for image in p[:2]])
        images = torch.from_numpy(canvases).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        with torch.inference_mode():
            feats = features(images).float()  # stays on the device: matching runs there too
        if feats.dim() != 4 or feats.shape[0] != len(canvases):
            raise ValueError(f"features must be B x C x h x w with B = {len(canvases)}, got {tuple(feats.shape)}")
        for i, (pair, (_, _, src_pts, trg_pts, length)) in enumerate(zip(chunk, prepared)):
            pred, accepted = match_keypoints(
                feats[2 * i], feats[2 * i + 1], src_pts, size, protocol=protocol,
                matcher=matcher, mutual=mutual, soft_argmax=soft_argmax, window=window,
            )
            errors = np.linalg.norm(pred - trg_pts, axis=-1)
            results.append(PairResult(pair.category, errors, length, accepted))
    return results
