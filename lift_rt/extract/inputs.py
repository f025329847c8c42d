"""The images to extract: listing them, splitting them into shards, decoding them in DataLoader workers."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from lift_rt.backbones import BackboneSpec
from lift_rt.data import IMAGE_EXTENSIONS, find_images
from lift_rt.preprocess import to_image_tensor
from lift_rt.sizing import SizePlan, SizePolicy


def error_text(exc: BaseException) -> str:
    """``Type: message`` on one line (a line of skipped.txt)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


@dataclass(frozen=True)
class Inputs:
    """Image paths in extraction order: ``keys`` as stored in the index, each ``root / key`` on disk."""

    root: Path
    keys: list[str]

    def path(self, index: int) -> Path:
        return self.root / self.keys[index]

    def digest(self) -> str:
        """SHA-256 of the ordered keys: two runs over other file lists never share an output folder."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()


def list_inputs(data: str | os.PathLike) -> Inputs:
    """A folder (every image below it, recursive, sorted; keys relative to it) or a text file of paths.

    A list holds one path per line (blank lines and lines starting with ``#`` ignored), relative
    paths taken from the list's own folder; its order is kept and a path listed twice is an error.
    """
    data = Path(data)
    if data.is_dir():
        return Inputs(data, [p.relative_to(data).as_posix() for p in find_images(data)])
    if not data.is_file():
        raise FileNotFoundError(f"--data {data} does not exist (give an image folder or a text file of image paths)")
    try:
        lines = data.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"--data {data} is not a readable text file of image paths ({error_text(exc)})") from None
    keys, seen = [], {}
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if key in seen:
            raise ValueError(f"--data {data}: line {number} repeats {key} (first on line {seen[key]})")
        seen[key] = number
        keys.append(key)
    if not keys:
        raise ValueError(f"--data {data} lists no image paths ({', '.join(IMAGE_EXTENSIONS)} files, one per line)")
    return Inputs(data.parent, keys)


def shard_ranges(count: int, shard_size: int) -> list[range]:
    """Shard j holds images ``j * shard_size`` up to ``(j + 1) * shard_size`` (the last may be shorter)."""
    return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def rank_shards(count: int, rank: int, world: int) -> list[int]:
    """The shards one process of ``world`` extracts: every world-th, from its rank on (the same for every run)."""
    return list(range(rank, count, world))


@dataclass
class Decoded:
    """One image ready for the ViT: ``pixels`` is ``3 x plan.padded`` float in [0, 1] (None, with ``error``, when unreadable)."""

    index: int
    pixels: torch.Tensor | None
    plan: SizePlan | None = None
    error: str | None = None


class ImageDecoder(torch.utils.data.Dataset):
    """``decoder[i]``: image i of ``inputs`` decoded, resized and padded by ``policy``; errors become ``Decoded.error``."""

    def __init__(self, inputs: Inputs, policy: SizePolicy, spec: BackboneSpec) -> None:
        self.inputs, self.policy, self.spec = inputs, policy, spec

    def __len__(self) -> int:
        return len(self.inputs.keys)

    def __getitem__(self, index: int) -> Decoded:
        try:
            with Image.open(self.inputs.path(index)) as image:
                tensor = to_image_tensor(image)
            plan = self.policy.plan(tensor.shape[-2], tensor.shape[-1], self.spec)
            return Decoded(index, plan.prepare(tensor)[0], plan)
        except Exception as exc:  # PIL raises many types for corrupt, truncated or odd files
            return Decoded(index, None, error=error_text(exc))


def chunks(indices: range, size: int) -> Iterator[list[int]]:
    """``indices`` in consecutive lists of at most ``size``."""
    for start in range(indices.start, indices.stop, size):
        yield list(range(start, min(start + size, indices.stop)))


def decode_in_workers(decoder: ImageDecoder, shards: list[range], chunk: int, workers: int) -> Iterator[list[Decoded]]:
    """Decoded chunks of each shard in order (a chunk never spans two shards), ``workers`` processes decoding ahead."""
    batches = [c for shard in shards for c in chunks(shard, chunk)]
    loader = torch.utils.data.DataLoader(
        decoder, batch_sampler=batches, collate_fn=list, num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    return iter(loader)
