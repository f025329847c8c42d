"""Feature fidelity: how close 2x-upsampled features come to the backbone's own 2x features.

For each held-out image (squashed to ``S x S``), the backbone sees the image at
``S`` and its decimation ``img[:, :, ::2, ::2]`` at ``S/2`` (as in training).
Each upsampler lifts the ``S/2`` features to the ``S`` grid; the score is the
cosine similarity over channels with the backbone's ``S`` features, averaged
over positions, then over images (mean and standard deviation over images).
Higher is better; 1 is a perfect match. Unreadable files are skipped: named
(one line each), counted in the title and left out of the mean.

``python -m lift_rt.eval fidelity --backbone dino_s16 --lift run/epoch5.safetensors --data heldout/``
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from lift_rt.backbones import FACETS, ViTFeatures, build_backbone, get_spec
from lift_rt.checkpoint import read_lift_metadata, trained_backbone
from lift_rt.arguments import check_writable
from lift_rt.cli import non_negative_int, plain_text, positive_int, show_logs
from lift_rt.devices import device_arg
from lift_rt.data import ImageFolder
from lift_rt.eval.report import format_table, write_json
from lift_rt.pipeline import LiftPipeline
from lift_rt.train.losses import feature_pyramid
from lift_rt.train.models import load_upsampler
from lift_rt.upsamplers import build_upsampler

BASELINES: tuple[str, ...] = ("bilinear", "rc", "jbu", "nearest")
METRIC = "cosine similarity at 2x"


@torch.no_grad()
def evaluate_fidelity(
    backbone: ViTFeatures,
    upsamplers: dict[str, nn.Module],
    batches: Iterable[torch.Tensor],
    device: torch.device | str = "cpu",
) -> dict[str, tuple[float, float]]:
    """``{name: (mean, std over images)}`` of the mean cosine similarity at 2x.

    ``batches`` yields ``B x 3 x S x S`` images in [0, 1], S a multiple of twice the patch size.
    """
    pipeline = LiftPipeline(backbone, lift=None).to(device).eval()
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in upsamplers}
    for images in batches:
        image = pipeline.normalise(images.to(device))
        (_, target), (small, feats) = feature_pyramid(pipeline.backbone, image, levels=2)
        for name, upsampler in upsamplers.items():
            pred = upsampler.to(device).eval()(small, feats)
            per_image = torch.nn.functional.cosine_similarity(pred.float(), target.float(), dim=1).mean((1, 2))
            scores[name].append(per_image.cpu())
    results = {}
    for name, parts in scores.items():
        if not parts:
            raise ValueError("no images to evaluate")
        per_image = torch.cat(parts).double()
        std = per_image.std().item() if per_image.numel() > 1 else 0.0
        results[name] = (per_image.mean().item(), std)
    return results


def fidelity_scores(results: dict[str, tuple[float, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: (mean, std)}`` -> :mod:`lift_rt.eval.report` scores (metric :data:`METRIC`, columns mean and std), best first."""
    ranked = sorted(results.items(), key=lambda item: -item[1][0])
    return {name: {METRIC: {"mean": mean, "std": std}} for name, (mean, std) in ranked}


def _backbone_settings(args: argparse.Namespace, facet: str) -> dict:
    """Backbone settings for the evaluation: the command line, else what the checkpoint was trained with."""
    layer, seed = trained_backbone(args.lift, layer=args.layer, random_backbone=args.random_init and not args.backbone_weights,
                                   seed=args.seed)
    return dict(weights=args.backbone_weights, random_init=args.random_init, facet=facet, layer=layer, seed=seed)


