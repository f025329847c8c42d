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
from lift_rt.eval.fidelity import evaluate_fidelity, format_table
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
    table = format_table({"bilinear": (0.5, 0.1), "lift": (0.7, 0.05)}, "title")
    lines = table.splitlines()
    assert lines[0] == "title" and lines[2].startswith("lift") and lines[3].startswith("bilinear")


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
     (["--random-init", "--imsize", "48"], "multiple of 2 x patch"), (["--random-init", "--facet", "token"], "key facet")],
)
def test_cli_rejects_settings_that_do_not_match_the_checkpoint(heldout, checkpoints, capsys, extra, message):
    code = main(["fidelity", "--backbone", "dino_s16", "--lift", str(checkpoints["lift"]), "--data", str(heldout), *extra])
    assert code == 2 and message in capsys.readouterr().err


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
