"""DAVIS-2017 semi-supervised layout: reading sequences and writing palette masks.

``DIR/JPEGImages/480p/<seq>/*.jpg`` frames, ``DIR/Annotations/480p/<seq>/*.png`` indexed (palette)
masks whose pixel values are object ids (0 background; 255, if present, is void, which the DAVIS
evaluation counts as background, and so do we), ``DIR/ImageSets/2017/<split>.txt`` the sequence
names. The validation set annotates every frame: the first frame's mask starts the propagation,
the others are the ground truth it is scored against. Everything is checked when the set is
opened, so an evaluation never stops half-way on a bad file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lift_rt.files import atomic_path

VOID = 255
RESOLUTION = "480p"

@dataclass(frozen=True)
class DavisSequence:
    """One video: frame and annotation paths in frame order (same stems), and its object count."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]
    objects: int
    size: tuple[int, int]  # (height, width) of every frame

def davis_palette() -> np.ndarray:
    """The DAVIS (PASCAL VOC) colour map, 256 x 3 uint8: id i gets the colour its bits spell out,
    spread from the high bits down (0 black, 1 dark red, 2 dark green, 3 olive, ...)."""
    ids = np.arange(256)
    colours = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)

def _check_palette(image: Image.Image, path: str | os.PathLike) -> None:
    if image.mode != "P":
        raise ValueError(f"{path} is a mode-{image.mode} image, not a palette PNG: DAVIS masks store object ids "
                         "as palette indices")

def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A palette PNG -> H x W uint8 object ids, void (255) as background."""
    with Image.open(path) as image:
        _check_palette(image, path)
        labels = np.array(image)
    labels[labels == VOID] = 0
    return labels

def read_frame(path: str | os.PathLike, size: int) -> np.ndarray:
    """A frame resized to ``size x size`` (bicubic, as the authors) -> size x size x 3 uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))

def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """H x W uint8 object ids -> a palette PNG with the DAVIS colours, written atomically."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().ravel().tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")

def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as exc:
        raise ValueError(f"{path} cannot be read as an image ({exc})") from None

def read_sequence(root: str | os.PathLike, name: str) -> DavisSequence:
    """One sequence, checked: frames present, one palette annotation per frame (same stems and size)."""
    root = Path(root)
    frame_dir, mask_dir = root / "JPEGImages" / RESOLUTION / name, root / "Annotations" / RESOLUTION / name
    frames = sorted(frame_dir.glob("*.jpg"))
    if not frames:
        raise FileNotFoundError(f"sequence {name!r}: no frames (*.jpg) in {frame_dir}")
    annotations = sorted(mask_dir.glob("*.png"))
    missing = [f.stem for f in frames if not (mask_dir / f"{f.stem}.png").exists()]
    if missing or len(annotations) != len(frames):
        what = f"no annotation for frame {missing[0]}" if missing else "annotations without a frame"
        raise ValueError(f"sequence {name!r}: {len(frames)} frames but {len(annotations)} annotations in {mask_dir} "
                         f"({what}); the DAVIS-2017 val layout annotates every frame (the first starts the "
                         "propagation, the rest are scored)")
    if len(frames) < 3:
        raise ValueError(f"sequence {name!r} has {len(frames)} frames; DAVIS scores the frames between the first "
                         "and the last, so it needs at least 3")
    size = _image_size(frames[0])
    for path in (*frames, *annotations):
        height, width = _image_size(path)
        if (height, width) != size:
            raise ValueError(f"{path} is {width} x {height}, the sequence's first frame {size[1]} x {size[0]}")
    for path in annotations:
        with Image.open(path) as image:
            _check_palette(image, path)
    objects = int(read_labels(annotations[0]).max())
    if objects == 0:
        raise ValueError(f"sequence {name!r}: the first frame's annotation {annotations[0]} holds no object")
    return DavisSequence(name, tuple(frames), tuple(annotations), objects, size)

def load_davis(root: str | os.PathLike, *, split: str = "val", sequences: list[str] | None = None) -> list[DavisSequence]:
    """The sequences of ``ImageSets/2017/<split>.txt`` (or the named ``sequences`` among them), checked."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder (the DAVIS-2017 root with JPEGImages/, Annotations/, "
                                "ImageSets/)")
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} is missing: the DAVIS-2017 layout lists its {split} sequences there")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if sequences:
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise ValueError(f"--sequences {','.join(unknown)}: not in {listing}")
        names = [n for n in names if n in sequences]
    if not names:
        raise ValueError(f"{listing} names no sequence")
    return [read_sequence(root, name) for name in names]
