"""Random weights written as files, shared by the tests and the benchmarks (bench/conftest.py imports it).

Lets the reference and every Engine load the same weights from disk where no
pretrained ones exist (CI). Random weights only: say so wherever numbers from them appear.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lift_rt.backbones import create_vit, get_spec
from lift_rt.checkpoint import save_lift
from lift_rt.model import LiFT


def random_weight_files(backbone: str, directory: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """Random backbone and LiFT weights drawn from ``seed`` -> (backbone .pth, LiFT .safetensors) under ``directory``."""
    spec = get_spec(backbone)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone_path = directory / f"{spec.name}-random-{seed}.pth"
    torch.save(create_vit(spec).state_dict(), backbone_path)
    lift_path = save_lift(LiFT(spec.dim, spec.patch_size), directory / f"lift-{spec.name}-random-{seed}.safetensors",
                          backbone=spec.name, facet=spec.facet)
    return backbone_path, lift_path
