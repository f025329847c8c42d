"""lift_rt.matching (C++/CUDA kernels) against lift_rt.matching_reference."""
import numpy as np
import pytest
import torch

from lift_rt import _C, matching
from lift_rt import matching_reference as ref
from matching_utils import assert_topk_close, integer_inputs, randn

CUDA_OK = torch.cuda.is_available() and _C.has_cuda()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ISAS = [pytest.param(name, marks=pytest.mark.skipif(code > _C.cpu_isa(), reason=f"this CPU has no {name}"))
        for name, code in matching._ISA_NAMES.items()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,m,d", [(1, 1, 1, 1), (1, 13, 29, 7), (7, 33, 65, 37), (2, 100, 51, 130), (1, 131, 97, 384)])
def test_nearest_matches_reference(device, dtype, b, n, m, d):
    src, tgt = randn(b, n, d, dtype=dtype, device=device, seed=n), randn(b, m, d, dtype=dtype, device=device, seed=m + 1)
    index, sim = matching.nearest(src, tgt)
    assert index.shape == (b, n) and index.dtype == torch.int64 and sim.dtype == torch.float32
    assert index.device == src.device
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", ["depth_ends_mid_group", "rows_off_alignment"])
@pytest.mark.parametrize("k", [1, 4])
def test_views_that_defeat_wide_loads(device, dtype, view, k):
    """Depth ending inside a 16-byte group of aligned rows, and rows starting one element past an
    aligned address: the CUDA kernel's 16-byte tile loads must handle the tail and fall back."""
    width, cut = (32, slice(0, 30)) if view == "depth_ends_mid_group" else (40, slice(1, 33))
    src = randn(2, 50, width, dtype=dtype, device=device, seed=8)[..., cut]
    tgt = randn(2, 70, width, dtype=dtype, device=device, seed=9)[..., cut]
    index, sim = matching.topk(src, tgt, k)
    assert_topk_close(index, sim, src, tgt, k)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 4, 16])
def test_every_cpu_kernel_is_exact_on_integer_inputs(monkeypatch, isa, k):
    monkeypatch.setenv("LIFT_MATCH_ISA", isa)
    src, tgt = integer_inputs(3, 29, 71, 19)
    index, sim = matching.topk(src, tgt, k, normalize=False)
    ref_index, ref_sim = ref.topk_reference(src, tgt, k, normalize=False)
    assert torch.equal(index, ref_index) and torch.equal(sim, ref_sim)


