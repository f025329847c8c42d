"""Synthetic warped pairs from scikit-image's bundled photos: exact keypoint ground truth.

Each pair is one photo (the source, longer side ``image_size``) and the same
photo warped by a random homography ``H`` with photometric jitter (the target).
Source keypoints are drawn inside the photo's object box; the target keypoint of
``q`` is ``H q`` exactly, and only keypoints landing inside the target image are
kept (visible in both). The target box is the bounding box of the warped source
box. Everything is a function of ``(seed, pair index)``.

Coordinates are (x, y) in pixels with pixel centres at integers (scikit-image's
convention); ``target(p) = source(H^-1 p)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from lift_rt.eval.pairs import Box, KeypointPair

# Photo -> object box (x1, y1, x2, y2) in the photo's own pixels, drawn by eye.
PHOTOS: dict[str, Box] = {
    "astronaut": (20.0, 15.0, 365.0, 511.0),
    "chelsea": (10.0, 0.0, 400.0, 299.0),
    "coffee": (75.0, 20.0, 480.0, 390.0),
    "rocket": (295.0, 125.0, 345.0, 410.0),
    "camera": (0.0, 65.0, 410.0, 511.0),
}


@dataclass(frozen=True)
class WarpedPair(KeypointPair):
    """A synthetic pair; ``homography`` maps source (x, y, 1) to target pixels."""

    homography: np.ndarray | None = None


@lru_cache(maxsize=16)
def load_photo(name: str, image_size: int) -> tuple[np.ndarray, Box]:
    """A bundled photo as ``H x W x 3`` uint8, longer side ``image_size`` (Lanczos), and its scaled box."""
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {', '.join(PHOTOS)}")
    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    h, w = photo.shape[:2]
    scale = image_size / max(h, w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = np.asarray(Image.fromarray(photo[..., :3]).resize((new_w, new_h), Image.Resampling.LANCZOS))
    sx, sy = new_w / w, new_h / h
    x1, y1, x2, y2 = PHOTOS[name]
    resized.flags.writeable = False  # cached: shared by every pair of this photo
    return resized, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3 x 3 homography (h33 = 1) taking four (x, y) points ``src`` to ``dst``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``N x 2`` (x, y) -> ``N x 2`` through ``matrix`` (with the projective division)."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def warp_image(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``target(p) = image(H^-1 p)`` on an ``H x W`` canvas, bilinear, zeros outside (float channels kept)."""
    from skimage.transform import ProjectiveTransform, warp

    inverse = ProjectiveTransform(matrix=np.linalg.inv(matrix))
    out = warp(image.astype(np.float64), inverse, output_shape=shape, order=1, mode="constant", cval=0.0, preserve_range=True)
    return out


def random_homography(rng: np.random.Generator, width: int, height: int, strength: float) -> np.ndarray:
    """Rotation (up to 25 deg * strength/0.25), scale, shift and corner jitter about the image centre."""
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)
    centre = corners.mean(axis=0)
    angle = np.deg2rad(rng.uniform(-100, 100) * strength)
    scale = np.exp(rng.uniform(-1, 1) * strength)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    size = max(width, height)
    moved = (corners - centre) @ rotation.T + centre
    moved += rng.uniform(-1, 1, size=2) * strength * 0.5 * size  # shift
    moved += rng.uniform(-1, 1, size=(4, 2)) * strength * 0.5 * size  # perspective
    return homography_from_points(corners, moved)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation, gamma and Gaussian noise on a float ``H x W x 3`` in 0..255 -> uint8."""
    x = image / 255.0
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + (x - grey) * (1 + rng.uniform(-1, 1) * strength * 2)  # saturation
    x = (x - x.mean()) * (1 + rng.uniform(-1, 1) * strength * 2) + x.mean()  # contrast
    x = x + rng.uniform(-1, 1) * strength  # brightness
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-1, 1) * strength)  # gamma
    x = x + rng.normal(0, 0.1 * strength, size=x.shape)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_pair(
    index: int,
    *,
    seed: int = 0,
    image_size: int = 256,
    keypoints: int = 12,
    strength: float = 0.25,
    photometric: float = 0.1,
    margin: float = 2.0,
) -> WarpedPair:
    """Pair number ``index`` (photo ``index mod len(PHOTOS)``); see the module docstring."""
    rng = np.random.default_rng([seed, index])
    name = list(PHOTOS)[index % len(PHOTOS)]
    src, (x1, y1, x2, y2) = load_photo(name, image_size)
    height, width = src.shape[:2]
    for _ in range(100):  # redraw homographies that keep too few keypoints visible
        matrix = random_homography(rng, width, height, strength)
        candidates = np.rint(rng.uniform([x1, y1], [x2, y2], size=(8 * keypoints, 2)))
        mapped = apply_homography(matrix, candidates)
        inside = ((mapped >= margin) & (mapped <= np.array([width - 1, height - 1]) - margin)).all(axis=1)
        if inside.sum() >= keypoints:
            break
    else:
        raise RuntimeError(f"no homography kept {keypoints} keypoints of {name} visible; lower strength")
    keep = np.flatnonzero(inside)[:keypoints]
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    warped = apply_homography(matrix, corners)
    lo = np.clip(warped.min(axis=0), 0, [width - 1, height - 1])
    hi = np.clip(warped.max(axis=0), 0, [width - 1, height - 1])
    trg = photometric_jitter(warp_image(src, matrix, (height, width)), rng, photometric)
    return WarpedPair(
        category=name,
        src_image=src,
        trg_image=trg,
        src_kps=candidates[keep],
        trg_kps=mapped[keep],
        src_bbox=(x1, y1, x2, y2),
        trg_bbox=(lo[0], lo[1], hi[0], hi[1]),
        name=f"synthetic-{seed}-{index}-{name}",
        homography=matrix,
    )


def synthetic_pairs(count: int, *, seed: int = 0, **options) -> list[WarpedPair]:
    """``count`` pairs, the photos in turn (``count = k * len(PHOTOS)`` gives k per category)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [make_pair(i, seed=seed, **options) for i in range(count)]
