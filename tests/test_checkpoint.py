"""LiFT checkpoints: safetensors round trip, the authors' .pth format, mismatches."""

import os
import stat

import pytest
import torch

from lift_rt.checkpoint import load_lift, read_lift_state, save_lift
from lift_rt.model import LiFT


def random_lift(dim=384, patch=16, use_image=True):
    torch.manual_seed(1)
    lift = LiFT(dim=dim, patch_size=patch, use_image=use_image)
    with torch.no_grad():  # non-trivial batch-norm statistics, so they must round-trip too
        for module in lift.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return lift.eval()


def assert_same_output(a, b, patch=16):
    image = torch.randn(1, 3, 4 * patch, 4 * patch)
    feats = torch.randn(1, a.dim, 4, 4)
    torch.testing.assert_close(a(image, feats), b(image, feats), rtol=0, atol=0)


def test_safetensors_round_trip(tmp_path):
    lift = random_lift()
    path = save_lift(lift, tmp_path / "lift.safetensors", backbone="dino_s16", facet="key")
    _, meta = read_lift_state(path)
    assert meta["backbone"] == "dino_s16" and meta["facet"] == "key" and meta["dim"] == "384" and meta["version"] == "1"
    assert_same_output(lift, load_lift(path, backbone="dino_s16"))


def test_no_image_variant_round_trip(tmp_path):
    lift = random_lift(use_image=False)
    path = save_lift(lift, tmp_path / "noimg.safetensors", backbone="dino_s16", facet="key")
    loaded = load_lift(path, backbone="dino_s16")
    assert not loaded.use_image
    assert_same_output(lift, loaded)


def test_authors_pth_format(tmp_path):
    """The release is a plain state dict, possibly with DataParallel's 'module.' prefix."""
    lift = random_lift(patch=8)
    keys = set(lift.state_dict())
    for key in ("image_convs_1.0.weight", "image_convs_1.4.running_var", "image_convs_2.1.num_batches_tracked",
                "up1.up.weight", "up1.conv_1.double_conv.3.weight", "up1.conv_1.double_conv.4.running_mean", "outc.bias"):
        assert key in keys
    assert lift.state_dict()["up1.up.weight"].shape == (416, 208, 2, 2)
    assert lift.state_dict()["outc.weight"].shape == (384, 192, 1, 1)
    path = tmp_path / "lift_dino_vits8.pth"
    torch.save({f"module.{k}": v for k, v in lift.state_dict().items()}, path)
    assert_same_output(lift, load_lift(path, backbone="dino_s8"), patch=8)


def test_checkpoint_for_another_backbone(tmp_path):
    path = save_lift(random_lift(), tmp_path / "s16.safetensors", backbone="dino_s16", facet="key")
    with pytest.raises(ValueError, match="trained for backbone dino_s16"):
        load_lift(path, backbone="dino_s8")
    with pytest.raises(ValueError, match="key facet"):
        load_lift(path, backbone="dino_s16", facet="value")
    pth = tmp_path / "lift_dino_vits16.pth"
    torch.save(random_lift().state_dict(), pth)
    with pytest.raises(ValueError, match="width 384.*width 768"):
        load_lift(pth, backbone="dino_b16")
    with pytest.raises(ValueError, match="does not match backbone"):
        save_lift(random_lift(), tmp_path / "x.safetensors", backbone="dino_b16", facet="key")
    # Same width, other patch size: only the authors' file name tells; a renamed copy cannot be checked.
    with pytest.raises(ValueError, match=r"the authors' LiFT for dino_s16, not dino_s8 \(theirs for dino_s8: lift_dino_vits8.pth\)"):
        load_lift(pth, backbone="dino_s8")
    assert load_lift(pth, backbone="dino_s16").dim == 384


