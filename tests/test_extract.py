"""python -m lift_rt.extract and lift_rt.FeatureStore on a folder of small generated images (CPU, random weights)."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lift_rt import Engine, FeatureStore
from lift_rt.extract.__main__ import main
from lift_rt.extract.pca import fit_pca

SIZES = [(40, 56), (48, 48), (37, 61), (64, 32)]
BASE = ["--backbone", "dino_s16", "--random-init", "--shard-size", "5", "--batch", "4", "--workers", "0"]


def write_images(folder: Path, count: int = 24) -> None:
    """``count`` images of mixed sizes (some in a sub-folder): image 5 greyscale, 7 RGBA, 11 corrupt."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        target = folder / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.{'jpg' if i % 2 else 'png'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if i == 11:
            target.write_bytes(b"not an image")
        elif i == 5:
            Image.fromarray(pixels[..., 0]).save(target)
        elif i == 7:
            Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(target.with_suffix(".png"))
        else:
            Image.fromarray(pixels).save(target, quality=95)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The subprocess runs use one thread (OMP_NUM_THREADS=1); the in-process ones here too, so that outputs
    compared bit for bit come from the same arithmetic (GEMM blocking differs with the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder)
    return folder


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted single-process run, stored in fp32."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main([*BASE, "--data", str(data), "--out", str(out), "--size", "32", "--dtype", "fp32"]) == 0
    return out


def assert_same_output(a: Path, b: Path) -> None:
    """Same index and skipped list, bit-identical features."""
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    assert (a / "skipped.txt").read_text() == (b / "skipped.txt").read_text()
    store_a, store_b = FeatureStore(a), FeatureStore(b)
    assert store_a.paths == store_b.paths
    for (path_a, feats_a), (_, feats_b) in zip(store_a, store_b):
        assert torch.equal(feats_a, feats_b), path_a


def test_features_equal_engine(data, reference):
    store = FeatureStore(reference)
    assert len(store) == 23 and [s["path"] for s in store.skipped] == ["img11.jpg"]
    skipped = (reference / "skipped.txt").read_text()
    assert skipped.startswith("img11.jpg\tUnidentifiedImageError: cannot identify image file")
    engine = Engine("dino_s16", random_init=True, device="cpu", resize=32)
    for path, stored in store:
        with Image.open(data / path) as image:
            expected = engine(image)[0]
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-5)
    index = json.loads((reference / "index.json").read_text())
    assert index["count"] == 23 and index["skipped"] == 1
    wide = index["images"]["img02.png"]  # 37 x 61 -> 32 x 52.8 -> 32 x 48: 4 x 6 cells at 2x
    assert wide["original_size"] == [37, 61] and wide["input_size"] == [32, 48] and wide["shape"] == [384, 4, 6]
    assert index["images"]["img05.jpg"]["shape"] == [384, 4, 4]  # greyscale
    assert "sub/img00.png" in index["images"] and "img07.png" in index["images"]  # sub-folders, RGBA


def test_keep_aspect_equals_engine_with_padding(data, tmp_path):
    out = tmp_path / "out"
    assert main([*BASE, "--data", str(data), "--out", str(out), "--keep-aspect", "--max-side", "48", "--dtype", "fp32"]) == 0
    store = FeatureStore(out)
    engine = Engine("dino_s16", random_init=True, device="cpu", max_side=48, pad=True)
    for i in range(4):  # 48 x 48; 37 x 61 -> 29 x 48 padded to 32 x 48; 40 x 56 -> 34 x 48 padded to 48 x 48; 64 x 32 -> 48 x 24
        path, stored = store[i]
        with Image.open(data / path) as image:
            torch.testing.assert_close(stored, engine(image)[0], rtol=1e-5, atol=1e-5)
    assert store.info(1)["input_size"] == [29, 48] and tuple(store[1][1].shape) == (384, 4, 6)  # ceil(29 / 8) = 4
    assert store.info(2)["input_size"] == [34, 48] and tuple(store[2][1].shape) == (384, 5, 6)  # ceil(34 / 8) = 5
    assert store.manifest["settings"]["size_policy"].startswith("longer side at most 48, aspect kept")


