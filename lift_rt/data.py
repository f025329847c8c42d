"""Image-folder data for training and evaluation.

:class:`ImageFolder` reads every image under a directory tree (recursive, like
torchvision's ImageFolder but without the class sub-folder requirement),
squashes each to ``size x size`` (no crop, no flip: the LiFT recipe) and
optionally applies the authors' colour jitter (torchvision's ColorJitter) as a pure function of
``(seed, epoch, index)``, so a run is reproducible whatever the number of
loader workers and a resumed run sees exactly the data it would have seen.

Unreadable files are skipped: each is logged once (one line, ``logging``), its
sample is replaced by the next readable file and flagged, so the training loop
counts unreadable files (not failed reads) across worker processes and an
evaluation leaves them out.

:func:`folder_identity` fingerprints the files of a folder (names, sizes and
modification times; no image is read), so that a resumed run can tell other data.

``python -m lift_rt.data sample DIR`` writes the small train / held-out image
sets cut from scikit-image's bundled photos that the tests and the README's CPU
demo use.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter

from lift_rt.arguments import check_writable
from lift_rt.cli import positive_int
from lift_rt.preprocess import pil_to_rgb

logger = logging.getLogger(__name__)

MAX_SAMPLE_SIZE = 4096  # data sample crops (the shipped photos are far smaller: larger crops only upscale)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files (by extension, case-insensitive) under ``root``, sorted, following sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def folder_identity(root: str | os.PathLike, files: list[Path]) -> dict[str, Any]:
    """What identifies the image ``files`` under ``root`` without reading them.

    ``{"files": count, "names": ..., "sizes": ..., "mtimes": ...}``: SHA-256 digests (hex) over the
    files in sorted order of their paths relative to ``root`` (so the folder may move), each digest
    adding one field per file to the one before: the relative path; then the size in bytes; then
    the modification time in nanoseconds. Comparing them in that order names what changed: other or
    renamed files, files of other sizes, or files rewritten (or copied without their times).
    """
    root = Path(root)
    entries = sorted((path.relative_to(root).as_posix(), path.stat()) for path in files)
    identity: dict[str, Any] = {"files": len(entries)}
    names, sizes, mtimes = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for name, stat in entries:
        names.update(f"{name}\0".encode())
        sizes.update(f"{name}\0{stat.st_size}\0".encode())
        mtimes.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    identity.update(names=names.hexdigest(), sizes=sizes.hexdigest(), mtimes=mtimes.hexdigest())
    return identity


IDENTITY_CHANGES: dict[str, str] = {
    "files": "another number of image files",
    "names": "other file names (files added, removed or renamed)",
    "sizes": "the same file names but files of other sizes (contents changed)",
    "mtimes": "the same names and sizes but other modification times (files rewritten, or copied without their "
              "times: cp -p and rsync -a keep them)",
}


def identity_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """How two :func:`folder_identity` values differ, in words (the first field that differs), or None."""
    for key, change in IDENTITY_CHANGES.items():
        if saved.get(key) != current.get(key):
            return change
    return None


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read one image as RGB and squash it to ``3 x size x size`` float32 in [0, 1] (bilinear, antialiased)."""
    from PIL import Image

    with Image.open(path) as image:
        array = pil_to_rgb(image)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    resized = F.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].clamp_(0.0, 1.0)


AUTHORS_JITTER = 0.2  # the authors' train_lift.py: ColorJitter(0.2, 0.2, 0.2, hue=0.2), on unless --augment is off on ImageNet


def check_jitter(strength: float, name: str = "colour jitter") -> None:
    """Raise ValueError unless ``strength`` lies in [0, 0.5] (0: no jitter; a hue shift beyond half a turn is meaningless)."""
    if not 0.0 <= strength <= 0.5:
        raise ValueError(f"{name} must lie in [0, 0.5], got {strength}")


def color_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`` on ``3 x H x W`` in [0, 1].

    As the authors' training: the four adjustments in a random order, the factors
    uniform in ``[1 - s, 1 + s]`` and the hue shift in ``[-s, s]`` turns. The draws
    come from ``generator`` (torchvision draws from the global generator, which
    is left untouched here). The authors jitter the 8-bit image before converting
    it, this jitters the float image: the same operations up to 8-bit rounding.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength)(image)


class NoReadableImagesError(ValueError):
    """An image folder whose files all fail to read."""