@pytest.mark.parametrize("name", ["lift.pth", "lift", "lift.SAFETENSORS"])
def test_safetensors_under_any_name(tmp_path, name):
    """What save_lift writes is read back as safetensors whatever the file is called, metadata checks included."""
    lift = random_lift()
    path = save_lift(lift, tmp_path / name, backbone="dino_s16", facet="key")
    assert_same_output(lift, load_lift(path, backbone="dino_s16"))
    with pytest.raises(ValueError, match="trained for backbone dino_s16"):
        load_lift(path, backbone="moco_s16")


def test_unknown_facet_is_refused_for_every_format(tmp_path):
    pth = tmp_path / "lift.pth"
    torch.save(random_lift().state_dict(), pth)
    with pytest.raises(ValueError, match="unknown facet 'foo'"):
        load_lift(pth, backbone="dino_s16", facet="foo")


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        load_lift(bad, backbone="dino_s16")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match="not a LiFT checkpoint"):
        load_lift(other, backbone="dino_s16")
    with pytest.raises(FileNotFoundError):
        load_lift(tmp_path / "absent.pth", backbone="dino_s16")
    text = tmp_path / "notes.pth"
    text.write_text("# not a checkpoint\n")
    with pytest.raises(ValueError, match="cannot read LiFT checkpoint .*: not a valid checkpoint file") as info:
        load_lift(text, backbone="dino_s16")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_extra_metadata_cannot_overwrite_reserved_keys(tmp_path):
    path = save_lift(random_lift(), tmp_path / "a.safetensors", backbone="dino_s16", facet="key", extra={"epoch": "3"})
    assert read_lift_state(path)[1]["epoch"] == "3"
    with pytest.raises(ValueError, match="reserved keys"):
        save_lift(random_lift(), tmp_path / "b.safetensors", backbone="dino_s16", facet="key", extra={"backbone": "dino_s8"})


def test_save_refuses_an_unknown_facet(tmp_path):
    with pytest.raises(ValueError, match="unknown facet 'keys'"):
        save_lift(random_lift(), tmp_path / "a.safetensors", backbone="dino_s16", facet="keys")
    assert not (tmp_path / "a.safetensors").exists()


def test_save_refuses_a_lift_for_another_patch_size(tmp_path):
    # Same width, other patch: the metadata would name a backbone the module was not built for.
    with pytest.raises(ValueError, match="patch size 8 does not match backbone dino_s16"):
        save_lift(random_lift(patch=8), tmp_path / "a.safetensors", backbone="dino_s16", facet="key")
    assert not (tmp_path / "a.safetensors").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused(tmp_path, suffix):
    lift = random_lift()
    with torch.no_grad():
        lift.outc.weight[0, 0] = float("nan")
    path = tmp_path / f"diverged{suffix}"
    if suffix == ".pth":
        torch.save(lift.state_dict(), path)
    else:
        save_lift(lift, path, backbone="dino_s16", facet="key")
    with pytest.raises(ValueError, match="outc.weight holds NaN or infinite values"):
        load_lift(path, backbone="dino_s16")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a file"):
        load_lift(tmp_path, backbone="dino_s16")


def test_save_refuses_other_modules_and_non_string_metadata(tmp_path):
    with pytest.raises(TypeError, match="save_lift writes a lift_rt.LiFT .*not Conv2d"):
        save_lift(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.safetensors", backbone="dino_s16", facet="key")
    with pytest.raises(TypeError, match="strings to strings"):
        save_lift(random_lift(), tmp_path / "x.safetensors", backbone="dino_s16", facet="key", extra={"epochs": 5})


def test_checkpoint_and_resume_state_files_get_the_same_mode(tmp_path):
    """Both are ordinary files, 0666 less the umask (safetensors' own writer made 0600 files)."""
    old = os.umask(0o022)
    try:
        weights = save_lift(random_lift(), tmp_path / "lift.safetensors", backbone="dino_s16", facet="key")
        torch.save({}, tmp_path / "state.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == stat.S_IMODE((tmp_path / "state.pt").stat().st_mode) == 0o644
