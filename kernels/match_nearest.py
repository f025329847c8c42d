"""Top-1 cosine-similarity matching on the GPU: one GEMM with a fused running argmax (Triton).

The alternative to the C++/CUDA kernel of ``csrc/matching_cuda.cu`` for ``k = 1`` (what
nearest-neighbour matching, mutual matching and the PCK evaluation use); ``lift_rt.matching``
picks between the two with ``LIFT_MATCH_CUDA`` (see :func:`lift_rt.matching.cuda_impl`).

Each program owns ``BLOCK_M`` source rows of one batch item and sweeps its share of the target
columns in ``BLOCK_N`` tiles: ``tl.dot`` (tensor cores for fp16/bf16, IEEE fp32 for float32)
into an fp32 tile, scaled by the inverse norms, reduced at once to a per-row (max, lowest
index) pair. Nothing N x M is written; a column split per program fills the GPU when B x N is
small, and the B x N x splits partial pairs are merged by a second small kernel (ties to the
lowest index). Inverse norms come from a third: four launches per call in all (host time per
launch bound the H100 timings of 2026-11-26, 0.3-0.5 ms a call even at 784 x 784, when the
merge and the norms were a dozen PyTorch ops).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from lift_rt.kernels.runtime import INTERPRET, autotune, configs

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Column splits are multiples of 256, so every
# BLOCK_N here divides them and no program starts mid-tile.
# The last: fewer registers, for IEEE fp32 (the larger tiles spill there).
CONFIGS = configs([(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 64, 4, 4), (64, 64, 32, 4, 3)])
SPLIT_ALIGN = 256
MAX_GRID_Z = 65535


# Tuned per size class, not per size: keypoint matching calls with a new N every time.
@autotune(CONFIGS, key=["N_CLASS", "M_CLASS", "D", "NORMALIZE", "HAS_MASK"])
@triton.jit
def _nearest_kernel(
    src_ptr, tgt_ptr, mask_ptr, inv_src_ptr, inv_tgt_ptr, val_ptr, idx_ptr,
    N, M, D, cols_per_split, splits, N_CLASS, M_CLASS,
    ssb, ssn, ssd, stb, stm, std, smb, smm,
    NORMALIZE: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    src_rows = src_ptr + b * ssb + rows.to(tl.int64)[:, None] * ssn
    if NORMALIZE:
        inv_src = tl.load(inv_src_ptr + b * N + rows, mask=row_ok, other=1.0)
    best_val = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_M,), 2147483647, tl.int32)
    col_begin = split * cols_per_split
    col_end = tl.minimum(M, col_begin + cols_per_split)
    # One loop over (column tile, depth slice) steps rather than two nested loops: the software
    # pipeline then streams through tile boundaries instead of filling and draining once per tile
    # (with D = 384 a tile has only 6 slices of 64). The tile's epilogue runs on its last slice.
    k_steps = tl.maximum(tl.cdiv(D, BLOCK_K), 1)
    steps = tl.cdiv(col_end - col_begin, BLOCK_N) * k_steps
    ki = k_steps - 1
    c0 = col_begin - BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, steps):
        ki = tl.where(ki == k_steps - 1, 0, ki + 1)
        c0 = tl.where(ki == 0, c0 + BLOCK_N, c0)
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_end
        k = ki * BLOCK_K + offs_k
        k_ok = k < D
        a = tl.load(src_rows + k[None, :] * ssd, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        t = tl.load(tgt_ptr + b * stb + cols.to(tl.int64)[:, None] * stm + k[None, :] * std,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(t), acc, input_precision="ieee")  # fp32 stays fp32
        if ki == k_steps - 1:
            if NORMALIZE:
                inv_tgt = tl.load(inv_tgt_ptr + b * M + cols, mask=col_ok, other=1.0)
                acc = acc * (inv_src[:, None] * inv_tgt[None, :])
            # -inf and NaN never count as candidates (as lift_rt.matching_reference), nor do masked targets.
            valid = col_ok[None, :] & (acc > float("-inf"))
            if HAS_MASK:
                keep = tl.load(mask_ptr + b * smb + cols.to(tl.int64) * smm, mask=col_ok, other=0)
                valid = valid & (keep != 0)[None, :]
            key = tl.where(valid, acc, float("-inf"))
            tile_max = tl.max(key, axis=1)
            tile_idx = tl.min(tl.where(valid & (key == tile_max[:, None]), cols[None, :], 2147483647), axis=1)
            better = (tile_idx != 2147483647) & ((tile_max > best_val) | ((tile_max == best_val) & (tile_idx < best_idx)))
            best_val = tl.where(better, tile_max, best_val)
            best_idx = tl.where(better, tile_idx, best_idx)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    out = (b * N + rows) * splits + split
    tl.store(val_ptr + out, best_val, mask=row_ok)
    tl.store(idx_ptr + out, best_idx, mask=row_ok)


@functools.lru_cache(maxsize=256)
def _splits_for(row_blocks: int, m: int, slots: int) -> int:
    best, best_cost = 1, float("inf")
    for wanted in range(1, triton.cdiv(m, SPLIT_ALIGN) + 1):
        cols = triton.cdiv(triton.cdiv(m, wanted), SPLIT_ALIGN) * SPLIT_ALIGN
        splits = triton.cdiv(m, cols)
        cost = triton.cdiv(row_blocks * splits, slots) * (triton.cdiv(cols, 128) + 0.5)
        if cost < best_cost:
            best, best_cost = splits, cost
    return best


def column_splits(batch: int, n: int, m: int, device: torch.device) -> int:
    """Column splits for ``batch x n`` rows against ``m`` columns: the fewest that minimise
    waves x (128-column tiles per program + 0.5 for its start and partial store).

    A wave is two 128-row programs per multiprocessor (the 128 x 128 configs' shared memory and
    registers allow two). Wave quantisation is what this avoids: at 12544 x 12544 on 132 SMs the
    older rule (about two waves' worth of programs: 3 splits) made 294 programs for 264 slots, a
    second wave of 30; 5 splits make 490 programs, two nearly full waves.
    """
    sms = 4 if INTERPRET or device.type != "cuda" else _multiprocessors(device.index)
    return _splits_for(max(1, batch * triton.cdiv(n, 128)), m, 2 * sms)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: Optional[int]) -> int:
    return torch.cuda.get_device_properties(torch.device("cuda", index) if index is not None else "cuda").multi_processor_count


def size_class(n: int) -> int:
    """The autotuning class of a row count: the next power of two, at most 16384."""
    return min(triton.next_power_of_2(max(n, 1)), 16384)


@triton.jit
def _inverse_norm_kernel(x_ptr, out_ptr, ROWS, L, D, sxb, sxl, sxd, eps,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < ROWS
    base = (r // L).to(tl.int64) * sxb + (r % L).to(tl.int64) * sxl
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(x_ptr + base[:, None] + d[None, :] * sxd, mask=r_ok[:, None] & (d < D)[None, :], other=0.0).to(tl.float32)
        total += tl.sum(v * v, axis=1)
    norm = tl.sqrt(total)
    clamped = tl.where(norm != norm, norm, tl.maximum(norm, eps))  # NaN rows stay NaN (maximum would drop it)
    tl.store(out_ptr + r, 1.0 / clamped, mask=r_ok)


def inverse_norms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``B x L x D`` (any strides) -> ``B x L`` float32 ``1 / max(||x||, eps)`` (NaN rows stay NaN), one launch."""
    b, length, d = x.shape
    out = torch.empty(b, length, dtype=torch.float32, device=x.device)
    if out.numel():
        rows = b * length
        _inverse_norm_kernel[(triton.cdiv(rows, 32),)](x, out, rows, length, d, *x.stride(), eps, BLOCK_R=32, BLOCK_D=64)
    return out


@triton.jit
def _merge_kernel(val_ptr, idx_ptr, best_ptr, sim_ptr, ROWS, SPLITS, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < ROWS
    best_val = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_R,), 2147483647, tl.int32)
    for s in range(0, SPLITS):
        val = tl.load(val_ptr + r.to(tl.int64) * SPLITS + s, mask=r_ok, other=float("-inf"))
        idx = tl.load(idx_ptr + r.to(tl.int64) * SPLITS + s, mask=r_ok, other=2147483647)
        better = (idx != 2147483647) & ((val > best_val) | ((val == best_val) & (idx < best_idx)))
        best_val = tl.where(better, val, best_val)
        best_idx = tl.where(better, idx, best_idx)
    found = best_idx != 2147483647
    tl.store(best_ptr + r, tl.where(found, best_idx, -1).to(tl.int64), mask=r_ok)
    tl.store(sim_ptr + r, tl.where(found, best_val, float("-inf")), mask=r_ok)


