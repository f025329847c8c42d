"""The devices an :class:`~lift_rt.engine.Engine` runs on."""

from __future__ import annotations

import torch

ENGINE_DEVICES = "cpu, cuda or cuda:N"


def engine_device(device: str | torch.device | None) -> torch.device:
    """The device an :class:`Engine` runs on: ``device`` (cpu, cuda or cuda:N), or CUDA when present, else CPU.

    Raises ValueError for any other device (meta, mps, ...) and RuntimeError
    for a CUDA device that is not visible to PyTorch.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device; an Engine runs on {ENGINE_DEVICES}") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: an Engine runs on {ENGINE_DEVICES}, not {resolved.type}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for but no CUDA device is visible to PyTorch")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"device={device!r} was asked for but PyTorch sees {count} CUDA device(s)")
    return resolved


def device_arg(device: str | None, flag: str = "--device") -> torch.device:
    """:func:`engine_device` for a command-line flag: a CUDA device that is not present is a ValueError naming ``flag``."""
    try:
        return engine_device(device)
    except RuntimeError as exc:  # engine_device's one RuntimeError: CUDA asked for but not visible
        raise ValueError(f"{flag} {device}: {exc}") from None
