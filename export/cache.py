"""On-disk cache of exported artifacts (ONNX graphs, TensorRT plans).

Each artifact is stored under a name derived from an :class:`ArtifactKey`
(everything that changes its bytes: backbone, facet, weights hash, resolution,
precision, batch range, runtime version, device) beside a ``.json`` sidecar
holding the full key and the file's SHA-256. A file whose sidecar is missing,
names another key or a different digest is stale or corrupt: it is rebuilt
with a warning, never used.

The cache is capped at ``$LIFT_RT_CACHE_MAX_GB`` GiB (default 8): after an
artifact is written, the least recently used ones (by modification time, which
a cache hit refreshes) are removed until the artifacts total less.

Messages go to this module's logger (``lift_rt.export.cache``): what is built
(and how long it took), reused and removed at INFO; rebuilds of stale or
corrupt files at WARNING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

CACHE_ENV = "LIFT_RT_CACHE"
CACHE_MAX_ENV = "LIFT_RT_CACHE_MAX_GB"
DEFAULT_CACHE_MAX_GB = 8.0

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$LIFT_RT_CACHE`` or ``~/.cache/lift_rt``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lift_rt")


def weights_hash(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Part of every key: bump it when a change to lift_rt makes the exported graph or engine differ for the
# same weights (operator choices, casts, folding), so caches written by older code are rebuilt, not reused.
EXPORT_FORMAT = 2


@dataclass(frozen=True)
class ArtifactKey:
    """Everything an exported file depends on. ``runtime``: e.g. ``torch-2.14.1`` or ``tensorrt-10.13``."""

    backbone: str
    facet: str
    layer: int
    iterations: int
    weights: str
    height: int
    width: int
    precision: str
    runtime: str
    min_batch: int = 1
    max_batch: int | None = None
    opt_batch: int | None = None
    opset: int | None = None
    device: str = "any"
    export_format: int = EXPORT_FORMAT

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def stem(self) -> str:
        """Readable file stem ending in a hash of the whole key."""
        batch = f"-b{self.min_batch}-{self.max_batch}" if self.max_batch is not None else ""
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return (
            f"{self.backbone}-{self.facet}{self.layer}-k{self.iterations}-{self.height}x{self.width}"
            f"-{self.precision}{batch}-{digest}"
        )


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def invalid_reason(path: Path, key: ArtifactKey) -> str | None:
    """None when ``path`` is a complete artifact for ``key``; else why it cannot be used."""
    if not path.is_file():
        return "not built yet"
    meta_path = sidecar(path)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return f"{meta_path.name} is missing (interrupted build?)"
    except (OSError, ValueError) as exc:
        return f"{meta_path.name} is unreadable ({exc})"
    if not isinstance(meta, dict):
        return f"{meta_path.name} is unreadable (a JSON {type(meta).__name__}, not a record)"
    if meta.get("key") != key.as_dict():
        return "it was built for another configuration (stale)"
    if meta.get("sha256") != file_digest(path):
        return "its checksum does not match (corrupt or truncated file)"
    return None


def store(path: Path, key: ArtifactKey) -> None:
    """Write the sidecar recording ``key`` and the digest of ``path``."""
    meta = {"key": key.as_dict(), "sha256": file_digest(path), "bytes": path.stat().st_size}
    sidecar(path).write_text(json.dumps(meta, indent=1, sort_keys=True))


def cache_limit_bytes() -> int | None:
    """``$LIFT_RT_CACHE_MAX_GB`` (GiB, default 8) in bytes; None when it is 0 or negative (never prune)."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    try:
        gib = float(text) if text else DEFAULT_CACHE_MAX_GB
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib):
        raise ValueError(f"{CACHE_MAX_ENV}={text!r}: expected a size in GiB, e.g. 8 (0 or negative: no limit)")
    return int(gib * 2**30) if gib > 0 else None


def cache_entries(directory: Path) -> list[tuple[Path, int, float]]:
    """Artifacts in ``directory`` that have a sidecar: (path, bytes of both files, mtime of the artifact).

    Only files written by :func:`cached_artifact` count (a sidecar holding a key
    and a digest), so other files in the folder are never sized or removed.
    """
    entries = []
    for meta_path in directory.glob("*.json"):
        path = meta_path.with_name(meta_path.name[: -len(".json")])
        try:
            meta = json.loads(meta_path.read_text())
            stat = path.stat()
            size = stat.st_size + meta_path.stat().st_size
        except (OSError, ValueError):  # no artifact, unreadable, or removed meanwhile
            continue
        if isinstance(meta, dict) and {"key", "sha256"} <= meta.keys() and path.is_file():
            entries.append((path, size, stat.st_mtime))
    return entries


def prune_cache(directory: Path, keep: Path) -> list[Path]:
    """Remove the least recently used artifacts (with their sidecars) until the cache totals under its limit.

    The limit is :func:`cache_limit_bytes` (none: nothing is removed). ``keep``,
    the artifact just written in ``directory``, is never removed. Logs one line
    (INFO) per removal; returns the removed artifacts, oldest first.
    """
    limit = cache_limit_bytes()
    if limit is None:
        return []
    entries = sorted(cache_entries(Path(directory)), key=lambda entry: (entry[2], entry[0].name))
    total = sum(size for _, size, _ in entries)
    removed = []
    for path, size, _ in entries:
        if total < limit:
            break
        if path.name == Path(keep).name:
            continue
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)
        total -= size
        removed.append(path)
        logger.info("removed %s (%.1f MiB): least recently used entry of a cache over its %g GiB limit ($%s)",
                    path, size / 2**20, limit / 2**30, CACHE_MAX_ENV)
    return removed


def cached_artifact(
    directory: Path,
    key: ArtifactKey,
    suffix: str,
    build: Callable[[Path], None],
    action: str,
) -> Path:
    """Path of the valid artifact for ``key`` in ``directory``, building it when absent, stale or corrupt.

    ``build(tmp_path)`` writes the file; it is moved into place only once
    complete, so an interrupted build never leaves a file that looks valid.
    ``action`` says what a build does, for the log (INFO), e.g. ``exporting
    dino_s8 224x224 fp32 to ONNX (takes 10 s to a minute on a CPU)``.
    A hit refreshes the artifact's mtime; a build then prunes the cache
    (:func:`prune_cache`) when ``directory`` is the default cache (:func:`default_cache_dir`).
    """
    directory = Path(directory)
    path = directory / f"{key.stem}{suffix}"
    reason = invalid_reason(path, key)
    if reason is None:
        logger.info("using cached %s", path)
        with contextlib.suppress(OSError):  # a read-only cache still serves; only its LRU order goes stale
            os.utime(path)
        return path
    if path.exists():
        logger.warning("rebuilding %s: %s", path.name, reason)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the folder (or a parent) is a file, or cannot be created
        raise ValueError(f"cannot create the cache folder {directory}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    logger.info("%s", action)
    start = time.perf_counter()
    try:
        build(tmp)
        sidecar(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    store(path, key)
    logger.info("wrote %s (%.1f MiB, %.0f s)", path, path.stat().st_size / 2**20, time.perf_counter() - start)
    if directory.resolve() == default_cache_dir().resolve():  # a folder named by the user (--out) is never pruned
        prune_cache(directory, keep=path)
    return path
