"""Fused LiFT up step: 2x transposed conv -> concat with ``img1`` -> 3x3 conv -> BN -> ReLU.

Neither the upsampled tensor nor the concatenation is ever written. The
transposed conv is composed into the 3x3 conv at load time
(:func:`lift_rt.kernels.fold.compose_up_conv`), so each program computes a tile
of output pixels of one parity ``(a, b)`` and reads its input channels straight
from the three sources:

* ``feats`` (``C`` channels) and ``img2`` (32) on the coarse grid, 2 x 2 coarse
  pixels per output pixel, with parity-dependent weights;
* the transposed conv's bias as a virtual all-ones channel inside the grid;
* ``img1`` (32 channels) on the fine grid, the usual 9 taps.

All tensors are NHWC: the ViT's tokens (``B x T x C``) already are, so the
features arrive without a transpose, and every GEMM operand tile is a
contiguous run of channels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lift_rt.kernels.fold import FoldedUpConv
from lift_rt.kernels.runtime import autotune, check_tensor, configs, dot_precision, flat_loops, pixel_coordinates

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); N = C/2 = 192 for ViT-S, 384 for ViT-B.
CONFIGS = configs([(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3), (128, 64, 64, 8, 3),
                   (32, 64, 64, 4, 4)])  # the last: more programs for batch 1 (3136 pixels at 224 px)


@triton.jit
def _coarse_ok(bi, ci0, cj0, m_ok, pa, pb, off, HC, WC, sfb, sfh, sfw):
    """Coarse pixel ``off`` (0..3) of each output pixel: in-grid mask, its feats offset and its NHWC pixel index."""
    ci = ci0 + pa - 1 + off // 2
    cj = cj0 + pb - 1 + off % 2
    ok = m_ok & (ci >= 0) & (ci < HC) & (cj >= 0) & (cj < WC)
    return ok, bi.to(tl.int64) * sfb + ci.to(tl.int64) * sfh + cj.to(tl.int64) * sfw, (bi.to(tl.int64) * HC + ci) * WC + cj


@triton.jit
def _feats_slice(acc, f_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, k0, offs_k, offs_n, n_ok,
                 HC, WC, C, N, KX, sfb, sfh, sfw, sfc, DOT_PRECISION: tl.constexpr):
    """``acc +=`` channels ``k0 : k0 + BLOCK_K`` of coarse pixel ``off``'s features through parity ``(pa, pb)``'s weights."""
    ok, base, _ = _coarse_ok(bi, ci0, cj0, m_ok, pa, pb, off, HC, WC, sfb, sfh, sfw)
    k = k0 + offs_k
    k_ok = k < C
    w = tl.load(wx_ptr + ((parity * 4 + off) * KX + k)[:, None] * N + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    a = tl.load(f_ptr + base[:, None] + k[None, :] * sfc, mask=ok[:, None] & k_ok[None, :], other=0.0)
    return tl.dot(a.to(w.dtype), w, acc, input_precision=DOT_PRECISION)


@triton.jit
def _img2_tap(acc, img2_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, offs_n, n_ok,
              HC, WC, C, N, KX, sfb, sfh, sfw, IMG_C: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc +=`` coarse pixel ``off``'s ``img2`` channels (the rows after the features' in ``wx``)."""
    ok, _, pix2 = _coarse_ok(bi, ci0, cj0, m_ok, pa, pb, off, HC, WC, sfb, sfh, sfw)
    kc = tl.arange(0, IMG_C)
    w2 = tl.load(wx_ptr + ((parity * 4 + off) * KX + C + kc)[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0.0)
    a2 = tl.load(img2_ptr + pix2[:, None] * IMG_C + kc[None, :], mask=ok[:, None], other=0.0)
    return tl.dot(a2.to(w2.dtype), w2, acc, input_precision=DOT_PRECISION)


@triton.jit
def _img1_tap(acc, img1_ptr, wimg_ptr, bi, oy, ox, m_ok, tap, offs_n, n_ok, HF, WF, N,
              IMG_C: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc +=`` 3x3 tap ``tap`` of ``img1`` on the fine grid."""
    iy = oy + tap // 3 - 1
    ix = ox + tap % 3 - 1
    ok = m_ok & (iy >= 0) & (iy < HF) & (ix >= 0) & (ix < WF)
    kc = tl.arange(0, IMG_C)
    w1 = tl.load(wimg_ptr + (tap * IMG_C + kc)[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0.0)
    pix1 = (bi.to(tl.int64) * HF + iy) * WF + ix
    a1 = tl.load(img1_ptr + pix1[:, None] * IMG_C + kc[None, :], mask=ok[:, None], other=0.0)
    return tl.dot(a1.to(w1.dtype), w1, acc, input_precision=DOT_PRECISION)


@autotune(CONFIGS, key=["M", "C", "N", "IMG_C", "FLAT"])
@triton.jit
def _up_conv_kernel(
    f_ptr, img2_ptr, img1_ptr, wx_ptr, wb_ptr, wimg_ptr, bias_ptr, y_ptr,
    M, HC, WC, C, N,
    sfb, sfh, sfw, sfc,
    IMG_C: tl.constexpr, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    parity = pid % 4  # neighbouring programs share their coarse input tile (L2 reuse)
    pa = parity // 2
    pb = parity % 2
    offs_m = (pid // 4) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    bi, ci0, cj0 = pixel_coordinates(offs_m, HC, WC)
    KX = C + IMG_C
    HF = 2 * HC
    WF = 2 * WC
    oy = 2 * ci0 + pa
    ox = 2 * cj0 + pb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:  # one pipelined loop per operand kind: (coarse pixel, channel slice) steps, then img2, then img1 taps
        slices = tl.cdiv(C, BLOCK_K)
        for step in range(4 * slices):
            off = step // slices
            acc = _feats_slice(acc, f_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, (step - off * slices) * BLOCK_K,
                               offs_k, offs_n, n_ok, HC, WC, C, N, KX, sfb, sfh, sfw, sfc, DOT_PRECISION)
        if IMG_C > 0:
            for off in range(4):
                acc = _img2_tap(acc, img2_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, offs_n, n_ok,
                                HC, WC, C, N, KX, sfb, sfh, sfw, IMG_C, DOT_PRECISION)
            for tap in range(9):
                acc = _img1_tap(acc, img1_ptr, wimg_ptr, bi, oy, ox, m_ok, tap, offs_n, n_ok, HF, WF, N, IMG_C, DOT_PRECISION)
    else:  # static coarse pixels and taps, a channel loop inside each
        for off in tl.static_range(4):
            for k0 in range(0, C, BLOCK_K):
                acc = _feats_slice(acc, f_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, k0,
                                   offs_k, offs_n, n_ok, HC, WC, C, N, KX, sfb, sfh, sfw, sfc, DOT_PRECISION)
            if IMG_C > 0:
                acc = _img2_tap(acc, img2_ptr, wx_ptr, bi, ci0, cj0, m_ok, pa, pb, parity, off, offs_n, n_ok,
                                HC, WC, C, N, KX, sfb, sfh, sfw, IMG_C, DOT_PRECISION)
        if IMG_C > 0:
            for tap in tl.static_range(9):
                acc = _img1_tap(acc, img1_ptr, wimg_ptr, bi, oy, ox, m_ok, tap, offs_n, n_ok, HF, WF, N, IMG_C, DOT_PRECISION)
    for off in tl.static_range(4):  # the transposed conv's bias, a virtual all-ones channel inside the coarse grid
        ok, _, _ = _coarse_ok(bi, ci0, cj0, m_ok, pa, pb, off, HC, WC, sfb, sfh, sfw)
        wb = tl.load(wb_ptr + (parity * 4 + off) * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        acc += tl.where(ok[:, None], wb[None, :], 0.0)
    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    out_pix = (bi.to(tl.int64) * HF + oy) * WF + ox
    tl.store(y_ptr + out_pix[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def up_conv(feats: torch.Tensor, img2: torch.Tensor | None, img1: torch.Tensor | None, weights: FoldedUpConv) -> torch.Tensor:
    """``relu(bn(conv3x3(cat(up(cat(feats, img2)), img1))))`` without the intermediates.

    Args:
        feats: ``B x h x w x C`` (any strides: NHWC views of tokens need no copy).
        img2: ``B x h x w x 32`` contiguous, or None for the 'No Img.' LiFT.
        img1: ``B x 2h x 2w x 32`` contiguous, or None.
        weights: the composed weights (dtype of the computation).
    Returns:
        ``B x 2h x 2w x N`` contiguous NHWC in the weights' dtype.
    """
    device = weights.wx.device
    check_tensor("feats", feats, 4, device)
    b, hc, wc, c = feats.shape
    wx, wb, wimg, bias = weights.wx, weights.wb, weights.wimg, weights.bias
    if wx.dim() != 3 or wimg.dim() != 3:
        raise ValueError(f"weights.wx and weights.wimg must be 3-d (lift_rt.kernels.fold.compose_up_conv), "
                         f"got {tuple(wx.shape)} and {tuple(wimg.shape)}")
    kx, n = wx.shape[1:]
    fits = wx.shape[0] == 16 and wb.shape == (16, n) and wimg.shape[::2] == (9, n) and bias.shape == (n,)
    if not fits or len({t.dtype for t in (wx, wb, wimg, bias)}) != 1:
        raise ValueError(f"composed weights do not fit together: wx {tuple(wx.shape)} (16 x C+img x N), wb {tuple(wb.shape)} "
                         f"(16 x N), wimg {tuple(wimg.shape)} (9 x img x N), bias {tuple(bias.shape)} (N), one dtype for all")
    img_c = kx - c
    if img_c < 0 or wimg.shape[1] != img_c:
        raise ValueError(f"feats have {c} channels, but the weights expect {kx - wimg.shape[1]}")
    if img_c:
        if img1 is None or img2 is None:
            raise ValueError("this LiFT uses the image branch: img1 and img2 are required")
        check_tensor("img2", img2, 4, device)
        check_tensor("img1", img1, 4, device)
        if img2.shape != (b, hc, wc, img_c) or img1.shape != (b, 2 * hc, 2 * wc, img_c):
            raise ValueError(
                f"img2 must be {(b, hc, wc, img_c)} and img1 {(b, 2 * hc, 2 * wc, img_c)}, got {tuple(img2.shape)} and {tuple(img1.shape)}"
            )
        img1, img2 = img1.contiguous(), img2.contiguous()
    else:
        img1 = img2 = feats  # never read
    y = torch.empty(b, 2 * hc, 2 * wc, n, device=device, dtype=wx.dtype)
    m = b * hc * wc
    grid = lambda meta: (4 * triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))
    _up_conv_kernel[grid](  # the kernel indexes the weights as dense arrays
        feats, img2, img1, wx.contiguous(), wb.contiguous(), wimg.contiguous(), bias.contiguous(), y,
        m, hc, wc, c, n, *feats.stride(),
        IMG_C=img_c, DOT_PRECISION=dot_precision(wx.dtype), FLAT=flat_loops(),
    )
    return y
