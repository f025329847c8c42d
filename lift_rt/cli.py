"""Checks the command-line tools share: argparse types, the device, output paths, load errors.

Each raises ValueError (or argparse.ArgumentTypeError) with a one-line message
naming the flag, which the tools print as ``<prog>: error: <message>``. Also
:func:`integer_arg`, the same rule for integer arguments of the Python API, and
:func:`show_logs`, which the tools call to print the library's log records.
"""

from __future__ import annotations

import argparse
import logging
import operator
import os
import sys
from pathlib import Path

import torch


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


def _int_at_least(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def integer_arg(name: str, value, minimum: int) -> int:
    """An API argument as an int >= minimum (numpy and torch integers too): bool, float and str are
    TypeErrors naming ``name``, smaller values ValueErrors."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


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


def cli_device(device: str | None) -> torch.device:
    """:func:`lift_rt.engine.engine_device` for ``--device``; a CUDA device not present is a ValueError."""
    from lift_rt.engine import engine_device

    try:
        return engine_device(device)
    except RuntimeError as exc:  # engine_device's one RuntimeError: CUDA asked for but not visible
        raise ValueError(f"--device {device}: {exc}") from None


def check_writable(path: str | os.PathLike, flag: str, *, folder: bool = False) -> None:
    """Raise ValueError unless ``path`` (a file, or a folder when ``folder``) can be written, missing parents
    created: its first existing ancestor must be a writable folder (or, for a file, the file itself)."""
    target = Path(path).absolute()
    if target.is_dir() and not folder:
        raise ValueError(f"{flag} {path} is a folder, not a file")
    if target.exists() and not target.is_dir():
        if folder:
            raise ValueError(f"{flag} {path} is a file, not a folder")
        if not os.access(target, os.W_OK):
            raise ValueError(f"{flag} {path} is not writable")
        return
    ancestor = target if target.exists() else target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path} cannot be created: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: {ancestor} is not writable")


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` text: without reST's double backticks."""
    return doc.replace("``", "")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` for an empty message)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_error_reason(exc: BaseException) -> str:
    """:func:`first_line` of a ``torch.load`` error, without torch's advice to load with weights_only=False."""
    reason = first_line(exc)
    return type(exc).__name__ if "weights_only" in reason else reason
