"""Label propagation through lift_rt.matching against the dense PyTorch reference of the protocol,
and a sharp object recovered when the features are an oracle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lift_rt.eval.davis_propagation as propagation
from davis_utils import scene, write_davis
from lift_rt import _C
from lift_rt.eval.davis import evaluate_sequences, full_resolution_labels, grid_labels
from lift_rt.eval.davis_data import load_davis
from lift_rt.eval.davis_metrics import summarise
from lift_rt.eval.davis_propagation import LabelPropagator, PropagationSettings
from lift_rt.eval.davis_reference import DenseLabelPropagator


CUDA_OK = torch.cuda.is_available() and _C.has_cuda()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build"))]


def run_both(h, w, settings, frames=6, dim=16, classes=3, seed=0, device="cpu"):
    """Yield (matcher on ``device``, dense reference on the CPU) soft labels of each new frame."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(dim, h, w, generator=g)
    labels = F.one_hot(torch.randint(0, classes, (h, w), generator=g), classes).permute(2, 0, 1).float()
    ours = LabelPropagator(first.to(device), labels.to(device), settings)
    dense = DenseLabelPropagator(first, labels, settings)
    for _ in range(frames):
        feats = torch.randn(dim, h, w, generator=g)
        yield ours.step(feats.to(device)).cpu(), dense.step(feats)


@pytest.mark.parametrize("h, w, radius, context, tile", [
    (9, 11, 3, 2, 8),     # a small grid: searched whole, then each cell's window kept
    (47, 42, 12, 1, 8),   # the authors' radius on tiles that divide neither side
    (6, 5, 12, 7, 8),     # the window covers the whole grid
    (30, 27, 4, 7, 5),    # tiles that divide neither side, seven previous frames
    (16, 16, 2, 0, 4),    # the first frame only
])
@pytest.mark.parametrize("device", DEVICES)
def test_matcher_propagation_equals_dense_reference(h, w, radius, context, tile, device):
    settings = PropagationSettings(context=context, radius=radius, tile=tile)
    for ours, dense in run_both(h, w, settings, device=device):
        torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)


def test_unsettled_cells_fall_back_to_the_exact_search(monkeypatch):
    calls = []
    exact = propagation.exact_neighbourhood_topk
    monkeypatch.setattr(propagation, "exact_neighbourhood_topk", lambda *a: calls.append(len(a[1])) or exact(*a))
    settings = PropagationSettings(context=3, radius=3, tile=8, search=5)  # few candidates: many cells unsettled
    for ours, dense in run_both(24, 24, settings, frames=4):
        torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)
    assert calls and sum(calls) > 0


def test_labels_are_a_distribution_and_grid_mismatch_is_refused():
    settings = PropagationSettings(radius=2)
    for ours, _ in run_both(8, 8, settings, frames=2):
        torch.testing.assert_close(ours.sum(0), torch.ones(8, 8))
    propagator = LabelPropagator(torch.randn(4, 8, 8), torch.ones(1, 8, 8), settings)
    with pytest.raises(ValueError, match="grid"):
        propagator.step(torch.randn(4, 8, 9))
    with pytest.raises(ValueError, match="out of range"):
        PropagationSettings(k=17)


def colour_oracle(images: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """B x 3 x S x S -> B x 8 x S/cell x S/cell: each cell's share of 8 colour bins (which colour it shows)."""
    bins = (images > 0.5).long()  # B x 3 x S x S
    codes = bins[:, 0] * 4 + bins[:, 1] * 2 + bins[:, 2]
    onehot = F.one_hot(codes, 8).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, cell)


def test_oracle_features_recover_the_objects(tmp_path):
    root = write_davis(tmp_path / "davis", {"disc": scene(frames=10)})
    sequences = load_davis(root)
    results = evaluate_sequences(sequences, colour_oracle, 96, 4)
    scores = results[0].per_object()
    assert scores["disc_1"]["J"] > 0.85, scores  # the moving textured disc
    assert summarise(results)["J"] > 0.85
    assert np.mean(results[0].j[1][-3:]) > 0.9  # the square has left the frame and is not predicted


def test_labels_to_and_from_the_feature_grid():
    ids = np.zeros((48, 64), np.uint8)
    ids[8:24, 16:40] = 2
    ids[30:46, 0:16] = 1
    onehot = grid_labels(ids, (6, 8), 2)  # nearest: cell (r, c) takes pixel (8 r + 4, 8 c + 4)
    assert onehot.shape == (3, 6, 8) and torch.equal(onehot.sum(0), torch.ones(6, 8))
    assert onehot[2, 1:3, 2:5].all() and onehot[2].sum() == 6 and onehot[1, 4:6, 0:2].all()
    soft = torch.stack([torch.full((6, 8), 0.6), torch.full((6, 8), 0.1)])
    soft[0, 2:4, 3:5], soft[1, 2:4, 3:5] = 0.5, 0.4  # channel 1 never wins unless each map is min-max scaled
    full = full_resolution_labels(soft, 8, (96, 128))  # upsampled to 48 x 64, then nearest to 96 x 128
    assert full.shape == (96, 128) and set(np.unique(full)) == {0, 1}
    assert (full[36:60, 52:76] == 1).all() and (full[:20] == 0).all()


def test_features_of_the_wrong_shape_are_refused(tmp_path):
    root = write_davis(tmp_path / "davis", {"disc": scene(frames=4)})
    with pytest.raises(ValueError, match="B x D x h x w"):
        evaluate_sequences(load_davis(root), lambda images: images.mean(1), 32, 4)
