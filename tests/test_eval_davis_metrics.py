"""DAVIS J and F against values worked out by hand."""

import numpy as np
import pytest

from lift_rt.eval.davis_metrics import (
    SequenceScores,
    boundary_map,
    boundary_measure,
    boundary_radius,
    region_similarity,
    summarise,
)


def box(shape, top, left, height, width):
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def left_part(shape, columns):
    mask = np.zeros(shape, bool)
    mask[:, :columns] = True
    return mask


def test_boundary_map_of_a_square_is_4s_pixels_shifted_towards_the_origin():
    edges = boundary_map(box((20, 20), 5, 5, 6, 6))
    assert edges.sum() == 24
    assert edges[4, 4:11].all() and edges[4:11, 4].all()  # outside, above and left
    assert edges[10, 5:11].all() and edges[5:10, 10].all()  # inside, bottom row and right column
    assert not edges[5:10, 5:10].any()


def test_boundary_radius_is_the_davis_fraction_of_the_diagonal():
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.7)
    assert boundary_radius((80, 80)) == 1
    assert boundary_radius((80, 80), 3) == 3  # a tolerance >= 1 is pixels


def test_one_pixel_shift_of_a_square():
    gt = box((80, 80), 20, 20, 10, 10)
    pred = box((80, 80), 20, 21, 10, 10)
    assert region_similarity(gt, pred) == pytest.approx(90 / 110)
    assert boundary_measure(gt, pred) == 1.0  # within the 1-pixel tolerance


@pytest.mark.parametrize("shape, shift, matched", [((80, 80), 1, True), ((80, 80), 2, False),
                                                  ((480, 854), 8, True), ((480, 854), 9, False)])
def test_boundary_tolerance_edge(shape, shift, matched):
    gt, pred = left_part(shape, 30), left_part(shape, 30 + shift)  # one vertical boundary each
    assert region_similarity(gt, pred) == pytest.approx(30 / (30 + shift))
    assert boundary_measure(gt, pred) == (1.0 if matched else 0.0)


def test_half_the_boundary_matched():
    gt = np.zeros((80, 80), bool)
    gt[:, 30:40] = True  # boundaries: columns 29 and 39
    pred = np.zeros((80, 80), bool)
    pred[:, 30:45] = True  # boundaries: columns 29 and 44
    assert region_similarity(gt, pred) == pytest.approx(10 / 15)
    assert boundary_measure(gt, pred) == pytest.approx(0.5)  # precision 1/2, recall 1/2


def test_empty_prediction_and_absent_object():
    gt, empty = box((40, 40), 5, 5, 8, 8), np.zeros((40, 40), bool)
    assert region_similarity(gt, empty) == 0.0 and boundary_measure(gt, empty) == 0.0
    assert region_similarity(empty, gt) == 0.0 and boundary_measure(empty, gt) == 0.0
    assert region_similarity(empty, empty) == 1.0 and boundary_measure(empty, empty) == 1.0


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        region_similarity(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_object_leaving_the_frame_and_the_averages():
    shape = (80, 80)
    seq = SequenceScores("walk", 2)
    gt = np.zeros(shape, np.uint8)
    gt[box(shape, 20, 20, 10, 10)] = 1
    gt[box(shape, 50, 50, 10, 10)] = 2
    seq.add_frame(gt, gt)  # object 2 present, predicted exactly: J = F = 1
    gone = np.where(gt == 2, 0, gt).astype(np.uint8)  # object 2 has left the frame
    seq.add_frame(gone, gone)  # and is predicted absent: J = F = 1
    wrong = gt.copy()
    wrong[box(shape, 20, 20, 10, 10)] = 0
    wrong[box(shape, 20, 21, 10, 10)] = 1
    seq.add_frame(gone, wrong)  # object 1 shifted by a pixel; object 2 predicted although gone: 0
    scores = seq.per_object()
    assert scores["walk_1"]["J"] == pytest.approx((1 + 1 + 90 / 110) / 3)
    assert scores["walk_1"]["F"] == pytest.approx(1.0)
    assert scores["walk_2"] == {"J": pytest.approx(2 / 3), "F": pytest.approx(2 / 3)}
    other = SequenceScores("cat", 1)
    other.add_frame(gt.clip(0, 1), np.zeros(shape, np.uint8))
    summary = summarise([seq, other])  # the mean over the 3 objects, not over sequences
    expected_j = ((2 + 90 / 110) / 3 + 2 / 3 + 0) / 3
    expected_f = (1 + 2 / 3 + 0) / 3
    assert summary["J"] == pytest.approx(expected_j) and summary["F"] == pytest.approx(expected_f)
    assert summary["J&F"] == pytest.approx((expected_j + expected_f) / 2)