@pytest.fixture
def torch_threads():
    """Sets torch's CPU thread count for one test (the matcher uses as many) and restores it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("threads", [2, 5])
def test_column_chunks_merge_exactly(monkeypatch, torch_threads, isa, k, threads):
    """3 sources x 5000 targets: one row block, so the targets are cut into column chunks whose
    top-k lists are merged. Exact on integers, ties across chunks, a mask, NaN targets, a target
    half and a whole pair masked out."""
    monkeypatch.setenv("LIFT_MATCH_ISA", isa)
    torch_threads(threads)
    src, half = integer_inputs(3, 3, 2500, 5, seed=k)
    tgt = torch.cat([half, half], dim=1)  # target j ties exactly with j + 2500, in another chunk
    tgt[0, 2510] = tgt[1, 2600] = float("nan")
    mask = torch.rand(3, 5000, generator=torch.Generator().manual_seed(k)) > 0.3
    mask[1, :2500] = False  # the first chunks hold nothing valid
    mask[2] = False
    split = _C.cpu_work_split(3, 3, 5000, 5, matching._ISA_NAMES[isa], threads)
    assert split["row_blocks"] == 1 and split["chunks"] == threads
    results = {}
    for name, m in (("all", None), ("masked", mask)):
        results[name] = matching.topk(src, tgt, k, normalize=False, mask=m)
        ref_index, ref_sim = ref.topk_reference(src, tgt, k, normalize=False, mask=m)
        assert torch.equal(results[name][0], ref_index) and torch.equal(results[name][1], ref_sim)
    assert (results["all"][0][..., 0] < 2500).all()  # the tie with j + 2500 goes to j
    index = results["masked"][0]
    assert (index[2] == -1).all() and (index[1] >= 2500).all()
    assert (index[0] != 2510).all() and (index[1] != 2600).all()  # NaN never wins


def test_work_split_cuts_columns_only_when_rows_are_too_few():
    isa = matching._ISA_NAMES[matching.cpu_isa()]
    assert _C.cpu_work_split(1, 20, 50176, 384, isa, 1)["chunks"] == 1
    many_rows = _C.cpu_work_split(1, 100_000, 50176, 384, isa, 2)
    assert many_rows["chunks"] == 1 and many_rows["row_blocks"] >= 2
    few_rows = _C.cpu_work_split(1, 1, 50176, 384, isa, 4)
    assert few_rows["row_blocks"] == 1 and few_rows["chunks"] == 4
    assert _C.cpu_work_split(1, 1, 3, 384, isa, 8)["chunks"] == 1  # never more chunks than target panels


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_kernel_matches_reference(monkeypatch, isa):
    monkeypatch.setenv("LIFT_MATCH_ISA", isa)
    src, tgt = randn(2, 45, 23, seed=1), randn(2, 67, 23, seed=2)
    index, sim = matching.topk(src, tgt, 3)
    assert_topk_close(index, sim, src, tgt, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_lowest_index(device):
    base = randn(1, 5, 16, seed=3)
    tgt = torch.cat([base, base, base], dim=1).to(device)  # targets j, j+5, j+10 identical
    index, sim = matching.nearest(base.to(device), tgt)
    assert torch.equal(index.cpu(), torch.arange(5).unsqueeze(0))
    index, _ = matching.topk(base.to(device), tgt, 3)
    assert torch.equal(index.cpu()[0, 0], torch.tensor([0, 5, 10]))
    zeros = torch.zeros(1, 4, 8, device=device)  # all similarities 0 -> index 0
    assert (matching.nearest(zeros, zeros)[0] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2, 5, 16])
def test_topk_matches_reference(device, dtype, k):
    src, tgt = randn(3, 41, 33, dtype=dtype, device=device, seed=4), randn(3, 90, 33, dtype=dtype, device=device, seed=5)
    index, sim = matching.topk(src, tgt, k)
    assert index.shape == (3, 41, k)
    assert_topk_close(index, sim, src, tgt, k)
    assert (sim[..., :-1] >= sim[..., 1:]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_mask(device):
    src, tgt = randn(2, 30, 12, device=device, seed=6), randn(2, 50, 12, device=device, seed=7)
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(8)) > 0.5
    mask[1] = False  # nothing valid in the second pair
    mask[0, 3] = True
    mask = mask.to(device)
    index, sim = matching.topk(src, tgt, 3, mask=mask)
    assert_topk_close(index, sim, src, tgt, 3, mask=mask)
    assert mask[0].cpu()[index[0].cpu()].all()
    assert (index[1] == -1).all() and (sim[1] == float("-inf")).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_never_wins(device):
    src, tgt = randn(1, 6, 10, device=device, seed=9), randn(1, 20, 10, device=device, seed=10)
    tgt[0, 4] = float("nan")
    src[0, 2, 0] = float("nan")
    index, sim = matching.nearest(src, tgt)
    assert (index != 4).all()
    assert index[0, 2] == -1 and sim[0, 2] == float("-inf")
    ref_index, ref_sim = ref.nearest_reference(src.cpu(), tgt.cpu())
    assert torch.equal(index.cpu(), ref_index)


def test_the_documented_mask_keeps_rows_without_a_match_out():
    """A NaN row's index is -1, which would pick the last target: the docstring says so and gives the mask."""
    src, tgt = randn(1, 5, 8, device="cpu", seed=3), randn(1, 7, 8, device="cpu", seed=4)
    src[0, 1, 3] = float("nan")
    index, _ = matching.nearest(src, tgt)
    valid = index >= 0
    assert valid.tolist() == [[True, False, True, True, True]]
    points = torch.arange(7.0)
    assert torch.equal(points[index.clamp_min(0)][valid], index[valid].float())
    assert "valid = index >= 0" in matching.nearest.__doc__ and "last" in matching.nearest.__doc__


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 3])
def test_minus_inf_scores_never_match(device, k):
    """Without normalisation a target with a -inf component scores -inf (or NaN): no match, as the reference."""
    src = torch.ones(1, 4, 8, device=device)
    tgt = torch.ones(1, 5, 8, device=device)
    tgt[0, :, 0] = float("-inf")
    tgt[0, 2, 0] = 1.0  # the only finite target
    index, sim = matching.topk(src, tgt, k, normalize=False)
    ref_index, ref_sim = ref.topk_reference(src.cpu(), tgt.cpu(), k, normalize=False)
    assert torch.equal(index.cpu(), ref_index) and torch.equal(sim.cpu(), ref_sim)
    assert (index[..., 0] == 2).all() and (index[..., 1:] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,k", [(torch.float16, 1), (torch.float32, 2)])
def test_batches_beyond_the_cuda_grid_limit(device, dtype, k):
    """65539 pairs: more than grid.z allows in one CUDA launch, so the batch runs in chunks there."""
    src = randn(65539, 2, 8, dtype=dtype, device=device, seed=1)
    tgt = randn(65539, 3, 8, dtype=dtype, device=device, seed=2)
    index, sim = matching.topk(src, tgt, k)
    assert_topk_close(index, sim, src, tgt, k)


@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,n,m,d", [(1, 1000, 3000, 384), (3, 300, 517, 64), (2, 129, 4100, 40)])
def test_tensor_core_nearest_at_real_sizes(dtype, b, n, m, d):
    """Shapes the tensor-core top-1 kernel takes (depth a multiple of 8, aligned rows): many tiles,
    column splits chosen from the GPU's occupancy, a depth tail (d = 40)."""
    src, tgt = randn(b, n, d, dtype=dtype, device="cuda", seed=n), randn(b, m, d, dtype=dtype, device="cuda", seed=m)
    index, sim = matching.nearest(src, tgt)
    assert_topk_close(index.unsqueeze(-1), sim.unsqueeze(-1), src, tgt, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_are_read_in_place(device):
    src_t, tgt_t = randn(2, 24, 31, device=device, seed=11), randn(2, 24, 45, device=device, seed=12)
    src, tgt = src_t.transpose(1, 2), tgt_t.transpose(1, 2)[:, ::2]  # B x N x D views with odd strides
    assert not src.is_contiguous() and not tgt.is_contiguous()
    index, sim = matching.nearest(src, tgt)
    c_index, c_sim = matching.nearest(src.contiguous(), tgt.contiguous())
    assert torch.equal(index, c_index)
    torch.testing.assert_close(sim, c_sim)


def test_unbatched_and_empty():
    src, tgt = randn(9, 5, seed=13), randn(11, 5, seed=14)
    index, sim = matching.nearest(src, tgt)
    assert index.shape == (9,)
    assert torch.equal(index, matching.nearest(src[None], tgt[None])[0][0])
    index, sim = matching.nearest(torch.empty(2, 0, 5), randn(2, 3, 5))
    assert index.shape == (2, 0) and sim.shape == (2, 0)
    index, sim, mut = matching.mutual(torch.empty(2, 0, 5), randn(2, 3, 5))
    assert mut.shape == (2, 0)


@pytest.mark.parametrize("make,error,match", [
    (lambda: ((2, 4, 8), (2, 5, 9), {}), ValueError, "descriptor sizes differ"),
    (lambda: ((2, 4, 8), (3, 5, 8), {}), ValueError, "batch sizes differ"),
    (lambda: ((2, 4, 8), (2, 0, 8), {}), ValueError, "empty"),
    (lambda: ((2, 4, 0), (2, 5, 0), {}), ValueError, "at least 1"),
    (lambda: ((4, 8), (2, 5, 8), {}), ValueError, "expected src"),
    (lambda: ((2, 4, 8), (2, 5, 8), {"mask": torch.ones(2, 4, dtype=torch.bool)}), ValueError, "mask must have shape"),
    (lambda: ((2, 4, 8), (2, 5, 8), {"mask": torch.ones(2, 5)}), TypeError, "bool"),
])
def test_bad_shapes(make, error, match):
    src_shape, tgt_shape, kwargs = make()
    with pytest.raises(error, match=match):
        matching.nearest(torch.randn(src_shape), torch.randn(tgt_shape), **kwargs)


def test_bad_dtypes_devices_and_k():
    src, tgt = randn(1, 4, 8), randn(1, 5, 8)
    with pytest.raises(TypeError, match="share a dtype"):
        matching.nearest(src, tgt.half())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        matching.nearest(src.double(), tgt.double())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        matching.nearest(src.long(), tgt.long())
    with pytest.raises(ValueError, match="CPU or CUDA"):
        matching.nearest(src.to("meta"), tgt.to("meta"))
    with pytest.raises(ValueError, match="k must be"):
        matching.topk(src, tgt, 6)
    with pytest.raises(ValueError, match="k must be"):
        matching.topk(randn(1, 4, 8), randn(1, 40, 8), matching.MAX_K + 1)
    for bad_k in (2.5, "2", True):
        with pytest.raises(TypeError, match="k must be an integer"):
            matching.topk(src, tgt, bad_k)
    assert matching.topk(src, tgt, np.int64(2))[0].shape == (1, 4, 2)  # numpy integers are integers
    for bad_eps in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="eps must be"):
            matching.nearest(src, tgt, eps=bad_eps)
    with pytest.raises(ValueError, match="src_mask must have shape"):
        matching.mutual(src, tgt, src_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="LIFT_MATCH_ISA"):
        import os
        os.environ["LIFT_MATCH_ISA"] = "sse9"
        try:
            matching.nearest(src, tgt)
        finally:
            del os.environ["LIFT_MATCH_ISA"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed-device check needs a CUDA device")
def test_mixed_devices():
    with pytest.raises(ValueError, match="different devices"):
        matching.nearest(randn(1, 4, 8), randn(1, 5, 8, device="cuda"))


@pytest.mark.parametrize("device", DEVICES)
def test_mutual_matches_reference(device):
    src, tgt = randn(2, 40, 16, device=device, seed=15), randn(2, 35, 16, device=device, seed=16)
    tgt_mask = (torch.rand(2, 35, generator=torch.Generator().manual_seed(17)) > 0.2).to(device)
    index, sim, mut = matching.mutual(src, tgt, tgt_mask=tgt_mask)
    r_index, r_sim, r_mut = ref.mutual_reference(src.cpu(), tgt.cpu(), tgt_mask=tgt_mask.cpu())
    assert torch.equal(index.cpu(), r_index) and torch.equal(mut.cpu(), r_mut)
    torch.testing.assert_close(sim.cpu(), r_sim, atol=1e-5, rtol=0)
    assert mut.any()
    both = torch.cat([src[:, :5], src[:, :5]], dim=1)  # a source and its copy: only the first is mutual
    _, _, mut = matching.mutual(both, src[:, :5])
    assert mut[:, :5].all() and not mut[:, 5:].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_argmax_matches_reference(device, dtype):
    h, w = 9, 11
    src, tgt = randn(2, 25, 20, dtype=dtype, device=device, seed=18), randn(2, h * w, 20, dtype=dtype, device=device, seed=19)
    mask = (torch.rand(2, h * w, generator=torch.Generator().manual_seed(20)) > 0.3).to(device)
    index, _ = matching.nearest(src, tgt, mask=mask)
    index[0, 0] = 0  # a window clipped at the corner
    index[1, 1] = -1  # no match -> NaN
    xy = matching.soft_argmax(src, tgt, index, (h, w), radius=2, temperature=0.1, mask=mask)
    xy_ref = ref.soft_argmax_reference(src.cpu(), tgt.cpu(), index.cpu(), (h, w), radius=2, temperature=0.1,
                                       mask=mask.cpu())
    torch.testing.assert_close(xy.cpu(), xy_ref, atol=1e-5, rtol=1e-5, equal_nan=True)  # measured ~3e-6
    assert torch.isnan(xy[1, 1]).all()
    exact = matching.soft_argmax(src, tgt, index.clamp_min(0), (h, w), radius=0)  # one cell: its centre
    torch.testing.assert_close(exact.cpu(), torch.stack([index.clamp_min(0) % w, index.clamp_min(0) // w], -1).float().cpu())


def test_soft_argmax_bad_inputs():
    src, tgt = randn(1, 4, 8), randn(1, 12, 8)
    index = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="grid_size"):
        matching.soft_argmax(src, tgt, index, (5, 3))
    with pytest.raises(ValueError, match="index must be"):
        matching.soft_argmax(src, tgt, index.int(), (3, 4))
    with pytest.raises(ValueError, match="temperature"):
        matching.soft_argmax(src, tgt, index, (3, 4), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        matching.soft_argmax(src, tgt, index, (3, 4), temperature=float("nan"))
    with pytest.raises(TypeError, match="radius must be an integer"):
        matching.soft_argmax(src, tgt, index, (3, 4), radius=1.5)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        matching.soft_argmax(src, tgt, index, (3, 4), radius=-1)
    with pytest.raises(TypeError, match="grid_size must be a"):
        matching.soft_argmax(src, tgt, index, (12,))
    with pytest.raises(ValueError, match=r"grid_size\[0\] must be >= 1"):
        matching.soft_argmax(src, tgt, index, (-3, -4))
    with pytest.raises(TypeError, match=r"grid_size\[1\] must be an integer"):
        matching.soft_argmax(src, tgt, index, (3, 4.0))
    with pytest.raises(TypeError, match="index must be an int64 tensor"):
        matching.soft_argmax(src, tgt, [0, 0, 0, 0], (3, 4))
    out_of_range = torch.tensor([[0, 11, 12, 99]])  # documented: outside [0, M) -> NaN, as -1
    xy = matching.soft_argmax(src, tgt, out_of_range, (3, 4))
    assert torch.isfinite(xy[0, :2]).all() and torch.isnan(xy[0, 2:]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("refine", [0, 2])
def test_match_keypoints_matches_reference(device, refine):
    # Different pixels per cell along x and y on both sides (source 8 x 4, target 4 x 8), so a swapped axis shows;
    # keypoints beyond the outer cell centres exercise the border clamp.
    src_f, tgt_f = randn(2, 24, 7, 9, device=device, seed=21), randn(2, 24, 8, 6, device=device, seed=22)
    kps = (torch.rand(2, 10, 2, generator=torch.Generator().manual_seed(23)) * torch.tensor([35.0, 55.0])).to(device)
    out, sim = matching.match_keypoints(src_f, tgt_f, kps, (56, 36), tgt_image_size=(32, 48), refine_radius=refine)
    out_ref, sim_ref = ref.match_keypoints_reference(src_f.cpu(), tgt_f.cpu(), kps.cpu(), (56, 36),
                                                     tgt_image_size=(32, 48), refine_radius=refine)
    assert out.shape == (2, 10, 2) and sim.shape == (2, 10)
    torch.testing.assert_close(out.cpu(), out_ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(sim.cpu(), sim_ref, atol=1e-5, rtol=0)


def test_pixel_cell_conversions_by_hand():
    """Image 40 x 96 (H x W) on a 5 x 6 grid: 16 pixels per cell along x, 8 along y."""
    xy = torch.tensor([[[7.5, 3.5], [23.5, 11.5], [95.0, 0.0]]])
    uv = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [(95.5 / 16) - 0.5, (0.5 / 8) - 0.5]]])
    torch.testing.assert_close(matching.pixels_to_cells(xy, (40, 96), (5, 6)), uv, rtol=0, atol=1e-6)
    torch.testing.assert_close(matching.cells_to_pixels(uv, (40, 96), (5, 6)), xy, rtol=0, atol=1e-5)


def test_sample_descriptors_matches_reference():
    feats = randn(2, 5, 5, 6, seed=28)
    kps = torch.rand(2, 12, 2, generator=torch.Generator().manual_seed(29)) * torch.tensor([110.0, 50.0]) - 5  # some outside
    kps[0, 0] = torch.tensor([23.5, 11.5])  # a cell centre: exactly that cell's descriptor
    out = matching.sample_descriptors(feats, kps, (40, 96))
    torch.testing.assert_close(out, ref.sample_descriptors_reference(feats, kps, (40, 96)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0, 0], feats[0, :, 1, 1])


def test_match_keypoints_identity_at_full_resolution():
    feats = randn(1, 16, 20, 24, seed=24)  # one descriptor per pixel, as in the SPair protocol
    kps = torch.tensor([[[0.0, 0.0], [23.0, 19.0], [5.0, 7.0], [12.0, 3.0]]])
    out, sim = matching.match_keypoints(feats, feats, kps, (20, 24))
    torch.testing.assert_close(out, kps)
    torch.testing.assert_close(sim, torch.ones(1, 4))
    uv = matching.pixels_to_cells(kps, (20, 24), (5, 6))
    torch.testing.assert_close(matching.cells_to_pixels(uv, (20, 24), (5, 6)), kps)


@pytest.mark.parametrize("refine", [0, 1])
def test_match_keypoints_missing_keypoints_match_nothing(refine):
    feats = randn(1, 16, 20, 24, seed=27)
    kps = torch.tensor([[[5.0, 7.0], [float("nan"), 3.0], [12.0, float("inf")], [23.0, 19.0]]])
    out, sim = matching.match_keypoints(feats, feats, kps, (20, 24), refine_radius=refine)
    assert torch.isnan(out[0, 1:3]).all() and (sim[0, 1:3] == float("-inf")).all()
    torch.testing.assert_close(out[0, [0, 3]], kps[0, [0, 3]], atol=0.5, rtol=0)  # the others are unaffected


def test_match_keypoints_bad_inputs():
    f = randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match="B x K x 2"):
        matching.match_keypoints(f, f, torch.zeros(1, 3), (16, 16))
    with pytest.raises(ValueError, match="B x D x h x w"):
        matching.match_keypoints(f[0], f, torch.zeros(1, 3, 2), (16, 16))
    with pytest.raises(ValueError, match="share dtype"):
        matching.match_keypoints(f, f.half(), torch.zeros(1, 3, 2), (16, 16))
    kps = torch.zeros(1, 3, 2)
    with pytest.raises(TypeError, match="src_kps must be a B x K x 2 tensor"):
        matching.match_keypoints(f, f, np.zeros((1, 3, 2)), (16, 16))
    with pytest.raises(ValueError, match=r"image_size\[0\] must be >= 1"):
        matching.match_keypoints(f, f, kps, (0, 0))
    with pytest.raises(TypeError, match="image_size must be a"):
        matching.match_keypoints(f, f, kps, 16)
    with pytest.raises(ValueError, match=r"tgt_image_size\[1\] must be >= 1"):
        matching.match_keypoints(f, f, kps, (16, 16), tgt_image_size=(16, -16))
    with pytest.raises(TypeError, match="refine_radius must be an integer"):
        matching.match_keypoints(f, f, kps, (16, 16), refine_radius=1.5)
    with pytest.raises(ValueError, match=r"tgt_mask must have shape \(1, 4, 4\)"):
        matching.match_keypoints(f, f, kps, (16, 16), tgt_mask=torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="feats must be a B x D x h x w"):
        matching.sample_descriptors(f[0], kps, (16, 16))


def test_ops_pass_opcheck():
    src, tgt = randn(2, 9, 12, seed=25), randn(2, 16, 12, seed=26)
    mask = torch.ones(2, 16, dtype=torch.bool)
    torch.library.opcheck(torch.ops.lift_rt.match_topk.default, (src, tgt, mask, 2, True, 1e-12))
    torch.library.opcheck(torch.ops.lift_rt.match_topk.default, (src, tgt, None, 1, False, 1e-12))
    index = torch.zeros(2, 9, dtype=torch.int64)
    torch.library.opcheck(torch.ops.lift_rt.soft_argmax.default, (src, tgt, None, index, 4, 4, 1, 0.1, True, 1e-12))


def test_torch_compile_smoke():
    def f(src, tgt):
        index, sim = matching.nearest(src, tgt)
        return index + 1, sim * 2

    src, tgt = randn(2, 9, 12, seed=27), randn(2, 16, 12, seed=28)
    for dynamic in (False, True):  # dynamic: shapes and float arguments (eps) arrive symbolic
        torch._dynamo.reset()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=dynamic)
        out = compiled(src, tgt)
        expected = f(src, tgt)
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def test_unbatched_mask_errors_name_the_callers_shape():
    src, tgt = randn(3, 4, seed=32), randn(5, 4, seed=33)
    with pytest.raises(ValueError, match=r"tgt_mask must have shape \(5,\), got \(1, 5\)"):
        matching.nearest(src, tgt, mask=torch.ones(1, 5, dtype=torch.bool))
    index, _ = matching.nearest(src, tgt, mask=torch.tensor([False, True, False, True, False]))
    assert set(index.tolist()) <= {1, 3}


def test_soft_argmax_radius_beyond_the_grid_is_the_whole_grid():
    src, tgt = randn(1, 3, 8, seed=30), randn(1, 12, 8, seed=31)
    index, _ = matching.nearest(src, tgt)
    whole = matching.soft_argmax(src, tgt, index, (3, 4), radius=3, temperature=0.5)
    for radius in (4, 100_000, 2**40):  # no window buffer of (2r + 1)^2 cells is ever allocated
        torch.testing.assert_close(matching.soft_argmax(src, tgt, index, (3, 4), radius=radius, temperature=0.5), whole)
    torch.testing.assert_close(whole, ref.soft_argmax_reference(src, tgt, index, (3, 4), radius=3, temperature=0.5))
    direct = torch.ops.lift_rt.soft_argmax.default(src, tgt, None, index, 3, 4, 2**30, 0.5, True, 1e-12)  # the op clamps too
    torch.testing.assert_close(direct, whole)


@pytest.mark.parametrize("value", [1e-50, 1e300, float("inf"), float("nan"), 0.0, -1.0])
def test_temperature_must_survive_float32(value):
    src, tgt = randn(1, 3, 8, seed=30), randn(1, 12, 8, seed=31)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0 that float32 holds"):
        matching.soft_argmax(src, tgt, torch.zeros(1, 3, dtype=torch.long), (3, 4), temperature=value)
