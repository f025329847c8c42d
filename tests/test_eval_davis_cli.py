"""``python -m lift_rt.eval davis``: the data set reader, bad inputs, and the command end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from davis_utils import scene, write_davis
from lift_rt.eval.__main__ import main
from lift_rt.eval.davis_data import davis_palette, load_davis, read_labels


@pytest.fixture
def davis(tmp_path):
    return write_davis(tmp_path / "davis", {"disc": scene(frames=8), "other": scene(frames=6, size=(48, 64))})


def test_reader_lists_sequences_with_objects(davis):
    sequences = load_davis(davis)
    assert [s.name for s in sequences] == ["disc", "other"]
    assert [len(s.frames) for s in sequences] == [8, 6]
    assert sequences[0].objects == 2 and sequences[0].size == (72, 96)
    assert [s.name for s in load_davis(davis, sequences=["other"])] == ["other"]


def test_palette_is_davis_and_void_is_background(tmp_path):
    palette = davis_palette()
    assert palette[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    image = Image.fromarray(np.array([[0, 1], [255, 2]], np.uint8), mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "m.png")
    assert read_labels(tmp_path / "m.png").tolist() == [[0, 1], [0, 2]]


def run_cli(davis, tmp_path, *extra):
    return ["davis", "--data", str(davis), "--backbone", "dino_s8", "--resolutions", "32",
            "--random-init", "--device", "cpu", "--json", str(tmp_path / "out" / "davis.json"),
            "--save-masks", str(tmp_path / "masks"), *extra]


def test_cli_end_to_end_writes_table_json_and_masks(davis, tmp_path, capsys):
    assert main(run_cli(davis, tmp_path, "--upsampler", "lift", "--batch", "4")) == 0  # one random ViT: ~5 s
    out = capsys.readouterr().out
    header = out.splitlines()[1]
    assert "J&F" in header and header.split("|")[1].strip() == "J"
    rows = {line.split("|")[0].strip(): line for line in out.splitlines()[4:]}
    assert set(rows) == {"lift"}
    report = json.loads((tmp_path / "out" / "davis.json").read_text())
    assert report["sequences"] == ["disc", "other"] and report["weights"] == "random init"
    assert report["protocol"]["radius"] == 12 and report["protocol"]["k"] == 5
    scores = report["scores"]["lift"]
    assert 0 <= scores["J"]["32"] <= 100 and 0 <= scores["F"]["32"] <= 100
    assert scores["J&F"]["32"] == pytest.approx((scores["J"]["32"] + scores["F"]["32"]) / 2)
    per_object = report["per_object"]["lift"]["32"]
    assert set(per_object) == {"disc_1", "disc_2", "other_1", "other_2"}
    assert scores["J"]["32"] == pytest.approx(sum(o["J"] for o in per_object.values()) / 4)  # mean over objects
    masks = sorted((tmp_path / "masks" / "lift" / "32" / "disc").glob("*.png"))
    assert len(masks) == 8
    with Image.open(masks[3]) as mask:
        assert mask.mode == "P" and mask.size == (96, 72)
        assert np.asarray(mask.getpalette()[:6]).tolist() == [0, 0, 0, 128, 0, 0]
    first = tmp_path / "masks" / "lift" / "32" / "disc" / "00000.png"  # the first frame: its annotation
    assert np.array_equal(read_labels(first), read_labels(davis / "Annotations" / "480p" / "disc" / "00000.png"))


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists() and not (tmp_path / "masks").exists()


def test_missing_imagesets_file(davis, tmp_path, cli_error):
    (davis / "ImageSets" / "2017" / "val.txt").unlink()
    assert "ImageSets/2017/val.txt is missing" in cli_error(main, run_cli(davis, tmp_path, "--upsampler", "none"))
    assert_nothing_written(tmp_path)


def test_missing_first_frame_annotation(davis, tmp_path, cli_error):
    (davis / "Annotations" / "480p" / "other" / "00000.png").unlink()
    err = cli_error(main, run_cli(davis, tmp_path, "--upsampler", "none"))
    assert "'other': 6 frames but 5 annotations" in err and "no annotation for frame 00000" in err
    assert_nothing_written(tmp_path)


def test_non_palette_mask(davis, tmp_path, cli_error):
    path = davis / "Annotations" / "480p" / "disc" / "00004.png"
    Image.open(path).convert("L").save(path)
    err = cli_error(main, run_cli(davis, tmp_path, "--upsampler", "none"))
    assert "00004.png is a mode-L image, not a palette PNG" in err
    assert_nothing_written(tmp_path)


def test_unknown_sequence_and_bad_resolution(davis, tmp_path, cli_error):
    assert "--sequences nope" in cli_error(main, run_cli(davis, tmp_path, "--upsampler", "none", "--sequences", "nope"))
    assert "multiple of 8" in cli_error(main, run_cli(davis, tmp_path, "--upsampler", "none", "--resolutions", "30"))
    assert_nothing_written(tmp_path)
