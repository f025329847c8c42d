"""lift_rt's CUDA matching kernels run on the CPU, against lift_rt.matching_reference.

tests/cuda_emulation/cuda_on_cpu.h provides threads, barriers, warp shuffles, deferred cp.async
copies and whole-tile wmma fragments, so the kernels' own source (csrc/matching_cuda_kernels.cuh,
csrc/matching_cuda_nearest.cuh: tiling, pipeline stages, column splits, epilogues, merge, tie and
NaN rules) is checked on every CI run, launched as matching_cuda.cu launches it. What it cannot
check: the hardware (real fragment layouts, timing, races that the emulation serialises, launch
limits); tests/test_matching.py runs the real kernels where a GPU is.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lift_rt import matching_reference as ref
from matching_utils import assert_topk_close, integer_inputs, randn

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "cuda_emulation" / "matching_cuda_emulated.cpp"
_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
HALF_TYPES = [torch.float16, torch.bfloat16]
ALL_TYPES = [torch.float32, *HALF_TYPES]


class EmulatedCuda:
    """ctypes front of matching_cuda_emulated.cpp (CPU tensors in, CPU tensors out)."""

    def __init__(self, lib: ctypes.CDLL):
        ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        lib.lift_emulated_topk.argtypes = [ptr] * 3 + [i32] + [i64] * 12 + [i32, i32, f32, i32, ptr, ptr]
        lib.lift_emulated_topk.restype = i32
        lib.lift_emulated_soft_argmax.argtypes = [ptr] * 3 + [i32, ptr] + [i64] * 13 + [i32, f32, i32, f32, ptr]
        lib.lift_emulated_soft_argmax.restype = None
        self.lib = lib

    @staticmethod
    def _mask(mask):
        mask = None if mask is None else mask.to(torch.uint8)
        return mask, (None if mask is None else mask.data_ptr()), ((0, 0) if mask is None else mask.stride())

    def topk(self, src, tgt, k, *, mask=None, normalize=True, splits=1):
        """-> index B x N x k, similarity B x N x k, and which kernel ran ("mma" or "topk")."""
        b, n, d = src.shape
        index = torch.empty(b, n, k, dtype=torch.int64)
        sim = torch.empty(b, n, k, dtype=torch.float32)
        mask, mask_ptr, mask_strides = self._mask(mask)
        mma = self.lib.lift_emulated_topk(src.data_ptr(), tgt.data_ptr(), mask_ptr, _CODES[src.dtype], b, n,
                                          tgt.shape[1], d, *src.stride(), *tgt.stride(), *mask_strides, k,
                                          int(normalize), ref.EPS, splits, index.data_ptr(), sim.data_ptr())
        return index, sim, "mma" if mma else "topk"

    def soft_argmax(self, src, tgt, index, grid_size, *, radius, temperature, mask=None, normalize=True):
        b, n, d = src.shape
        out = torch.empty(b, n, 2, dtype=torch.float32)
        index = index.contiguous()
        mask, mask_ptr, mask_strides = self._mask(mask)
        self.lib.lift_emulated_soft_argmax(src.data_ptr(), tgt.data_ptr(), mask_ptr, _CODES[src.dtype],
                                           index.data_ptr(), b, n, *grid_size, d, *src.stride(), *tgt.stride(),
                                           *mask_strides, radius, temperature, int(normalize), ref.EPS, out.data_ptr())
        return out


@pytest.fixture(scope="module")
def cuda(tmp_path_factory) -> EmulatedCuda:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r} not found): the CUDA kernels' CPU emulation was not run")
    lib_path = tmp_path_factory.mktemp("cuda_emulation") / "matching_cuda_emulated.so"
    cmd = [cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", f"-I{ROOT / 'csrc'}", str(SOURCE), "-o",
           str(lib_path)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"building the emulation failed:\n{' '.join(cmd)}\n{build.stderr}"
    return EmulatedCuda(ctypes.CDLL(str(lib_path)))


# ---- the tensor-core top-1 kernel (fp16/bf16, aligned rows, depth a multiple of 8) ----

@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("b,n,m,d", [(1, 1, 1, 8), (1, 5, 7, 8), (2, 130, 257, 40), (3, 129, 385, 16),
                                     (1, 200, 300, 64)])
@pytest.mark.parametrize("splits", [1, 3])
def test_tensor_core_top1_matches_reference(cuda, dtype, b, n, m, d, splits):
    """Row and column tails, a depth tail inside the last 32-deep slice (d = 40), one to four
    column tiles over one to five splits (some splits get no tile at all)."""
    src, tgt = randn(b, n, d, dtype=dtype, seed=n + splits), randn(b, m, d, dtype=dtype, seed=m + 1)
    index, sim, kernel = cuda.topk(src, tgt, 1, splits=splits)
    assert kernel == "mma"
    assert_topk_close(index, sim, src, tgt, 1)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k,splits", [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_ties_go_to_the_lowest_index_across_warps_tiles_and_splits(cuda, dtype, k, splits):
    """Each target repeated at offsets 0, 70, 140, 210, 280: the copies land in other column halves,
    warps, tiles and splits, and the earlier copy must rank first everywhere, in both kernels."""
    base = torch.randint(-3, 4, (2, 70, 24), generator=torch.Generator().manual_seed(5)).to(dtype)
    tgt = torch.cat([base] * 5, dim=1)
    src = torch.randint(-3, 4, (2, 150, 24), generator=torch.Generator().manual_seed(6)).to(dtype)
    index, sim, kernel = cuda.topk(src, tgt, k, splits=splits)
    assert kernel == ("mma" if k == 1 and dtype != torch.float32 else "topk")
    ref_index, ref_sim = ref.topk_reference(src, tgt, k)
    assert torch.equal(index[..., 0], ref_index[..., 0])
    assert (index[..., 0] < 70).all()
    assert_topk_close(index, sim, src, tgt, k)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k", [1, 4])
def test_mask_nan_and_rows_without_candidates(cuda, dtype, k):
    src, tgt = randn(2, 140, 32, dtype=dtype, seed=11), randn(2, 200, 32, dtype=dtype, seed=12)
    mask = torch.rand(2, 200, generator=torch.Generator().manual_seed(13)) > 0.5
    mask[1] = False  # the second pair has no valid target
    tgt[0, 7] = float("nan")
    src[0, 3, 0] = float("nan")
    index, sim, _ = cuda.topk(src, tgt, k, mask=mask, splits=2)
    ref_index, _ = ref.topk_reference(src, tgt, k, mask=mask)
    assert (index[1] == -1).all() and (sim[1] == float("-inf")).all()
    assert (index[0, 3] == -1).all() and (index[0] != 7).all()
    assert mask[0][index[0].clamp_min(0)][index[0] >= 0].all()
    assert torch.equal(index == -1, ref_index == -1)
    assert_topk_close(index, sim, src, tgt, k, mask=mask)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_minus_inf_scores_never_match(cuda, dtype, k):
    """Without normalisation a target with a -inf component scores -inf: no match, as the reference."""
    src = torch.ones(1, 4, 8, dtype=dtype)
    tgt = torch.ones(1, 5, 8, dtype=dtype)
    tgt[0, :, 0] = float("-inf")
    tgt[0, 2, 0] = 1.0
    index, sim, _ = cuda.topk(src, tgt, k, normalize=False)
    ref_index, ref_sim = ref.topk_reference(src, tgt, k, normalize=False)
    assert torch.equal(index, ref_index) and torch.equal(sim, ref_sim)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k", [1, 5])
def test_unnormalised_scores(cuda, dtype, k):
    src, tgt = randn(1, 50, 16, dtype=dtype, seed=1), randn(1, 90, 16, dtype=dtype, seed=2)
    index, sim, _ = cuda.topk(src, tgt, k, normalize=False, splits=2)
    assert_topk_close(index, sim, src, tgt, k, normalize=False, tol=1e-4)


# ---- the 64 x 64 top-k kernel: any k, fp32, depths and layouts the tensor-core kernel does not take ----

@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k", [1, 3, 16])
@pytest.mark.parametrize("b,n,m,d", [(1, 1, 17, 3), (2, 70, 130, 37), (1, 65, 200, 130)])
def test_topk_kernel_matches_reference(cuda, dtype, k, b, n, m, d):
    src, tgt = randn(b, n, d, dtype=dtype, seed=n + k), randn(b, m, d, dtype=dtype, seed=m + k)
    index, sim, kernel = cuda.topk(src, tgt, k, splits=2)
    assert kernel == "topk"
    assert_topk_close(index, sim, src, tgt, k)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("k", [1, 4])
def test_topk_kernel_is_exact_on_integer_inputs(cuda, dtype, k):
    """Small integers: every score is exact, so indices and values must equal the reference's."""
    src, tgt = integer_inputs(2, 70, 150, 24, seed=3)
    src, tgt = src.to(dtype), tgt.to(dtype)
    index, sim, _ = cuda.topk(src, tgt, k, normalize=False, splits=3)
    ref_index, ref_sim = ref.topk_reference(src, tgt, k, normalize=False)
    assert torch.equal(index, ref_index) and torch.equal(sim, ref_sim)


