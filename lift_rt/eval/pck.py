"""Keypoint transfer PCK (SPair-71k, synthetic warped pairs), the authors' protocol by default.

Protocol (see ../shared/lift-facts.md): each image is resized so its longer side
is the evaluation size S (Lanczos) and zero-padded, centred, to ``S x S``;
keypoints and boxes are scaled and offset alike. Features are L2-normalised over
channels, bilinearly upsampled to ``S x S`` (not re-normalised); each source
keypoint visible in both images is matched to the argmax of the dot product over
all target pixels (one way). A prediction is correct when its distance to the
target keypoint is within ``alpha * max(h, w)`` of the target box (eval pixels);
keypoints are pooled per category, then the categories are averaged unweighted.

Options: ``average="point"`` (all keypoints pooled) or ``"image"`` (mean of
per-pair PCK); ``mutual=True`` (a match counts only if the target pixel's own
nearest source pixel lands back within one feature cell of the keypoint);
``soft_argmax=T`` (softmax-weighted mean position, temperature T, over a window
around the argmax). Matching: :mod:`lift_rt.matching` (C++) or its PyTorch
reference :mod:`lift_rt.matching_reference`.

``python -m lift_rt.eval pck ...`` prints the layout of the supplemental's
Table 1: one row per upsampler, PCK@0.1 and PCK@0.05 per resolution.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lift_rt.cli import non_negative_int, positive_float
from lift_rt.devices import device_arg
from lift_rt.preprocess import pil_to_rgb

ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01)
AVERAGES: tuple[str, ...] = ("category", "point", "image")
UPSAMPLER_CHOICES: tuple[str, ...] = ("lift", "bilinear", "nearest", "rc", "jbu", "none")

ImageRef = Union[str, os.PathLike, np.ndarray]
Box = tuple[float, float, float, float]
# (src B x N x D, tgt B x M x D, *, normalize) -> (index int64 B x N, similarity B x N)
Matcher = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# images B x 3 x S x S float in [0, 1] -> features B x C x h x w
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class KeypointPair:
    """Two images of one category with corresponding keypoints.

    Keypoints are ``N x 2`` float arrays of (x, y) in pixels of their own image,
    all visible in both images; boxes are (x1, y1, x2, y2) in pixels. Images are
    ``H x W x 3`` uint8 arrays or paths (read when evaluated).
    """

    category: str
    src_image: ImageRef
    trg_image: ImageRef
    src_kps: np.ndarray
    trg_kps: np.ndarray
    src_bbox: Box
    trg_bbox: Box
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("src_kps", "trg_kps"):
            kps = np.asarray(getattr(self, field_name), dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(kps).all():
                raise ValueError(f"pair {self.name!r}: {field_name} holds NaN or infinite values")
            object.__setattr__(self, field_name, kps)
        if len(self.src_kps) != len(self.trg_kps):
            raise ValueError(f"pair {self.name!r}: {len(self.src_kps)} source but {len(self.trg_kps)} target keypoints")
        for field_name in ("src_bbox", "trg_bbox"):
            box = tuple(float(v) for v in getattr(self, field_name))
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"pair {self.name!r}: {field_name} must be (x1, y1, x2, y2) with x2 >= x1, y2 >= y1, got {box}")
            object.__setattr__(self, field_name, box)


def load_rgb(image: ImageRef) -> np.ndarray:
    """A path or array -> ``H x W x 3`` uint8 RGB."""
    if isinstance(image, np.ndarray):
        array = image
    else:
        with Image.open(image) as pil:
            array = pil_to_rgb(pil)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"images must be H x W x 3 uint8, got {array.shape} {array.dtype}")
    return array


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed on the ``size x size`` evaluation canvas."""

    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int
    size: int

    def points(self, kps: np.ndarray) -> np.ndarray:
        """``N x 2`` (x, y) in original pixels -> evaluation pixels."""
        return kps * np.array([self.scale_x, self.scale_y]) + np.array([self.offset_x, self.offset_y])

    def box_length(self, box: Box) -> float:
        """max(h, w) of a box, in evaluation pixels: the PCK reference length."""
        x1, y1, x2, y2 = box
        return max((x2 - x1) * self.scale_x, (y2 - y1) * self.scale_y)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the longer side to ``size`` (Lanczos) and zero-pad centred -> ``size x size x 3``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))
    off_x, off_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[off_y : off_y + new_h, off_x : off_x + new_w] = resized
    return canvas, Letterbox(new_w / w, new_h / h, off_x, off_y, size)


