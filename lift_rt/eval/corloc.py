"""Unsupervised object discovery: CorLoc of TokenCut boxes on VOC07, VOC12 and COCO20K.

Protocol of the LiFT authors' evaluation (after TokenCut): each image is
squashed to ``S x S`` (bilinear), features of the last block's key facet come
from the backbone alone or through an upsampler, TokenCut
(:mod:`lift_rt.eval.tokencut`, tau 0.2 on VOC, 0.3 on COCO20K, eps 1e-5) gives
one box, and ground-truth boxes are scaled to the ``S x S`` image (truncated to
integers). CorLoc is the percentage of images whose box has IoU >= 0.5 with
some ground-truth box (IoU with the authors' 1e-7 in the union, so an exact
0.5 tie does not count).

``python -m lift_rt.eval corloc ...`` prints the layout of the supplemental's
Table 5: one row per upsampler, one column group per data set, one column per
evaluation size.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from lift_rt.arguments import check_writable
from lift_rt.cli import add_feature_arguments, positive_float, positive_int
from lift_rt.eval.corloc_data import AnnotatedImage, load_corloc_dataset, scaled_boxes
from lift_rt.eval.methods import FeatureSource
from lift_rt.eval.report import format_table, write_json
from lift_rt.eval.tokencut import EPS, TAU_COCO, TAU_VOC, tokencut

IOU_THRESHOLD = 0.5
IOU_EPS = 1e-7
# images B x 3 x S x S float in [0, 1] -> features B x C x h x w
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def default_tau(dataset: str) -> float:
    """The authors' graph threshold: 0.3 for COCO20K, 0.2 for VOC."""
    return TAU_COCO if dataset == "coco20k" else TAU_VOC


def box_iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of ``N x 4`` boxes -> ``N`` float64.

    The authors' formula: heights carry +1e-7 and so does the union.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter = (np.clip(np.minimum(x2, boxes[:, 2]) - np.maximum(x1, boxes[:, 0]), 0, None)
             * np.clip(np.minimum(y2, boxes[:, 3]) - np.maximum(y1, boxes[:, 1]), 0, None))
    area = (x2 - x1) * (y2 - y1 + IOU_EPS)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1] + IOU_EPS)
    return inter / (area + areas - inter + IOU_EPS)


@dataclass(frozen=True)
class DiscoveryResult:
    """One image: predicted and ground-truth boxes in ``S x S`` evaluation pixels, best IoU, hit."""

    name: str
    box: tuple[float, float, float, float]
    gt_boxes: np.ndarray
    best_iou: float
    found: bool


def score_box(name: str, box: Sequence[float], gt_boxes: np.ndarray) -> DiscoveryResult:
    """Compare one predicted box with the image's ground truth (none: a miss)."""
    ious = box_iou(box, gt_boxes)
    best = float(ious.max()) if len(ious) else 0.0
    return DiscoveryResult(name, tuple(float(v) for v in box), np.asarray(gt_boxes), best, bool((ious >= IOU_THRESHOLD).any()))


def corloc(results: Sequence[DiscoveryResult]) -> float:
    """Percentage of images whose box was found."""
    if not results:
        raise ValueError("no images to score")
    return 100.0 * sum(r.found for r in results) / len(results)


