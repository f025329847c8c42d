"""Small DAVIS-2017-format folders built on the fly: a textured disc moving over a scikit-image photo
(object 1) and a square sliding out of the frame (object 2), with exact masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from lift_rt.eval.davis_data import write_labels


def scene(frames: int = 8, size: tuple[int, int] = (72, 96)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """-> RGB frames H x W x 3 uint8 and their object ids H x W uint8."""
    h, w = size
    photo = np.asarray(Image.fromarray(skdata.camera()).resize((w, h), Image.Resampling.BILINEAR))
    background = np.stack([photo // 2] * 3, axis=-1)  # dark grey: the objects' colours never occur in it
    yy, xx = np.mgrid[:h, :w]
    images, labels = [], []
    for t in range(frames):
        image, ids = background.copy(), np.zeros((h, w), np.uint8)
        cy, cx, radius = h // 2, 20 + 3 * t, 13
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        checker = ((yy // 4 + xx // 4) % 2).astype(bool)
        image[disc & checker] = (230, 30, 30)
        image[disc & ~checker] = (250, 120, 20)
        ids[disc] = 1
        top, left = 4, w - 24 + 6 * t  # slides right, out of the frame after a few frames
        square = (yy >= top) & (yy < top + 16) & (xx >= left) & (xx < left + 16)
        image[square] = (20, 40, 240)
        ids[square] = 2
        images.append(image)
        labels.append(ids)
    return images, labels


def write_davis(root: Path, sequences: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], split: str = "val") -> Path:
    """Write ``{name: (frames, labels)}`` in the DAVIS-2017 layout under ``root``."""
    for name, (images, labels) in sequences.items():
        frame_dir, mask_dir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        frame_dir.mkdir(parents=True)
        for t, (image, ids) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(frame_dir / f"{t:05d}.jpg", quality=95)
            write_labels(mask_dir / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{name}\n" for name in sequences))
    return root
