"""Backbone registry, facets (the authors' channel order), resolutions, weight sources."""

import os
from pathlib import Path

import pytest
import torch

from lift_rt.backbones import BACKBONES, WeightsNotFoundError, build_backbone, create_vit, get_spec


@pytest.fixture(scope="module")
def dino_s16():
    torch.manual_seed(0)
    return build_backbone("dino_s16", random_init=True)


def test_registry_entries():
    expected = {"dino_s16": (16, 384), "dino_s8": (8, 384), "dino_b16": (16, 768), "dino_b8": (8, 768),
                "moco_s16": (16, 384), "vit_s16": (16, 384), "leopart_s16": (16, 384), "dinov2_s14": (14, 384),
                "selfpatch_s16": (16, 384)}
    for name, (patch, dim) in expected.items():
        spec = BACKBONES[name]
        assert (spec.patch_size, spec.dim) == (patch, dim)
        assert spec.facet == "key" and spec.layer == 11
    assert BACKBONES["vit_s16"].mean == (0.5, 0.5, 0.5)
    assert BACKBONES["moco_s16"].heads == 12
    with pytest.raises(ValueError, match="unknown backbone"):
        get_spec("dino_s32")


def test_timm_architecture_matches_registry():
    for name in ("dino_s8", "moco_s16"):
        spec = BACKBONES[name]
        vit = create_vit(spec)
        assert vit.embed_dim == spec.dim and vit.patch_embed.patch_size == (spec.patch_size,) * 2
        assert vit.blocks[0].attn.num_heads == spec.heads


def independent_facet(backbone, image, facet="key"):
    """A facet of the last block computed by hand: query / key / value from its qkv weights, heads merged with
    channel index d * heads + head (the authors' order), or its output tokens; ``B x T x C``."""
    captured = {}
    last = backbone.blocks[-1]
    handle = last.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    saved = backbone.facet
    try:
        backbone.facet = "token"
        backbone(image)
    finally:
        backbone.facet = saved
        handle.remove()
    if facet == "token":
        return last(captured["x"])[:, 1:]
    x = last.norm1(captured["x"])[:, 1:]
    dim, heads = backbone.spec.dim, backbone.spec.heads
    head_dim = dim // heads
    rows = slice({"query": 0, "key": 1, "value": 2}[facet] * dim, ({"query": 0, "key": 1, "value": 2}[facet] + 1) * dim)
    k = x @ last.attn.qkv.weight[rows].T + last.attn.qkv.bias[rows]  # timm layout: channel head * head_dim + d
    out = torch.empty_like(k)
    for head in range(heads):
        for d in range(head_dim):
            out[..., d * heads + head] = k[..., head * head_dim + d]
    return out


