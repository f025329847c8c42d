"""The paper's ViT backbones: one registry entry each, and a feature extractor.

Every fact about a backbone (timm architecture, patch size, width, heads,
normalisation, default facet, where its weights come from) lives in its
:class:`BackboneSpec` in :data:`BACKBONES` and nowhere else.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lift_rt.errors import load_error_reason

Facet = Literal["key", "query", "value", "token"]
FACETS: tuple[str, ...] = ("key", "query", "value", "token")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of the paper.

    ``official_file`` / ``official_url`` name the authors' own checkpoint;
    ``key_prefixes`` are stripped from its keys (first match wins) to reach
    timm's names; ``hub_tag`` is the timm pretrained tag read from the
    Hugging Face cache when no file is given.
    """

    name: str
    timm_arch: str
    patch_size: int
    dim: int
    heads: int
    depth: int = 12
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    facet: str = "key"
    lift_file: str | None = None
    official_file: str | None = None
    official_url: str | None = None
    hub_tag: str | None = None
    key_prefixes: tuple[str, ...] = ("module.", "backbone.", "model.")
    timm_kwargs: dict = field(default_factory=dict)

    @property
    def layer(self) -> int:
        """Default feature layer: the last block."""
        return self.depth - 1


def _dino(name: str, arch: str, patch: int, dim: int, heads: int, file: str, lift_file: str) -> BackboneSpec:
    stem = file.removesuffix(".pth")
    return BackboneSpec(
        name=name, timm_arch=arch, patch_size=patch, dim=dim, heads=heads,
        lift_file=lift_file, official_file=file,
        official_url=f"https://dl.fbaipublicfiles.com/dino/{stem}/{file}",
        hub_tag=f"{arch}.dino",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _dino("dino_s16", "vit_small_patch16_224", 16, 384, 6, "dino_deitsmall16_pretrain.pth", "lift_dino_vits16.pth"),
        _dino("dino_s8", "vit_small_patch8_224", 8, 384, 6, "dino_deitsmall8_pretrain.pth", "lift_dino_vits8.pth"),
        _dino("dino_b16", "vit_base_patch16_224", 16, 768, 12, "dino_vitbase16_pretrain.pth", "lift_dino_vitb16.pth"),
        _dino("dino_b8", "vit_base_patch8_224", 8, 768, 12, "dino_vitbase8_pretrain.pth", "lift_dino_vitb8.pth"),
        BackboneSpec(
            # MoCo-v3's ViT-S uses 12 heads of width 32 (not timm's 6 x 64).
            name="moco_s16", timm_arch="vit_small_patch16_224", patch_size=16, dim=384, heads=12,
            official_file="vit-s-300ep.pth.tar",
            official_url="https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
            key_prefixes=("module.base_encoder.", "module.momentum_encoder.", "base_encoder.", "module."),
            timm_kwargs={"num_heads": 12},
        ),
        BackboneSpec(
            name="vit_s16", timm_arch="vit_small_patch16_224", patch_size=16, dim=384, heads=6,
            mean=HALF_MEAN_STD, std=HALF_MEAN_STD, lift_file="lift_vit_small_patch16.pth",
            hub_tag="vit_small_patch16_224.augreg_in21k_ft_in1k",
        ),
        BackboneSpec(
            name="leopart_s16", timm_arch="vit_small_patch16_224", patch_size=16, dim=384, heads=6,
            official_file="leopart_vits16.ckpt",
            official_url="https://www.dropbox.com/s/0kjy61jh4i3vbnh/leopart_vits16.ckpt?dl=0 (the 'full ckpt' of "
                         "github.com/MkuuWaUjinga/leopart)",
            key_prefixes=("model.", "module.", "backbone.", "teacher."),
        ),
        BackboneSpec(
            # SelfPatch (Yun et al., CVPR 2022): DINO + a patch-level loss. Its ViT has no CLS token
            # (pos_embed 1 x 196 x 384) and no final norm. The released file is the ViT's plain state dict
            # (timm's names); its training checkpoints keep it under 'teacher' as 'backbone.*' (the
            # student as 'module.backbone.*'). Trained and evaluated with ImageNet mean/std.
            name="selfpatch_s16", timm_arch="vit_small_patch16_224", patch_size=16, dim=384, heads=6,
            official_file="dino_selfpatch.pth",
            official_url="https://drive.google.com/file/d/19eeQrK-nl4B9ksFQ_QnewGHVKYDQF4Yw/view (the 'DINO + "
                         "SelfPatch' checkpoint of github.com/alinlab/SelfPatch)",
            key_prefixes=("module.backbone.", "backbone.", "module."),
            timm_kwargs={"class_token": False, "global_pool": "avg"},
        ),
        BackboneSpec(
            name="dinov2_s14", timm_arch="vit_small_patch14_dinov2", patch_size=14, dim=384, heads=6,
            hub_tag="vit_small_patch14_dinov2.lvd142m", timm_kwargs={"img_size": 518},
        ),
    )
}


