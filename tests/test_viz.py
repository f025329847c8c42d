"""Similarity-map grid: maps at the right resolutions, the query matches itself, the PNG is written."""

import numpy as np
import pytest
import torch
from PIL import Image

from lift_rt.engine import build_pipeline
from lift_rt.viz import VIRIDIS, colormap, main, similarity_maps


def test_colormap_spans_viridis():
    rgb = colormap(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], VIRIDIS[0])
    np.testing.assert_array_equal(rgb[1, 0], VIRIDIS[-1])
    assert (colormap(np.zeros((3, 3))) == VIRIDIS[0]).all()


def test_similarity_maps_resolutions_and_self_match():
    torch.manual_seed(0)
    pipeline = build_pipeline("dino_s16", random_init=True)
    canvas = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    maps = similarity_maps(pipeline, canvas, (7.5, 23.5))  # centre of backbone cell (row 1, col 0)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "backbone": (4, 4), "bilinear": (8, 8), "backbone at 2x input": (8, 8), "LiFT": (8, 8)}
    assert maps["backbone"][1, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert all(v.max() <= 1 + 1e-5 and v.min() >= -1 - 1e-5 for v in maps.values())


def test_cli_writes_png(tmp_path):
    out = tmp_path / "sim.png"
    assert main(["similarity", "skimage:chelsea", "--point", "170,115", "--backbone", "dino_s16", "--random-init",
                 "--size", "64", "--panel", "64", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.width == 5 * (64 + 8) + 8 and png.height > 64
        assert len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_cli_errors(tmp_path, capsys):
    """Bad inputs end with exit status 2 and a one-line message, not a traceback."""
    cases = [
        (["skimage:chelsea", "--point", "500,10", "--random-init", "--out", str(tmp_path / "x.png")], "outside"),
        (["skimage:chelsea", "--point", "5,10", "--backbone", "dino_s16", "--out", str(tmp_path / "x.png")], "the LiFT panel needs weights: --lift CKPT"),
        ([str(tmp_path / "missing.jpg"), "--point", "5,10", "--random-init"], "does not exist"),
        (["skimage:chelsea", "--point", "5,10", "--backbone", "dino_s16", "--random-init", "--size", "60",
          "--out", str(tmp_path / "x.png")], "multiple of 16"),
        ([str(tmp_path / "notes.png"), "--point", "5,10", "--random-init", "--out", str(tmp_path / "x.png")],
         f"image {tmp_path / 'notes.png'} cannot be read as an image (UnidentifiedImageError"),
        (["skimage:nope", "--point", "5,10", "--random-init", "--out", str(tmp_path / "x.png")],
         "skimage:nope is not a scikit-image photo; e.g. skimage:astronaut, skimage:camera"),
        (["skimage:download_all", "--point", "5,10", "--random-init", "--out", str(tmp_path / "x.png")],
         "not a scikit-image photo"),
        (["skimage:chelsea", "--point", "5,10", "--random-init", "--out", str(tmp_path / "notes.png" / "x.png")],
         "--out " + str(tmp_path / "notes.png" / "x.png") + " cannot be created"),
        (["skimage:chelsea", "--point", "5,10", "--random-init", "--out", str(tmp_path)], "is a folder, not a file"),
        (["skimage:chelsea", "--point", "5,10", "--random-init", "--out", str(tmp_path / "x.txt")],
         "PIL cannot write a .txt file"),
        (["skimage:chelsea", "--point", "5,10", "--random-init", "--out", str(tmp_path / "x")], "suffix-less"),
        (["skimage:chelsea", "--point", "-5,10", "--random-init", "--out", str(tmp_path / "x.png")],
         "--point -5,10 lies outside the 451 x 300 image: the point must be inside it (0 <= X <= 450, 0 <= Y <= 299)"),
        ([str(tmp_path / "dot.png"), "--point", "0,0", "--random-init", "--out", str(tmp_path / "x.png")],
         f"image {tmp_path / 'dot.png'} is 1 x 1 pixels, smaller than one 8-pixel patch of dino_s8"),
    ]
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    for args, message in cases:
        assert main(["similarity", *args]) == 2
        err = capsys.readouterr().err
        assert "similarity: error:" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--panel", "0"), ("--panel", "-5"), ("--size", "0")])
def test_cli_sizes_must_be_positive(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["similarity", "skimage:chelsea", "--point", "5,10", "--random-init", flag, value, "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be a positive integer, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
