"""SPair-71k in the dataset's own layout.

``ROOT/JPEGImages/<category>/<name>.jpg``, ``ROOT/ImageAnnotation/<category>/<name>.json``,
``ROOT/PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json``. A pair
file holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` / ``trg_kps``
(lists of [x, y] in pixels, only keypoints visible in both images, in the same
order), ``src_bndbox`` / ``trg_bndbox`` ([x1, y1, x2, y2]) and more fields that
the PCK protocol does not use.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from lift_rt.eval.pairs import KeypointPair

CATEGORIES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)
SPLITS: tuple[str, ...] = ("trn", "val", "test")


def read_pair(path: Path, root: Path) -> KeypointPair:
    """One PairAnnotation JSON -> :class:`KeypointPair` (images stay on disk)."""
    try:
        ann = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read SPair pair annotation {path}: {exc}") from exc
    missing = [k for k in ("category", "src_imname", "trg_imname", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox") if k not in ann]
    if missing:
        raise ValueError(f"{path} is not an SPair-71k pair annotation: missing {missing}")
    category = ann["category"]
    src_path = root / "JPEGImages" / category / ann["src_imname"]
    trg_path = root / "JPEGImages" / category / ann["trg_imname"]
    for image in (src_path, trg_path):
        if not image.is_file():
            raise FileNotFoundError(f"{path} names image {image}, which does not exist")
    return KeypointPair(
        category=category,
        src_image=src_path,
        trg_image=trg_path,
        src_kps=np.asarray(ann["src_kps"], dtype=np.float64).reshape(-1, 2),
        trg_kps=np.asarray(ann["trg_kps"], dtype=np.float64).reshape(-1, 2),
        src_bbox=tuple(ann["src_bndbox"]),
        trg_bbox=tuple(ann["trg_bndbox"]),
        name=path.stem,
    )


def load_spair(root: str | os.PathLike, split: str = "test", categories: Sequence[str] | None = None) -> list[KeypointPair]:
    """All pairs of one split (sorted by file name), optionally of some categories only."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown SPair-71k split {split!r}; choose one of {', '.join(SPLITS)}")
    pair_dir = root / "PairAnnotation" / split
    for folder in (root / "JPEGImages", pair_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{root} does not look like SPair-71k: {folder} is missing")
    pairs = [read_pair(path, root) for path in sorted(pair_dir.glob("*.json"))]
    if categories is not None:
        unknown = set(categories) - {p.category for p in pairs}
        if unknown:
            raise ValueError(f"no {split} pairs of categories {sorted(unknown)} under {pair_dir}")
        pairs = [p for p in pairs if p.category in set(categories)]
    if not pairs:
        raise ValueError(f"no pair annotations under {pair_dir}")
    return pairs


def sample_per_category(pairs: Sequence[KeypointPair], per_category: int = 100, seed: int = 0) -> list[KeypointPair]:
    """``per_category`` pairs of each category drawn with replacement (numpy generator ``seed``).

    Categories are visited in sorted order so the draw depends only on the pairs and the seed.
    """
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    by_category: dict[str, list[KeypointPair]] = defaultdict(list)
    for pair in pairs:
        by_category[pair.category].append(pair)
    rng = np.random.default_rng(seed)
    out: list[KeypointPair] = []
    for category in sorted(by_category):
        group = by_category[category]
        out.extend(group[i] for i in rng.choice(len(group), size=per_category, replace=True))
    return out
