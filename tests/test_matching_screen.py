"""Top-1 on the CPU through int8 screening + exact fp32 rescoring (csrc/matching_screen.cpp) against
lift_rt.matching_reference and against the fp32 kernel alone: every int8 kernel, dtypes, odd depths,
and each path that hands rows back to the exact kernel (too many candidates, NaN / inf, zero rows)."""
import pytest
import torch

from lift_rt import _C, matching
from lift_rt import matching_reference as ref
from matching_utils import assert_topk_close, integer_inputs, randn

SCREEN_OFF, SCREEN_AUTO, SCREEN_ON = 0, 1, 2
# int8 kernel -> (ISA code, whether VNNI kernels are allowed): the settings that select it
KERNELS = {"avx2": (1, False), "avxvnni": (1, True), "avx512bw": (2, False), "avx512vnni": (2, True)}


def _available(kernel: str) -> bool:
    isa, vnni = KERNELS[kernel]
    return isa <= _C.cpu_isa() and _C.cpu_screen_kernel(isa, vnni) == kernel


SCREEN_KERNELS = [pytest.param(k, marks=pytest.mark.skipif(not _available(k), reason=f"this CPU/build has no {k} "
                                                            "int8 kernel")) for k in KERNELS]


def nearest_cpu(src, tgt, kernel=None, *, mask=None, normalize=True, threads=2):
    """(index B x N, sim B x N) from _C.topk_cpu with the given int8 kernel (None: screening off)."""
    isa, vnni = KERNELS[kernel] if kernel else (_C.cpu_isa(), True)
    mode = SCREEN_ON if kernel else SCREEN_OFF
    b, n, d = src.shape
    index = torch.empty(b, n, 1, dtype=torch.int64)
    sim = torch.empty(b, n, 1, dtype=torch.float32)
    _C.topk_cpu(matching._operand(src), matching._operand(tgt), matching._mask_arg(mask), b, n, tgt.shape[1], d, 1,
                normalize, matching.EPS, index.data_ptr(), sim.data_ptr(), threads, isa, mode, vnni)
    return index, sim


def assert_same_as_exact(src, tgt, kernel, **kw):
    """Screened and exact-only results agree: same indices, similarities to fp32 rounding."""
    index, sim = nearest_cpu(src, tgt, kernel, **kw)
    exact_index, exact_sim = nearest_cpu(src, tgt, None, **kw)
    assert torch.equal(index, exact_index)
    torch.testing.assert_close(sim, exact_sim, atol=1e-6, rtol=1e-6)
    return index, sim


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,n,m,d", [(1, 1, 1, 1), (1, 13, 29, 7), (7, 33, 65, 37), (2, 100, 51, 130),
                                     (1, 400, 517, 384), (1, 150, 90, 770)])
