"""The trainable upsampler of a training run (the frozen backbone is :func:`lift_rt.backbones.build_backbone`'s).

A randomly initialised backbone is drawn from ``seed`` in a forked RNG, so the
same seed rebuilds the very same backbone later (for resuming, or for
evaluating a LiFT trained against it); the seed is stored in the checkpoint.
"""

from __future__ import annotations

import os

from torch import nn

from lift_rt.backbones import get_spec
from lift_rt.checkpoint import load_lift, read_lift_state
from lift_rt.model import LiFT
from lift_rt.upsamplers import UPSAMPLERS, build_upsampler


def trainable_upsamplers() -> list[str]:
    """Names in :data:`lift_rt.upsamplers.UPSAMPLERS` whose modules have parameters (lift, rc)."""
    return [name for name in UPSAMPLERS if any(True for _ in build_upsampler(name, 8, 8).parameters())]


def build_trainable(name: str, backbone: str, *, use_image: bool = True) -> nn.Module:
    """A fresh upsampler ``name`` for ``backbone``; ``use_image=False`` is LiFT's 'No Img.' ablation."""
    spec = get_spec(backbone)
    if name == "lift":
        return LiFT(dim=spec.dim, patch_size=spec.patch_size, use_image=use_image)
    if not use_image:
        raise ValueError(f"the no-image ablation applies to LiFT only, not to the {name!r} upsampler")
    module = build_upsampler(name, spec.dim, spec.patch_size)
    if not any(True for _ in module.parameters()):
        raise ValueError(f"upsampler {name!r} has no parameters to train; trainable: {', '.join(trainable_upsamplers())}")
    return module


def load_upsampler(path: str | os.PathLike, *, backbone: str, facet: str | None = None) -> tuple[nn.Module, dict[str, str]]:
    """A trained upsampler file (LiFT or another, e.g. rc) and its metadata, in eval mode on the CPU."""
    state, meta = read_lift_state(path)
    name = meta.get("upsampler", "lift")
    if name == "lift":
        return load_lift(path, backbone=backbone, facet=facet), meta
    spec = get_spec(backbone)
    for key, wanted in (("backbone", spec.name), ("facet", facet or spec.facet)):
        if meta.get(key) != wanted:
            raise ValueError(f"{path} was trained for {key} {meta.get(key)!r}, not {wanted!r}")
    module = build_upsampler(name, spec.dim, spec.patch_size)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit a {name!r} upsampler for {spec.name}: {exc}") from exc
    return module.eval(), meta
