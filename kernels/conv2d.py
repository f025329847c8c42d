"""NHWC K x K convolution (K = 1 or 3, padding K // 2, stride 1 or 2) + bias + optional ReLU.

One implicit-GEMM kernel serves LiFT's image branch (3x3 stride 2), the second
double-conv layer (3x3, BN folded) and the 1x1 head. The GEMM is
``M = B*Ho*Wo`` output pixels x ``N = Cout`` with ``K = taps x Cin``; the input
is read through its strides (NCHW images and NHWC activations alike), the
output is written NHWC (channels innermost = the GEMM's N, so stores coalesce
and the next layer reads contiguous K tiles).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lift_rt.kernels.runtime import autotune, check_tensor, configs, dot_precision, flat_loops, pixel_coordinates

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); N = C/2 = 192 for ViT-S, 384 for ViT-B.
CONFIGS = configs([(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3), (128, 64, 64, 8, 3),
                   (32, 64, 64, 4, 4)])  # the last: more programs for batch 1 (3136 pixels at 224 px)


@triton.jit
def _tap_slice(
    acc, x_ptr, w_ptr, bi, oy, ox, m_ok, offs_n, n_ok, offs_k, tap, k0,
    H, W, CIN, COUT, sxb, sxh, sxw, sxc,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``acc += x[tap, k0 : k0 + BLOCK_K] @ w[tap, k0 : k0 + BLOCK_K]`` for one tap and channel slice."""
    iy = oy * STRIDE + tap // KSIZE - KSIZE // 2
    ix = ox * STRIDE + tap % KSIZE - KSIZE // 2
    ok = m_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    base = bi.to(tl.int64) * sxb + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
    k = k0 + offs_k
    k_ok = k < CIN
    w = tl.load(w_ptr + (tap * CIN + k)[:, None] * COUT + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    a = tl.load(x_ptr + base[:, None] + k[None, :] * sxc, mask=ok[:, None] & k_ok[None, :], other=0.0)
    return tl.dot(a.to(w.dtype), w, acc, input_precision=DOT_PRECISION)


@autotune(CONFIGS, key=["M", "CIN", "COUT", "KSIZE", "STRIDE", "FLAT"])
@triton.jit
def _conv2d_nhwc_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, HO, WO, CIN, COUT,
    sxb, sxh, sxw, sxc,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, RELU: tl.constexpr, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < COUT
    bi, oy, ox = pixel_coordinates(offs_m, HO, WO)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:  # one pipelined loop over (tap, channel slice) steps
        slices = tl.cdiv(CIN, BLOCK_K)
        for step in range(KSIZE * KSIZE * slices):
            tap = step // slices
            acc = _tap_slice(acc, x_ptr, w_ptr, bi, oy, ox, m_ok, offs_n, n_ok, offs_k, tap, (step - tap * slices) * BLOCK_K,
                             H, W, CIN, COUT, sxb, sxh, sxw, sxc, KSIZE, STRIDE, DOT_PRECISION)
    else:  # static taps, a channel loop inside each
        for tap in tl.static_range(KSIZE * KSIZE):
            for k0 in range(0, CIN, BLOCK_K):
                acc = _tap_slice(acc, x_ptr, w_ptr, bi, oy, ox, m_ok, offs_n, n_ok, offs_k, tap, k0,
                                 H, W, CIN, COUT, sxb, sxh, sxw, sxc, KSIZE, STRIDE, DOT_PRECISION)
    acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    out = y_ptr + offs_m.to(tl.int64)[:, None] * COUT + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def conv2d_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, stride: int = 1, relu: bool = False) -> torch.Tensor:
    """``relu?(conv(x) + bias)``.

    Args:
        x: ``B x H x W x Cin`` (any strides; pass ``nchw.permute(0, 2, 3, 1)`` for an NCHW tensor).
        weight: ``K*K x Cin x Cout`` (taps-major, see :func:`lift_rt.kernels.fold.taps_major`), K = 1 or 3.
        bias: ``Cout``, same dtype as ``weight``.
    Returns:
        ``B x Ho x Wo x Cout`` contiguous, ``Ho = ceil(H / stride)``, in ``weight``'s dtype.
    """
    check_tensor("x", x, 4, weight.device)
    check_tensor("weight", weight, 3, weight.device)
    check_tensor("bias", bias, 1, weight.device)
    taps, cin, cout = weight.shape
    ksize = {1: 1, 9: 3}.get(taps)
    if ksize is None:
        raise ValueError(f"weight must hold 1 or 9 taps (1x1 or 3x3 conv), got {taps}")
    if x.shape[-1] != cin:
        raise ValueError(f"x has {x.shape[-1]} channels, weight expects {cin}")
    if bias.shape != (cout,) or bias.dtype != weight.dtype:
        raise ValueError(f"bias must be {cout} values of {weight.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    weight, bias = weight.contiguous(), bias.contiguous()
    b, h, w, _ = x.shape
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    y = torch.empty(b, ho, wo, cout, device=x.device, dtype=weight.dtype)
    m = b * ho * wo
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]))
    _conv2d_nhwc_kernel[grid](
        x, weight, bias, y, m, h, w, ho, wo, cin, cout, *x.stride(),
        KSIZE=ksize, STRIDE=stride, RELU=relu, DOT_PRECISION=dot_precision(weight.dtype), FLAT=flat_loops(),
    )
    return y
