"""Synthetic warped pairs: keypoints map exactly through the homography used to warp the image."""

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from lift_rt.eval.synthetic import PHOTOS, apply_homography, homography_from_points, make_pair, synthetic_pairs, warp_image


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(len(PHOTOS), seed=3, keypoints=16)


def test_homography_from_points_is_exact():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 8.0], [0.0, 8.0]])
    dst = np.array([[1.0, 2.0], [12.0, 1.0], [11.0, 10.0], [-1.0, 9.0]])
    np.testing.assert_allclose(apply_homography(homography_from_points(src, dst), src), dst, atol=1e-9)


def test_keypoints_follow_the_homography_and_are_visible(pairs):
    assert [p.category for p in pairs] == list(PHOTOS)
    for pair in pairs:
        h, w = pair.trg_image.shape[:2]
        assert len(pair.src_kps) == 16
        np.testing.assert_allclose(apply_homography(pair.homography, pair.src_kps), pair.trg_kps, atol=1e-9)
        x1, y1, x2, y2 = pair.src_bbox
        assert ((pair.src_kps >= [x1, y1]) & (pair.src_kps <= [x2, y2])).all()
        assert ((pair.trg_kps >= 0) & (pair.trg_kps <= [w - 1, h - 1])).all()
        x1, y1, x2, y2 = pair.trg_bbox
        assert ((pair.trg_kps >= [x1 - 1e-6, y1 - 1e-6]) & (pair.trg_kps <= [x2 + 1e-6, y2 + 1e-6])).all()


def test_image_warp_agrees_with_the_keypoints(pairs):
    """Warp an image whose pixels hold their own (x, y): at each target keypoint it reads the source keypoint."""
    for pair in pairs:
        h, w = pair.src_image.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        warped = warp_image(np.stack([xs, ys, np.ones_like(xs)], axis=-1), pair.homography, (h, w))
        coords = [pair.trg_kps[:, 1], pair.trg_kps[:, 0]]
        read = np.stack([map_coordinates(warped[..., c], coords, order=1) for c in range(3)], axis=-1)
        assert (read[:, 2] > 1 - 1e-9).all()  # inside the warped photo
        np.testing.assert_allclose(read[:, :2], pair.src_kps, atol=0.05)


def test_target_is_the_warped_source_plus_jitter():
    plain = make_pair(1, seed=0, photometric=0.0)
    warped = warp_image(plain.src_image, plain.homography, plain.src_image.shape[:2])
    assert np.abs(plain.trg_image.astype(np.float64) - warped).max() <= 1.0
    jittered = make_pair(1, seed=0)
    assert np.abs(jittered.trg_image.astype(np.float64) - warped).mean() > 2.0
    np.testing.assert_array_equal(jittered.trg_kps, plain.trg_kps)


def test_deterministic_by_seed():
    a, b, c = make_pair(2, seed=7), make_pair(2, seed=7), make_pair(2, seed=8)
    np.testing.assert_array_equal(a.trg_image, b.trg_image)
    np.testing.assert_array_equal(a.trg_kps, b.trg_kps)
    assert not np.array_equal(a.trg_kps, c.trg_kps)
    with pytest.raises(ValueError, match="count"):
        synthetic_pairs(0)