def run(args: argparse.Namespace) -> int:
    """The ``fidelity`` command: print the table (bad inputs raise; the dispatcher prints them)."""
    device = device_arg(args.device)
    if args.json:
        check_writable(args.json, "--json")
    spec = get_spec(args.backbone)
    facet = args.facet or read_lift_metadata(args.lift).get("facet") or spec.facet
    lift, meta = load_upsampler(args.lift, backbone=spec.name, facet=facet)
    settings = _backbone_settings(args, facet)
    imsize = args.imsize if args.imsize is not None else int(meta.get("imsize", 448))
    if imsize <= 0 or imsize % (2 * spec.patch_size):
        raise ValueError(f"--imsize {imsize} must be a multiple of 2 x patch = {2 * spec.patch_size}")
    backbone = build_backbone(spec.name, **settings).requires_grad_(False)
    upsamplers: dict[str, nn.Module] = {meta.get("upsampler", "lift"): lift}
    for name in BASELINES:
        if name in upsamplers:
            continue
        if name == "rc" and args.rc:
            rc, rc_meta = load_upsampler(args.rc, backbone=spec.name, facet=facet)
            if rc_meta.get("upsampler") != "rc":
                raise ValueError(f"--rc {args.rc} holds a {rc_meta.get('upsampler', 'lift')!r} upsampler, not a resize-conv "
                                 "(train one with python -m lift_rt.train --upsampler rc)")
            upsamplers[name] = rc
        elif name == "rc":
            upsamplers["rc (untrained)"] = build_upsampler(name, spec.dim, spec.patch_size)
        else:
            upsamplers[name] = build_upsampler(name, spec.dim, spec.patch_size)
    show_logs()  # one line per unreadable file
    dataset = ImageFolder(args.data, imsize)
    dataset.require_readable()
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=args.workers)
    unreadable: list[Path] = []
    results = evaluate_fidelity(backbone, upsamplers, readable_batches(dataset, loader, unreadable), device)
    init = "random init" if settings["random_init"] else "pretrained"
    skipped = f" ({len(unreadable)} unreadable skipped)" if unreadable else ""
    title = (
        f"fidelity at 2x: {spec.name} ({facet}, layer {backbone.layer}, {init}), {len(dataset) - len(unreadable)} images "
        f"from {args.data}{skipped}: "
        f"features of the {imsize // 2} px image lifted to the {imsize // spec.patch_size} x {imsize // spec.patch_size} "
        f"grid of the {imsize} px image"
    )
    print(title)
    print(format_table(fidelity_scores(results), [METRIC], ["mean", "std"], digits=4, width=9))
    if args.json:
        write_json(args.json, {"title": title, "results": {k: {"mean": m, "std": s} for k, (m, s) in results.items()}})
    if any(math.isnan(mean) for mean, _ in results.values()):
        return 1
    return 0


def readable_batches(dataset: ImageFolder, loader: torch.utils.data.DataLoader, unreadable: list[Path]) -> Iterator[torch.Tensor]:
    """The readable images of ``loader``'s batches (in ``dataset`` order, with a progress bar); the files
    that could not be read are appended to ``unreadable`` and left out (their stand-ins dropped)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    start = 0
    with logging_redirect_tqdm([logging.getLogger("lift_rt")]), tqdm(loader, desc="fidelity", unit="batch", dynamic_ncols=True) as bar:
        for images, flags in bar:
            bad = flags.bool()
            unreadable.extend(dataset.files[start + i] for i in bad.nonzero().flatten().tolist())
            start += len(flags)
            if not bad.all():
                yield images[~bad]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fidelity", help="mean cosine similarity of 2x-upsampled features with the backbone's own 2x features",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--backbone", required=True, help="registry backbone the LiFT was trained for")
    add("--lift", required=True, metavar="CKPT", help="trained LiFT (safetensors from lift_rt.train, or the authors' .pth)")
    add("--data", required=True, help="folder tree of held-out images")
    add("--rc", default=None, metavar="CKPT", help="trained resize-conv (lift_rt.train --upsampler rc); "
        "without it rc is evaluated untrained (identity-initialised: nearest followed by the identity conv)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--backbone-weights", default=None, metavar="F", help="the backbone's official checkpoint file")
    weights.add_argument("--random-init", action="store_true", help="random backbone, as the checkpoint was trained with")
    add("--seed", type=int, default=None, help="seed of a random backbone (default: the one stored in the checkpoint)")
    add("--facet", choices=FACETS, default=None, help="backbone facet (default: the checkpoint's, else the backbone's)")
    add("--layer", type=int, default=None, help="backbone block (default: the checkpoint's, else the last)")
    add("--imsize", type=int, default=None, help="evaluation size S (default: the checkpoint's training size, else 448)")
    add("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    add("--workers", type=non_negative_int, default=0, help="data-loading processes (default 0)")
    add("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.set_defaults(func=run)
