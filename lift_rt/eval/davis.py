"""DAVIS-2017 semi-supervised video object segmentation by label propagation (the supplemental's
Table 4: J, F and J&F means per upsampler and resolution), the authors' protocol.

Protocol (DINO's, as the LiFT authors ran it): every frame is resized to S x S (bicubic) and
turned into features (B x D x h x w); the first frame's annotation is resized to the feature
grid (nearest) as one-hot labels; each later frame takes its labels from the first frame and the
7 frames before it (:mod:`lift_rt.eval.davis_propagation`: 12-cell neighbourhood, top-5 cosine
neighbours, softmax temperature 0.1). Its soft labels are upsampled bilinearly by the backbone's
patch size, each label map is min-max scaled to [0, 1], the argmax taken, and the result resized
(nearest) to the frame's own size, where J and F are measured per object
(:mod:`lift_rt.eval.davis_metrics`), on every frame but the first and the last.

``python -m lift_rt.eval davis --data DIR ...`` prints Table 4's layout (rows: upsampler; J, F,
J&F in percent per resolution) and can write JSON (``--json``) and the palette masks
(``--save-masks``).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from lift_rt.arguments import check_writable
from lift_rt.backbones import get_spec
from lift_rt.cli import add_feature_arguments, positive_int
from lift_rt.eval.davis_data import DavisSequence, load_davis, read_frame, read_labels, write_labels
from lift_rt.eval.davis_metrics import BOUNDARY_TOLERANCE, SequenceScores, summarise
from lift_rt.eval.davis_propagation import LabelPropagator, PropagationSettings
from lift_rt.eval.methods import FeatureSource
from lift_rt.eval.report import format_table, write_json

logger = logging.getLogger(__name__)

# images B x 3 x S x S float in [0, 1] -> features B x D x h x w
FeatureFn = Callable[[torch.Tensor], torch.Tensor]
METRICS: tuple[str, ...] = ("J", "F", "J&F")


def grid_labels(labels: np.ndarray, grid: tuple[int, int], objects: int) -> torch.Tensor:
    """H x W object ids -> (objects + 1) x h x w one-hot float32 on the feature grid (nearest resize)."""
    h, w = grid
    small = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST)).astype(np.int64)
    return F.one_hot(torch.from_numpy(small).clamp_max(objects), objects + 1).permute(2, 0, 1).float()


def full_resolution_labels(soft: torch.Tensor, patch: int, size: tuple[int, int]) -> np.ndarray:
    """Soft labels C x h x w -> H x W uint8 object ids at ``size`` = (H, W).

    Bilinear upsampling by ``patch``, each label map min-max scaled to [0, 1] (maps whose maximum is
    not positive stay as they are; a constant positive map becomes 0), argmax, nearest resize.
    """
    up = F.interpolate(soft[None].float(), scale_factor=patch, mode="bilinear", align_corners=False)[0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    scaled = ((up - low) / (high - low)).nan_to_num(0.0)
    up = torch.where(high > 0, scaled, up)
    ids = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.Resampling.NEAREST))


def frame_batches(sequence: DavisSequence, size: int, batch: int) -> Iterator[torch.Tensor]:
    """The sequence's frames at ``size x size``, ``batch`` at a time: B x 3 x size x size float in [0, 1]."""
    for start in range(0, len(sequence.frames), batch):
        frames = [read_frame(path, size) for path in sequence.frames[start:start + batch]]
        yield torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def segment_sequence(sequence: DavisSequence, features: FeatureFn, size: int, patch: int, *,
                     settings: PropagationSettings = PropagationSettings(), device: torch.device | str = "cpu",
                     batch: int = 8) -> Iterator[np.ndarray]:
    """Yield the predicted H x W object ids of every frame (the first is its annotation)."""
    propagator = None
    first = read_labels(sequence.annotations[0])
    for images in frame_batches(sequence, size, batch):
        with torch.inference_mode():
            feats = features(images.to(device))
        if feats.dim() != 4 or feats.shape[0] != images.shape[0]:
            raise ValueError(f"features must be B x D x h x w with B = {images.shape[0]}, got {tuple(feats.shape)}")
        for frame_feats in feats:
            with torch.inference_mode():
                if propagator is None:
                    labels = grid_labels(first, tuple(frame_feats.shape[1:]), sequence.objects).to(frame_feats.device)
                    propagator = LabelPropagator(frame_feats, labels, settings)
                    predicted = first
                else:
                    predicted = full_resolution_labels(propagator.step(frame_feats), patch, sequence.size)
            yield predicted


