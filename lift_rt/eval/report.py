"""One table and JSON writer for every evaluation command (pck, fidelity, davis, corloc).

The paper's tables share one layout: one row per method (upsampler), then for
each metric a group of columns, one per setting (evaluation resolution, or data
set). :func:`format_table` prints that layout; :func:`write_json` writes the same
scores, with the settings that produced them, atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from lift_rt.files import atomic_path

# scores[row][metric][column] -> value; e.g. scores["lift"]["PCK@0.1"][224] = 43.9
Scores = Mapping[str, Mapping[str, Mapping[Any, float]]]


def format_table(scores: Scores, metrics: Sequence[str], columns: Sequence[Any], *, label: str = "upsampler",
                 digits: int = 1, width: int = 7) -> str:
    """Rows of ``scores`` under a two-line header: metric groups, then one column per setting.

    A missing score prints as ``-``; NaN prints as ``nan``.
    """
    label_width = max(len(label), *(len(str(row)) for row in scores)) if scores else len(label)
    group_width = width * len(columns)
    head1 = " " * label_width + "".join(f" | {metric:<{group_width}}" for metric in metrics)
    head2 = f"{label:<{label_width}}" + "".join(" | " + "".join(f"{str(c):>{width}}" for c in columns) for _ in metrics)
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for row, by_metric in scores.items():
        cells = ""
        for metric in metrics:
            values = by_metric.get(metric, {})
            cells += " | " + "".join(
                f"{values[c]:{width}.{digits}f}" if c in values else f"{'-':>{width}}" for c in columns
            )
        lines.append(f"{str(row):<{label_width}}{cells}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-safe copy: mapping keys as strings, NaN/inf as None, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (:func:`lift_rt.files.atomic_path`)."""
    path = Path(path)
    text = json.dumps(_plain(payload), indent=2) + "\n"  # a payload that cannot be written fails before any file
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