def test_screened_matches_reference(kernel, dtype, b, n, m, d):
    src, tgt = randn(b, n, d, dtype=dtype, seed=n), randn(b, m, d, dtype=dtype, seed=m + 1)
    index, sim = nearest_cpu(src, tgt, kernel)
    assert_topk_close(index, sim, src, tgt, 1)


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_screened_is_exact_on_integer_inputs_and_chunks(kernel, threads):
    """Small integers: exact dot products and frequent ties (lowest index wins), unnormalised; with
    few source rows and several threads the targets are cut into column chunks."""
    src, tgt = integer_inputs(3, 29, 2000, 19, seed=threads)
    index, sim = nearest_cpu(src, tgt, kernel, normalize=False, threads=threads)
    ref_index, ref_sim = ref.topk_reference(src, tgt, 1, normalize=False)
    assert torch.equal(index, ref_index) and torch.equal(sim, ref_sim)


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
def test_rows_with_too_many_candidates_fall_back_exactly(kernel):
    """More copies of one target than a row's candidate list holds, sources near it: those rows
    cannot be separated by the int8 estimate and go to the exact kernel; the tie goes to the first
    copy. Zero source rows (every target scores 0) fall back too."""
    g = torch.Generator().manual_seed(3)
    copies = _C.SCREEN_CANDIDATES + 100
    tgt = torch.randn(2, copies + 400, 64, generator=g)
    tgt[:, 100:100 + copies] = tgt[:, 100:101]
    src = tgt[:, 100:101] + 0.01 * torch.randn(2, 50, 64, generator=g)
    src = torch.cat([src, torch.randn(2, 30, 64, generator=g), torch.zeros(2, 5, 64)], dim=1)
    index, sim = assert_same_as_exact(src, tgt, kernel)
    assert (index[:, :50] == 100).all()
    assert (index[:, -5:] == 0).all()  # all-zero rows: every similarity is 0, the lowest index wins
    assert_topk_close(index, sim, src, tgt, 1)


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
def test_nan_inf_and_masks(kernel):
    g = torch.Generator().manual_seed(4)
    src, tgt = torch.randn(2, 40, 33, generator=g), torch.randn(2, 300, 33, generator=g)
    src[0, 3, 5] = float("nan")
    src[1, 7, 0] = float("inf")
    mask = torch.rand(2, 300, generator=g) > 0.4
    tgt_masked_nan = tgt.clone()
    tgt_masked_nan[0, ~mask[0]] = float("nan")  # NaN only where masked out: screening goes on
    index, _ = assert_same_as_exact(src, tgt_masked_nan, kernel, mask=mask)
    assert index[0, 3] == -1 and index[1, 7] == -1
    assert mask.gather(1, index.squeeze(-1).clamp_min(0)).logical_or(index.squeeze(-1) < 0).all()
    tgt_nan = tgt.clone()
    tgt_nan[1, 17, 2] = float("nan")  # a valid NaN target: the batch element goes to the exact kernel
    tgt_nan[0, 9, 4] = float("inf")
    index, _ = assert_same_as_exact(src, tgt_nan, kernel)
    assert (index[1] != 17).all()
    everything_masked = torch.zeros(2, 300, dtype=torch.bool)
    index, sim = nearest_cpu(src, tgt, kernel, mask=everything_masked)
    assert (index == -1).all() and (sim == -float("inf")).all()


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
def test_unnormalised_rows_of_very_different_scales(kernel):
    g = torch.Generator().manual_seed(5)
    src = torch.randn(1, 90, 48, generator=g) * 10 ** torch.empty(1, 90, 1).uniform_(-3, 3, generator=g)
    tgt = torch.randn(1, 400, 48, generator=g) * 10 ** torch.empty(1, 400, 1).uniform_(-3, 3, generator=g)
    index, sim = assert_same_as_exact(src, tgt, kernel, normalize=False)
    ref_index, ref_sim = ref.topk_reference(src, tgt, 1, normalize=False)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(sim, ref_sim, rtol=1e-5, atol=0)


@pytest.mark.parametrize("data", ["separable", "degenerate", "mixed"])
def test_auto_mode_through_the_public_api(monkeypatch, data):
    """Auto screens dense problems (several source row blocks, a few million pairs) after probing a
    sample of rows; data it cannot separate (every feature nearly the same) go to the exact kernel,
    per batch element ("mixed": one of each). Same answers every way."""
    monkeypatch.setenv("LIFT_MATCH_SCREEN", "auto")
    g = torch.Generator().manual_seed(6)
    n, m, d = 1500, 3000, 384

    def degenerate(rows):
        common = torch.randn(d, generator=g)
        return common + 0.1 * torch.randn(rows, d, generator=g)  # cosines ~0.99, spread ~1e-3

    if data == "separable":
        src, tgt = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    elif data == "degenerate":
        src, tgt = degenerate(n), degenerate(m)
    else:
        src = torch.stack([torch.randn(n, d, generator=g), degenerate(n)])
        tgt = torch.stack([torch.randn(m, d, generator=g), degenerate(m)])
    isa = matching._ISA_NAMES[matching.cpu_isa()]
    assert _C.cpu_work_split(1, n, m, d, isa, torch.get_num_threads())["row_blocks"] > 1 or torch.get_num_threads() > 8
    index, sim = matching.nearest(src, tgt)
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1)
    monkeypatch.setenv("LIFT_MATCH_SCREEN", "off")
    exact_index, _ = matching.nearest(src, tgt)
    assert torch.equal(index, exact_index)


