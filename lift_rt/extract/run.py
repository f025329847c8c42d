"""One extraction run: settings check, optional PCA fit, the decode -> compute -> write loop, the index merge.

Several processes (``torchrun``) split the shards: process r of n extracts shards r, r + n,
... (:func:`lift_rt.extract.inputs.rank_shards`), so the output does not depend on n and a run
may be resumed with another n. Rank 0 writes the manifest and the PCA before the others start
and merges the index after all have finished (two barriers of ``torch.distributed``, gloo).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

from lift_rt.engine import Engine
from lift_rt.eval.report import write_json
from lift_rt.extract.errors import ExtractError
from lift_rt.extract.inputs import Decoded, ImageDecoder, Inputs, decode_in_workers, rank_shards, shard_ranges
from lift_rt.extract.pca import ChannelPCA, fit_pca
from lift_rt.extract.shards import ShardContent, ShardWriter, finished_records, read_record, record_path, remove_partial
from lift_rt.extract.store import MANIFEST, PCA_FILE
from lift_rt.files import atomic_path
from lift_rt.preprocess import PRECISIONS
from lift_rt.sizing import SizePolicy

logger = logging.getLogger(__name__)

INDEX = "index.json"
SKIPPED = "skipped.txt"


@dataclass(frozen=True)
class Process:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def join_job() -> Process:
    """Join the ``torchrun`` job given by the environment (``WORLD_SIZE``, ``RANK``), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Process()
    if not torch.distributed.is_initialized():
        # gloo: the job only needs barriers; ranks wait for the slowest, so allow a long wait.
        torch.distributed.init_process_group("gloo", timeout=timedelta(days=1))
    return Process(torch.distributed.get_rank(), world)


