"""LiFT training: the loss, the ablation switches, the log, checkpoints, exact resume, Ctrl-C, DDP.

Runs use scikit-image photo crops and a randomly initialised ViT-S/16 cut after
block 0, at 64 px (feature grids 4, 2 and 1), so each run takes a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lift_rt.backbones import get_spec
from lift_rt.checkpoint import load_lift, read_lift_state
from lift_rt.data import write_sample_images
from lift_rt.model import LiFT
from lift_rt.train import (
    TrainConfig, Trainer, build_trainable, cosine_loss, default_batch, load_upsampler, sidecar_path, train,
    two_scale_loss,
)
from lift_rt.train.__main__ import build_parser, main
from lift_rt.train.losses import l1_loss, l2_loss
from lift_rt.upsamplers import ResizeConv

TINY = dict(backbone="dino_s16", random_init=True, layer=0, imsize=64, batch=4, workers=0, progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 training crops (2 steps per epoch at batch 4)."""
    return write_sample_images(tmp_path_factory.mktemp("data"), crops=1, size=64)["train"]


def tiny_config(images: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(images), "out": str(out), **overrides})


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return read_lift_state(path)[0]


# ---- the loss ---------------------------------------------------------------------------------
def test_cosine_loss_is_mean_over_positions_of_one_minus_cosine():
    pred, target = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    manual = 1 - (pred * target).sum(1) / (pred.norm(dim=1) * target.norm(dim=1))
    torch.testing.assert_close(cosine_loss(pred, target), manual.mean())
    assert cosine_loss(target, target).abs() < 1e-6
    torch.testing.assert_close(cosine_loss(3.0 * target, target), torch.tensor(0.0), atol=1e-6, rtol=0)  # scale-free
    torch.testing.assert_close(l1_loss(pred, target), (pred - target).abs().mean())
    torch.testing.assert_close(l2_loss(pred, target), ((pred - target) ** 2).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        cosine_loss(pred, target[:, :, :2])


class PatchMean(nn.Module):
    """Stand-in backbone: per-patch mean colour tiled to C channels (B x C x H/p x W/p)."""

    def __init__(self, patch: int = 16, dim: int = 6) -> None:
        super().__init__()
        self.patch, self.dim = patch, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.patch).repeat(1, self.dim // 3, 1, 1)


class Recorder(nn.Module):
    """Stand-in upsampler: records its inputs, answers with bilinear 2x plus a learnable offset."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, image, feats):
        self.calls.append((image, feats))
        return F.interpolate(feats, scale_factor=2.0, mode="bilinear") + self.offset


def test_two_scale_loss_follows_the_recipe():
    backbone, up = PatchMean(), Recorder()
    image = torch.randn(2, 3, 128, 128)
    total, half, quarter = two_scale_loss(up, backbone, image, l2_loss)
    (img_a, feat_a), (img_b, feat_b) = up.calls
    assert torch.equal(img_a, image[:, :, ::2, ::2]) and torch.equal(img_b, image[:, :, ::4, ::4])
    assert torch.equal(feat_a, backbone(image[:, :, ::2, ::2])) and torch.equal(feat_b, backbone(image[:, :, ::4, ::4]))
    expected_half = l2_loss(F.interpolate(feat_a, scale_factor=2.0, mode="bilinear"), backbone(image))
    expected_quarter = l2_loss(F.interpolate(feat_b, scale_factor=2.0, mode="bilinear"), feat_a)
    torch.testing.assert_close(half, expected_half)
    torch.testing.assert_close(quarter, expected_quarter)
    torch.testing.assert_close(total, half + quarter)
    total.backward()
    assert up.offset.grad is not None and not feat_a.requires_grad  # targets carry no gradient


# ---- settings and ablation switches -----------------------------------------------------------
def test_paper_defaults_and_help():
    parser = build_parser()
    args = parser.parse_args(["--backbone", "dino_s16", "--data", "x"])
    config = TrainConfig(**vars(args))
    assert (config.epochs, config.lr, config.imsize, config.loss, config.seed) == (5, 1e-3, 448, "cos", 0)
    assert config.color_jitter == 0.2  # the authors' ColorJitter(0.2, 0.2, 0.2, hue=0.2), on in their README's runs
    assert (config.facet, config.layer, config.batch, config.use_image, config.upsampler) == ("key", 11, 256, True, "lift")
    assert default_batch(8) == 64 and default_batch(16) == 256
    help_text = parser.format_help()
    for option in ("--facet", "--loss", "--no-image", "--epochs", "--batch", "--lr", "--imsize", "--out", "--resume",
                   "--backbone-weights", "--random-init", "--workers", "--seed", "--device", "--color-jitter", "--upsampler"):
        assert option in help_text


def test_ablation_switches_build_the_right_model(images, tmp_path):
    parser = build_parser()
    args = parser.parse_args(["--backbone", "dino_s16", "--data", str(images), "--no-image", "--loss", "l1"])
    assert args.use_image is False and args.loss == "l1"
    no_image = build_trainable("lift", "dino_s16", use_image=False)
    assert isinstance(no_image, LiFT) and not no_image.use_image and not hasattr(no_image, "image_convs_1")
    assert isinstance(build_trainable("rc", "dino_s16"), ResizeConv)
    with pytest.raises(ValueError, match="LiFT only"):
        build_trainable("rc", "dino_s16", use_image=False)
    with pytest.raises(ValueError, match="no parameters"):
        build_trainable("bilinear", "dino_s16")
    trainer = Trainer(tiny_config(images, tmp_path, use_image=False, loss="l2"))
    assert trainer.objective.loss is l2_loss and not trainer.model.use_image
    assert not any(p.requires_grad for p in trainer.objective.backbone.parameters())
    trainer.objective.train()
    assert not trainer.objective.backbone.training and trainer.model.training


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(imsize=96), "multiple of 4 x patch"), (dict(loss="huber"), "unknown loss"), (dict(batch=0), "positive"),
     (dict(lr=-1.0), "--lr"), (dict(batch=64), "fewer than one batch")],
)
def test_bad_settings_are_clear_errors(images, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_config(images, tmp_path, **overrides))


def test_a_non_finite_loss_stops_the_run(images, tmp_path):
    trainer = Trainer(tiny_config(images, tmp_path, upsampler="rc"))
    nan = torch.tensor(float("nan"), requires_grad=True)
    trainer.ddp = lambda image: (nan * 1.0, nan.detach(), nan.detach())
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        trainer.fit()


def test_cli_rejects_bad_settings(images, capsys):
    with pytest.raises(SystemExit):
        main(["--backbone", "dino_s16", "--data", str(images), "--imsize", "100", "--random-init"])
    assert "multiple of 4 x patch" in capsys.readouterr().err


def test_cli_bad_data_gives_a_message(images, tmp_path, capsys):
    common = ["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--out", str(tmp_path / "run")]
    assert main([*common, "--data", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*common, "--data", str(images), "--batch", "100000"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


# ---- a run: log, checkpoints, exact resume, interruption ---------------------------------------
@pytest.fixture(scope="module")
def straight(images, tmp_path_factory) -> Path:
    """4 uninterrupted steps (2 epochs) of the 'No Img.' LiFT with the L1 loss."""
    out = tmp_path_factory.mktemp("straight")
    Trainer(tiny_config(images, out, epochs=2, use_image=False, loss="l1")).fit()
    return out


def test_log_has_one_finite_loss_per_step(straight):
    log = read_log(straight)
    steps = [entry for entry in log if entry["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and [e["epoch"] for e in steps] == [1, 1, 2, 2]
    for entry in steps:
        assert torch.isfinite(torch.tensor(entry["loss"])) and entry["images_per_s"] > 0 and entry["skipped"] == 0
        assert entry["loss"] == pytest.approx(entry["loss_half"] + entry["loss_quarter"], rel=1e-6)
    assert log[0]["event"] == "start" and log[0]["config"]["loss"] == "l1"
    assert [e["path"] for e in log if e["event"] == "checkpoint"] == [str(straight / f"epoch{i}.safetensors") for i in (1, 2)]


def test_epoch_checkpoint_loads_with_its_metadata(straight):
    path = straight / "epoch2.safetensors"
    assert sidecar_path(path).is_file()
    lift, meta = load_upsampler(path, backbone="dino_s16")
    assert isinstance(lift, LiFT) and not lift.use_image
    assert meta["upsampler"] == "lift" and meta["layer"] == "0" and meta["random_init"] == "1" and meta["step"] == "4"
    assert meta["loss"] == "l1" and meta["imsize"] == "64" and meta["facet"] == "key"
    load_lift(path, backbone="dino_s16")  # the runtime's own loader reads it too
    with pytest.raises(ValueError, match="dino_s16"):
        load_upsampler(path, backbone="dino_s8")


def assert_same_run(a: Path, b: Path) -> None:
    state_a, state_b = state_of(a), state_of(b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    opt_a = torch.load(sidecar_path(a), weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(sidecar_path(b), weights_only=True)["optimizer"]["state"]
    for index in opt_a:
        for name in opt_a[index]:
            assert torch.equal(opt_a[index][name], opt_b[index][name])


def test_resume_mid_epoch_equals_the_uninterrupted_run(straight, images, tmp_path):
    config = dict(epochs=2, use_image=False, loss="l1")
    Trainer(tiny_config(images, tmp_path, max_steps=3, **config)).fit()
    assert (tmp_path / "step3.safetensors").is_file()
    Trainer(tiny_config(images, tmp_path, resume=str(tmp_path / "step3.safetensors"), **config)).fit()
    assert_same_run(straight / "epoch2.safetensors", tmp_path / "epoch2.safetensors")
    losses = {e["step"]: e["loss"] for e in read_log(straight) if e["event"] == "step"}
    resumed = [e for e in read_log(tmp_path) if e["event"] == "step"]
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]
    assert all(e["loss"] == losses[e["step"]] for e in resumed)


def test_resume_refuses_other_settings_or_a_missing_state(straight, images, tmp_path):
    with pytest.raises(ValueError, match=r"loss: 'l1' -> 'cos'"):
        Trainer(tiny_config(images, tmp_path, use_image=False, resume=str(straight / "epoch1.safetensors")))
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((straight / "epoch1.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="resume state"):
        Trainer(tiny_config(images, tmp_path, use_image=False, loss="l1", resume=str(lone)))


@pytest.mark.parametrize("damage", [
    lambda side: side.write_bytes(side.read_bytes()[:500]),  # truncated
    lambda side: side.write_text("not a torch file"),
    lambda side: torch.save([1, 2, 3], side),  # a torch file, not a resume state
])
def test_resume_from_a_damaged_state_is_a_message(straight, images, tmp_path, capsys, damage):
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes((straight / "epoch1.safetensors").read_bytes())
    sidecar_path(copy).write_bytes(sidecar_path(straight / "epoch1.safetensors").read_bytes())
    damage(sidecar_path(copy))
    with pytest.raises(ValueError, match=f"cannot resume from {copy}: .*copy.state.pt"):
        Trainer(tiny_config(images, tmp_path / "run", use_image=False, loss="l1", resume=str(copy)))
    code = main(["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--batch", "4",
                 "--workers", "0", "--no-image", "--loss", "l1", "--data", str(images), "--out", str(tmp_path / "run"),
                 "--resume", str(copy), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume from" in err and "Traceback" not in err


def test_cli_negative_workers_is_an_argument_error(images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", "dino_s16", "--random-init", "--data", str(images), "--workers", "-1"])
    assert exit_info.value.code == 2
    assert "argument --workers: must be an integer >= 0, got -1" in capsys.readouterr().err


def test_ctrl_c_saves_and_resume_finishes_the_same_run(straight, images, tmp_path, monkeypatch):
    config = dict(epochs=2, use_image=False, loss="l1")
    original = Trainer.step

    def step_then_ctrl_c(self, *args):
        if self.position.step == 0:  # Ctrl-C arrives during the first step
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    path = Trainer(tiny_config(images, tmp_path, **config)).fit()
    assert path == tmp_path / "interrupted.safetensors" and read_lift_state(path)[1]["step"] == "1"
    assert read_log(tmp_path)[-1]["event"] == "interrupted"
    monkeypatch.setattr(Trainer, "step", original)
    Trainer(tiny_config(images, tmp_path, resume=str(path), **config)).fit()
    assert_same_run(straight / "epoch2.safetensors", tmp_path / "epoch2.safetensors")
    assert not path.exists() and not sidecar_path(path).exists()  # superseded by the epoch checkpoints


def copy_checkpoint(source: Path, folder: Path, name: str = "copy") -> Path:
    """A copy of checkpoint ``source`` and its resume state under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{name}.safetensors"
    copy.write_bytes(source.read_bytes())
    sidecar_path(copy).write_bytes(sidecar_path(source).read_bytes())
    return copy


def test_out_holding_a_run_is_refused_without_resume(straight, images):
    with pytest.raises(ValueError, match=r"already holds a run \(epoch1.safetensors, epoch2.safetensors\): continue it with --resume"):
        Trainer(tiny_config(images, straight, use_image=False, loss="l1"))


def test_resume_refuses_other_data_and_mixed_files(straight, images, tmp_path):
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for path in sorted(images.iterdir())[:4]:
        (fewer / path.name).write_bytes(path.read_bytes())
    config = dict(use_image=False, loss="l1", epochs=3)
    with pytest.raises(ValueError, match=r"another number of image files \(trained on 8 images, --data holds 4\)"):
        Trainer(tiny_config(fewer, tmp_path / "run", resume=str(straight / "epoch1.safetensors"), **config))
    mixed = copy_checkpoint(straight / "epoch2.safetensors", tmp_path / "mixed")  # step-4 weights ...
    sidecar_path(mixed).write_bytes(sidecar_path(straight / "epoch1.safetensors").read_bytes())  # ... step-2 state
    with pytest.raises(ValueError, match="weights are from step 4 but its resume state .* from step 2"):
        Trainer(tiny_config(images, tmp_path / "run", resume=str(mixed), **config))


def copy_folder(source: Path, folder: Path) -> Path:
    folder.mkdir()
    for path in sorted(source.iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
        os.utime(folder / path.name, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    return folder


def one_image_eight_times(data: Path) -> None:
    first = sorted(data.iterdir())[0].read_bytes()
    for index, path in enumerate(sorted(data.iterdir())):
        path.unlink()
        (data / f"copy{index}.png").write_bytes(first)


def append_a_byte(data: Path) -> None:
    path = sorted(data.iterdir())[3]
    stat = path.stat()
    path.write_bytes(path.read_bytes() + b"\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("change, named", [
    (one_image_eight_times, "other file names"),  # the same number of images, other files
    (append_a_byte, "files of other sizes"),
    (lambda data: os.utime(sorted(data.iterdir())[5], ns=(0, 10**18)), "other modification times"),
])
def test_resume_refuses_other_data_of_the_same_size(straight, images, tmp_path, change, named):
    data = copy_folder(images, tmp_path / "data")  # moved data with its times: still the same data
    resume = dict(use_image=False, loss="l1", epochs=3, resume=str(straight / "epoch1.safetensors"))
    Trainer(tiny_config(data, tmp_path / "same", **resume)).close()
    change(data)
    with pytest.raises(ValueError, match=f"is not the data the checkpoint was trained on: .*{named}.*trained on 8 images, --data holds 8"):
        Trainer(tiny_config(data, tmp_path / "run", **resume))


def test_resume_of_a_state_without_data_identity_warns(straight, images, tmp_path, caplog):
    old = copy_checkpoint(straight / "epoch1.safetensors", tmp_path / "old")
    state = torch.load(sidecar_path(old), weights_only=True)
    del state["settings"]["data_identity"]  # as saved before data identities were recorded
    torch.save(state, sidecar_path(old))
    with caplog.at_level("WARNING", logger="lift_rt"):
        Trainer(tiny_config(images, tmp_path / "run", use_image=False, loss="l1", resume=str(old))).close()
    assert "predates data fingerprints; only its number of images (8) was checked" in caplog.text


def test_cli_ctrl_c_during_set_up_is_one_line(images, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lift_rt.train.loop.build_backbone", interrupted)
    out = tmp_path / "run"
    code = main(["--backbone", "dino_s16", "--random-init", "--data", str(images), "--out", str(out), "--no-progress"])
    assert code == 130 and not out.exists()
    assert capsys.readouterr().err == "python -m lift_rt.train: interrupted before training started, nothing saved\n"


def test_cli_set_up_shows_its_stages_on_a_terminal(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--batch", "4", "--workers", "0",
            "--max-steps", "1", "--data", str(images), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "set-up:" in err and "backbone" in err and "images" in err and "epoch 1/5" in err


def test_keeps_the_last_epochs_and_the_best(images, tmp_path):
    Trainer(tiny_config(images, tmp_path, epochs=5, keep_last=2, lr=0.5)).fit()  # a large step: the loss wanders
    means = {int(Path(e["path"]).stem.removeprefix("epoch")): e["mean_loss"] for e in read_log(tmp_path) if "mean_loss" in e}
    best = min(means, key=means.get)
    kept = sorted(int(p.stem.removeprefix("epoch")) for p in tmp_path.glob("epoch*.safetensors"))
    assert kept == sorted({4, 5, best}) and len(means) == 5
    assert sorted(p.name for p in tmp_path.glob("*.state.pt")) == sorted(f"epoch{e}.state.pt" for e in kept)
    assert torch.load(sidecar_path(tmp_path / "epoch5.safetensors"), weights_only=True)["position"]["best_epoch"] == best
    Trainer(tiny_config(images, tmp_path, epochs=6, keep_last=0, lr=0.5, resume=str(tmp_path / "epoch5.safetensors"))).fit()
    assert sorted(int(p.stem.removeprefix("epoch")) for p in tmp_path.glob("epoch*.safetensors")) == sorted({*kept, 6})


def test_resume_checks_settings_before_loading_weights(straight, images, tmp_path):
    """Another upsampler is named in the settings message, not in a state-dict error."""
    with pytest.raises(ValueError, match=r"use_image: False -> True") as info:
        Trainer(tiny_config(images, tmp_path, loss="l1", resume=str(straight / "epoch1.safetensors")))
    assert "state_dict" not in str(info.value) and "Unexpected key" not in str(info.value)


def test_resume_with_nothing_left_to_train_says_so(straight, images, tmp_path, caplog):
    config = dict(use_image=False, loss="l1")
    for overrides in (dict(epochs=2), dict(epochs=5, max_steps=4)):  # at epoch 2 = --epochs; at step 4 = --max-steps
        caplog.clear()
        trainer = Trainer(tiny_config(images, tmp_path / "run", resume=str(straight / "epoch2.safetensors"), **config, **overrides))
        with caplog.at_level("INFO", logger="lift_rt"):
            assert trainer.fit() is None
        assert "nothing to train: the run is at" in caplog.text
    assert not list((tmp_path / "run").glob("*.safetensors"))


def test_a_failed_save_leaves_no_partial_files(images, tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456\nNo space left on device")

    monkeypatch.setattr("lift_rt.train.state.torch.save", full_disk)
    out = tmp_path / "run"
    code = main(["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--batch", "4", "--workers", "0",
                 "--max-steps", "1", "--no-progress", "--data", str(images), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and f"cannot write checkpoint {out / 'step1.safetensors'}: No space left on device" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]


def test_cli_interruption_prints_how_to_continue(images, tmp_path, monkeypatch, capsys):
    original = Trainer.step

    def step_then_ctrl_c(self, *args):
        self.stop_requested = True
        return original(self, *args)

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    argv = ["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--batch", "4", "--workers", "0",
            "--no-progress", "--data", str(images), "--out", str(tmp_path / "run")]
    assert main(argv) == 130
    out = capsys.readouterr().out
    resume = tmp_path / "run" / "interrupted.safetensors"
    assert f"saved {resume}" in out and f"continue with: python -m lift_rt.train {' '.join(argv)} --resume {resume}" in out


def test_cli_run_of_the_full_lift_counts_unreadable_files(images, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(images.iterdir())[:4]:
        (data / path.name).write_bytes(path.read_bytes())
    for name in ("a_broken.png", "b_broken.png"):  # first in the order: each is also tried as the other's stand-in
        (data / name).write_bytes(b"not a png")
    out = tmp_path / "run"
    code = main(["--backbone", "dino_s16", "--data", str(data), "--random-init", "--layer", "0", "--imsize", "64",
                 "--batch", "6", "--max-steps", "1", "--workers", "0", "--color-jitter", "0.2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "saved" in captured.out
    assert [e["skipped"] for e in read_log(out) if e["event"] == "step"] == [2]  # files, not failed reads (3)
    # One line per file, through logging (no echo of a warnings.warn source line).
    warned = [line for line in captured.err.splitlines() if "unreadable image" in line]
    assert len(warned) == 2 and all(line.startswith("warning: skipping unreadable image ") for line in warned)
    assert "_broken.png" in warned[0] and "warn(" not in captured.err
    lift = load_lift(out / "step1.safetensors", backbone="dino_s16")
    assert lift.use_image and lift.dim == get_spec("dino_s16").dim


# ---- the process group ------------------------------------------------------------------------
@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a single process (world size 1, gloo on a free local port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                            WORLD_SIZE="1").items():
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():  # only after a failure: do not leak a group into later tests
        dist.destroy_process_group()


def test_failing_constructor_leaves_the_process_group(torchrun_env, images, tmp_path):
    seen = []
    original = Trainer._build

    def build_then_fail(self):
        seen.append(dist.is_initialized() and dist.get_backend() == "gloo")
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_build", build_then_fail)
        with pytest.raises(ValueError, match="fewer than one batch"):
            train(tiny_config(images, tmp_path, batch=64))
    assert seen == [True] and not dist.is_initialized()


def test_failing_run_leaves_the_process_group(torchrun_env, images, tmp_path, monkeypatch):
    def broken_step(self, *args):
        assert dist.is_initialized()
        raise RuntimeError("step exploded")

    monkeypatch.setattr(Trainer, "step", broken_step)
    with pytest.raises(RuntimeError, match="step exploded"):
        train(tiny_config(images, tmp_path, upsampler="rc"))
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="step exploded"):
        with Trainer(tiny_config(images, tmp_path, upsampler="rc")) as trainer:
            assert trainer.env.owns_group and trainer.env.world == 1
            trainer.fit()
    assert not dist.is_initialized()


def test_a_group_made_by_the_caller_stays(torchrun_env, images, tmp_path):
    dist.init_process_group("gloo")
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(tiny_config(images, tmp_path, batch=64))
    assert dist.is_initialized()
    trainer = Trainer(tiny_config(images, tmp_path, upsampler="rc", max_steps=1))
    assert not trainer.env.owns_group
    trainer.close()
    assert dist.is_initialized()


# ---- several processes ------------------------------------------------------------------------
def test_torchrun_two_processes_match_one_process(images, tmp_path):
    """DDP with gloo: 2 ranks x batch 2 train the resize-conv exactly like 1 process x batch 4.

    (rc has no batch norm, whose statistics would differ per rank.)
    """
    common = ["--backbone", "dino_s16", "--data", str(images), "--random-init", "--layer", "0", "--imsize", "64",
              "--batch", "4", "--upsampler", "rc", "--max-steps", "3", "--workers", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lift_rt.train",
         *common, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    ddp, single = state_of(tmp_path / "ddp" / "step3.safetensors"), state_of(tmp_path / "single" / "step3.safetensors")
    moved = (single["conv.weight"] - ResizeConv(384, 16).conv.weight).abs().max()
    assert moved > 2e-3  # 3 Adam steps of lr 1e-3
    # Adam divides by sqrt(v): on near-zero gradients, the rank sum's different rounding
    # shows up at ~1e-5 of the weights, far below the 3e-3 they moved.
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-4)
    log = read_log(tmp_path / "ddp")
    assert log[0]["world_size"] == 2 and sum(e["event"] == "start" for e in log) == 1  # rank 0 logs alone
    single_losses = [e["loss"] for e in read_log(tmp_path / "single") if e["event"] == "step"]
    assert [e["loss"] for e in log if e["event"] == "step"] == pytest.approx(single_losses, rel=1e-5)


# ---- bad inputs on the command line: one-line messages, cheap checks first --------------------
def test_cli_unavailable_cuda_device_is_a_message(images, tmp_path, monkeypatch, cli_error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(main, ["--backbone", "dino_s16", "--random-init", "--data", str(images), "--device", "cuda",
                           "--out", str(tmp_path / "run")])
    assert "--device cuda" in err and "no CUDA device" in err


@pytest.mark.parametrize("extra, message", [
    (["--random-init", "--layer", "50"], "--layer 50 out of range for dino_s16 (0..11)"),
    (["--random-init", "--resume", "absent.safetensors"], "--resume absent.safetensors: no such checkpoint file"),
    (["--backbone-weights", "absent.pth"], "backbone weights file absent.pth does not exist"),
    ([], "pretrained weights for dino_s16 are not on this machine"),
])
def test_cli_checks_arguments_before_the_batch_size(images, tmp_path, cli_error, extra, message):
    """With the default batch (256) the 8-image folder is too small, but the argument mistake is named first."""
    err = cli_error(main, ["--backbone", "dino_s16", "--imsize", "64", "--data", str(images),
                           "--out", str(tmp_path / "run"), *extra])
    assert message in err and "fewer than one batch" not in err


@pytest.mark.parametrize("batch", [[], ["--batch", "2"]])
def test_cli_folder_of_unreadable_files_is_a_message(tmp_path, cli_error, batch):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_text("not an image")
    err = cli_error(main, ["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--workers", "0",
                           "--data", str(tmp_path), "--out", str(tmp_path / "run"), *batch])
    assert "no readable images" in err and "all 2 image files found are unreadable" in err
    assert "fewer than one batch" not in err


def test_cli_out_that_cannot_be_a_folder_is_a_message(images, tmp_path, cli_error):
    (tmp_path / "file").write_text("")
    err = cli_error(main, ["--backbone", "dino_s16", "--random-init", "--layer", "0", "--imsize", "64", "--batch", "4",
                           "--data", str(images), "--out", str(tmp_path / "file" / "run")])
    assert "--out" in err and "is not a folder" in err


def test_cli_garbage_backbone_weights_is_a_message_without_unsafe_advice(images, tmp_path, cli_error):
    garbage = tmp_path / "notes.pth"
    garbage.write_text("# not a checkpoint\n")
    err = cli_error(main, ["--backbone", "dino_s16", "--imsize", "64", "--data", str(images),
                           "--backbone-weights", str(garbage), "--out", str(tmp_path / "run")])
    assert f"cannot read backbone checkpoint {garbage}: not a valid checkpoint file" in err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_persistent_workers_see_each_epochs_jitter(images):
    """The sampler carries the epoch to the dataset, so one loader with persistent workers still
    draws each epoch's jitter (as ImageFolder[index] after set_epoch would)."""
    from lift_rt.data import ImageFolder
    from lift_rt.train.loop import ShardSampler

    dataset = ImageFolder(images, 16, jitter=0.2, seed=3)
    sampler = ShardSampler(len(dataset), rank=0, world=1, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), sampler=sampler, num_workers=1,
                                         persistent_workers=True)
    batches = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = [index for index, _ in sampler]
        batches[epoch] = next(iter(loader))[0]
        dataset.set_epoch(epoch)
        torch.testing.assert_close(batches[epoch], torch.stack([dataset[i][0] for i in order]), rtol=0, atol=0)
    assert not torch.equal(batches[0], batches[1])


def test_command_line_defaults_are_the_configs():
    """Every TrainConfig field is a flag, and argparse's defaults are the dataclass's (one source of truth)."""
    import dataclasses

    from lift_rt.train.__main__ import build_parser
    from lift_rt.train.loop import train_defaults

    parser = build_parser()
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}
    parsed = vars(parser.parse_args(["--backbone", "dino_s16", "--data", "x"]))
    assert {k: parsed[k] for k in train_defaults()} == train_defaults()
    assert train_defaults()["epochs"] == 5 and train_defaults()["lr"] == 1e-3  # the paper's recipe