# ----------------------------------------------------------------------------- matching


def get_matcher(name: str = "auto") -> Matcher:
    """``"torch"`` (pure PyTorch, :mod:`lift_rt.matching_reference`), ``"cpp"`` (:mod:`lift_rt.matching`), ``"auto"`` (cpp)."""
    if name == "torch":
        from lift_rt.matching_reference import nearest_reference

        return nearest_reference
    if name in ("cpp", "auto"):
        from lift_rt.matching import nearest

        return nearest
    raise ValueError(f"unknown matcher {name!r}; choose torch, cpp or auto")


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PairResult:
    """Per-pair outcome: keypoint errors and the PCK reference length, in evaluation pixels."""

    category: str
    errors: np.ndarray  # N, distance predicted -> true target keypoint
    box_length: float  # max(h, w) of the target box
    accepted: np.ndarray  # N bool: False where the mutual check rejected the match


def _pixel_index(points: np.ndarray, size: int) -> torch.Tensor:
    """Evaluation-pixel (x, y) -> integer pixel (x, y), rounded and clamped into the canvas."""
    return torch.from_numpy(np.clip(np.rint(points), 0, size - 1).astype(np.int64))


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
    matcher: Matcher | None = None,
    mutual: bool = False,
    soft_argmax: float | None = None,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Transfer keypoints from source to target.

    ``src_feats``/``trg_feats``: ``C x h x w`` features of the two ``size x size``
    canvases; ``src_points``: ``N x 2`` (x, y) evaluation pixels. Returns the
    predicted target points ``N x 2`` (x, y) and an ``N`` bool array of matches
    accepted by the mutual check (all True without it). ``soft_argmax=T``
    refines each match by :func:`lift_rt.matching.soft_argmax` at temperature T
    over a ``(2 window + 1)^2`` pixel window (default: one feature cell).
    """
    matcher = matcher or get_matcher("auto")
    cell = size / src_feats.shape[-1]  # one feature cell, in evaluation pixels
    src_dense, trg_dense = _dense(src_feats, size), _dense(trg_feats, size)
    px = _pixel_index(src_points, size)
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


def prepare_pair(pair: KeypointPair, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Letterbox both images -> (src canvas, trg canvas, src points, trg points, target box length)."""
    src, src_box = letterbox(load_rgb(pair.src_image), size)
    trg, trg_box = letterbox(load_rgb(pair.trg_image), size)
    return src, trg, src_box.points(pair.src_kps), trg_box.points(pair.trg_kps), trg_box.box_length(pair.trg_bbox)


def evaluate_pairs(
    pairs: Sequence[KeypointPair],
    features: FeatureFn,
    size: int,
    *,
    matcher: Matcher | str = "auto",
    batch_pairs: int = 4,
    device: torch.device | str = "cpu",
    mutual: bool = False,
    soft_argmax: float | None = None,
    window: int | None = None,
) -> list[PairResult]:
    """Run ``features`` on every pair at ``size x size`` and transfer the keypoints.

    ``features``: ``B x 3 x size x size`` float images in [0, 1] on ``device`` ->
    ``B x C x h x w`` (any float dtype). Pairs go through in batches of
    ``batch_pairs`` (2 images each).
    """
    if isinstance(matcher, str):
        matcher = get_matcher(matcher)
    results: list[PairResult] = []
    for start in range(0, len(pairs), batch_pairs):
        chunk = pairs[start : start + batch_pairs]
        prepared = [prepare_pair(pair, size) for pair in chunk]
        canvases = np.stack([image for p in prepared for image in p[:2]])
        images = torch.from_numpy(canvases).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        with torch.inference_mode():
            feats = features(images).float()  # stays on the device: matching runs there too
        if feats.dim() != 4 or feats.shape[0] != len(canvases):
            raise ValueError(f"features must be B x C x h x w with B = {len(canvases)}, got {tuple(feats.shape)}")
        for i, (pair, (_, _, src_pts, trg_pts, length)) in enumerate(zip(chunk, prepared)):
            pred, accepted = match_keypoints(
                feats[2 * i], feats[2 * i + 1], src_pts, size,
                matcher=matcher, mutual=mutual, soft_argmax=soft_argmax, window=window,
            )
            errors = np.linalg.norm(pred - trg_pts, axis=-1)
            results.append(PairResult(pair.category, errors, length, accepted))
    return results


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


