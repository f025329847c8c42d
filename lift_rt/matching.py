"""Batched cosine-similarity matching that never materialises the N x M similarity matrix.

Thin Python over the ``lift_rt._C`` kernels (CPU: tiled AVX-512/AVX2/scalar micro-kernels with a
running top-k, and for top-1 an exact int8 screening pass, see :func:`cpu_screen`; CUDA: tiled,
tensor cores for fp16/bf16, fused running top-k; for large fp16/bf16 top-1 problems the Triton
kernel of :mod:`lift_rt.kernels.match_nearest`, see :func:`cuda_impl`). Two torch ops are
registered, ``lift_rt::match_topk`` and ``lift_rt::soft_argmax`` (both work under torch.compile);
everything else composes them. Pure-PyTorch references of each function live in
:mod:`lift_rt.matching_reference`.

Conventions shared by every function here:

* Inputs are ``src`` B x N x D and ``tgt`` B x M x D (or unbatched N x D / M x D), float32,
  float16 or bfloat16 (both the same dtype), on the same CPU or CUDA device (CUDA work runs on the
  current stream). Any strides are accepted; nothing is copied.
* Accumulation is in fp32; similarities are returned as float32. With ``normalize=True`` (the
  default) rows are scaled to unit L2 norm first (``x / max(||x||, eps)``), i.e. cosine similarity.
* Ties go to the lowest target index: between targets whose computed fp32 similarities are equal,
  which is exact for identical target rows and for unnormalised integer data. Different rows whose
  exact cosines tie (or differ by less than fp32 rounding) can round apart, and the kernels (scalar,
  AVX2, AVX-512, screening, CUDA, the PyTorch reference) sum in different orders, so they may pick
  different members of such a near-tie; the similarity returned agrees to fp32 rounding.
  NaN similarities never win; a row with no valid candidate (all targets masked, or NaN in the
  source row) gets index -1 and similarity -inf.
* Not differentiable: gradients through the returned similarities raise (no autograd formula);
  recompute the similarity of the matched pairs with PyTorch ops where a gradient is needed.
* Bad inputs (wrong rank, mismatched D or batch, empty target set, mixed devices or dtypes,
  unsupported dtype or device) raise ``ValueError`` / ``TypeError``. An empty source set is fine
  and returns empty outputs.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lift_rt import _C
from lift_rt.arguments import integer_arg

MAX_K: int = _C.MAX_K
EPS = 1e-12  # as torch.nn.functional.normalize
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ISA_NAMES = {"scalar": 0, "avx2": 1, "avx512": 2}


def cpu_isa() -> str:
    """Name of the CPU micro-kernel the matcher uses ('avx512', 'avx2' or 'scalar').

    The environment variable ``LIFT_MATCH_ISA`` may force a lower one (for testing).
    """
    forced = os.environ.get("LIFT_MATCH_ISA")
    if forced:
        if forced not in _ISA_NAMES:
            raise ValueError(f"LIFT_MATCH_ISA must be one of {sorted(_ISA_NAMES)}, got {forced!r}")
        return forced
    return {v: k for k, v in _ISA_NAMES.items()}[_C.cpu_isa()]


_SCREEN_MODES = {"off": 0, "auto": 1, "on": 2}


def cpu_screen() -> str:
    """Whether top-1 on the CPU screens with int8 dot products: 'auto' (the default), 'on' or 'off',
    set by ``LIFT_MATCH_SCREEN``.

    Screening estimates every similarity from int8-quantised rows with a rigorous error bound and
    rescores in fp32 only the targets that bound cannot rule out, so results equal the exact fp32
    kernel's up to the summation order of the rescoring (a near-tie, within fp32 rounding, may
    resolve to the other member; see the module's tie rule); on large problems it is 1.2-2x faster than that kernel, depending on how well the data
    separate. 'auto' uses it for dense problems (a few million pairs or more, grid against grid, not
    a few keypoints) after screening a sample of rows says it pays; 'on' whenever k = 1 and an int8
    kernel exists for the CPU (AVX2 or AVX-512, see :func:`cpu_screen_kernel`); 'off' never.
    """
    mode = os.environ.get("LIFT_MATCH_SCREEN", "auto")
    if mode not in _SCREEN_MODES:
        raise ValueError(f"LIFT_MATCH_SCREEN must be one of {sorted(_SCREEN_MODES)}, got {mode!r}")
    return mode


def cpu_vnni() -> bool:
    """Whether screening may use a VNNI int8 kernel (AVX-512 VNNI, or AVX-VNNI on AVX2 CPUs that have
    it); ``LIFT_MATCH_VNNI=0`` keeps it on the vpmaddubsw kernel of the same width (for comparisons)."""
    value = os.environ.get("LIFT_MATCH_VNNI", "1")
    if value not in ("0", "1"):
        raise ValueError(f"LIFT_MATCH_VNNI must be 0 or 1, got {value!r}")
    return value == "1"


def cpu_screen_kernel() -> Optional[str]:
    """The int8 kernel top-1 screening runs on with :func:`cpu_isa` and :func:`cpu_vnni`:
    'avx512vnni', 'avx512bw', 'avxvnni' or 'avx2'; None where there is none (scalar), and then every
    match is the fp32 kernel's alone."""
    return _C.cpu_screen_kernel(_ISA_NAMES[cpu_isa()], cpu_vnni()) or None