def test_key_facet_channel_order(dino_s16):
    image = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        key = dino_s16(image)
        expected = independent_facet(dino_s16, image)
    assert key.shape == (2, 384, 4, 3)
    torch.testing.assert_close(key.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("facet", ["query", "value", "token"])
def test_other_facets(facet):
    torch.manual_seed(0)
    backbone = build_backbone("dino_s16", random_init=True, facet=facet, layer=1)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = backbone(image)
        expected = independent_facet(backbone, image, facet)
    assert out.shape == (1, 384, 2, 2)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown facet"):
        build_backbone("dino_s16", random_init=True, facet="keys")


@pytest.mark.parametrize("name, size", [("dino_s8", 56), ("dino_s8", 112), ("dino_s16", 224), ("dino_s16", 448), ("dinov2_s14", 224)])
def test_resolutions_interpolate_positions(name, size):
    backbone = build_backbone(name, random_init=True, layer=0)
    patch = backbone.spec.patch_size
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, size, size))
    assert out.shape == (1, 384, size // patch, size // patch)


def test_native_resolution_uses_stored_positions(dino_s16):
    assert dino_s16.interpolate_pos_embed(14, 14) is dino_s16.pos_embed
    assert dino_s16.interpolate_pos_embed(7, 9).shape == (1, 1 + 63, 384)


@pytest.mark.parametrize("size", [(56, 56), (224, 100), (230, 224)])
def test_resolution_not_multiple_of_patch(dino_s16, size):
    with pytest.raises(ValueError, match="multiple of 16"):
        dino_s16(torch.randn(1, 3, *size))


def test_resolution_errors_name_the_side_that_does_not_fit():
    from lift_rt.backbones import check_resolution

    spec = get_spec("dino_s16")
    with pytest.raises(ValueError, match=r"width 65: e.g. 64 or 80"):
        check_resolution(spec, 32, 65)
    with pytest.raises(ValueError, match=r"height 100: e.g. 96 or 112"):
        check_resolution(spec, 100, 64)
    with pytest.raises(ValueError, match=r"width 10: at least 16\)"):
        check_resolution(spec, 32, 10)
    for size in [(0, 0), (-32, 32), (32, -16)]:
        with pytest.raises(ValueError, match="must be positive multiples of the patch size 16") as info:
            check_resolution(spec, *size)
        assert "-16" not in str(info.value).split("size 16")[-1]  # no negative size suggested


def test_no_weights_means_error_not_random():
    with pytest.raises(WeightsNotFoundError, match="dino_vits8.dino|random_init=True"):
        build_backbone("dino_s8")
    with pytest.raises(WeightsNotFoundError, match="leopart_vits16.ckpt"):
        build_backbone("leopart_s16")
    with pytest.raises(WeightsNotFoundError, match="dino_selfpatch.pth"):
        build_backbone("selfpatch_s16")


def test_official_checkpoint_round_trip(tmp_path):
    """A DINO-format file (plain state dict of the ViT, with its own head) loads every weight the features use."""
    source = create_vit(BACKBONES["dino_s16"])
    with torch.no_grad():
        for tensor in source.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))  # no weight left at an initial value another init could share
    state = dict(source.state_dict())
    state["head.weight"] = torch.randn(10, 384)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    loaded = build_backbone("dino_s16", weights=path)
    loaded_state = loaded.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("norm."):  # the final norm: the key facet is read inside the last block, before it
            continue
        torch.testing.assert_close(loaded_state[key.replace("patch_embed.proj.", "patch_embed.")], value, rtol=0, atol=0)
    image = torch.randn(1, 3, 224, 224)  # the checkpoint's own resolution: stored positions, no interpolation
    with torch.no_grad():  # the features: timm's own modules on the source, then the key facet by hand
        x = source.blocks[:-1](source._pos_embed(source.patch_embed(image)))
        last = source.blocks[-1]
        keys = last.attn.qkv(last.norm1(x))[:, 1:, 384:768].reshape(1, 196, 6, 64)  # timm: head-major channels
        expected = keys.transpose(-1, -2).flatten(-2).transpose(1, 2).reshape(1, 384, 14, 14)  # d-major, as the authors
        torch.testing.assert_close(loaded(image), expected, rtol=1e-4, atol=1e-4)