class ImageFolder(torch.utils.data.Dataset):
    """Every image under ``root``, as ``(3 x size x size float in [0, 1], unreadable)``.

    ``unreadable`` is 1 when the file at that index cannot be read (the image is then the next
    readable file's, a stand-in that keeps batches full: leave it out of any evaluation), else 0.

    Args:
        root: folder tree of images (any depth; non-image files are ignored).
        size: output side in pixels (images are squashed, aspect ratio not kept).
        jitter: colour-jitter strength, see :func:`color_jitter` (0, the default here, disables it; the
            authors trained with :data:`AUTHORS_JITTER`).
        seed: seeds the jitter, together with the epoch (:meth:`set_epoch`) and the index.
    """

    def __init__(self, root: str | os.PathLike, size: int, *, jitter: float = 0.0, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        check_jitter(jitter)
        self.root = Path(root)
        self.files = find_images(root)
        self.size = size
        self.jitter = jitter
        self.seed = seed
        self.epoch = 0
        self._reported: set[int] = set()  # indices of unreadable files already logged

    def identity(self) -> dict[str, Any]:
        """:func:`folder_identity` of this data set's files."""
        return folder_identity(self.root, self.files)

    def __len__(self) -> int:
        return len(self.files)

    def require_readable(self) -> None:
        """Raise :class:`NoReadableImagesError` unless some file reads as an image (stops at the first that does)."""
        for index in range(len(self.files)):
            if self._read(index) is not None:
                return
        raise NoReadableImagesError(
            f"no readable images under {self.root}: all {len(self.files)} image files found are unreadable"
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's jitter draws (call before creating the epoch's loader iterator)."""
        self.epoch = epoch

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``index`` or ``(index, epoch)`` (a sampler's way to pick the epoch's jitter draws in
        persistent loader workers, which never see :meth:`set_epoch` calls) -> (``3 x size x size``
        float image in [0, 1], 1 if file ``index`` is unreadable and the image a stand-in else 0)."""
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        image = self._read(index)
        unreadable = image is None
        for attempt in range(1, len(self.files)):
            if image is not None:
                break
            image = self._read((index + attempt) % len(self.files))
        if image is None:
            raise RuntimeError(f"none of the {len(self.files)} files under {self.root} could be read as an image")
        if self.jitter > 0:
            generator = torch.Generator().manual_seed(((self.seed * 1_000_003) + epoch) * 1_000_003 + index)
            image = color_jitter(image, self.jitter, generator)
        return image, int(unreadable)

    def _read(self, index: int) -> torch.Tensor | None:
        """File ``index`` as an image, or None when it cannot be read (logged once per file in this process)."""
        path = self.files[index]
        try:
            return load_image(path, self.size)
        except Exception as exc:  # PIL raises many types for corrupt or truncated files
            if index not in self._reported:
                self._reported.add(index)
                reason = str(exc).strip().splitlines()[0].replace(f" '{path}'", "") if str(exc).strip() else type(exc).__name__
                logger.warning("skipping unreadable image %s: %s", path, reason)
            return None


# scikit-image photos split by source, so held-out crops come from photos never trained on.
SAMPLE_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera", "brick"),
    "heldout": ("chelsea", "colorwheel", "coins", "gravel"),
}


def write_sample_images(root: str | os.PathLike, crops: int = 6, size: int = 192, seed: int = 0) -> dict[str, Path]:
    """Write ``root/train`` and ``root/heldout``: ``crops`` random square crops per source photo, as PNG.

    Crops have a random side between ``size`` and the photo's shorter side and are
    resized to ``size x size``. Returns the two folders. Needs scikit-image.
    """
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    folders = {}
    for split, names in SAMPLE_SOURCES.items():
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            photo = getattr(skimage.data, name)()
            if photo.ndim == 2:
                photo = np.repeat(photo[..., None], 3, axis=2)
            height, width = photo.shape[:2]
            for k in range(crops):
                side = int(rng.integers(min(size, height, width), min(height, width) + 1))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                crop = Image.fromarray(photo[top : top + side, left : left + side, :3])
                crop.resize((size, size), Image.BILINEAR).save(folder / f"{name}_{k}.png")
        folders[split] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lift_rt.data", description="Data utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="write train/ and heldout/ crops of scikit-image's bundled photos")
    sample.add_argument("root", help="output folder")
    sample.add_argument("--crops", type=positive_int, default=6, help="crops per source photo (default 6)")
    sample.add_argument("--size", type=positive_int, default=192,
                        help=f"crop side in pixels (default 192, at most {MAX_SAMPLE_SIZE})")
    sample.add_argument("--seed", type=int, default=0, help="seed of the random crop sides and positions (default 0)")
    args = parser.parse_args(argv)
    if args.size > MAX_SAMPLE_SIZE:  # a typo such as 100000 would need tens of GB per crop
        parser.error(f"argument --size: at most {MAX_SAMPLE_SIZE} pixels, got {args.size}")
    try:
        check_writable(args.root, "root", folder=True)
        folders = write_sample_images(args.root, crops=args.crops, size=args.size, seed=args.seed)
    except (ValueError, OSError) as exc:  # root is a file, not writable, or cannot be created: a message
        reason = str(exc) if isinstance(exc, ValueError) else f"cannot write under {args.root} ({exc.strerror or exc})"
        print(f"{parser.prog} sample: error: {reason}", file=sys.stderr)
        return 2
    for split, folder in folders.items():
        print(f"{split}: {len(find_images(folder))} images in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
