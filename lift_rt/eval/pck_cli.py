"""python -m lift_rt.eval pck: keypoint-transfer PCK in the layout of the supplemental's Table 1.

One row per upsampler, PCK@0.1 and PCK@0.05 per evaluation resolution S, on
SPair-71k (--dataset spair:DIR) or on synthetic warped pairs with exact
ground truth. Each image is letterboxed to S x S; the keypoint conventions
follow --protocol (default: the authors'; lift_rt.eval.pairs), the transfer is
lift_rt.eval.transfer's, the score lift_rt.eval.pck's.

The pair draw: --pairs N draws N pairs per category with replacement from a
numpy default_rng(seed), visiting the categories in sorted order, so the
draw is the same on every machine. The authors' script seeds numpy's global
generator once and visits the categories in os.listdir order, which depends
on the file system: its draw cannot be reproduced elsewhere. --pairs all
takes every pair of the split once (the authors' 0).
"""

from __future__ import annotations

import argparse

from lift_rt.arguments import check_writable
from lift_rt.cli import add_feature_arguments, non_negative_int, positive_float
from lift_rt.eval.methods import FeatureSource
from lift_rt.eval.pairs import PROTOCOLS, KeypointPair
from lift_rt.eval.pck import ALPHAS, AVERAGES, pck
from lift_rt.eval.report import format_table, write_json
from lift_rt.eval.spair import load_spair, sample_per_category
from lift_rt.eval.synthetic import PHOTOS, synthetic_pairs
from lift_rt.eval.transfer import evaluate_pairs

TABLE_ALPHAS: tuple[float, ...] = (0.1, 0.05)  # the columns of the supplemental's Table 1 (the JSON has every alpha)
DEFAULT_PAIRS = {"spair": 100, "synthetic": 20}


def metric_name(alpha: float) -> str:
    return f"PCK@{alpha:g}"


def load_dataset(spec: str, *, per_category: int | None, split: str = "test", seed: int = 0) -> list[KeypointPair]:
    """``"synthetic"`` or ``"spair:DIR"`` -> pairs: ``per_category`` drawn per category (seed ``seed``), None = all."""
    if spec == "synthetic":
        if per_category is None:
            raise ValueError("--pairs all needs a dataset with a fixed set of pairs (spair:DIR); "
                             "synthetic pairs are generated: give a number per category")
        return synthetic_pairs(per_category * len(PHOTOS), seed=seed)
    if spec.startswith("spair:"):
        pairs = load_spair(spec.removeprefix("spair:"), split=split)
        return pairs if per_category is None else sample_per_category(pairs, per_category, seed=seed)
    raise ValueError(f"unknown dataset {spec!r}; use 'synthetic' or 'spair:DIR'")


def pairs_arg(text: str) -> int | str:
    """argparse type of ``--pairs``: a positive integer or ``all``."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {value}")
    return value


def add_parser(subparsers) -> None:
    """Register ``pck`` on the ``python -m lift_rt.eval`` dispatcher."""
    p = subparsers.add_parser("pck", help="keypoint-transfer PCK (supplemental Table 1 layout)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add_feature_arguments(p, upsamplers="lift", resolutions=[56, 112, 224, 448],
                          seed_help="draws the pairs (default 0) and, with --random-init, the random weights "
                                    "(default: the LiFT checkpoint's training seed, else 0)")
    add("--protocol", default="authors", choices=tuple(PROTOCOLS),
        help="keypoint conventions: " + "; ".join(f"{name}: {text}" for name, text in PROTOCOLS.items())
             + " (default authors)")
    add("--dataset", default="synthetic",
        help="'synthetic' (default: warped pairs of the shipped photos) or 'spair:DIR' (SPair-71k root; pair files "
             "named ...:CATEGORY.json as released, or ..._CATEGORY.json)")
    add("--split", default="test", choices=("trn", "val", "test"), help="SPair-71k split (default test; synthetic pairs have none)")
    add("--pairs", type=pairs_arg, default=None, metavar="N|all",
        help="pairs per category drawn with replacement (numpy default_rng(--seed), categories in sorted order), or 'all': "
             f"every pair of the split once, SPair only (default: {DEFAULT_PAIRS['spair']} for SPair, "
             f"{DEFAULT_PAIRS['synthetic']} synthetic)")
    add("--iterations", type=int, default=1, help="LiFT applications for the lift row: 1 = 2x, 2 = 4x (default 1)")
    add("--matcher", default="auto", choices=("auto", "torch", "cpp"),
        help="nearest-neighbour search: cpp (lift_rt.matching), torch (the pure-PyTorch reference); auto = cpp")
    add("--average", default="category", choices=AVERAGES,
        help="PCK averaged per category (default, as the paper), over all points, or per image")
    add("--mutual", action="store_true", help="count only mutual nearest neighbours")
    add("--soft-argmax", type=positive_float, default=None, metavar="T", help="soft-argmax with temperature T")
    add("--window", type=non_negative_int, default=None, help="soft-argmax window radius in pixels (default: one feature cell)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """The ``pck`` command: print the table (bad inputs raise; the dispatcher prints them)."""
    if args.json:
        check_writable(args.json, "--json")
    source = FeatureSource.from_args(args)
    upsamplers = source.check_rows(args.upsampler, args.resolutions)
    dataset_kind = "spair" if args.dataset.startswith("spair:") else "synthetic"
    per_category = None if args.pairs == "all" else args.pairs or DEFAULT_PAIRS[dataset_kind]
    pairs = load_dataset(args.dataset, per_category=per_category, split=args.split, seed=args.seed or 0)
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for name in upsamplers:
        backend = source.features(name)
        row = source.row_label(name)
        scores[row] = {metric_name(alpha): {} for alpha in ALPHAS}
        for size in args.resolutions:
            results = evaluate_pairs(
                pairs, backend, size, protocol=args.protocol, matcher=args.matcher, device=source.device,
                mutual=args.mutual, soft_argmax=args.soft_argmax, window=args.window, progress=f"{row} {size}px",
            )
            for alpha, value in pck(results, ALPHAS, args.average).items():
                scores[row][metric_name(alpha)][size] = value
    categories = len({p.category for p in pairs})
    title = (f"PCK ({args.average} average, {args.protocol} protocol) on {args.dataset}: {len(pairs)} pairs, "
             f"{categories} categories; {source.backbone} ({source.weights}), backend {source.backend} {source.precision} on {source.device}")
    print(title)
    print(format_table(scores, [metric_name(alpha) for alpha in TABLE_ALPHAS], args.resolutions))
    if args.json:
        settings = {
            "protocol": args.protocol, "pairs": args.pairs or per_category, "pairs_seed": args.seed or 0, "pairs_evaluated": len(pairs),
            "categories": categories, "dataset": args.dataset, "split": args.split, **source.settings(),
            "matcher": args.matcher, "average": args.average,
            "mutual": args.mutual, "soft_argmax": args.soft_argmax, "window": args.window,
        }
        write_json(args.json, {"command": "pck", "title": title, "settings": settings, "scores": scores})
    return 0
