"""Image-folder dataset: recursive scan, squashing, unreadable files, seeded jitter, sample images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lift_rt.data import (
    AUTHORS_JITTER, SAMPLE_SOURCES, ImageFolder, NoReadableImagesError, color_jitter, find_images, folder_identity,
    identity_difference, load_image, write_sample_images,
)
from lift_rt.data import main as data_main


def _write(path, size=(40, 30), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)


@pytest.fixture()
def tree(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "sub" / "b.JPG", size=(50, 20), seed=1)
    _write(tmp_path / "sub" / "deeper" / "c.png", mode="L", seed=2)
    _write(tmp_path / "sub" / "d.png", mode="RGBA", seed=3)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_find_images_is_recursive_sorted_and_ignores_other_files(tree):
    names = [p.relative_to(tree).as_posix() for p in find_images(tree)]
    assert names == ["a.png", "sub/b.JPG", "sub/d.png", "sub/deeper/c.png"]


def test_find_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path)


def test_images_are_squashed_rgb_in_unit_range(tree):
    dataset = ImageFolder(tree, 32)
    assert len(dataset) == 4
    for index in range(len(dataset)):
        image, skipped = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and skipped == 0
        assert 0.0 <= image.min() and image.max() <= 1.0
    gray, _ = dataset[3]  # the L-mode file: three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_load_image_keeps_content_of_a_constant_image(tmp_path):
    Image.new("RGB", (20, 10), (255, 128, 0)).save(tmp_path / "c.png")
    image = load_image(tmp_path / "c.png", 8)
    expected = torch.tensor([255, 128, 0]).float().div(255).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(image, expected)


def test_unreadable_files_are_skipped_logged_once_and_counted_as_files(tree, caplog):
    for name in ("broken.png", "broken2.png"):  # neighbours: each is tried as the other's stand-in
        (tree / "sub" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = ImageFolder(tree, 16)
    broken = [p.name for p in dataset.files].index("broken.png")
    with caplog.at_level("WARNING", logger="lift_rt.data"):
        image, unreadable = dataset[broken]
        assert unreadable == 1
        torch.testing.assert_close(image, dataset[broken + 2][0])  # replaced by the next readable file
        images, counts = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
    assert images.shape == (6, 3, 16, 16) and counts.tolist() == [0, 0, 1, 1, 0, 0]  # 2 files, not 3 failed reads
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and all(m.startswith("skipping unreadable image ") and "\n" not in m for m in messages)
    assert messages[0].endswith("broken.png: cannot identify image file")  # the path once, not twice


def test_folder_identity_names_what_changed(tree, tmp_path_factory):
    files = find_images(tree)
    before = folder_identity(tree, files)
    moved = tmp_path_factory.mktemp("moved")
    for path in files:
        target = moved / path.relative_to(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        os.utime(target, ns=(0, path.stat().st_mtime_ns))
    assert folder_identity(moved, find_images(moved)) == before  # relative paths: the folder may move
    assert before["files"] == 4 and identity_difference(before, before) is None
    os.utime(files[0], ns=(0, files[0].stat().st_mtime_ns + 1))
    assert "modification times" in identity_difference(before, folder_identity(tree, files))
    files[1].write_bytes(files[1].read_bytes() + b"x")
    assert "other sizes" in identity_difference(before, folder_identity(tree, files))
    files[2].rename(files[2].with_name("renamed.png"))
    assert "other file names" in identity_difference(before, folder_identity(tree, find_images(tree)))


def test_all_files_unreadable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="could be read"):
        ImageFolder(tmp_path, 8)[0]


def test_bad_arguments(tree):
    with pytest.raises(ValueError, match="size"):
        ImageFolder(tree, 0)
    with pytest.raises(ValueError, match="jitter"):
        ImageFolder(tree, 8, jitter=1.5)


def test_jitter_is_a_function_of_seed_epoch_and_index(tree):
    plain = ImageFolder(tree, 16)
    jittered = ImageFolder(tree, 16, jitter=0.2, seed=0)
    again = ImageFolder(tree, 16, jitter=0.2, seed=0)
    first = jittered[0][0]
    assert not torch.equal(first, plain[0][0])
    assert torch.equal(first, again[0][0])
    assert torch.equal(first, jittered[0][0])  # no hidden state consumed
    jittered.set_epoch(1)
    assert not torch.equal(first, jittered[0][0])
    assert 0.0 <= first.min() and first.max() <= 1.0


def test_color_jitter_of_zero_strength_is_identity():
    image = torch.rand(3, 8, 8)
    torch.testing.assert_close(color_jitter(image, 0.0, torch.Generator().manual_seed(0)), image)


def hue(image: torch.Tensor) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*image.mean((1, 2)).tolist())[0]


def test_color_jitter_shifts_hue_within_the_authors_range():
    # brightness, contrast (towards a grey) and saturation (towards each pixel's grey) keep a mid-range colour's hue;
    # only the hue jitter turns it, by up to 0.2 of a turn.
    image = torch.tensor([0.55, 0.45, 0.35]).view(3, 1, 1).expand(3, 4, 4).clone()
    generator = torch.Generator().manual_seed(0)
    shifts = [(hue(color_jitter(image, AUTHORS_JITTER, generator)) - hue(image) + 0.5) % 1.0 - 0.5 for _ in range(30)]
    assert max(abs(s) for s in shifts) > 0.1 and max(abs(s) for s in shifts) <= 0.2 + 1e-3
    assert min(shifts) < 0 < max(shifts)


def test_color_jitter_order_varies_across_draws_and_repeats_with_the_seed(monkeypatch):
    import torchvision.transforms.transforms as transforms

    calls: list[str] = []
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        original = getattr(transforms.F, name)
        monkeypatch.setattr(transforms.F, name, lambda img, factor, _f=original, _n=name: (calls.append(_n), _f(img, factor))[1])

    def orders(seed: int) -> list[tuple[str, ...]]:
        generator = torch.Generator().manual_seed(seed)
        image = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
        drawn = []
        for _ in range(12):
            calls.clear()
            color_jitter(image, AUTHORS_JITTER, generator)
            drawn.append(tuple(calls))
        return drawn

    first = orders(0)
    assert all(sorted(order) == sorted(("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"))
               for order in first)
    assert len(set(first)) > 3  # random order: 12 draws of 24 orders
    assert orders(0) == first  # ... and a function of the seed
    state = torch.random.get_rng_state()
    orders(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


def test_sample_images_split_by_source_photo(tmp_path):
    folders = write_sample_images(tmp_path, crops=1, size=32)
    assert set(SAMPLE_SOURCES["train"]).isdisjoint(SAMPLE_SOURCES["heldout"])
    for split, folder in folders.items():
        files = find_images(folder)
        assert [f.stem for f in files] == sorted(f"{name}_0" for name in SAMPLE_SOURCES[split])
        with Image.open(files[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_require_readable_names_a_folder_of_unreadable_files(tree, tmp_path_factory):
    ImageFolder(tree, 8).require_readable()  # readable files: nothing to say
    junk = tmp_path_factory.mktemp("junk")
    for name in ("a.jpg", "b.png"):
        (junk / name).write_text("not an image")
    with pytest.raises(NoReadableImagesError, match="no readable images under .*all 2 image files found are unreadable"):
        ImageFolder(junk, 8).require_readable()
    assert issubclass(NoReadableImagesError, ValueError)  # the command-line tools print ValueErrors as messages


@pytest.mark.parametrize("flag, value", [("--crops", "0"), ("--size", "0"), ("--size", "-5"), ("--crops", "two")])
def test_sample_cli_takes_positive_integers(tmp_path, cli_error, flag, value):
    err = cli_error(data_main, ["sample", str(tmp_path / "out"), flag, value])
    assert f"argument {flag}:" in err and "positive integer" in err
    assert not (tmp_path / "out").exists()


def test_sample_cli_caps_the_crop_size(tmp_path, cli_error):
    err = cli_error(data_main, ["sample", str(tmp_path / "out"), "--size", "100000"])
    assert "argument --size: at most 4096 pixels, got 100000" in err
    assert not (tmp_path / "out").exists()


def test_sample_cli_root_that_cannot_be_a_folder_is_a_message(tmp_path, cli_error):
    (tmp_path / "file").write_text("")
    err = cli_error(data_main, ["sample", str(tmp_path / "file"), "--crops", "1", "--size", "32"])
    assert "root " + str(tmp_path / "file") + " is a file, not a folder" in err
    err = cli_error(data_main, ["sample", str(tmp_path / "file" / "sub"), "--crops", "1", "--size", "32"])
    assert "is not a folder" in err


def test_sample_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        data_main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "--seed SEED" in out and "seed of the random crop sides and positions (default 0)" in out