def evaluate_sequences(sequences: Sequence[DavisSequence], features: FeatureFn, size: int, patch: int, *,
                       settings: PropagationSettings = PropagationSettings(), device: torch.device | str = "cpu",
                       batch: int = 8, save_masks: str | os.PathLike | None = None,
                       progress: tqdm | None = None) -> list[SequenceScores]:
    """Segment and score every sequence; ``save_masks`` writes ``<dir>/<seq>/<frame>.png`` palette masks."""
    results = []
    for sequence in sequences:
        scores = SequenceScores(sequence.name, sequence.objects)
        last = len(sequence.frames) - 1
        for index, labels in enumerate(segment_sequence(sequence, features, size, patch, settings=settings,
                                                        device=device, batch=batch)):
            if 0 < index < last:
                scores.add_frame(read_labels(sequence.annotations[index]), labels)
            if save_masks is not None:
                write_labels(Path(save_masks) / sequence.name / f"{sequence.frames[index].stem}.png", labels)
            if progress is not None:
                progress.update(1)
        logger.info("%s at %d: %s", sequence.name, size, scores.per_object())
        results.append(scores)
    return results


# ----------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    """Register ``davis`` on the ``python -m lift_rt.eval`` dispatcher."""
    p = subparsers.add_parser("davis", help="DAVIS-2017 video object segmentation J/F (supplemental Table 4 layout)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017)")
    p.add_argument("--split", default="val", help="sequence list ImageSets/2017/<split>.txt (default val)")
    p.add_argument("--sequences", default=None, help="comma-separated sequence names to evaluate (default: all of the split)")
    add_feature_arguments(p, upsamplers="lift", resolutions=[56, 112, 224, 448])
    p.add_argument("--batch", type=positive_int, default=8, help="frames per feature batch (default 8)")
    p.add_argument("--save-masks", default=None, metavar="DIR",
                   help="write the predicted palette PNGs as DIR/<upsampler>/<S>/<sequence>/<frame>.png")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """The ``davis`` command: print the table (bad inputs raise before any work; the dispatcher prints them)."""
    if args.json is not None:
        check_writable(args.json, "--json")
    if args.save_masks is not None:
        check_writable(args.save_masks, "--save-masks", folder=True)
    source = FeatureSource.from_args(args)
    upsamplers = source.check_rows(args.upsampler, args.resolutions)
    spec, device = get_spec(source.backbone), source.device
    names = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    sequences = load_davis(args.data, split=args.split, sequences=names)
    settings = PropagationSettings()
    frames = sum(len(s.frames) for s in sequences)
    scores: dict[str, dict[str, dict[int, float]]] = {}
    per_object: dict[str, dict[int, dict]] = {}
    with tqdm(total=frames * len(upsamplers) * len(args.resolutions), unit="frame", desc="davis") as progress:
        for name in upsamplers:
            features = source.features(name)
            row = source.row_label(name)
            scores[row] = {metric: {} for metric in METRICS}
            per_object[row] = {}
            for size in args.resolutions:
                progress.set_postfix_str(f"{row} {size}")
                masks = None if args.save_masks is None else Path(args.save_masks) / name / str(size)
                results = evaluate_sequences(sequences, features, size, spec.patch_size, settings=settings,
                                             device=device, batch=args.batch, save_masks=masks, progress=progress)
                for metric, value in summarise(results).items():
                    scores[row][metric][size] = 100.0 * value
                per_object[row][size] = {obj: {m: 100.0 * v for m, v in values.items()}
                                         for r in results for obj, values in r.per_object().items()}
    objects = sum(s.objects for s in sequences)
    print(f"DAVIS-2017 {args.split}: {len(sequences)} sequences, {objects} objects, {frames} frames; "
          f"{spec.name} ({source.weights}), backend {source.backend} {source.precision} on {device}; J / F / J&F means in %")
    print(format_table(scores, list(METRICS), args.resolutions))
    if args.json is not None:
        write_json(args.json, {
            "command": "davis", "data": str(args.data), "split": args.split,
            "sequences": [s.name for s in sequences], **source.settings(),
            "protocol": {**asdict(settings), "boundary_tolerance": BOUNDARY_TOLERANCE, "frame_resize": "bicubic",
                         "scored_frames": "all but the first and the last"},
            "units": "percent", "scores": scores, "per_object": per_object,
        })
    return 0
