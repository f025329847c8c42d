"""``lift_rt.FeatureStore``: read back what ``python -m lift_rt.extract`` wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lift_rt.extract.pca import ChannelPCA
from lift_rt.extract.shards import SHARDS_FOLDER, finished_records

MANIFEST = "manifest.json"
PCA_FILE = "pca.safetensors"


class FeatureStore(torch.utils.data.Dataset):
    """Features of an extraction folder, by index or by path: ``store[i] -> (path, C x h x w tensor)``.

    Shard files are opened memory-mapped (safetensors ``safe_open``) when first read; only
    finished shards are visible, so a store can be read while extraction goes on
    (:meth:`refresh` picks up shards finished since). Images are ordered as extracted (sorted
    paths for a folder, the list's order for a list); skipped images are absent (``skipped``).

    Attributes:
        manifest: the run's settings (backbone, facet, layer, weights hashes, size policy, dtype, ...).
        pca: the :class:`~lift_rt.extract.pca.ChannelPCA` of a ``--pca K`` run (None otherwise); the
            stored tensors have K channels, ``store.reconstruct(t)`` returns C.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.folder} holds no {MANIFEST}: not an output folder of python -m lift_rt.extract")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        pca_file = self.folder / PCA_FILE
        self.pca = ChannelPCA.load(pca_file) if self.manifest["settings"].get("pca") else None
        self._handles: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the finished shards' records."""
        entries, skipped = [], []
        for record in finished_records(self.folder):
            entries += [dict(e, file=record["file"]) for e in record["images"]]
            skipped += record["skipped"]
        entries.sort(key=lambda e: e["index"])
        self.entries = entries
        self.skipped: list[dict[str, Any]] = sorted(skipped, key=lambda e: e["index"])
        self._by_path = {e["path"]: i for i, e in enumerate(entries)}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def paths(self) -> list[str]:
        return [e["path"] for e in self.entries]

    def __contains__(self, path: str) -> bool:
        return path in self._by_path

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        entry = self.entries[i]
        return entry["path"], self._read(entry)

    def get(self, path: str) -> torch.Tensor:
        """Features of the image stored under ``path`` (as in the index: relative to the folder, or as listed)."""
        try:
            return self._read(self.entries[self._by_path[path]])
        except KeyError:
            raise KeyError(f"{path} is not in {self.folder} (not extracted yet, skipped, or another path)") from None

    def info(self, i: int) -> dict[str, Any]:
        """Index entry of image i: path, shape, original_size and input_size (the resized size, pixels)."""
        return dict(self.entries[i])

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Stored ``K x h x w`` -> ``C x h x w`` float32 for a ``--pca`` store (float32 of the input otherwise)."""
        return self.pca.reconstruct(features) if self.pca is not None else features.float()

    def _read(self, entry: dict[str, Any]) -> torch.Tensor:
        handle = self._handles.get(entry["file"])
        if handle is None:
            handle = self._handles[entry["file"]] = safe_open(str(self.folder / SHARDS_FOLDER / entry["file"]), framework="pt")
        return handle.get_tensor(entry["key"])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}
