"""Training checkpoints: weights as safetensors, resume state in a sidecar.

``NAME.safetensors`` holds the upsampler's weights and buffers (written by
:func:`lift_rt.checkpoint.save_lift`, metadata: backbone, facet, upsampler,
layer, random_init, backbone_seed, imsize, loss, epoch, step) and is all
inference needs. ``NAME.state.pt`` next to it holds what resuming needs on top:
the optimizer state, the position in the data (epoch, batches done in it,
global step), the RNG states and the run's settings (checked on resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lift_rt.checkpoint import read_lift_state, save_lift
from lift_rt.errors import load_error_reason

SIDECAR_SUFFIX = ".state.pt"


def sidecar_path(weights: str | os.PathLike) -> Path:
    """``run/epoch3.safetensors`` -> ``run/epoch3.state.pt``."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + SIDECAR_SUFFIX)


@dataclass
class Position:
    """Where a run stands: ``epoch`` (0-based, in progress), ``batch`` (batches done in it), ``step`` (global),
    ``skipped`` (unreadable image files met in this epoch, all ranks), ``loss_sum`` (sum of this epoch's step
    losses), ``best_epoch`` / ``best_loss`` (the finished epoch of lowest mean step loss, 0 / None before one)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped: int = 0
    loss_sum: float = 0.0
    best_epoch: int = 0
    best_loss: float | None = None


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_checkpoint(
    path: str | os.PathLike,
    upsampler: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: Position,
    settings: dict[str, Any],
    metadata: dict[str, str],
) -> Path:
    """Write ``path`` (safetensors weights) and its sidecar; returns ``path``.

    ``settings`` must hold ``backbone`` and ``facet``; ``metadata`` is added to
    the safetensors header as strings.
    """
    path = Path(path)
    extra = {**metadata, "epoch": str(position.epoch), "step": str(position.step)}
    sidecar = {
        "optimizer": optimizer.state_dict(),
        "position": vars(position).copy(),
        "settings": dict(settings),
        "rng": rng_states(),
    }
    # Both files are written aside first and renamed after: a failed or interrupted save leaves the
    # previous pair (or nothing), never half a file; the step in both tells a stray mix on resume.
    weights_tmp, sidecar_tmp = path.with_name(path.name + ".tmp"), sidecar_path(path).with_suffix(".tmp")
    try:
        save_lift(upsampler, weights_tmp, backbone=settings["backbone"], facet=settings["facet"], extra=extra)
        torch.save(sidecar, sidecar_tmp)
    except (OSError, RuntimeError) as exc:  # a full disk shows as either (torch.save raises RuntimeError)
        for tmp in (weights_tmp, sidecar_tmp):
            tmp.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__  # torch's last line is the OS's
        raise OSError(f"cannot write checkpoint {path}: {reason}") from exc
    os.replace(sidecar_tmp, sidecar_path(path))
    os.replace(weights_tmp, path)
    return path


def remove_training_checkpoint(path: str | os.PathLike) -> None:
    """Delete checkpoint ``path`` and its sidecar (the weights first: a lone sidecar is never taken for a checkpoint)."""
    Path(path).unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def read_resume_state(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of checkpoint ``path`` (optimizer, position, settings, rng), checked for shape, not applied."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"cannot resume from {path}: its resume state {side} is missing")
    try:
        sidecar = torch.load(side, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a torch file

        raise ValueError(f"cannot resume from {path}: its resume state {side} is unreadable ({load_error_reason(exc)})") from None
    if not isinstance(sidecar, dict) or not {"optimizer", "position", "settings", "rng"} <= sidecar.keys():
        raise ValueError(f"cannot resume from {path}: {side} is not a lift_rt resume state")
    return sidecar


def load_training_checkpoint(
    path: str | os.PathLike, upsampler: nn.Module, optimizer: torch.optim.Optimizer, sidecar: dict[str, Any] | None = None
) -> Position:
    """Restore weights, optimizer and RNG states from ``path`` and its sidecar (read here unless given,
    from :func:`read_resume_state`); returns the position. The two files must come from the same step."""
    path = Path(path)
    sidecar = read_resume_state(path) if sidecar is None else sidecar
    state, meta = read_lift_state(path)
    position = Position(**sidecar["position"])
    if "step" in meta and meta["step"] != str(position.step):
        raise ValueError(f"cannot resume from {path}: its weights are from step {meta['step']} but its resume state "
                         f"{sidecar_path(path)} from step {position.step} (files of two saves)")
    try:
        upsampler.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit this run's upsampler: {exc}") from exc
    try:
        optimizer.load_state_dict(sidecar["optimizer"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot resume from {path}: the optimizer state in {sidecar_path(path)} does not fit ({exc!r})") from None
    set_rng_states(sidecar["rng"])
    return position
