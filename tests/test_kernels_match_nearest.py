"""lift_rt.kernels.match_nearest (GEMM + fused argmax, Triton) against lift_rt.matching_reference."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import DEVICE, DTYPES, GPU  # sets TRITON_INTERPRET first

from lift_rt import _C, matching
from lift_rt import matching_reference as ref
from lift_rt.kernels.match_nearest import column_splits, inverse_norms, nearest_triton
from matching_utils import assert_topk_close, integer_inputs, randn

# Similarities are in [-1, 1]. The product of two fp16 or bf16 values is exact in fp32, and both sides sum
# and normalise in fp32, so every dtype gets fp32's tolerance (measured on the H100, 2026-11-26: gaps of at
# most 3e-7 at 12544 x 12544 x 384 in bf16).
SIM_TOL = 1e-5

SHAPES = [(1, 1, 1, 1), (1, 13, 29, 7), (5, 33, 65, 37), (2, 130, 300, 130)]
if GPU:
    SHAPES += [(1, 3136, 3136, 384), (2, 784, 12544, 768)]


def check(index, sim, src, tgt, **kwargs):
    assert index.dtype == torch.int64 and sim.dtype == torch.float32
    assert index.shape == sim.shape == src.shape[:2]
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1, tol=SIM_TOL, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,m,d", SHAPES)
def test_nearest_matches_reference(dtype, b, n, m, d):
    src = randn(b, n, d, dtype=dtype, device=DEVICE, seed=n)
    tgt = randn(b, m, d, dtype=dtype, device=DEVICE, seed=m + 1)
    index, sim = nearest_triton(src, tgt)
    check(index, sim, src, tgt)


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_column_splits_are_merged_with_ties_to_lowest_index(splits):
    src, tgt = integer_inputs(2, 40, 700, 19, seed=3)  # exact dot products, many ties across splits
    tgt[:, 650] = tgt[:, 5]  # the same best column in the first and the last split
    src, tgt = src.to(DEVICE), tgt.to(DEVICE)
    index, sim = nearest_triton(src, tgt, normalize=False, splits=splits)
    ref_index, ref_sim = ref.nearest_reference(src.cpu(), tgt.cpu(), normalize=False)
    assert torch.equal(index.cpu(), ref_index) and torch.equal(sim.cpu(), ref_sim)


def test_mask_nan_and_rows_without_candidates():
    src, tgt = randn(2, 20, 16, seed=1), randn(2, 300, 16, seed=2)
    src[0, 3] = float("nan")  # a NaN source row has no candidate
    tgt[1, 7] = float("nan")  # a NaN target never wins
    mask = torch.rand(2, 300, generator=torch.Generator().manual_seed(0)) > 0.5
    mask[1] = False  # batch item 1: no valid target at all
    index, sim = nearest_triton(src.to(DEVICE), tgt.to(DEVICE), mask.to(DEVICE), splits=2)
    ref_index, ref_sim = ref.nearest_reference(src, tgt, mask=mask)
    assert (index[0, 3] == -1).item() and (index[1] == -1).all() and (sim[1] == float("-inf")).all()
    assert torch.equal(index.cpu(), ref_index)
    torch.testing.assert_close(sim.cpu(), ref_sim, atol=1e-5, rtol=0)


def test_strided_inputs_are_read_in_place():
    src = randn(3, 50, 48, device=DEVICE, seed=4)[:, ::2, 4:44]  # row and batch strides that are not the contiguous ones
    tgt = randn(3, 40, 90, device=DEVICE, seed=5).transpose(1, 2)  # D is the strided axis
    assert not src.is_contiguous() and tgt.stride(-1) != 1
    index, sim = nearest_triton(src, tgt)
    check(index, sim, src, tgt)


def test_column_splits_fill_the_device():
    assert column_splits(1, 12544, 12544, DEVICE) >= 1
    assert column_splits(1, 20, 50176, DEVICE) > 1  # few rows: the columns are split
    assert column_splits(1, 20, 100, DEVICE) == 1  # never more splits than 256-column chunks


@pytest.mark.skipif(not (GPU and _C.has_cuda()), reason="needs a CUDA GPU: compares the Triton and csrc CUDA matchers")
@pytest.mark.parametrize("dtype", DTYPES)
def test_lift_match_cuda_selects_either_implementation(monkeypatch, dtype):
    src, tgt = randn(2, 500, 64, dtype=dtype, device="cuda", seed=6), randn(2, 900, 64, dtype=dtype, device="cuda", seed=7)
    for impl in ("triton", "csrc"):
        monkeypatch.setenv("LIFT_MATCH_CUDA", impl)
        assert matching.cuda_impl() == impl
        index, sim = matching.nearest(src, tgt)
        check(index, sim, src, tgt)


def test_lift_match_cuda_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("LIFT_MATCH_CUDA", "cublas")
    with pytest.raises(ValueError, match="LIFT_MATCH_CUDA"):
        matching.cuda_impl()


def test_auto_hands_large_half_precision_problems_to_triton(monkeypatch):
    monkeypatch.delenv("LIFT_MATCH_CUDA", raising=False)
    big = matching.TRITON_FROM_MACS
    assert matching.cuda_impl(big, torch.bfloat16) == "triton" and matching.cuda_impl(big, torch.float16) == "triton"
    assert matching.cuda_impl(big - 1, torch.bfloat16) == "csrc"
    assert matching.cuda_impl(1 << 40, torch.float32) == "csrc"  # fp32 stays on csrc (not timed on a GPU)
    assert matching.cuda_impl() == "csrc"
    monkeypatch.setattr(matching, "_ampere_or_newer", lambda index: False)  # pre-sm_80 GPUs keep csrc
    assert matching.cuda_impl(big, torch.bfloat16, torch.device("cuda", 0)) == "csrc"
    assert matching.cuda_impl(big, torch.bfloat16, torch.device("cpu")) == "triton"
    monkeypatch.setattr(matching, "_has_triton", lambda: False)  # a torch build without Triton keeps csrc
    assert matching.cuda_impl(big, torch.bfloat16) == "csrc"
    monkeypatch.setenv("LIFT_MATCH_CUDA", "triton")
    assert matching.cuda_impl(1, torch.float32) == "triton"


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_norms_match_torch(dtype):
    x = randn(3, 70, 200, dtype=torch.float32, seed=8)[:, ::2, 5:135]  # strided rows, D = 130 (a partial 64-chunk)
    x[0, 1] = float("nan")
    x[1, 2] = 0.0
    x[2, 3, 7] = float("inf")
    x = x.to(dtype)
    want = torch.linalg.vector_norm(x.float(), dim=-1).clamp_min(1e-12).reciprocal()
    got = inverse_norms(x.to(DEVICE), 1e-12).cpu()
    assert got[0, 1].isnan() and got[1, 2] == 1e12 and got[2, 3] == 0.0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)


def test_empty_sides():
    """No targets: every row reports no candidate (the public API rejects this earlier); no sources: empty outputs."""
    index, sim = nearest_triton(randn(2, 3, 8, device=DEVICE), randn(2, 0, 8, device=DEVICE))
    assert (index == -1).all() and (sim == float("-inf")).all() and index.shape == (2, 3)
    index, sim = nearest_triton(randn(2, 0, 8, device=DEVICE), randn(2, 5, 8, device=DEVICE))
    assert index.shape == sim.shape == (2, 0)


def test_batches_beyond_the_grid_limit_run_in_chunks(monkeypatch):
    """The batch is the launch's grid axis z (at most 65535): larger batches go in chunks (limit lowered here)."""
    from lift_rt.kernels import match_nearest

    monkeypatch.setattr(match_nearest, "MAX_GRID_Z", 2)
    src, tgt = randn(5, 9, 16, device=DEVICE, seed=11), randn(5, 300, 16, device=DEVICE, seed=12)
    mask = (torch.rand(5, 300, generator=torch.Generator().manual_seed(1)) > 0.3).to(DEVICE)
    index, sim = nearest_triton(src, tgt, mask, splits=2)
    ref_index, ref_sim = ref.nearest_reference(src.cpu(), tgt.cpu(), mask=mask.cpu())
    assert torch.equal(index.cpu(), ref_index)
    torch.testing.assert_close(sim.cpu(), ref_sim, atol=1e-5, rtol=0)
