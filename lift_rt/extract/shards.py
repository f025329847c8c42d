"""Shard files on disk: a safetensors file of features plus a JSON record per shard, written by a thread.

A shard counts as finished when its record ``shards/shard-NNNNNN.json`` exists and names a
features file of the recorded size. Both are written to a temporary name and renamed, features
first, so a process killed at any point leaves either a finished shard or one that is redone.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lift_rt.eval.report import write_json
from lift_rt.extract.errors import ExtractError
from lift_rt.files import atomic_path

SHARDS_FOLDER = "shards"


def shard_stem(number: int) -> str:
    return f"shard-{number:06d}"


def record_path(out: Path, number: int) -> Path:
    return out / SHARDS_FOLDER / f"{shard_stem(number)}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A finished shard's record, or None (missing, unreadable, or its features file absent or of another size)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        features = path.parent / record["file"]
        return record if features.stat().st_size == record["bytes"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_records(out: Path) -> list[dict[str, Any]]:
    """Every finished shard's record, by shard number."""
    paths = sorted((out / SHARDS_FOLDER).glob("shard-*.json"))
    return [r for r in map(read_record, paths) if r is not None]


def remove_partial(out: Path, number: int) -> None:
    """Delete what a killed run may have left of one shard: temporary files and features without a record."""
    folder, stem = out / SHARDS_FOLDER, shard_stem(number)
    for leftover in folder.glob(f".{stem}.*.tmp"):
        leftover.unlink(missing_ok=True)
    if read_record(record_path(out, number)) is None:
        (folder / f"{stem}.safetensors").unlink(missing_ok=True)


@dataclass
class ShardContent:
    """One shard in memory: ``tensors`` by key (``C x h x w``), the index ``entries``, the ``skipped`` images."""

    number: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def write_shard(out: Path, shard: ShardContent) -> int:
    """Write the features, then the record (each to a temporary name, then renamed); returns the features' bytes."""
    folder, stem = out / SHARDS_FOLDER, shard_stem(shard.number)
    target = folder / f"{stem}.safetensors"
    with atomic_path(target) as tmp:
        save_file(shard.tensors, tmp)
    size = target.stat().st_size
    record = {"shard": shard.number, "file": target.name, "bytes": size, "images": shard.entries, "skipped": shard.skipped}
    write_json(record_path(out, shard.number), record)
    return size


class ShardWriter:
    """Writes shards on a background thread, at most ``depth`` waiting (compute stalls rather than memory growing).

    The first write error stops further writes and is raised by the next :meth:`submit` or by
    :meth:`close`; shards not written are left unfinished, to be redone by the next run.
    """

    def __init__(self, out: Path, depth: int = 2) -> None:
        (out / SHARDS_FOLDER).mkdir(parents=True, exist_ok=True)
        self.out = out
        self.written_bytes = 0
        self.written_shards = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[ShardContent | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="lift_rt-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (shard := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self.written_bytes += write_shard(self.out, shard)
                    self.written_shards += 1
                except OSError as exc:  # a full disk, a vanished folder: reported to the caller, one line
                    self.error = ExtractError(
                        f"writing shard {shard.number} to {self.out / SHARDS_FOLDER} failed ({exc.strerror or exc}); "
                        f"the finished shards are kept: fix that, then re-run the same command to resume")
                except BaseException as exc:
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, shard: ShardContent) -> None:
        """Queue a shard (waits while ``depth`` are queued); raises an earlier write's error."""
        while True:
            self._raise()
            try:
                self._queue.put(shard, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write what is queued, stop the thread, raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