# ----------------------------------------------------------------------------- models and CLI


def check_upsampler(backbone: str, upsampler: str, *, lift: str | os.PathLike | None, random_init: bool) -> None:
    """Raise unless ``upsampler`` is known and, for LiFT, has weights or ``random_init``."""
    if upsampler not in UPSAMPLER_CHOICES:
        raise ValueError(f"unknown upsampler {upsampler!r}; choose one of {', '.join(UPSAMPLER_CHOICES)}")
    if upsampler == "lift" and lift is None and not random_init:
        from lift_rt.backbones import get_spec

        raise ValueError(f"upsampler lift needs --lift CKPT (the authors' {get_spec(backbone).lift_file}) or --random-init")


def build_feature_pipeline(
    backbone: str,
    upsampler: str,
    *,
    lift: str | os.PathLike | None = None,
    random_init: bool = False,
    backbone_weights: str | os.PathLike | None = None,
    iterations: int = 1,
    layer: int | None = None,
    seed: int | None = None,
    rc: str | os.PathLike | None = None,
):
    """The reference pipeline with any upsampler: ``"none"`` returns the backbone's own features.

    ``lift`` loads a LiFT checkpoint for ``upsampler="lift"``; without one a
    random LiFT needs ``random_init=True``. ``rc`` loads a trained resize-conv
    (``python -m lift_rt.train --upsampler rc``) for ``upsampler="rc"``; without one
    rc is untrained (identity-initialised: nearest upsampling). The other upsamplers
    have no weights. The backbone's block and random seed follow the checkpoint
    (:func:`lift_rt.checkpoint.trained_backbone`), so every upsampler compared with it
    sees the features it was trained on.
    """
    from lift_rt.backbones import build_backbone, get_spec, seeded
    from lift_rt.checkpoint import load_lift, trained_backbone
    from lift_rt.pipeline import LiftPipeline
    from lift_rt.upsamplers import build_upsampler

    spec = get_spec(backbone)
    check_upsampler(spec.name, upsampler, lift=lift, random_init=random_init)
    random_backbone = random_init and backbone_weights is None
    layer, seed = trained_backbone(lift, layer=layer, random_backbone=random_backbone, seed=seed)
    vit = build_backbone(spec, weights=backbone_weights, random_init=random_backbone, layer=layer, seed=seed)
    if upsampler == "none":
        module = None
    elif upsampler == "lift" and lift is not None:
        module = load_lift(lift, backbone=spec.name, facet=vit.facet)
    elif upsampler == "rc" and rc is not None:
        from lift_rt.train.models import load_upsampler

        module, meta = load_upsampler(rc, backbone=spec.name, facet=vit.facet)
        if meta.get("upsampler") != "rc":
            raise ValueError(f"--rc {rc} holds a {meta.get('upsampler', 'lift')!r} upsampler, not a resize-conv "
                             "(train one with python -m lift_rt.train --upsampler rc)")
    else:
        with seeded(seed):
            module = build_upsampler(upsampler, spec.dim, spec.patch_size)
    return LiftPipeline(vit, module.eval() if module is not None else None, iterations=iterations).eval()


def build_backend(pipeline, backend: str = "torch", *, device: str | torch.device = "cpu", precision: str = "fp32", **options):
    """Wrap a pipeline in a backend by name (as :class:`lift_rt.Engine` does); ``BackendUnavailable`` says why one cannot run."""
    from lift_rt import backends
    from lift_rt.devices import engine_device

    return backends.build_backend(pipeline, backend, device=engine_device(device), precision=precision, options=options)[0]