_CUDA_IMPLS = ("auto", "csrc", "triton")
# 'auto' hands top-1 to Triton from this many multiply-adds (B x N x M x D) up. Measured on an
# H100 (bench/results/matching-cuda-nvidia-h100-80gb-hbm3-2026-11-26.json): Triton costs ~0.3 ms
# of launches and merging whatever the size, the csrc kernel ~1.3e-11 ms per multiply-add, and
# Triton is faster from one 448-px S/8 pair (12544 x 12544 x 384 = 6e10) up.
TRITON_FROM_MACS = 2**35


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _ampere_or_newer(index: Optional[int]) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # bf16 tensor-core dots need sm_80


def cuda_impl(macs: Optional[int] = None, dtype: Optional[torch.dtype] = None,
              device: Optional[torch.device] = None) -> str:
    """Which CUDA kernel computes top-1 matches for a problem of ``macs`` multiply-adds (B x N x M x D):
    'csrc' (the C++ extension), 'triton' (:mod:`lift_rt.kernels.match_nearest`, a GEMM with a fused
    argmax), or by default ('auto') Triton for fp16/bf16 from :data:`TRITON_FROM_MACS` up, where
    Triton is installed and ``device`` is sm_80 or newer, and csrc otherwise (fp32 was not timed
    on a GPU). ``LIFT_MATCH_CUDA=auto|csrc|triton`` sets it. The Triton kernel autotunes on its
    first call per size class: warm it up before capturing a CUDA graph around it.

    Top-k with k > 1 and soft-argmax always run in the C++ extension.
    """
    name = os.environ.get("LIFT_MATCH_CUDA", "auto")
    if name not in _CUDA_IMPLS:
        raise ValueError(f"LIFT_MATCH_CUDA must be one of {list(_CUDA_IMPLS)}, got {name!r}")
    if name == "auto":
        large = macs is not None and macs >= TRITON_FROM_MACS
        capable = _has_triton() and (device is None or device.type != "cuda" or _ampere_or_newer(device.index))
        return "triton" if large and dtype in (torch.float16, torch.bfloat16) and capable else "csrc"
    return name


def _operand(x: Tensor) -> tuple:
    return (x.data_ptr(), _DTYPE_CODES[x.dtype], *x.stride())


def _mask_arg(mask: Optional[Tensor]) -> tuple:
    return (0, 0, 0) if mask is None else (mask.data_ptr(), *mask.stride())


