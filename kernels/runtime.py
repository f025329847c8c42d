"""Shared Triton settings: interpreter detection, autotune lists, dot precision.

``TRITON_INTERPRET=1`` is read by ``@triton.jit`` when a kernel module is
imported, so :data:`INTERPRET` is fixed at import too. Under the interpreter
every autotune list shrinks to its first entry (each extra config would rerun
the kernel in numpy); ``LIFT_TRITON_AUTOTUNE=0`` does the same on a GPU (the
correctness tests set it: autotuning every test shape costs minutes).
"""

from __future__ import annotations

import inspect
import os

import torch
import triton
import triton.language as tl  # noqa: F401  (the interpreter wants tl visible to every jit function of a module)
from triton import knobs

INTERPRET: bool = bool(knobs.runtime.interpret)
AUTOTUNE: bool = not INTERPRET and os.environ.get("LIFT_TRITON_AUTOTUNE", "1") != "0"

# Weight / activation dtypes the kernels accept; accumulation is always fp32.
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


def configs(options: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)`` tuples -> configs (the first only without autotuning)."""
    out = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in options
    ]
    return out if AUTOTUNE else out[:1]


# Autotuning results kept in Triton's cache folder (Triton 3.4+), keyed by the kernel's source, the
# tuning keys and the config list: a new process reuses them instead of re-timing every config
# (30-40 s per new shape for the LiFT kernels on the H100 run of 2026-11-26).
_CACHE_RESULTS = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


def autotune(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` over ``configs`` keyed by ``key``, with results cached on disk where Triton can."""
    return triton.autotune(configs=configs, key=key, **_CACHE_RESULTS)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for fp32 operands: TF32 exactly when PyTorch's convolutions use it, on NVIDIA
    GPUs (Triton's AMD backend accepts tf32 on few chips; there fp32 stays IEEE)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and torch.version.hip is None else "ieee"


LOOP_FORMS = ("nested", "flat")


def flat_loops() -> bool:
    """Loop form of the LiFT conv kernels, from ``LIFT_TRITON_LOOP`` (read at each call).

    ``nested`` (default, timed on the H100 2026-11-26): static taps, a short channel loop inside
    each, so the software pipeline fills and drains once per tap. ``flat``: one pipelined loop
    over (tap, channel slice) steps, the form that made the matcher faster there; not yet timed
    for the convs. Both sum the same products in fp32 (the order may differ).
    """
    form = os.environ.get("LIFT_TRITON_LOOP", "nested")
    if form not in LOOP_FORMS:
        raise ValueError(f"LIFT_TRITON_LOOP must be one of {LOOP_FORMS}, got {form!r}")
    return form == "flat"


def check_tensor(name: str, t: torch.Tensor, ndim: int, device: torch.device) -> None:
    """Raise a clear error for a wrong rank, a non-float dtype or another device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, not {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the weights are on {device}")


@triton.jit
def pixel_coordinates(offs, H, W):
    """Flat NHWC pixel indices ``offs`` (``b * H * W + y * W + x``) -> (b, y, x)."""
    rem = offs % (H * W)
    return offs // (H * W), rem // W, rem % W