def run_settings(engine: Engine, inputs: Inputs, policy: SizePolicy, *, lift: str | None, dtype: str, pca: int | None,
                 pca_sample: int, shard_size: int) -> dict[str, Any]:
    """What the stored features depend on; a resumed run must match these exactly."""
    from lift_rt.export.cache import weights_hash

    pipeline = engine.pipeline
    return {
        "backbone": engine.spec.name, "facet": pipeline.backbone.facet, "layer": pipeline.backbone.layer,
        "iterations": pipeline.iterations, "lift": Path(lift).name if lift else "random-init",
        "backbone_weights_hash": weights_hash(pipeline.backbone), "lift_weights_hash": weights_hash(pipeline.lift),
        "size_policy": policy.describe(),
        "precision": engine.precision, "dtype": dtype, "pca": pca, "pca_sample": pca_sample if pca else None,
        "shard_size": shard_size, "images": len(inputs.keys), "paths_sha256": inputs.digest(),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{key} {old.get(key)!r} there, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def check_manifest(out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` already holds a run with these settings, False when it holds none; raise otherwise."""
    path = out / MANIFEST
    if not path.exists():
        if (out / "shards").exists():
            raise ExtractError(f"--out {out} holds shards but no {MANIFEST}: not a lift_rt.extract folder, or a damaged "
                               "one; use another --out")
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError) as exc:
        raise ExtractError(f"--out {out}: {MANIFEST} is unreadable ({exc}); use another --out") from None
    changed = differences(old, settings)
    if changed:
        raise ExtractError(f"--out {out} holds features made with other settings ({'; '.join(changed)}): "
                           "re-run with the same settings to resume, or use another --out")
    return True


def features_of(engine: Engine, items: list[Decoded], batch: int) -> list[torch.Tensor]:
    """Engine features of decoded images of one input size (one Engine call), ``C x h x w`` each, cropped to
    each image's cells. A CUDA out-of-memory error says which ``--batch`` to try."""
    pixels = torch.stack([item.pixels for item in items])
    try:
        feats = engine(pixels)
    except torch.OutOfMemoryError:
        h, w = pixels.shape[-2:]
        raise ExtractError(f"out of GPU memory on a batch of {len(items)} images of {h} x {w} (--batch {batch}): "
                           f"try --batch {max(1, batch // 2)}") from None
    return [item.plan.crop(f) for item, f in zip(items, feats)]


def bucketed(items: list[Decoded], batch: int) -> list[list[Decoded]]:
    """Readable images grouped by input size (sizes in sorted order), in slices of at most ``batch``."""
    by_size: dict[tuple[int, ...], list[Decoded]] = {}
    for item in items:
        by_size.setdefault(tuple(item.pixels.shape), []).append(item)
    return [group[i : i + batch] for _, group in sorted(by_size.items()) for i in range(0, len(group), batch)]


def fit_sample_pca(engine: Engine, decoder: ImageDecoder, k: int, sample: int, batch: int) -> ChannelPCA:
    """PCA of the features of ``sample`` images spread evenly over the inputs (unreadable ones left out)."""
    count = len(decoder)
    picks = sorted({round(i * (count - 1) / max(1, sample - 1)) for i in range(min(sample, count))})
    items = [item for item in (decoder[i] for i in picks) if item.error is None]
    if not items:
        raise ExtractError(f"--pca {k}: none of the {len(picks)} sample images could be read")
    maps = [f for group in bucketed(items, batch) for f in features_of(engine, group, batch)]
    logger.info("PCA fitted on %d images", len(maps))
    return fit_pca(maps, k)


def finish_shard(shard: ShardContent, items: list[Decoded], feats: list[torch.Tensor], inputs: Inputs,
                 pca: ChannelPCA | None, dtype: torch.dtype) -> None:
    for item, f in zip(items, feats):
        stored = (pca.project(f) if pca is not None else f).to("cpu", dtype).contiguous()
        key = str(item.index)
        shard.tensors[key] = stored
        shard.entries.append({"index": item.index, "path": inputs.keys[item.index], "key": key,
                              "shape": list(stored.shape), "original_size": list(item.plan.original),
                              "input_size": list(item.plan.resized)})


def extract_shards(engine: Engine, decoder: ImageDecoder, out: Path, shards: list[range], numbers: list[int], *,
                   batch: int, workers: int, pca: ChannelPCA | None, dtype: torch.dtype,
                   progress: Callable[[int], None]) -> ShardWriter:
    """Decode (workers), compute (this thread) and write (a thread) the given shards, overlapped."""
    decoded = decode_in_workers(decoder, shards, batch, workers)  # forks the workers before the writer thread starts
    writer = ShardWriter(out)
    try:
        for number, indices in zip(numbers, shards):
            items: list[Decoded] = []
            while len(items) < len(indices):
                items += next(decoded)
            shard = ShardContent(number)
            shard.skipped = [{"index": i.index, "path": decoder.inputs.keys[i.index], "reason": i.error}
                             for i in items if i.error is not None]
            readable = [i for i in items if i.error is None]
            for group in bucketed(readable, batch):
                finish_shard(shard, group, features_of(engine, group, batch), decoder.inputs, pca, dtype)
            order = {i.index: n for n, i in enumerate(readable)}
            shard.entries.sort(key=lambda e: order[e["index"]])
            writer.submit(shard)
            progress(len(indices))
    finally:
        del decoded  # stops the DataLoader workers
        writer.close()
    return writer


def merge_index(out: Path, inputs: Inputs) -> dict[str, int]:
    """Write ``index.json`` and ``skipped.txt`` from the finished shards' records; return the totals."""
    records = finished_records(out)
    images, skipped = {}, []
    for record in records:
        for entry in record["images"]:
            images[entry["path"]] = {"shard": f"shards/{record['file']}", "key": entry["key"], "shape": entry["shape"],
                                     "original_size": entry["original_size"], "input_size": entry["input_size"]}
        skipped += record["skipped"]
    order = {key: i for i, key in enumerate(inputs.keys)}
    images = dict(sorted(images.items(), key=lambda kv: order[kv[0]]))
    write_json(out / INDEX, {"images": images, "count": len(images), "skipped": len(skipped)})
    lines = "".join(f"{s['path']}\t{s['reason']}\n" for s in sorted(skipped, key=lambda s: s["index"]))
    with atomic_path(out / SKIPPED) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    return {"images": len(images), "skipped": len(skipped), "bytes": sum(r["bytes"] for r in records),
            "shards": len(records), "missing": len(inputs.keys) - len(images) - len(skipped)}


@dataclass
class RunResult:
    """What one process did, and (rank 0) the totals over the output folder."""

    new_images: int
    new_shards: int
    new_bytes: int
    seconds: float
    totals: dict[str, int] | None


def extract(engine: Engine, inputs: Inputs, out: Path, policy: SizePolicy, settings: dict[str, Any], *,
            process: Process, batch: int, workers: int, progress_factory: Callable[[int], Any]) -> RunResult:
    """The whole run for this process (see the module docstring for the order of the steps)."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    resumed = check_manifest(out, settings)
    decoder = ImageDecoder(inputs, policy, engine.spec)
    pca_path = out / PCA_FILE
    if process.rank == 0:
        if not resumed:
            import lift_rt

            write_json(out / MANIFEST, {"settings": settings, "lift_rt_version": lift_rt.__version__,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if settings["pca"] and not pca_path.exists():  # an earlier run may have fitted it
            fit_sample_pca(engine, decoder, settings["pca"], settings["pca_sample"], batch).save(pca_path)
    process.barrier()
    pca = ChannelPCA.load(pca_path) if settings["pca"] else None
    layout = shard_ranges(len(inputs.keys), settings["shard_size"])
    numbers = [n for n in rank_shards(len(layout), process.rank, process.world)
               if read_record(record_path(out, n)) is None]
    for n in numbers:
        remove_partial(out, n)
    todo = [layout[n] for n in numbers]
    bar = progress_factory(sum(len(r) for r in todo))
    try:
        writer = extract_shards(engine, decoder, out, todo, numbers, batch=batch, workers=workers, pca=pca,
                                dtype=PRECISIONS[settings["dtype"]], progress=bar.update)
    finally:
        bar.close()
    new_images = sum(len(layout[n]) for n in numbers)
    process.barrier()
    totals = merge_index(out, inputs) if process.rank == 0 else None
    return RunResult(new_images, writer.written_shards, writer.written_bytes, time.perf_counter() - start, totals)