def load_resized(image: AnnotatedImage, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image and squash it to ``size x size`` (bilinear) -> (``size x size x 3`` uint8, original (w, h))."""
    try:
        with Image.open(image.path) as pil:
            rgb = pil.convert("RGB")
    except OSError as exc:
        raise ValueError(f"cannot read image {image.path}: {exc}") from None
    original = image.size or rgb.size
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR)), original


def discover(images: Sequence[AnnotatedImage], features: FeatureFn, size: int, tau: float, *, eps: float = EPS,
             batch_size: int = 8, device: torch.device | str = "cpu", progress: str | None = None) -> list[DiscoveryResult]:
    """TokenCut boxes for ``images`` at ``size x size`` and their scores, in input order.

    ``features``: ``B x 3 x size x size`` float images in [0, 1] on ``device`` ->
    ``B x C x h x w``. ``progress``: a tqdm label, or None for no bar.
    """

    results: list[DiscoveryResult] = []
    with tqdm(total=len(images), desc=progress, unit="img", disable=progress is None, dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded = [load_resized(image, size) for image in chunk]
            batch = torch.from_numpy(np.stack([pixels for pixels, _ in loaded])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                feats = features(batch.float().div_(255.0).to(device)).float().cpu()
            for image, (_, original), image_feats in zip(chunk, loaded, feats):
                found = tokencut(image_feats, (size, size), tau, eps)
                results.append(score_box(image.name, found.box, scaled_boxes(image.boxes, original, (size, size))))
            bar.update(len(chunk))
    return results




# ----------------------------------------------------------------------------- CLI

DATASET_LABELS = {"voc07": "VOC07", "voc12": "VOC12", "coco20k": "COCO20K"}


def add_parser(subparsers) -> None:
    """Register ``corloc`` on the ``python -m lift_rt.eval`` dispatcher."""
    p = subparsers.add_parser("corloc", help="object discovery CorLoc with TokenCut (supplemental Table 5 layout)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="comma-separated voc07:DIR, voc12:DIR, coco20k:DIR (VOC: the VOC20xx folder; "
                        "COCO20K: the folder with coco_20k_filenames.txt and COCO/)")
    add_feature_arguments(p, upsamplers="none,bilinear,rc,jbu,lift", resolutions=[224])
    p.add_argument("--tau", type=positive_float, default=None,
                   help="graph threshold for every data set (default: 0.2 for VOC, 0.3 for COCO20K, as the authors)")
    p.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images of each data set (default all)")
    p.add_argument("--save-boxes", default=None, metavar="PATH",
                   help="write every predicted box (S x S pixels), its best IoU and hit as JSON")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """The ``corloc`` command: print the table (bad inputs raise; the dispatcher prints them)."""
    source = FeatureSource.from_args(args)
    upsamplers = source.check_rows(args.upsampler, args.resolutions)
    for path, flag in ((args.json, "--json"), (args.save_boxes, "--save-boxes")):
        if path is not None:
            check_writable(path, flag)
    datasets = [load_corloc_dataset(item) for item in args.data.split(",") if item]
    if not datasets:
        raise ValueError("--data names no data set; e.g. --data voc07:/data/VOC2007")
    datasets = [(name, images[: args.limit]) for name, images in datasets]
    taus = {name: args.tau if args.tau is not None else default_tau(name) for name, _ in datasets}

    scores: dict[str, dict[str, dict[int, float]]] = {}
    boxes = []
    for upsampler in upsamplers:
        backend = source.features(upsampler)
        row = source.row_label(upsampler)
        scores[row] = {}
        for name, images in datasets:
            label = DATASET_LABELS[name]
            for size in args.resolutions:
                results = discover(images, backend, size, taus[name], batch_size=args.batch, device=source.device,
                                   progress=f"{row} {label} {size}")
                scores[row].setdefault(label, {})[size] = corloc(results)
                boxes += [{"upsampler": row, "dataset": label, "resolution": size, "image": r.name, "box": list(r.box),
                           "best_iou": r.best_iou, "found": r.found} for r in results]

    counts = {DATASET_LABELS[name]: len(images) for name, images in datasets}
    print(f"CorLoc (%) with TokenCut: {', '.join(f'{k} {v} images' for k, v in counts.items())}; "
          f"{source.backbone} ({source.weights}), backend {source.backend} {source.precision} on {source.device}")
    labels = [DATASET_LABELS[name] for name, _ in datasets]
    print(format_table(scores, labels, args.resolutions))
    if args.json is not None:
        write_json(args.json, {
            "command": "corloc", **source.settings(), "resolutions": args.resolutions,
            "tau": {DATASET_LABELS[k]: v for k, v in taus.items()}, "eps": EPS, "images": counts, "scores": scores,
        })
    if args.save_boxes is not None:
        write_json(args.save_boxes, {"boxes": boxes})
    return 0