def random_weight_files(backbone: str, directory: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """Random backbone and LiFT weights written as files -> (backbone .pth, LiFT .safetensors).

    Lets the reference and every Engine load the same weights from disk where no
    pretrained ones exist (CI). Random weights only: say so wherever numbers from them appear.
    """
    from lift_rt.backbones import create_vit, get_spec
    from lift_rt.checkpoint import save_lift
    from lift_rt.model import LiFT

    spec = get_spec(backbone)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone_path = directory / f"{spec.name}-random-{seed}.pth"
    torch.save(create_vit(spec).state_dict(), backbone_path)
    lift_path = save_lift(LiFT(spec.dim, spec.patch_size), directory / f"lift-{spec.name}-random-{seed}.safetensors", backbone=spec.name, facet=spec.facet)
    return backbone_path, lift_path


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
    """PCK of the pure-Python reference and of the runtime on the same pairs -> (reference, runtime).

    Reference: eager fp32 ViT + LiFT (:class:`~lift_rt.pipeline.LiftPipeline`) and
    PyTorch matching (:mod:`lift_rt.matching_reference`). Runtime: :class:`lift_rt.Engine` on ``backend`` at
    ``precision`` and the C++ matcher (``lift_rt.matching``).
    """
    expected = reference_pck(pairs, size, backbone, lift=lift, backbone_weights=backbone_weights, device=device, alphas=alphas)
    got = runtime_pck(pairs, size, backbone, lift=lift, backbone_weights=backbone_weights, backend=backend,
                      precision=precision, device=device, alphas=alphas, **backend_options)
    return expected, got


def reference_pck(
    pairs: Sequence[KeypointPair], size: int, backbone: str, *, lift: str | os.PathLike, backbone_weights: str | os.PathLike,
    device: str | torch.device = "cpu", alphas: Sequence[float] = ALPHAS,
) -> dict[float, float]:
    """PCK of the pure-Python reference: eager fp32 pipeline + PyTorch matching (``get_matcher("torch")``)."""
    reference = build_feature_pipeline(backbone, "lift", lift=lift, backbone_weights=backbone_weights).to(device)
    return pck(evaluate_pairs(pairs, reference, size, matcher=get_matcher("torch"), device=device), alphas)


def runtime_pck(
    pairs: Sequence[KeypointPair], size: int, backbone: str, *, lift: str | os.PathLike, backbone_weights: str | os.PathLike,
    backend: str, precision: str = "fp32", device: str | torch.device = "cpu", alphas: Sequence[float] = ALPHAS, **backend_options,
) -> dict[float, float]:
    """PCK of the runtime: :class:`lift_rt.Engine` on ``backend`` at ``precision`` + the C++ matcher."""
    from lift_rt.engine import Engine

    engine = Engine(backbone, lift, backend=backend, precision=precision, device=device, backbone_weights=backbone_weights, **backend_options)
    return pck(evaluate_pairs(pairs, engine, size, matcher=get_matcher("cpp"), device=device), alphas)


def load_dataset(spec: str, *, per_category: int, split: str = "test", seed: int = 0) -> list[KeypointPair]:
    """``"synthetic"`` or ``"spair:DIR"`` -> pairs (``per_category`` drawn per category, seed ``seed``)."""
    if spec == "synthetic":
        from lift_rt.eval.synthetic import PHOTOS, synthetic_pairs

        return synthetic_pairs(per_category * len(PHOTOS), seed=seed)
    if spec.startswith("spair:"):
        from lift_rt.eval.spair import load_spair, sample_per_category

        return sample_per_category(load_spair(spec.removeprefix("spair:"), split=split), per_category, seed=seed)
    raise ValueError(f"unknown dataset {spec!r}; use 'synthetic' or 'spair:DIR'")


def format_table(rows: dict[str, dict[int, dict[float, float]]], resolutions: Sequence[int], alphas: Sequence[float] = (0.1, 0.05)) -> str:
    """Supplemental Table 1 layout: rows upsampler, columns PCK@alpha x resolution."""
    label_width = max(len("upsampler"), *(len(r) for r in rows))
    head1 = " " * label_width + "".join(f" | {f'PCK@{alpha:g}':<{7 * len(resolutions)}}" for alpha in alphas)
    head2 = f"{'upsampler':<{label_width}}" + "".join(" | " + "".join(f"{r:>7}" for r in resolutions) for _ in alphas)
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for name, by_res in rows.items():
        cells = "".join(" | " + "".join(f"{by_res[r][a]:7.1f}" for r in resolutions) for a in alphas)
        lines.append(f"{name:<{label_width}}{cells}")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(subparsers) -> None:
    """Register ``pck`` on the ``python -m lift_rt.eval`` dispatcher."""
    p = subparsers.add_parser("pck", help="keypoint-transfer PCK (supplemental Table 1 layout)", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="dino_s8", help="registry backbone (default dino_s8)")
    p.add_argument("--upsampler", default="lift", help=f"comma-separated, from {', '.join(UPSAMPLER_CHOICES)} (default lift)")
    p.add_argument("--resolutions", type=_int_list, default=[56, 112, 224, 448], help="evaluation sizes S, multiples of the patch (default 56,112,224,448)")
    p.add_argument("--dataset", default="synthetic", help="'synthetic' (default: warped pairs of the shipped photos) or 'spair:DIR' (SPair-71k root)")
    p.add_argument("--split", default="test", choices=("trn", "val", "test"), help="SPair-71k split (default test; synthetic pairs have none)")
    p.add_argument("--pairs", type=int, default=None, help="pairs per category (default: 100 for SPair, 20 synthetic)")
    p.add_argument("--seed", type=int, default=0, help="draws the pairs (and random weights with --random-init); default 0")
    p.add_argument("--lift", default=None, help="LiFT checkpoint")
    p.add_argument("--rc", default=None, metavar="CKPT", help="trained resize-conv for the rc row (lift_rt.train --upsampler rc); "
                   "without it rc is evaluated untrained (identity-initialised: nearest) and labelled so")
    p.add_argument("--backbone-weights", default=None, help="official backbone checkpoint (default: the timm / Hugging Face cache)")
    p.add_argument("--random-init", action="store_true", help="random backbone (and LiFT) weights")
    p.add_argument("--iterations", type=int, default=1, help="LiFT applications for the lift row: 1 = 2x, 2 = 4x (default 1)")
    p.add_argument("--backend", default="torch", help="Engine backend for the features (default torch; auto picks the fastest)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="feature precision (default fp32)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--matcher", default="auto", choices=("auto", "torch", "cpp"),
                   help="nearest-neighbour search: cpp (lift_rt.matching), torch (the pure-PyTorch reference); auto = cpp")
    p.add_argument("--average", default="category", choices=AVERAGES,
                   help="PCK averaged per category (default, as the paper), over all points, or per image")
    p.add_argument("--mutual", action="store_true", help="count only mutual nearest neighbours")
    p.add_argument("--soft-argmax", type=positive_float, default=None, metavar="T", help="soft-argmax with temperature T")
    p.add_argument("--window", type=non_negative_int, default=None, help="soft-argmax window radius in pixels (default: one feature cell)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from lift_rt.backbones import check_resolution, get_spec

    spec = get_spec(args.backbone)
    if not args.resolutions:
        raise ValueError("--resolutions names no size; e.g. --resolutions 112,224")
    for size in args.resolutions:
        check_resolution(spec, size, size)
    upsamplers = [u for u in args.upsampler.split(",") if u]
    if not upsamplers:
        raise ValueError(f"--upsampler names no upsampler; choose from {', '.join(UPSAMPLER_CHOICES)}")
    for name in upsamplers:
        check_upsampler(spec.name, name, lift=args.lift, random_init=args.random_init)
    device = device_arg(args.device)
    if args.pairs is not None and args.pairs < 1:
        raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
    per_category = args.pairs or (100 if args.dataset.startswith("spair:") else 20)
    pairs = load_dataset(args.dataset, per_category=per_category, split=args.split, seed=args.seed)
    rows: dict[str, dict[int, dict[float, float]]] = {}
    for name in upsamplers:
        torch.manual_seed(args.seed)
        pipeline = build_feature_pipeline(
            spec.name, name, lift=args.lift, random_init=args.random_init,
            backbone_weights=args.backbone_weights, iterations=args.iterations, rc=args.rc,
        )
        backend = build_backend(pipeline, args.backend, device=device, precision=args.precision)
        row = "rc (untrained)" if name == "rc" and args.rc is None else name
        rows[row] = {}
        for size in args.resolutions:
            results = evaluate_pairs(
                pairs, backend, size, matcher=args.matcher, device=device,
                mutual=args.mutual, soft_argmax=args.soft_argmax, window=args.window,
            )
            rows[row][size] = pck(results, ALPHAS, args.average)
    weights = "random init" if args.random_init else "pretrained"
    categories = len({p.category for p in pairs})
    print(f"PCK ({args.average} average) on {args.dataset}: {len(pairs)} pairs, {categories} categories; "
          f"{spec.name} ({weights}), backend {args.backend} {args.precision} on {device}")
    print(format_table(rows, args.resolutions))
    return 0