def get_spec(name: str | BackboneSpec) -> BackboneSpec:
    if isinstance(name, BackboneSpec):
        return name
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def check_layer(spec: BackboneSpec, layer: int) -> int:
    """Raise unless ``layer`` is a block of the backbone (0 .. depth - 1); return it."""
    if not 0 <= layer < spec.depth:
        raise ValueError(f"layer {layer} out of range for {spec.name} (0..{spec.depth - 1})")
    return layer


def check_resolution(spec: BackboneSpec, height: int, width: int) -> tuple[int, int]:
    """Raise unless H and W are positive multiples of the patch size; return the grid."""
    p = spec.patch_size
    if height <= 0 or width <= 0:
        raise ValueError(f"{spec.name}: image size {height} x {width} must be positive multiples of the patch size {p}")
    if height % p or width % p:
        side = height if height % p else width  # suggest sizes for the side that does not fit
        below, above = side // p * p, (side // p + 1) * p
        suggestion = f"e.g. {below} or {above}" if below else f"at least {p}"
        raise ValueError(
            f"{spec.name} has patch size {p}: image size {height} x {width} must be a multiple of {p} "
            f"({'height' if height % p else 'width'} {side}: {suggestion})"
        )
    return height // p, width // p


class ViTFeatures(nn.Module):
    """A timm ViT cut at one block, returning one facet on the patch grid.

    ``forward(x)``: normalised image ``B x 3 x H x W`` (H, W multiples of the
    patch) -> ``B x C x H/p x W/p``. For the key/query/value facets the heads are
    merged d-major, head-minor (channel ``d * heads + head``), the authors' order
    that their released LiFT weights depend on. CLS and register tokens are dropped.
    """

    def __init__(self, spec: BackboneSpec, vit: nn.Module, facet: str | None = None, layer: int | None = None) -> None:
        super().__init__()
        facet = facet or spec.facet
        if facet not in FACETS:
            raise ValueError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
        layer = check_layer(spec, spec.layer if layer is None else layer)
        self.spec = spec
        self.facet = facet
        self.layer = layer
        self.patch_embed = vit.patch_embed.proj
        self.cls_token = vit.cls_token  # None for a ViT without one (SelfPatch)
        self.reg_token = getattr(vit, "reg_token", None)
        self.pos_embed = vit.pos_embed
        self.num_cls = 0 if self.cls_token is None else 1  # also the CLS entries of pos_embed
        self.num_prefix = self.num_cls + (self.reg_token.shape[1] if self.reg_token is not None else 0)
        self.blocks = nn.ModuleList(vit.blocks[: layer + 1])
        self.frozen_grid: tuple[int, int] | None = None

    def freeze_pos_embed(self, height: int, width: int) -> None:
        """Precompute the positional embedding for ``height x width`` images.

        At that size :meth:`interpolate_pos_embed` then returns a buffer instead of
        resizing, so a traced graph (ONNX) holds no bicubic Resize.
        """
        grid = check_resolution(self.spec, height, width)
        with torch.no_grad():
            frozen = self.interpolate_pos_embed(*grid).detach().clone()
        self.register_buffer("frozen_pos_embed", frozen, persistent=False)
        self.frozen_grid = grid

    def interpolate_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an ``h x w`` grid (bicubic, as DINO: +0.1 on the scale)."""
        if self.frozen_grid == (h, w):
            return self.frozen_pos_embed
        pos = self.pos_embed
        n = pos.shape[1] - self.num_cls
        side = int(math.sqrt(n))
        if side * side != n:
            raise ValueError(f"positional embedding with {n} patch tokens is not square")
        if (h, w) == (side, side):
            return pos
        cls_pos, patch_pos = pos[:, : self.num_cls], pos[:, self.num_cls :]
        dim = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic", align_corners=False
        )
        if patch_pos.shape[-2:] != (h, w):  # guards the +0.1 rounding trick
            raise RuntimeError(f"positional embedding resize gave {tuple(patch_pos.shape[-2:])}, wanted {(h, w)}")
        patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch embedding + CLS (if the ViT has one) + positions -> ``B x (num_prefix+h*w) x C`` at the input of block 0."""
        b, _, height, width = x.shape
        h, w = check_resolution(self.spec, height, width)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_embed(h, w).to(x.dtype)
        if self.reg_token is not None:
            x = torch.cat([x[:, : self.num_cls], self.reg_token.expand(b, -1, -1), x[:, self.num_cls :]], dim=1)
        return x, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.tokens(x)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        if self.facet == "token":
            feats = last(x)[:, self.num_prefix :]
        else:
            feats = self.attention_facet(last, x)
        b, _, c = feats.shape
        return feats.transpose(1, 2).reshape(b, c, h, w)

    def attention_facet(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """q, k or v of ``block`` for input tokens ``x``: ``B x T x (d*heads)`` in d-major order."""
        b, t, c = x.shape
        heads = block.attn.num_heads
        qkv = block.attn.qkv(block.norm1(x)).reshape(b, t, 3, heads, c // heads)
        index = {"query": 0, "key": 1, "value": 2}[self.facet]
        facet = qkv[:, self.num_prefix :, index]  # B x T x heads x d
        return facet.transpose(-1, -2).flatten(-2)  # B x T x (d*heads), channel d*heads + head


def create_vit(spec: BackboneSpec) -> nn.Module:
    """timm architecture of ``spec`` with random weights (loading happens separately)."""
    import timm

    kwargs = dict(num_classes=0, **spec.timm_kwargs)
    return timm.create_model(spec.timm_arch, pretrained=False, **kwargs)


def convert_official_state_dict(spec: BackboneSpec, state: dict) -> dict[str, torch.Tensor]:
    """Authors' checkpoint -> timm ViT names: unwrap, strip prefixes, drop heads."""
    for wrapper in ("state_dict", "model", "teacher", "student"):
        if wrapper in state and isinstance(state[wrapper], dict) and not isinstance(state[wrapper], torch.Tensor):
            state = state[wrapper]
            break
    prefixes = tuple(p for p in spec.key_prefixes if any(k.startswith(p) for k in state))
    if not prefixes and "cls_token" not in state:  # another wrapper name: the one whose keys hold the ViT
        wrappers = sorted({k.split(".", 1)[0] for k in state if k.endswith(".cls_token") and k.count(".") == 1})
        prefixes = (wrappers[0] + ".",) if wrappers else ()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if prefixes:
            if not key.startswith(prefixes[0]):
                continue
            key = key[len(prefixes[0]) :]
        if key.startswith(("head.", "fc_norm.", "dino_head.", "predictor.")):
            continue
        out[key] = value
    return out


def load_backbone_weights(spec: BackboneSpec, vit: nn.Module, path: str | os.PathLike) -> None:
    """Load an official checkpoint file into ``vit``; errors name what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file

        raise ValueError(f"cannot read backbone checkpoint {path}: not a valid checkpoint file ({load_error_reason(exc)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = convert_official_state_dict(spec, state)
    own = vit.state_dict()
    wanted = {k for k in own if not k.startswith(("head.", "fc_norm."))}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(
            f"{path} does not fit backbone {spec.name} ({spec.timm_arch}): missing {len(missing)} keys, "
            f"e.g. {missing[:3]}"
        )
    for key in wanted:
        if key == "pos_embed" and state[key].shape != own[key].shape:
            continue  # other native resolution: resized at run time from the stored grid
        if state[key].shape != own[key].shape:
            raise ValueError(
                f"{path} does not fit backbone {spec.name}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(own[key].shape)} (a checkpoint for another backbone?)"
            )
    if state["pos_embed"].shape != own["pos_embed"].shape:
        vit.pos_embed = nn.Parameter(torch.empty_like(state["pos_embed"]))
    vit.load_state_dict({k: state[k] for k in wanted}, strict=False)


HUB_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")  # timm's files, in its order


def hub_cache_file(spec: BackboneSpec) -> Path | None:
    """The timm weights of ``spec.hub_tag`` in the local Hugging Face cache, or None (never downloads)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.hub_tag)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_WEIGHT_FILES):
        try:
            return Path(hf_hub_download(repo, filename, revision=revision or None, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    return None


def load_from_hub_cache(spec: BackboneSpec) -> nn.Module:
    """timm pretrained weights from the local Hugging Face cache only (never downloads)."""
    import timm

    if spec.hub_tag is None:
        raise WeightsNotFoundError(
            f"{spec.name} has no hub copy; download {spec.official_file} from {spec.official_url} "
            f"and pass it as backbone_weights=PATH"
        )
    path = hub_cache_file(spec)
    if path is None:
        where = os.environ.get("HF_HOME", "~/.cache/huggingface")
        official = f", or download {spec.official_file} from {spec.official_url} and pass backbone_weights=PATH" if spec.official_file else ""
        raise WeightsNotFoundError(
            f"pretrained weights for {spec.name} are not on this machine (looked for timm/{spec.hub_tag} in the "
            f"Hugging Face cache under {where}). Fetch them on a connected machine with "
            f"`timm.create_model('{spec.hub_tag}', pretrained=True)` and copy the cache here{official}; "
            f"or ask for random weights explicitly (random_init=True; --random-init on the command line)."
        )
    return timm.create_model(spec.hub_tag, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0,
                             **spec.timm_kwargs)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random draws inside come from ``seed``; the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_backbone(
    name: str | BackboneSpec,
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    facet: str | None = None,
    layer: int | None = None,
    seed: int = 0,
) -> ViTFeatures:
    """Feature extractor for a registry backbone, in eval mode.

    Weights come from ``weights`` (the official checkpoint file), else from the
    Hugging Face cache; random weights only with ``random_init=True``, drawn
    from ``seed`` (the same seed gives the same backbone; the global RNG is untouched).
    """
    spec = get_spec(name)
    if weights is not None and random_init:
        raise ValueError("pass either backbone weights or random_init=True, not both")
    if random_init:
        with seeded(seed):
            vit = create_vit(spec)
    elif weights is not None:
        vit = create_vit(spec)
        load_backbone_weights(spec, vit, weights)
    else:
        vit = load_from_hub_cache(spec)
    return ViTFeatures(spec, vit, facet=facet, layer=layer).eval()
