"""argparse types the command-line tools share; imported by command-line modules only.

Each raises argparse.ArgumentTypeError with a one-line message, which argparse
prints as ``<prog>: error: argument <flag>: <message>``. Checks shared with the
Python API live in :mod:`lift_rt.arguments`, the device flag in :mod:`lift_rt.devices`.
Also what every tool does with its help text (:func:`plain_text`) and with the
library's log records (:func:`show_logs`).
"""

from __future__ import annotations

import argparse
import logging
import sys


def _int_at_least(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``56,112,224``."""
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


SEED_HELP = "random weights' seed with --random-init (default: the LiFT checkpoint's training seed, else 0)"


def add_feature_arguments(parser: argparse.ArgumentParser, *, upsamplers: str, resolutions: list[int],
                          seed_help: str = SEED_HELP) -> None:
    """The flags every evaluation command shares for where its features come from
    (:class:`lift_rt.eval.methods.FeatureSource`), and --json; ``upsamplers`` and ``resolutions`` are the command's defaults,
    ``seed_help`` says what else ``--seed`` draws in it."""
    from lift_rt.engine import PIPELINE_UPSAMPLERS

    add = parser.add_argument
    add("--backbone", default="dino_s8", help="registry backbone (default dino_s8)")
    add("--upsampler", default=upsamplers,
        help=f"comma-separated table rows, from {', '.join(PIPELINE_UPSAMPLERS)}; none = the backbone's own features "
             f"(default {upsamplers})")
    add("--resolutions", type=positive_int_list, default=resolutions,
        help=f"evaluation sizes S, multiples of the backbone's patch (default {','.join(map(str, resolutions))})")
    add("--lift", default=None, metavar="CKPT", help="LiFT checkpoint for the lift row (safetensors or the authors' .pth)")
    add("--rc", default=None, metavar="CKPT", help="trained resize-conv for the rc row (python -m lift_rt.train --upsampler rc); "
        "without it rc is evaluated untrained (identity-initialised: nearest) and labelled so")
    add("--backbone-weights", default=None, metavar="F", help="official backbone checkpoint (default: the timm / Hugging Face cache)")
    add("--random-init", action="store_true", help="random backbone (and LiFT) weights, drawn from --seed: for testing only")
    add("--backend", default="torch", help="Engine backend for the features (default torch; auto picks the fastest)")
    add("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="feature precision (default fp32)")
    add("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add("--seed", type=int, default=None, help=seed_help)
    add("--json", default=None, metavar="PATH", help="also write every score (each row, metric and resolution) and the settings as JSON")


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` text: without reST's double backticks."""
    return doc.replace("``", "")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _LineFormatter(logging.Formatter):
    """``message`` for info, ``warning: message`` (error: ...) above it: one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def show_logs(level: int = logging.INFO) -> None:
    """Print the ``lift_rt`` loggers' records of ``level`` and above on stderr, one line each (once per process)."""
    root = logging.getLogger("lift_rt")
    root.setLevel(level)
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
        root.addHandler(handler)
