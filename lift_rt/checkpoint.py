"""LiFT checkpoints: safetensors with metadata, and the authors' released ``.pth``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lift_rt.backbones import BACKBONES, FACETS, get_spec
from lift_rt.errors import load_error_reason
from lift_rt.model import LiFT

FORMAT_VERSION = "1"
RESERVED_METADATA = frozenset({"format", "version", "backbone", "facet", "dim", "patch_size", "use_image"})


def save_lift(
    lift: LiFT, path: str | os.PathLike, *, backbone: str, facet: str, extra: dict[str, str] | None = None
) -> Path:
    """Write ``lift`` as safetensors with metadata (backbone, facet, width, patch, version).

    ``extra``: more metadata, string keys and values (``train`` records its layer, seed and steps here).
    """
    from safetensors.torch import save

    if not (isinstance(lift, torch.nn.Module) and isinstance(getattr(lift, "dim", None), int)):
        raise TypeError(f"save_lift writes a lift_rt.LiFT (or a trained upsampler of lift_rt.build_upsampler), "
                        f"not {type(lift).__name__}")
    if extra is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise TypeError(f"extra metadata must map strings to strings, got {extra!r}")
    spec = get_spec(backbone)
    if facet not in FACETS:
        raise ValueError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
    reserved = sorted(set(extra or {}) & RESERVED_METADATA)
    if reserved:
        raise ValueError(f"extra metadata may not overwrite the reserved keys {reserved}")
    if lift.dim != spec.dim:
        raise ValueError(f"LiFT width {lift.dim} does not match backbone {backbone} (width {spec.dim})")
    if getattr(lift, "patch_size", spec.patch_size) != spec.patch_size:
        raise ValueError(f"LiFT for patch size {lift.patch_size} does not match backbone {backbone} (patch {spec.patch_size})")
    metadata = {
        "format": "lift_rt",
        "version": FORMAT_VERSION,
        "backbone": spec.name,
        "facet": facet,
        "dim": str(lift.dim),
        "patch_size": str(lift.patch_size),
        "use_image": str(int(getattr(lift, "use_image", True))),
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in lift.state_dict().items()}
    path.write_bytes(save(state, metadata=metadata))  # an ordinary file: mode 0666 less the umask, as torch.save's
    return path


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds safetensors, judged by its bytes, not its name: an 8-byte little-endian
    header length that fits the file, then the header's opening brace."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size and head[8:] == b"{"


def read_lift_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a LiFT file (safetensors, under any name, or the authors' ``.pth``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"LiFT checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"LiFT checkpoint {path} does not exist")
    if path.suffix == ".safetensors" or is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ValueError(f"cannot read LiFT checkpoint {path}: {exc}") from exc
        return state, metadata
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:

        raise ValueError(f"cannot read LiFT checkpoint {path}: not a valid checkpoint file ({load_error_reason(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a LiFT state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state, {}


def read_lift_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a lift_rt safetensors checkpoint without reading its tensors ({} for a ``.pth``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiFT checkpoint {path} does not exist")
    if not (path.suffix == ".safetensors" or is_safetensors(path)):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise ValueError(f"cannot read LiFT checkpoint {path}: {exc}") from exc


def trained_backbone(
    lift: str | os.PathLike | None, *, layer: int | None, random_backbone: bool, seed: int | None = None
) -> tuple[int | None, int]:
    """``(layer, seed)`` of the backbone to run the LiFT checkpoint ``lift`` with.

    ``python -m lift_rt.train`` records the block it trained on, whether that backbone
    was random and its seed: those are the defaults here. A ``layer`` that contradicts
    the checkpoint's, or a random backbone for a LiFT trained on pretrained weights (or
    the reverse), is an error: the features would not be the ones LiFT learnt to lift.
    ``seed`` (default: the checkpoint's, else 0) draws a random backbone's weights.
    """
    meta = read_lift_metadata(lift) if isinstance(lift, (str, os.PathLike)) else {}
    trained_random = meta.get("random_init")
    if trained_random == "1" and not random_backbone:
        raise ValueError(f"{lift} was trained against a randomly initialised backbone: pass --random-init "
                         "(random_init=True) and no backbone weights")
    if trained_random == "0" and random_backbone:
        raise ValueError(f"{lift} was trained against pretrained backbone weights: drop --random-init (random_init=True)")
    if "layer" in meta:
        if layer is None:
            layer = int(meta["layer"])
        elif layer != int(meta["layer"]):
            raise ValueError(f"{lift} was trained on layer {meta['layer']} of the backbone (0-based block), not {layer}")
    return layer, seed if seed is not None else int(meta.get("backbone_seed", 0))


def load_lift(
    path: str | os.PathLike, *, backbone: str, facet: str | None = None, map_location: str | torch.device = "cpu"
) -> LiFT:
    """Load a LiFT for ``backbone``; a checkpoint for another backbone, width or facet is an error.

    lift_rt's safetensors name their backbone and facet. The authors' ``.pth`` files carry no
    metadata: their width is checked, and a file under another backbone's released name (say
    ``lift_dino_vits16.pth`` for ``dino_s8``, whose width is the same) is refused.
    """
    spec = get_spec(backbone)
    facet = facet or spec.facet
    if facet not in FACETS:
        raise ValueError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
    state, meta = read_lift_state(path)
    if meta.get("format") == "lift_rt":
        if meta.get("backbone") != spec.name:
            raise ValueError(f"{path} was trained for backbone {meta.get('backbone')}, not {spec.name}")
        if meta.get("facet") != facet:
            raise ValueError(f"{path} was trained on the {meta.get('facet')} facet, not {facet}")
    use_image = "image_convs_1.0.weight" in state
    if "outc.weight" not in state:
        raise ValueError(f"{path} is not a LiFT checkpoint (no 'outc.weight'; keys: {sorted(state)[:4]}...)")
    width = state["outc.weight"].shape[0]
    if width != spec.dim:
        raise ValueError(f"{path} is a LiFT of width {width}; backbone {spec.name} has width {spec.dim}")
    owners = [other.name for other in BACKBONES.values() if other.lift_file == Path(path).name]
    if meta.get("format") != "lift_rt" and owners and spec.name not in owners:
        raise ValueError(f"{path} is the authors' LiFT for {' / '.join(owners)}, not {spec.name} "
                         f"(theirs for {spec.name}: {spec.lift_file or 'none released'})")
    lift = LiFT(dim=spec.dim, patch_size=spec.patch_size, use_image=use_image)
    own = lift.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit LiFT({spec.name}): missing {missing[:4]}, unexpected {unexpected[:4]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: {key} holds NaN or infinite values (a diverged or damaged checkpoint)")
    lift.load_state_dict(state)
    return lift.to(map_location).eval()
