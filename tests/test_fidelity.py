"""``python -m lift_rt.eval fidelity``: the metric, the table, checkpoint/backbone consistency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lift_rt.backbones import get_spec
from lift_rt.checkpoint import save_lift
from lift_rt.eval.__main__ import main
from lift_rt.eval.fidelity import METRIC, evaluate_fidelity, fidelity_scores
from lift_rt.eval.report import format_table
from lift_rt.model import LiFT
from lift_rt.upsamplers import build_upsampler

SPEC = get_spec("dino_s16")
RANDOM_RUN = {"upsampler": "lift", "layer": "0", "random_init": "1", "backbone_seed": "0", "imsize": "64"}


class ColourPatches(nn.Module):
    """Stand-in backbone: per-patch mean colour, tiled to C channels (B x C x H/p x W/p)."""

    spec = SPEC

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, SPEC.patch_size).repeat(1, SPEC.dim // 3, 1, 1)


def test_constant_images_are_lifted_perfectly_by_interpolation():
    backbone = ColourPatches()
    images = torch.rand(3, 3, 1, 1).expand(3, 3, 64, 64)
    ups = {name: build_upsampler(name, SPEC.dim, SPEC.patch_size) for name in ("bilinear", "nearest", "jbu")}
    results = evaluate_fidelity(backbone, ups, [images[:2], images[2:]])
    for name, (mean, std) in results.items():
        assert mean == pytest.approx(1.0, abs=1e-5) and std == pytest.approx(0.0, abs=1e-5), name


def test_score_is_the_mean_over_images_of_the_mean_positional_cosine():
    backbone = ColourPatches()
    images = torch.rand(4, 3, 64, 64)
    mean, std = evaluate_fidelity(backbone, {"bilinear": build_upsampler("bilinear", SPEC.dim, 16)}, [images])["bilinear"]
    x = (images - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    pred = F.interpolate(backbone(x[:, :, ::2, ::2]), scale_factor=2.0, mode="bilinear")
    per_image = F.cosine_similarity(pred, backbone(x), dim=1).mean((1, 2)).double()
    assert mean == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert std == pytest.approx(per_image.std().item(), rel=1e-5)


def test_table_is_sorted_best_first():
    scores = fidelity_scores({"bilinear": (0.5, 0.1), "lift": (0.7, 0.05)})
    assert list(scores) == ["lift", "bilinear"] and scores["lift"] == {METRIC: {"mean": 0.7, "std": 0.05}}
    lines = format_table(scores, [METRIC], ["mean", "std"], digits=4).splitlines()
    assert lines[3].split() == ["lift", "|", "0.7000", "0.0500"] and lines[4].split()[0] == "bilinear"


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("heldout")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    lift = save_lift(LiFT(SPEC.dim, SPEC.patch_size), folder / "lift.safetensors", backbone="dino_s16", facet="key",
                     extra=RANDOM_RUN)
    rc = build_upsampler("rc", SPEC.dim, SPEC.patch_size)
    with torch.no_grad():
        rc.conv.bias.fill_(0.5)
    rc_path = save_lift(rc, folder / "rc.safetensors", backbone="dino_s16", facet="key", extra={**RANDOM_RUN, "upsampler": "rc"})
    return {"lift": lift, "rc": rc_path}


def test_cli_prints_all_five_upsamplers_and_writes_json(heldout, checkpoints, tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    code = main(["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout),
                 "--random-init", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layer 0, random init), 3 images" in printed and "64 px image" in printed
    for name in ("lift", "bilinear", "rc (untrained)", "jbu", "nearest"):
        assert f"\n{name} " in printed
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"lift", "bilinear", "rc (untrained)", "jbu", "nearest"}
    # identity-initialised resize-conv is exactly nearest-neighbour upsampling
    assert results["rc (untrained)"]["mean"] == pytest.approx(results["nearest"]["mean"], abs=1e-6)
    assert all(-1.0 <= r["mean"] <= 1.0 for r in results.values())


def test_cli_uses_a_trained_resize_conv(heldout, checkpoints, capsys):
    assert main(["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout),
                 "--random-init", "--rc", str(checkpoints["rc"])]) == 0
    printed = capsys.readouterr().out
    assert "\nrc " in printed and "untrained" not in printed


@pytest.mark.parametrize(
    "extra, message",
    [([], "pass --random-init"), (["--random-init", "--layer", "3"], "trained on layer 0"),
     (["--random-init", "--imsize", "48"], "multiple of 2 x patch"), (["--random-init", "--facet", "token"], "key facet"),
     (["--random-init", "--imsize", "0"], "--imsize 0 must be a multiple of 2 x patch")],  # 0 is not "use the default"
)
def test_cli_rejects_settings_that_do_not_match_the_checkpoint(heldout, checkpoints, capsys, extra, message):
    code = main(["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout), *extra])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--batch", "0"], "argument --batch: must be a positive integer, got 0"),
    (["--batch", "-1"], "argument --batch: must be a positive integer, got -1"),
    (["--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
])
def test_cli_bad_batch_or_workers_name_their_flag(heldout, checkpoints, cli_error, extra, message):
    err = cli_error(main, ["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout),
                           "--random-init", *extra])
    assert message in err


def test_cli_rejects_a_checkpoint_for_another_backbone(heldout, checkpoints, capsys):
    code = main(["fidelity", "--backbone", "dino_s8", "--lift", str(checkpoints["lift"]), "--data", str(heldout), "--random-init"])
    assert code == 2 and "dino_s16" in capsys.readouterr().err


def test_cli_takes_facet_and_layer_from_the_checkpoint(heldout, tmp_path, capsys):
    path = save_lift(LiFT(SPEC.dim, SPEC.patch_size), tmp_path / "token.safetensors", backbone="dino_s16", facet="token",
                     extra={**RANDOM_RUN, "layer": "1"})
    assert main(["fidelity", "--backbone", "dino_s16", "--lift", str(path), "--data", str(heldout), "--random-init"]) == 0
    assert "(token, layer 1, random init)" in capsys.readouterr().out


def test_cli_rc_must_be_a_resize_conv(heldout, checkpoints, capsys):
    code = main(["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout),
                 "--random-init", "--rc", str(checkpoints["lift"])])
    assert code == 2 and "holds a 'lift' upsampler, not a resize-conv" in capsys.readouterr().err


# ---- bad inputs: one-line messages, before any compute -----------------------------------------
def fidelity_args(checkpoints: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return ["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(data),
            "--random-init", *extra]


def test_cli_unavailable_cuda_device_is_a_message(heldout, checkpoints, monkeypatch, cli_error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(main, fidelity_args(checkpoints, heldout, "--device", "cuda"))
    assert "--device cuda" in err and "no CUDA device" in err


def test_cli_folder_of_unreadable_files_is_a_message(checkpoints, tmp_path, cli_error):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_text("not an image")
    err = cli_error(main, fidelity_args(checkpoints, tmp_path))
    assert f"no readable images under {tmp_path}: all 2 image files found are unreadable" in err


def test_cli_unwritable_json_fails_before_the_evaluation(heldout, checkpoints, tmp_path, monkeypatch, cli_error):
    def no_compute(*args, **kwargs):
        raise AssertionError("evaluated before checking --json")

    monkeypatch.setattr("lift_rt.eval.fidelity.evaluate_fidelity", no_compute)
    (tmp_path / "file").write_text("")
    err = cli_error(main, fidelity_args(checkpoints, heldout, "--json", str(tmp_path / "file" / "x.json")))
    assert "--json" in err and "is not a folder" in err
    err = cli_error(main, fidelity_args(checkpoints, heldout, "--json", str(tmp_path)))
    assert "is a folder, not a file" in err


def test_cli_json_in_a_new_folder_is_written(heldout, checkpoints, tmp_path, capsys):
    out = tmp_path / "new" / "fidelity.json"
    assert main(fidelity_args(checkpoints, heldout, "--json", str(out))) == 0
    assert set(json.loads(out.read_text())["results"]) >= {"lift", "bilinear"}


def test_cli_garbage_lift_file_is_a_message_without_unsafe_advice(heldout, checkpoints, tmp_path, cli_error):
    garbage = tmp_path / "notes.pth"
    garbage.write_text("# not a checkpoint\n")
    err = cli_error(main, fidelity_args({"lift": garbage}, heldout))
    assert f"cannot read LiFT checkpoint {garbage}: not a valid checkpoint file" in err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_cli_skips_unreadable_images_names_them_and_leaves_them_out(heldout, checkpoints, tmp_path, capsys):
    """2 corrupt files among the 3 images: 3 evaluated, 2 named, the same scores as the 3 alone."""
    args = ["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--random-init", "--batch", "2"]
    assert main([*args, "--data", str(heldout), "--json", str(tmp_path / "clean.json")]) == 0
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in heldout.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    for name in ("0_bad.png", "1_bad.jpg"):  # sorted among the good ones: each replaced by a good neighbour
        (mixed / name).write_bytes(b"not an image")
    assert main([*args, "--data", str(mixed), "--json", str(tmp_path / "mixed.json")]) == 0
    captured = capsys.readouterr()
    assert f"3 images from {mixed} (2 unreadable skipped)" in captured.out
    named = [line for line in captured.err.splitlines() if "unreadable image" in line]
    assert len(named) == 2 and "0_bad.png" in named[0] and "1_bad.jpg" in named[1]
    assert "fidelity: 100%" in captured.err  # the progress bar
    clean = json.loads((tmp_path / "clean.json").read_text())["results"]
    for name, result in json.loads((tmp_path / "mixed.json").read_text())["results"].items():
        assert result["mean"] == pytest.approx(clean[name]["mean"], abs=1e-6), name