def _cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@torch.library.custom_op("lift_rt::match_topk", mutates_args=())
def _match_topk(src: Tensor, tgt: Tensor, mask: Optional[Tensor], k: int, normalize: bool, eps: float
                ) -> tuple[Tensor, Tensor]:
    b, n, d = src.shape
    m = tgt.shape[1]
    index = torch.empty(b, n, k, dtype=torch.int64, device=src.device)
    sim = torch.empty(b, n, k, dtype=torch.float32, device=src.device)
    args = (_operand(src), _operand(tgt), _mask_arg(mask), b, n, m, d, k, normalize, eps,
            index.data_ptr(), sim.data_ptr())
    if src.device.type == "cpu":
        _C.topk_cpu(*args, torch.get_num_threads(), _ISA_NAMES[cpu_isa()], _SCREEN_MODES[cpu_screen()], cpu_vnni())
    elif k == 1 and cuda_impl(b * n * m * d, src.dtype, src.device) == "triton":
        from lift_rt.kernels.match_nearest import nearest_triton

        with torch.cuda.device(src.device):
            best, best_sim = nearest_triton(src, tgt, mask, normalize=normalize, eps=eps)
        index, sim = best.unsqueeze(-1), best_sim.unsqueeze(-1)
    elif b * n > 0:
        with torch.cuda.device(src.device):  # the kernels launch on the current device
            splits = _C.topk_cuda_splits(*args)
            inv_norm = torch.empty(b * (n + m) if normalize else 1, dtype=torch.float32, device=src.device)
            part_val = torch.empty(b * n * splits * k, dtype=torch.float32, device=src.device)
            part_idx = torch.empty(b * n * splits * k, dtype=torch.int64, device=src.device)
            _C.topk_cuda(*args, splits, inv_norm.data_ptr(), part_val.data_ptr(), part_idx.data_ptr(),
                         _cuda_stream(src.device))
    return index, sim


@_match_topk.register_fake
def _(src, tgt, mask, k, normalize, eps):
    b, n, _ = src.shape
    return (src.new_empty((b, n, k), dtype=torch.int64), src.new_empty((b, n, k), dtype=torch.float32))


@torch.library.custom_op("lift_rt::soft_argmax", mutates_args=())
def _soft_argmax(src: Tensor, tgt: Tensor, mask: Optional[Tensor], index: Tensor, h: int, w: int, radius: int,
                 temperature: float, normalize: bool, eps: float) -> Tensor:
    b, n, d = src.shape
    index = index.contiguous()
    out = torch.empty(b, n, 2, dtype=torch.float32, device=src.device)
    args = (_operand(src), _operand(tgt), _mask_arg(mask), index.data_ptr(), b, n, h, w, d, radius, temperature,
            normalize, eps, out.data_ptr())
    if src.device.type == "cpu":
        _C.soft_argmax_cpu(*args, torch.get_num_threads())
    elif b * n > 0:
        with torch.cuda.device(src.device):
            _C.soft_argmax_cuda(*args, _cuda_stream(src.device))
    return out


@_soft_argmax.register_fake
def _(src, tgt, mask, index, h, w, radius, temperature, normalize, eps):
    b, n, _ = src.shape
    return src.new_empty((b, n, 2), dtype=torch.float32)


def _check_pair(src: Tensor, tgt: Tensor, mask: Optional[Tensor], what: str = "tgt") -> tuple[Tensor, Tensor,
                                                                                             Optional[Tensor], bool]:
    """Validates a src/tgt(/mask) triple; returns batched views and whether the input was unbatched."""
    if not isinstance(src, Tensor) or not isinstance(tgt, Tensor):
        raise TypeError("src and tgt must be torch.Tensors")
    if src.dim() not in (2, 3) or tgt.dim() != src.dim():
        raise ValueError(f"expected src B x N x D and tgt B x M x D (or N x D and M x D), "
                         f"got shapes {tuple(src.shape)} and {tuple(tgt.shape)}")
    unbatched = src.dim() == 2
    if unbatched:
        if mask is not None:  # checked against the shape the caller used (M), not the batched view
            _check_mask(mask, (tgt.shape[0],), tgt.device, f"{what}_mask")
        src, tgt = src.unsqueeze(0), tgt.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    for name, x in (("src", src), ("tgt", tgt)):
        if x.dtype not in _DTYPE_CODES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if src.dtype != tgt.dtype:
        raise TypeError(f"src and tgt must share a dtype, got {src.dtype} and {tgt.dtype}")
    if src.device != tgt.device:
        raise ValueError(f"src and tgt are on different devices: {src.device} and {tgt.device}")
    if src.device.type not in ("cpu", "cuda"):
        raise ValueError(f"matching runs on CPU or CUDA tensors, got device {src.device}")
    if src.device.type == "cuda" and not _C.has_cuda():
        raise RuntimeError("lift_rt._C was built without CUDA; rebuild with a CUDA toolkit to match on the GPU")
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"batch sizes differ: src {src.shape[0]}, tgt {tgt.shape[0]}")
    if src.shape[2] != tgt.shape[2]:
        raise ValueError(f"descriptor sizes differ: src D={src.shape[2]}, tgt D={tgt.shape[2]}")
    if src.shape[2] == 0:
        raise ValueError("descriptor size D must be at least 1")
    if tgt.shape[1] == 0:
        raise ValueError(f"{what} is empty (M = 0): nothing to match against")
    if mask is not None:
        _check_mask(mask, tuple(tgt.shape[:2]), tgt.device, f"{what}_mask")
    return src, tgt, mask, unbatched


