"""``python -m lift_rt.train``: train a LiFT (or another learned upsampler) on a folder of images.

Single process: ``python -m lift_rt.train --backbone dino_s16 --data /imagenet/train``.
Several GPUs / machines: ``torchrun --nproc_per_node 4 -m lift_rt.train ...`` (``--batch`` is the
global batch, split over the processes).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lift_rt.backbones import BACKBONES, FACETS
from lift_rt.cli import non_negative_int, plain_text, show_logs
from lift_rt.train.losses import LOSSES
from lift_rt.train.loop import TrainConfig, Trainer, train_defaults
from lift_rt.train.models import trainable_upsamplers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lift_rt.train", description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--backbone", required=True, choices=sorted(BACKBONES), help="frozen ViT whose features LiFT learns to lift")
    add("--data", required=True, help="folder tree of images (any depth; unreadable files are skipped and counted)")
    add("--facet", choices=FACETS, help="backbone feature: key (default), query, value or token")
    add("--layer", type=int, help="block the features come from, 0-based (default: the last)")
    add("--upsampler", choices=trainable_upsamplers(),
        help="what to train: lift (default) or rc (the resize-conv baseline, same loop and loss)")
    add("--no-image", dest="use_image", action="store_false",
        help="'No Img.' ablation: LiFT without its image branch, seeing the features alone")
    add("--loss", choices=sorted(LOSSES),
        help="cos: mean over positions of 1 - cosine similarity (the paper's); l1 / l2: ablations (default %(default)s)")
    add("--epochs", type=int, help="passes over the data (default %(default)s)")
    add("--batch", type=int,
        help="global batch size, split over torchrun processes (default: 256 for /16 backbones, 64 for /8)")
    add("--lr", type=float, help="Adam learning rate, constant, no weight decay (default %(default)s)")
    add("--imsize", type=int,
        help="images are squashed to imsize x imsize; the loss uses them at 1, 1/2 and 1/4 of it (default %(default)s)")
    add("--color-jitter", type=float, metavar="S",
        help="colour jitter as torchvision's ColorJitter(brightness=S, contrast=S, saturation=S, hue=S), the four in a "
             "random order per image; 0 turns it off (default %(default)s: the paper's recipe, whose README "
             "trains with --augment, i.e. this jitter)")
    add("--out",
        help="output folder: epochN.safetensors (+ .state.pt resume state) each epoch, interrupted.* on Ctrl-C "
             "(removed once a later checkpoint is saved), log.jsonl (default %(default)s)")
    add("--keep-last", type=non_negative_int, metavar="N",
        help="keep the last N epoch checkpoints and the best one (lowest mean loss over its steps); "
             "0 keeps every epoch (default %(default)s)")
    add("--resume", metavar="F",
        help="continue from checkpoint F = NAME.safetensors (its resume state NAME.state.pt must sit next to it)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--backbone-weights", metavar="F",
                         help="the backbone's official checkpoint file (default: the Hugging Face cache)")
    weights.add_argument("--random-init", action="store_true",
                         help="randomly initialised backbone, drawn from --seed (for tests and demos)")
    add("--workers", type=non_negative_int, help="data-loading processes per training process (default %(default)s)")
    add("--seed", type=int,
        help="seeds LiFT's init, the data order, the jitter and a random backbone (default %(default)s)")
    add("--device", help="cpu, cuda or cuda:N (default: this process's GPU if any, else cpu)")
    add("--max-steps", type=int, help="stop after this many steps in all (saves stepN.safetensors)")
    add("--no-amp", dest="amp", action="store_false", help="on GPU, train in fp32 instead of bf16 autocast")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(**train_defaults())  # every default lives in TrainConfig alone
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
    show_logs()
    try:
        path = _run(config, parser.prog)
    except KeyboardInterrupt:  # Ctrl-C during set-up (once training runs, Ctrl-C saves and returns)
        print(f"{parser.prog}: interrupted before training started, nothing saved", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:  # bad data/weights, divergence: a message
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk while saving: nothing half-written is left behind
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    if path is None:
        return 0
    print(f"saved {path}")
    if path.name.startswith("interrupted"):
        given = sys.argv[1:] if argv is None else list(argv)
        kept = [a for i, a in enumerate(given) if a != "--resume" and (i == 0 or given[i - 1] != "--resume")
                and not a.startswith("--resume=")]
        print("continue with: " + shlex.join([parser.prog.split()[0], *parser.prog.split()[1:], *kept, "--resume", str(path)]))
        return 130
    return 0


def _run(config: TrainConfig, prog: str) -> Path | None:
    """Set up and train, log lines printed above the progress bars; a KeyboardInterrupt escapes from set-up only
    (a second Ctrl-C during training stops at once: exit 130)."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm([logging.getLogger("lift_rt")]), Trainer(config) as trainer:
        try:
            return trainer.fit()
        except KeyboardInterrupt:
            print(f"{prog}: interrupted twice: stopped at once, nothing saved since the last checkpoint", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    sys.exit(main())