def nearest_triton(src: torch.Tensor, tgt: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
                   normalize: bool = True, eps: float = 1e-12, splits: Optional[int] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target of each source row, as :func:`lift_rt.matching.nearest` (inputs already validated).

    Args:
        src: ``B x N x D``, tgt: ``B x M x D`` (same float dtype and device; any strides).
        mask: ``B x M`` bool, True = valid target, or None.
        splits: column splits (default: enough programs to fill the GPU).
    Returns:
        index ``B x N`` int64 (-1 where no valid target) and similarity ``B x N`` float32 (-inf there).
    """
    batch, n, d = src.shape
    m = tgt.shape[1]
    splits = splits or column_splits(batch, n, m, src.device)
    cols_per_split = max(SPLIT_ALIGN, triton.cdiv(triton.cdiv(m, splits), SPLIT_ALIGN) * SPLIT_ALIGN)
    splits = max(1, triton.cdiv(m, cols_per_split))  # M = 0: one split that finds nothing
    part_val = torch.empty(batch, n, splits, dtype=torch.float32, device=src.device)
    part_idx = torch.empty(batch, n, splits, dtype=torch.int32, device=src.device)
    inv_src = inverse_norms(src, eps) if normalize else part_val
    inv_tgt = inverse_norms(tgt, eps) if normalize else part_val
    mask_u8 = mask.view(torch.uint8) if mask is not None else part_idx
    mask_strides = mask.stride() if mask is not None else (0, 0)

    if n == 0:
        return merge_splits(part_val, part_idx)
    for start in range(0, batch, MAX_GRID_Z):  # the batch is grid axis z, at most 65535 per launch
        chunk = slice(start, min(batch, start + MAX_GRID_Z))
        items = chunk.stop - chunk.start
        _nearest_kernel[lambda meta, items=items: (triton.cdiv(n, meta["BLOCK_M"]), splits, items)](
            src[chunk], tgt[chunk], mask_u8[chunk] if mask is not None else mask_u8,
            inv_src[chunk], inv_tgt[chunk], part_val[chunk], part_idx[chunk],
            n, m, d, cols_per_split, splits, size_class(n), size_class(m),
            *src.stride(), *tgt.stride(), *mask_strides,
            NORMALIZE=normalize, HAS_MASK=mask is not None,
        )
    return merge_splits(part_val, part_idx)


def merge_splits(part_val: torch.Tensor, part_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B x N x S`` partial (max, index) pairs -> the best of each row, ties to the lowest index,
    as index ``B x N`` int64 (-1 where no split found a candidate) and similarity (-inf there); one launch."""
    batch, n, splits = part_val.shape
    index = torch.empty(batch, n, dtype=torch.int64, device=part_val.device)
    sim = torch.empty(batch, n, dtype=torch.float32, device=part_val.device)
    if index.numel():
        _merge_kernel[(triton.cdiv(batch * n, 128),)](part_val, part_idx, index, sim, batch * n, splits, BLOCK_R=128)
    return index, sim