def _check_mask(mask: Tensor, shape: tuple[int, ...], device: torch.device, name: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device}, features on {device}")


def _size_pair(name: str, value) -> tuple[int, int]:
    """``value`` as (height, width), two integers >= 1."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a (height, width) pair, got {value!r}")
    return integer_arg(f"{name}[0]", value[0], 1), integer_arg(f"{name}[1]", value[1], 1)


_FP32 = torch.finfo(torch.float32)


def _positive_finite(name: str, value, *, zero_ok: bool = False) -> float:
    """``value`` as a float that stays positive (or zero where allowed) and finite in float32, the kernels' type.

    Plain comparisons rather than ``math.isfinite``: under ``torch.compile(dynamic=True)`` a float
    argument arrives as a symbolic float, which comparisons accept and ``math`` functions do not.
    """
    number = float(value)
    in_range = _FP32.tiny <= number <= _FP32.max or (zero_ok and number == 0)  # False for NaN and +-inf too
    if not in_range:
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'} that float32 holds "
                         f"({_FP32.tiny:.2g} .. {_FP32.max:.2g}{', or 0' if zero_ok else ''}), got {value!r}")
    return number


def topk(src: Tensor, tgt: Tensor, k: int, *, normalize: bool = True, mask: Optional[Tensor] = None,
         eps: float = EPS) -> tuple[Tensor, Tensor]:
    """The k best targets of each source row (k <= 16 and k <= M).

    src B x N x D, tgt B x M x D, mask B x M bool (True = valid target) -> index B x N x k (int64)
    and similarity B x N x k (float32), sorted by descending similarity, ties by ascending index.
    Missing candidates (fewer than k valid) are index -1, similarity -inf.
    """
    src, tgt, mask, unbatched = _check_pair(src, tgt, mask)
    k = integer_arg("k", k, 1)
    if k > min(MAX_K, tgt.shape[1]):
        raise ValueError(f"k must be in [1, min({MAX_K}, M={tgt.shape[1]})], got {k}")
    eps = _positive_finite("eps", eps, zero_ok=True)
    index, sim = _match_topk(src, tgt, mask, k, normalize, eps)
    return (index[0], sim[0]) if unbatched else (index, sim)


def nearest(src: Tensor, tgt: Tensor, *, normalize: bool = True, mask: Optional[Tensor] = None,
            eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Top-1 nearest target of each source row.

    src B x N x D and tgt B x M x D (or N x D and M x D), mask B x M bool of valid targets ->
    index B x N (int64) and similarity B x N (float32).
    Cosine similarity by default (``normalize=True``); dot product otherwise.

    ``index`` is -1 where a source row has no match: no valid target, or a NaN in the row. Used
    directly as an index, -1 picks the *last* target; keep ``valid = index >= 0`` and use
    ``index.clamp_min(0)`` with it, e.g. ``tgt_points[index.clamp_min(0)][valid]``.
    """
    index, sim = topk(src, tgt, 1, normalize=normalize, mask=mask, eps=eps)
    return index[..., 0], sim[..., 0]