def test_feature_store_round_trip(reference):
    store = FeatureStore(reference)
    index = json.loads((reference / "index.json").read_text())["images"]
    assert store.paths == list(index)
    path, feats = store[3]
    assert torch.equal(store.get(path), feats) and list(feats.shape) == index[path]["shape"]
    assert store.manifest["settings"]["backbone"] == "dino_s16" and store.pca is None
    clone = pickle.loads(pickle.dumps(store))  # as DataLoader workers receive it
    assert torch.equal(clone[3][1], feats)
    loaded = [p for batch in torch.utils.data.DataLoader(store, batch_size=None, num_workers=0) for p in batch[:1]]
    assert loaded == store.paths
    with pytest.raises(KeyError, match="img11.jpg is not in"):
        store.get("img11.jpg")
    with pytest.raises(FileNotFoundError, match="not an output folder"):
        FeatureStore(reference / "shards")


def test_store_sees_finished_shards_only(reference, tmp_path):
    """A shard without its record (being written) is invisible; refresh() picks it up once the record exists."""
    import shutil

    shutil.copytree(reference, tmp_path / "out")
    record = tmp_path / "out" / "shards" / "shard-000004.json"
    hidden = record.rename(record.with_suffix(".hidden"))
    store = FeatureStore(tmp_path / "out")
    assert len(store) == 20 - 1  # shards 0-3 hold 20 images, one of them corrupt
    hidden.rename(record)
    store.refresh()
    assert len(store) == 23


def test_pca_reconstructs_within_stated_error(data, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*BASE, "--data", str(data), "--out", str(out), "--size", "32", "--pca", "16", "--pca-sample", "24"]) == 0
    store, full = FeatureStore(out), FeatureStore(reference)
    stated = store.pca.relative_error
    assert f"PCA to 16 channels: relative reconstruction error {stated:.4f}" in capsys.readouterr().out
    assert 0 < stated < 1 and store.pca.k == 16 and store.manifest["settings"]["pca"] == 16
    stored = torch.cat([store[i][1].float().flatten(1) for i in range(len(store))], 1)
    assert stored.shape[0] == 16 and store[0][1].dtype == torch.float16
    restored = torch.cat([store.reconstruct(store[i][1]).flatten(1) for i in range(len(store))], 1)
    original = torch.cat([full[i][1].flatten(1) for i in range(len(full))], 1)
    measured = float((restored - original).norm() / original.norm())
    assert abs(measured - stated) < 0.005, (measured, stated)  # the sample is every image; fp16 storage adds little


def test_pca_fit_is_exact_on_low_rank_features():
    basis = torch.randn(3, 40)
    maps = [(torch.randn(5, 3) @ basis + 2.0).T.reshape(40, 1, 5) for _ in range(4)]
    pca = fit_pca(maps, 3)
    assert pca.relative_error < 1e-5
    torch.testing.assert_close(pca.reconstruct(pca.project(maps[0])), maps[0], rtol=1e-4, atol=1e-4)


def test_other_settings_are_refused(data, reference, cli_error):
    err = cli_error(main, [*BASE, "--data", str(data), "--out", str(reference), "--size", "48", "--dtype", "fp32"])
    assert "holds features made with other settings (size_policy 'shorter side 32" in err and "'shorter side 48" in err