def test_moco_checkpoint_prefix(tmp_path):
    source = create_vit(BACKBONES["moco_s16"])
    with torch.no_grad():
        source.cls_token.copy_(torch.randn_like(source.cls_token))  # timm's init (std 1e-6) is below any tolerance
        source.pos_embed.copy_(torch.randn_like(source.pos_embed))
    state = {"state_dict": {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}}
    state["state_dict"]["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 384)
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save(state, path)
    loaded = build_backbone("moco_s16", weights=path, layer=0)
    torch.testing.assert_close(loaded.cls_token, source.cls_token, rtol=0, atol=0)
    torch.testing.assert_close(loaded.pos_embed, source.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight, rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["model", "student_vit"])
def test_leopart_checkpoint_under_any_wrapper_name(tmp_path, wrapper):
    """Leopart's own loader strips the first dotted component of every key, whatever it is; so does this one."""
    source = create_vit(BACKBONES["leopart_s16"])
    with torch.no_grad():
        source.cls_token.copy_(torch.randn_like(source.cls_token))
    state = {f"{wrapper}.{k}": v for k, v in source.state_dict().items()}
    state["projection_head.0.weight"] = torch.randn(8, 384)  # Leopart's full checkpoint also holds its head
    path = tmp_path / "leopart_vits16.ckpt"
    torch.save(state, path)
    loaded = build_backbone("leopart_s16", weights=path, layer=0)
    torch.testing.assert_close(loaded.cls_token, source.cls_token, rtol=0, atol=0)


def selfpatch_source() -> torch.nn.Module:
    """A SelfPatch-layout ViT (no CLS token) with every weight random."""
    source = create_vit(BACKBONES["selfpatch_s16"])
    assert source.cls_token is None and source.pos_embed.shape == (1, 196, 384)
    with torch.no_grad():
        for tensor in source.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    return source


@pytest.mark.parametrize("layout", ["released", "teacher", "student"])
def test_selfpatch_checkpoint_layouts_and_features(tmp_path, layout):
    """The released plain state dict, and the training dict's teacher ('backbone.*') or student
    ('module.backbone.*'); the key facet is computed without a CLS token, as SelfPatch's ViT runs."""
    source = selfpatch_source()
    plain = dict(source.state_dict())
    head = {"head.cls_token": torch.randn(1, 1, 384), "head.last_layer.weight_g": torch.randn(8, 1)}  # not the ViT
    if layout == "released":
        state = plain
    else:
        prefix = "backbone." if layout == "teacher" else "module.backbone."
        wrapped = {f"{prefix}{k}": v for k, v in plain.items()} | {prefix.replace("backbone.", "") + k: v for k, v in head.items()}
        state = {layout: wrapped, "epoch": 200}
    path = tmp_path / "dino_selfpatch.pth"
    torch.save(state, path)
    loaded = build_backbone("selfpatch_s16", weights=path)
    assert loaded.cls_token is None and loaded.num_prefix == 0
    torch.testing.assert_close(loaded.pos_embed, source.pos_embed, rtol=0, atol=0)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = source.blocks[:-1](source._pos_embed(source.patch_embed(image)))  # timm's own modules, no CLS
        last = source.blocks[-1]
        keys = last.attn.qkv(last.norm1(x))[:, :, 384:768].reshape(1, 196, 6, 64)
        expected = keys.transpose(-1, -2).flatten(-2).transpose(1, 2).reshape(1, 384, 14, 14)
        torch.testing.assert_close(loaded(image), expected, rtol=1e-4, atol=1e-4)
        assert loaded(torch.randn(1, 3, 96, 128)).shape == (1, 384, 6, 8)  # positions resized without a CLS entry


def test_checkpoint_for_another_backbone(tmp_path):
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(create_vit(BACKBONES["dino_b16"]).state_dict(), path)
    with pytest.raises(ValueError, match="another backbone"):
        build_backbone("dino_s16", weights=path)


def test_corrupt_or_missing_backbone_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read backbone checkpoint .*: not a valid checkpoint file") as info:
        build_backbone("dino_s16", weights=bad)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("dino_s16", weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not both"):
        build_backbone("dino_s16", weights=bad, random_init=True)


def fake_hub_cache(cache: Path, repo: str, state: dict) -> None:
    """The Hugging Face cache layout for ``repo`` holding ``state`` as model.safetensors."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)


def test_hub_cache_lookup_reads_the_local_cache_and_changes_no_global_state(monkeypatch, tmp_path):
    """timm weights come from the local cache (local_files_only): no download, no process-wide offline switch."""
    import huggingface_hub
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    from lift_rt.backbones import create_vit

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata",
                        lambda *a, **k: pytest.fail("the lookup went to the network"))
    env_before, flag_before = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    with pytest.raises(WeightsNotFoundError, match="random_init=True"):
        build_backbone("dino_s16")  # empty cache: the message says what to fetch
    spec = get_spec("dino_s16")
    torch.manual_seed(3)
    state = create_vit(spec).state_dict()
    fake_hub_cache(tmp_path, get_pretrained_cfg(spec.hub_tag).hf_hub_id, state)
    vit = build_backbone("dino_s16")
    for got, key in ((vit.patch_embed.weight, "patch_embed.proj.weight"), (vit.pos_embed, "pos_embed"),
                     (vit.blocks[11].attn.qkv.weight, "blocks.11.attn.qkv.weight")):
        torch.testing.assert_close(got.detach(), state[key], rtol=0, atol=0)
    assert os.environ.get("HF_HUB_OFFLINE") == env_before and constants.HF_HUB_OFFLINE == flag_before