@pytest.mark.parametrize("dtype", ALL_TYPES)
@pytest.mark.parametrize("view", ["depth_ends_mid_group", "rows_off_alignment", "strided_rows"])
@pytest.mark.parametrize("k", [1, 4])
def test_views(cuda, dtype, view, k):
    """Views read in place: a depth ending inside a 16-byte group, rows one element off alignment
    (both: the top-k kernel, element loads), rows 48 apart holding 40 (the tensor-core kernel for
    fp16/bf16 top-1)."""
    width, cut = {"depth_ends_mid_group": (32, slice(0, 30)), "rows_off_alignment": (40, slice(1, 33)),
                  "strided_rows": (48, slice(0, 40))}[view]
    src = randn(3, 130, width, dtype=dtype, seed=8)[::2, :, cut]
    tgt = randn(2, 150, width, dtype=dtype, seed=9)[:, 10:, cut]
    index, sim, kernel = cuda.topk(src, tgt, k, splits=2)
    takes_mma = view == "strided_rows" and k == 1 and dtype != torch.float32
    assert kernel == ("mma" if takes_mma else "topk")
    assert_topk_close(index, sim, src, tgt, k)


# ---- soft-argmax ----

@pytest.mark.parametrize("dtype", ALL_TYPES)
def test_soft_argmax_matches_reference(cuda, dtype):
    h, w = 9, 11
    src, tgt = randn(2, 25, 20, dtype=dtype, seed=18), randn(2, h * w, 20, dtype=dtype, seed=19)
    mask = torch.rand(2, h * w, generator=torch.Generator().manual_seed(20)) > 0.3
    index, _ = ref.nearest_reference(src, tgt, mask=mask)
    index[0, 0] = 0  # a window clipped at the corner
    index[1, 1] = -1  # no match -> NaN
    xy = cuda.soft_argmax(src, tgt, index, (h, w), radius=2, temperature=0.1, mask=mask)
    xy_ref = ref.soft_argmax_reference(src, tgt, index, (h, w), radius=2, temperature=0.1, mask=mask)
    torch.testing.assert_close(xy, xy_ref, atol=1e-5, rtol=1e-5, equal_nan=True)  # measured ~3e-6
    assert torch.isnan(xy[1, 1]).all() and not torch.isnan(xy[0]).any()