def test_resume_redoes_a_half_written_shard(data, reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shards = out / "shards"
    (shards / "shard-000002.json").unlink()
    (shards / "shard-000002.safetensors").write_bytes(b"half")  # features without a record
    (shards / ".shard-000003.1234.tmp").write_bytes(b"killed mid-write")
    (shards / "shard-000003.safetensors").write_bytes((shards / "shard-000003.safetensors").read_bytes()[:100])  # truncated
    (out / "index.json").unlink()
    assert main([*BASE, "--data", str(data), "--out", str(out), "--size", "32", "--dtype", "fp32"]) == 0
    assert "this run: 10 images" in capsys.readouterr().out
    assert not list(shards.glob("*.tmp"))
    assert_same_output(reference, out)


def test_full_disk_stops_cleanly(data, reference, tmp_path, monkeypatch, cli_error):
    import lift_rt.extract.shards as shards_module

    real_save, calls = shards_module.save_file, []

    def save_until_full(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(shards_module, "save_file", save_until_full)
    out = tmp_path / "out"
    err = cli_error(main, [*BASE, "--data", str(data), "--out", str(out), "--size", "32", "--dtype", "fp32"])
    assert "writing shard 1" in err and "No space left on device" in err and "re-run the same command" in err
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.json", "shard-000000.safetensors"]
    monkeypatch.setattr(shards_module, "save_file", real_save)
    assert main([*BASE, "--data", str(data), "--out", str(out), "--size", "32", "--dtype", "fp32"]) == 0
    assert_same_output(reference, out)


def test_out_of_memory_names_a_batch_size(data, tmp_path, monkeypatch, cli_error):
    def no_memory(self, images):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Engine, "__call__", no_memory)
    err = cli_error(main, [*BASE, "--data", str(data), "--out", str(tmp_path / "out"), "--size", "32"])
    assert "out of GPU memory on a batch of" in err and "(--batch 4): try --batch 2" in err


def test_bad_inputs(tmp_path, data, cli_error):
    (tmp_path / "empty").mkdir()
    assert "no images (.jpg" in cli_error(main, [*BASE, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert "--data" in cli_error(main, [*BASE, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{data / 'img01.jpg'}\n# comment\n\n{data / 'img01.jpg'}\n")
    assert "line 4 repeats" in cli_error(main, [*BASE, "--data", str(listing), "--out", str(tmp_path / "o")])
    listing.write_text("# nothing\n")
    assert "lists no image paths" in cli_error(main, [*BASE, "--data", str(listing), "--out", str(tmp_path / "o")])
    no_weights = ["--backbone", "dino_s16", "--data", str(data), "--out", str(tmp_path / "o")]
    assert "--random-init" in cli_error(main, no_weights)
    assert "--max-side needs --keep-aspect" in cli_error(main, [*BASE, "--data", str(data), "--out", str(tmp_path / "o"), "--max-side", "64"])
    assert "not a multiple of dino_s16's patch size 16" in cli_error(main, [*BASE, "--data", str(data), "--out", str(tmp_path / "o"), "--size", "40"])
    (tmp_path / "file").write_text("x")
    assert "--out" in cli_error(main, [*BASE, "--data", str(data), "--out", str(tmp_path / "file")])
    assert "--pca 999: must lie in 1..384" in cli_error(main, [*BASE, "--data", str(data), "--out", str(tmp_path / "p"), "--size", "32", "--pca", "999"])


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--size", "--keep-aspect", "--max-side", "--batch", "--dtype", "--pca", "--workers", "--shard-size"):
        assert flag in text
    assert "``" not in text


# ----------------------------------------------------------------------------- other processes


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


KILL_ARGV = [*BASE[:-1], "1", "--size", "32", "--dtype", "fp32"]  # one decoding worker


def write_last_image(path: Path) -> None:
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(path, format="PNG")


@pytest.fixture(scope="module")
def listing(data, tmp_path_factory) -> tuple[Path, Path]:
    """A list of the images plus a last one, and the output of an uninterrupted run over it."""
    folder = tmp_path_factory.mktemp("listing")
    write_last_image(folder / "zz_last.png")
    listing = folder / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(data.rglob("*.*"))) + "zz_last.png\n")
    assert main([*KILL_ARGV, "--data", str(listing), "--out", str(folder / "uninterrupted")]) == 0
    return listing, folder / "uninterrupted"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_killed_run_resumes_to_the_same_output(listing, tmp_path, sig):
    """The list's last image is made a FIFO: the run blocks on it after finishing four shards, is killed, then resumed."""
    listing, uninterrupted = listing
    last = listing.parent / "zz_last.png"
    last.unlink()
    os.mkfifo(last)
    out, argv = tmp_path / "out", [*KILL_ARGV, "--data", str(listing), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-m", "lift_rt.extract", *argv], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "shards" / "shard-000000.json").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no shard within 180 s"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        last.unlink()
        write_last_image(last)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted: finished shards are kept" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "index.json").exists() and not (out / "shards" / "shard-000004.json").exists()
    assert main(argv) == 0
    assert_same_output(uninterrupted, out)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(data, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lift_rt.extract",
           *BASE, "--data", str(data), "--out", str(out), "--size", "32", "--dtype", "fp32"]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "23 images stored, 1 skipped" in done.stdout
    records = {json.loads(p.read_text())["shard"] for p in (out / "shards").glob("*.json")}
    assert records == {0, 1, 2, 3, 4}
    assert_same_output(reference, out)