def mutual(src: Tensor, tgt: Tensor, *, normalize: bool = True, src_mask: Optional[Tensor] = None,
           tgt_mask: Optional[Tensor] = None, eps: float = EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours.

    Returns index B x N, similarity B x N (as :func:`nearest` from src to tgt) and is_mutual
    B x N bool: True where the nearest source of target ``index[b, n]`` is ``n`` again.
    """
    if src_mask is not None and isinstance(src, Tensor):
        _check_mask(src_mask, tuple(src.shape[:-1]), src.device, "src_mask")
    index, sim = nearest(src, tgt, normalize=normalize, mask=tgt_mask, eps=eps)
    if src.shape[-2] == 0:
        return index, sim, torch.zeros_like(index, dtype=torch.bool)
    back, _ = nearest(tgt, src, normalize=normalize, mask=src_mask, eps=eps)
    rows = torch.arange(src.shape[-2], device=index.device).expand_as(index)
    back_of_index = torch.gather(back, -1, index.clamp_min(0))
    return index, sim, (index >= 0) & (back_of_index == rows)


def soft_argmax(src: Tensor, tgt: Tensor, index: Tensor, grid_size: tuple[int, int], *, radius: int = 2,
                temperature: float = 0.02, normalize: bool = True, mask: Optional[Tensor] = None,
                eps: float = EPS) -> Tensor:
    """Sub-cell refinement of matches on a target grid by a windowed soft-argmax.

    tgt B x M x D holds a h x w grid (M = h * w, row-major); ``index`` B x N is a match per source
    row (e.g. from :func:`nearest`). Softmax of similarity / temperature over the valid cells of
    the (2 radius + 1)^2 window around each match -> expected position B x N x 2 as (x, y) in grid
    cells (cell centres at integers); a radius of max(h, w) - 1 or more covers the whole grid. NaN where index is -1 or outside [0, M) (not checked here:
    that would wait for the GPU), and where no cell of the window is valid.
    """
    src, tgt, mask, unbatched = _check_pair(src, tgt, mask)
    h, w = _size_pair("grid_size", grid_size)
    if h * w != tgt.shape[1]:
        raise ValueError(f"grid_size {grid_size} does not hold M = {tgt.shape[1]} targets")
    radius = min(integer_arg("radius", radius, 0), max(h, w) - 1)  # larger windows are the whole grid too
    temperature = _positive_finite("temperature", temperature)
    eps = _positive_finite("eps", eps, zero_ok=True)
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be an int64 tensor, got {type(index).__name__}")
    index = index.unsqueeze(0) if unbatched else index
    if index.dtype != torch.int64 or tuple(index.shape) != tuple(src.shape[:2]) or index.device != src.device:
        raise ValueError(f"index must be int64 of shape {tuple(src.shape[:2])} on {src.device}")
    xy = _soft_argmax(src, tgt, mask, index, h, w, radius, float(temperature), normalize, eps)
    return xy[0] if unbatched else xy


def pixels_to_cells(xy: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """Pixel coordinates (x, y; pixel centres at integers) of an H x W image -> cell coordinates of
    an h x w grid covering it (cell centres at integers): u = (x + 0.5) * w / W - 0.5."""
    (H, W), (h, w) = image_size, grid_size
    scale = xy.new_tensor([w / W, h / H])
    return (xy + 0.5) * scale - 0.5


def cells_to_pixels(uv: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pixels_to_cells`."""
    (H, W), (h, w) = image_size, grid_size
    scale = uv.new_tensor([W / w, H / h])
    return (uv + 0.5) * scale - 0.5


def sample_descriptors(feats: Tensor, kps: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bilinear samples of a B x D x h x w feature map at keypoints B x K x 2 (x, y in pixels of
    an image of ``image_size`` = (H, W)) -> B x K x D float32 (border values outside the map)."""
    if not isinstance(feats, Tensor) or feats.dim() != 4:
        raise ValueError(f"feats must be a B x D x h x w tensor, got {getattr(feats, 'shape', type(feats).__name__)}")
    if not isinstance(kps, Tensor) or kps.dim() != 3 or kps.shape[-1] != 2 or kps.shape[0] != feats.shape[0]:
        raise ValueError(f"kps must be a B x K x 2 tensor with B = {feats.shape[0]}, "
                         f"got {getattr(kps, 'shape', type(kps).__name__)}")
    image_size = _size_pair("image_size", image_size)
    h, w = feats.shape[-2:]
    uv = pixels_to_cells(kps.float(), image_size, (h, w))
    grid = torch.stack([(uv[..., 0] + 0.5) * 2 / w - 1, (uv[..., 1] + 0.5) * 2 / h - 1], dim=-1)
    out = F.grid_sample(feats.float(), grid.unsqueeze(1), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def match_keypoints(src_feats: Tensor, tgt_feats: Tensor, src_kps: Tensor, image_size: tuple[int, int], *,
                    tgt_image_size: Optional[tuple[int, int]] = None, normalize: bool = True,
                    tgt_mask: Optional[Tensor] = None, refine_radius: int = 0, temperature: float = 0.02,
                    eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Transfers keypoints from a source to a target image by descriptor matching.

    src_feats B x D x h x w and tgt_feats B x D x h' x w' (same dtype and device), src_kps B x K x 2
    as (x, y) in pixels of the source image of size ``image_size`` = (H, W) (pixel centres at
    integers); ``tgt_image_size`` defaults to ``image_size``. Source descriptors are bilinearly
    sampled at the keypoints, matched (cosine by default) against every target cell, and the best
    cell's centre is mapped to target pixels; ``refine_radius`` > 0 refines it by a windowed
    soft-argmax. tgt_mask B x h' x w' bool restricts the target cells. To reproduce the SPair
    protocol (argmax over target pixels), pass feature maps upsampled to the image size.
    Returns tgt_kps B x K x 2 (float32 pixels) and similarity B x K; a keypoint with a non-finite
    coordinate (e.g. a missing annotation as NaN) or without a valid target gets NaN and -inf.
    """
    if not isinstance(src_feats, Tensor) or not isinstance(tgt_feats, Tensor) or src_feats.dim() != 4 \
            or tgt_feats.dim() != 4:
        raise ValueError("src_feats and tgt_feats must be B x D x h x w tensors")
    if not isinstance(src_kps, Tensor):
        raise TypeError(f"src_kps must be a B x K x 2 tensor, got {type(src_kps).__name__}")
    if src_kps.dim() != 3 or src_kps.shape[-1] != 2 or src_kps.shape[0] != src_feats.shape[0]:
        raise ValueError(f"src_kps must be B x K x 2 with B = {src_feats.shape[0]}, got {tuple(src_kps.shape)}")
    if not src_kps.is_floating_point() and src_kps.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"src_kps must be a float or integer tensor, got {src_kps.dtype}")
    if src_kps.device != src_feats.device:
        raise ValueError(f"src_kps is on {src_kps.device}, features on {src_feats.device}")
    image_size = _size_pair("image_size", image_size)
    tgt_image_size = image_size if tgt_image_size is None else _size_pair("tgt_image_size", tgt_image_size)
    refine_radius = integer_arg("refine_radius", refine_radius, 0)
    th, tw = tgt_feats.shape[-2:]
    tgt = tgt_feats.flatten(2).transpose(1, 2)  # B x M x D view, no copy
    if tgt_mask is not None:
        _check_mask(tgt_mask, (tgt_feats.shape[0], th, tw), tgt_feats.device, "tgt_mask")
    mask = None if tgt_mask is None else tgt_mask.flatten(1)
    if src_feats.device != tgt_feats.device or src_feats.dtype != tgt_feats.dtype:
        raise ValueError("src_feats and tgt_feats must share dtype and device")
    missing = ~torch.isfinite(src_kps.float()).all(dim=-1)  # B x K
    src = sample_descriptors(src_feats, src_kps.float().masked_fill(missing.unsqueeze(-1), 0.0), image_size)
    src = src.masked_fill(missing.unsqueeze(-1), float("nan")).to(tgt.dtype)  # a NaN row matches nothing
    index, sim = nearest(src, tgt, normalize=normalize, mask=mask, eps=eps)
    if refine_radius > 0:
        uv = soft_argmax(src, tgt, index, (th, tw), radius=refine_radius, temperature=temperature,
                         normalize=normalize, mask=mask, eps=eps)
    else:
        uv = torch.stack([index % tw, index // tw], dim=-1).float()
        uv = uv.masked_fill((index < 0).unsqueeze(-1), float("nan"))
    return cells_to_pixels(uv, tgt_image_size, (th, tw)), sim


__all__ = ["MAX_K", "cells_to_pixels", "cpu_isa", "cpu_screen", "cpu_screen_kernel", "cpu_vnni", "match_keypoints",
           "mutual",
           "nearest", "pixels_to_cells", "sample_descriptors", "soft_argmax", "topk"]
