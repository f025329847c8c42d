"""Checks of user-given arguments, shared by the Python API and the command lines.

Each raises TypeError or ValueError with a one-line message naming the argument
(or the flag), which the command lines print as ``<prog>: error: <message>``.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any


def integer_arg(name: str, value: Any, minimum: int) -> int:
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
