"""``lift_rt.Engine``: images in, lifted dense features out, on the fastest backend present."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from lift_rt.backbones import BackboneSpec, build_backbone, get_spec, seeded
from lift_rt.backends import build_backend
from lift_rt.checkpoint import load_lift, trained_backbone
from lift_rt.devices import engine_device
from lift_rt.pipeline import LiftPipeline
from lift_rt.preprocess import precision_dtype, to_image_tensor
from lift_rt.sizing import SizePolicy
from lift_rt.upsamplers import UPSAMPLERS, build_upsampler


# What build_pipeline can put after the backbone: an upsampler of lift_rt.upsamplers, or "none" (its own features).
PIPELINE_UPSAMPLERS: tuple[str, ...] = (*UPSAMPLERS, "none")


def build_pipeline(
    backbone: str,
    lift: str | os.PathLike | nn.Module | None = None,
    *,
    upsampler: str = "lift",
    rc: str | os.PathLike | None = None,
    iterations: int = 1,
    facet: str | None = None,
    layer: int | None = None,
    backbone_weights: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int | None = None,
) -> LiftPipeline:
    """The reference pipeline with weights resolved; random weights only when ``random_init``.

    ``upsampler``: "lift" (default: the LiFT ``lift``, else a random one with ``random_init``),
    "none" (the backbone's own features), or a baseline of :mod:`lift_rt.upsamplers`: "bilinear",
    "nearest", "jbu" (no weights) or "rc" (the trained resize-conv ``rc`` from
    ``python -m lift_rt.train --upsampler rc``, else its identity initialisation: nearest;
    other upsamplers ignore ``rc``).
    Random weights are drawn from ``seed`` (default: the seed a LiFT checkpoint's random
    backbone was trained with, else 0), so equal arguments give equal pipelines. A LiFT
    checkpoint from ``python -m lift_rt.train`` also sets the default ``layer``
    (:func:`lift_rt.checkpoint.trained_backbone`), for every ``upsampler``: a baseline compared
    with that LiFT sees the features it was trained on.
    """
    spec = get_spec(backbone)
    if upsampler not in PIPELINE_UPSAMPLERS:
        raise ValueError(f"unknown upsampler {upsampler!r}; choose one of {', '.join(PIPELINE_UPSAMPLERS)}")
    if lift is not None and not isinstance(lift, (str, os.PathLike, nn.Module)):
        raise TypeError(f"lift must be a checkpoint path or an nn.Module, not {type(lift).__name__}")
    if isinstance(lift, nn.Module) and not isinstance(getattr(lift, "dim", None), int):
        raise TypeError(f"lift must be a lift_rt.LiFT or an upsampler of lift_rt.build_upsampler (a module with a "
                        f"feature width 'dim' that takes (image, feats)), not {type(lift).__name__}")
    if isinstance(lift, nn.Module) and upsampler != "lift":
        raise ValueError(f"lift is a module: it is the upsampler, so upsampler must be 'lift', not {upsampler!r}")
    random_backbone = random_init and backbone_weights is None
    layer, seed = trained_backbone(lift, layer=layer, random_backbone=random_backbone, seed=seed)
    module = _upsampler_module(spec, upsampler, lift, rc, facet=facet, random_init=random_init, seed=seed)
    vit = build_backbone(spec, weights=backbone_weights, random_init=random_backbone, facet=facet, layer=layer, seed=seed)
    if module is not None and module.dim != spec.dim:
        raise ValueError(f"LiFT of width {module.dim} does not fit {spec.name} (width {spec.dim})")
    if getattr(module, "patch_size", spec.patch_size) != spec.patch_size:
        raise ValueError(f"LiFT for patch size {module.patch_size} does not fit {spec.name} (patch {spec.patch_size})")
    return LiftPipeline(vit, module.eval() if module is not None else None, iterations=iterations).eval()


def _upsampler_module(
    spec: BackboneSpec, upsampler: str, lift: str | os.PathLike | nn.Module | None, rc: str | os.PathLike | None, *,
    facet: str | None, random_init: bool, seed: int,
) -> nn.Module | None:
    """The module :func:`build_pipeline` puts after the backbone (None for "none")."""
    if upsampler == "none":
        return None
    if upsampler == "lift" and isinstance(lift, nn.Module):
        return copy.deepcopy(lift)  # backends cast and move it; the caller's module stays as it was
    if upsampler == "lift" and lift is not None:
        return load_lift(lift, backbone=spec.name, facet=facet)
    if upsampler == "lift" and not random_init:
        raise ValueError(
            f"no LiFT weights given for {spec.name}: pass lift=PATH (the authors' "
            f"{spec.lift_file or 'checkpoint'} or a lift_rt .safetensors), or random_init=True for random weights"
        )
    if upsampler == "rc" and rc is not None:
        from lift_rt.train.models import load_upsampler  # the training package, only for a trained rc

        module, meta = load_upsampler(rc, backbone=spec.name, facet=facet)
        if meta.get("upsampler") != "rc":
            raise ValueError(f"{rc} holds a {meta.get('upsampler', 'lift')!r} upsampler, not a resize-conv "
                             "(train one with python -m lift_rt.train --upsampler rc)")
        return module
    with seeded(seed):
        return build_upsampler(upsampler, spec.dim, spec.patch_size)


class Engine:
    """Dense LiFT features for a batch of images.

    ``Engine("dino_s8", random_init=True)(torch.rand(2, 3, 224, 224))`` returns
    ``2 x 384 x 56 x 56`` (``iterations=2``: ``2 x 384 x 112 x 112``).

    Args:
        backbone: registry name (see ``lift_rt.BACKBONES``).
        lift: LiFT checkpoint path (safetensors or the authors' .pth) or module.
        backend: "torch" (default: eager PyTorch), "compile", "onnxruntime", "tensorrt", "triton" or
            "auto" (the fastest present; ``backend_name`` says which).
        precision: "fp32", "fp16" or "bf16"; the features come back in this dtype, on a CPU too.
        device: "cpu", "cuda" or "cuda:N"; default CUDA when present, else CPU.
        iterations: k LiFT applications, 2^k upsampling.
        facet: the backbone's "key" (default, the paper's), "query", "value" or "token" features.
        layer: the block the facet is read from (0-based; default the backbone's last, or the
            block a lift_rt-trained checkpoint records).
        backbone_weights: the official checkpoint file of the backbone (else the timm / Hugging
            Face cache, else an error naming the file to fetch).
        random_init: random backbone and LiFT weights where none are given.
        resize: shorter side in pixels (the authors' ``load_size``), the longer scaled alike; both
            rounded to the patch multiple unless ``pad``. Lanczos resampling. None: as given.
        max_side: the longer side is scaled down to at most this many pixels. None: no limit.
        pad: keep the aspect ratio, zero-pad bottom/right to the patch multiple and return the
            features cropped to the image's cells (see below).
        **backend_options: per backend; an unknown one is an error that lists the accepted ones.
            onnxruntime: ``cache_dir`` (exported graphs; default ``$LIFT_RT_CACHE`` or
            ``~/.cache/lift_rt``, pruned to ``$LIFT_RT_CACHE_MAX_GB``, default 8), ``threads``
            (an export is announced on the ``lift_rt.export`` logger). tensorrt: ``max_batch``, ``opt_batch``,
            ``cache_dir``, ``workspace_bytes``. compile: ``mode``. triton: ``cuda_graph_max_batch``.

    Geometry (:mod:`lift_rt.sizing`): by default H and W must be multiples of the patch size p
    and the output is ``B x C x 2^k H/p x 2^k W/p``. With ``resize``/``max_side`` the image is
    first resized to ``h x w`` and the output is ``B x C x 2^k h/p x 2^k w/p``. With ``pad`` the
    output is ``B x C x ceil(2^k h/p) x ceil(2^k w/p)``: cell ``(i, j)`` covers pixels
    ``[i, i+1) * p/2^k`` x ``[j, j+1) * p/2^k`` of the (resized) image, whose top-left corner is
    the features' top-left corner; only the last row and column may also cover padding.
    ``engine.size_policy.plan(H, W, engine.spec)`` gives these sizes without running the model.

    The onnxruntime and tensorrt backends export one graph per new input size (seconds on a
    CPU; a TensorRT build takes minutes) and keep it in the cache for later calls.
    """

    def __init__(
        self,
        backbone: str = "dino_s8",
        lift: str | os.PathLike | nn.Module | None = None,
        *,
        backend: str = "torch",
        precision: str = "fp32",
        device: str | torch.device | None = None,
        iterations: int = 1,
        facet: str | None = None,
        layer: int | None = None,
        backbone_weights: str | os.PathLike | None = None,
        random_init: bool = False,
        resize: int | None = None,
        max_side: int | None = None,
        pad: bool = False,
        **backend_options: Any,
    ) -> None:
        precision_dtype(precision)
        self.size_policy = SizePolicy(resize=resize, max_side=max_side, pad=pad)
        self.size_policy.check(get_spec(backbone))  # before the slow part
        self.device = engine_device(device)
        self.pipeline = build_pipeline(
            backbone, lift, iterations=iterations, facet=facet, layer=layer,
            backbone_weights=backbone_weights, random_init=random_init,
        )
        self.spec = self.pipeline.spec
        self.precision = precision
        self.backend, self.skipped = build_backend(self.pipeline, backend, device=self.device, precision=precision,
                                                   options=backend_options)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        return (
            f"Engine(backbone={self.spec.name}, facet={self.pipeline.backbone.facet}, backend={self.backend_name}, "
            f"precision={self.precision}, device={self.device}, iterations={self.pipeline.iterations})"
        )

    def __call__(self, images: Any) -> torch.Tensor:
        """Images of one size (see :func:`lift_rt.preprocess.to_image_tensor`) -> ``B x C x h' x w'``
        (the class docstring gives h' and w' under each size policy)."""
        tensor = to_image_tensor(images)
        try:
            plan = self.size_policy.plan(tensor.shape[-2], tensor.shape[-1], self.spec)
        except ValueError as exc:
            raise ValueError(f"{exc}; or let the Engine fit the size: resize=224 or pad=True") from None
        return plan.crop(self.backend(plan.prepare(tensor).to(self.device))).contiguous()