def test_screen_mode_and_kernel_names(monkeypatch):
    monkeypatch.setenv("LIFT_MATCH_SCREEN", "sometimes")
    with pytest.raises(ValueError, match="LIFT_MATCH_SCREEN"):
        matching.nearest(torch.randn(3, 4), torch.randn(5, 4))
    monkeypatch.delenv("LIFT_MATCH_SCREEN")
    assert matching.cpu_screen() == "auto"
    assert matching.cpu_screen_kernel() in {"avx2", "avxvnni", "avx512bw", "avx512vnni", None}
    monkeypatch.setenv("LIFT_MATCH_ISA", "avx2")
    monkeypatch.setenv("LIFT_MATCH_VNNI", "0")
    assert matching.cpu_screen_kernel() == ("avx2" if _C.cpu_isa() >= 1 else None)
    monkeypatch.setenv("LIFT_MATCH_VNNI", "yes")
    with pytest.raises(ValueError, match="LIFT_MATCH_VNNI"):
        matching.cpu_screen_kernel()
    monkeypatch.delenv("LIFT_MATCH_VNNI")
    monkeypatch.setenv("LIFT_MATCH_ISA", "scalar")
    assert matching.cpu_screen_kernel() is None
    # no int8 kernel for scalar: "on" quietly means the exact kernel, same answers
    monkeypatch.setenv("LIFT_MATCH_SCREEN", "on")
    src, tgt = randn(20, 9, seed=1), randn(30, 9, seed=2)
    index, sim = matching.nearest(src, tgt)
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1)
    with pytest.raises(ValueError, match="bad screen mode"):
        _C.topk_cpu(matching._operand(src[None]), matching._operand(tgt[None]), (0, 0, 0), 1, 20, 30, 9, 1, True,
                    1e-12, 0, 0, 1, 0, 7, True)


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
@pytest.mark.parametrize("case", ["huge", "tiny_targets", "tiny_sources_normalised", "huge_vs_subnormal"])
def test_extreme_magnitudes_go_to_the_exact_kernel(kernel, case):
    """Rows whose squares or dot products would leave the normal fp32 range are not screened (their
    bound would be 0, inf or NaN): same answers as the exact kernel, never index -1 for finite data."""
    src, tgt = randn(1, 60, 40, seed=7), randn(1, 300, 40, seed=8)
    normalize = False
    if case == "huge":
        src, tgt = src * 1e19, tgt * 1e19
    elif case == "tiny_targets":
        tgt = tgt * 1e-24
    elif case == "tiny_sources_normalised":  # below eps, F.normalize leaves them ~1e-23
        src, normalize = src * 1e-35, True
    else:
        src, tgt = src * 1e30, tgt * 1e-39
    index, _ = assert_same_as_exact(src, tgt, kernel, normalize=normalize)
    assert (index >= 0).all()


def test_auto_mode_with_many_threads(torch_threads_16):
    """Auto mode with more threads than cores and row blocks smaller than the probe's sample."""
    src, tgt = randn(1024, 256, seed=9), randn(4096, 256, seed=10)
    index, sim = matching.nearest(src, tgt)
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1)


@pytest.fixture
def torch_threads_16():
    before = torch.get_num_threads()
    torch.set_num_threads(16)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kernel", SCREEN_KERNELS)
def test_tiny_depth_many_rows(kernel):
    """D = 2: row blocks are sized as for a deeper D (bounded candidate memory). On a circle many
    targets tie to fp32 rounding, so the check allows near-ties."""
    src, tgt = randn(1, 20000, 2, seed=11), randn(1, 600, 2, seed=12)
    index, sim = nearest_cpu(src, tgt, kernel)
    assert_topk_close(index, sim, src, tgt, 1)
