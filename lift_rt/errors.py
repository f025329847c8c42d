"""Exceptions as the one-line reasons that lift_rt's error messages quote."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` for an empty message)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_error_reason(exc: BaseException) -> str:
    """:func:`first_line` of a ``torch.load`` error, without torch's advice to load with weights_only=False."""
    reason = first_line(exc)
    return type(exc).__name__ if "weights_only" in reason else reason
