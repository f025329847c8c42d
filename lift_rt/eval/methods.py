"""The rows every evaluation table shares: the backbone's own features, and each upsampler on them.

``eval pck``, ``eval davis`` and ``eval corloc`` take the same flags for where
their features come from (:func:`lift_rt.cli.add_feature_arguments`), check
them all before any work (:meth:`FeatureSource.check_rows`), and run each row
through one pipeline builder (:func:`lift_rt.engine.build_pipeline`) on an
Engine backend (:meth:`FeatureSource.features`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lift_rt.backbones import check_resolution, get_spec
from lift_rt.backends import Backend, build_backend
from lift_rt.devices import device_arg
from lift_rt.engine import PIPELINE_UPSAMPLERS, build_pipeline


@dataclass(frozen=True)
class FeatureSource:
    """The backbone, the weights and the Engine backend an evaluation's features come from.

    ``seed`` draws random weights (``random_init``); None takes a LiFT checkpoint's training seed, else 0.
    ``rc`` is a trained resize-conv for the rc row; without it the rc row is untrained and labelled so.
    """

    backbone: str
    lift: str | os.PathLike | None = None
    rc: str | os.PathLike | None = None
    backbone_weights: str | os.PathLike | None = None
    random_init: bool = False
    seed: int | None = None
    iterations: int = 1
    backend: str = "torch"
    precision: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatureSource:
        """From the flags of :func:`lift_rt.cli.add_feature_arguments` (plus ``--seed``, ``--iterations`` if present)."""
        return cls(
            backbone=get_spec(args.backbone).name, lift=args.lift, rc=args.rc, backbone_weights=args.backbone_weights,
            random_init=args.random_init, seed=getattr(args, "seed", None), iterations=getattr(args, "iterations", 1),
            backend=args.backend, precision=args.precision, device=device_arg(args.device),
        )

    @property
    def weights(self) -> str:
        return "random init" if self.random_init else "pretrained"

    def check_rows(self, upsamplers: str | Sequence[str], resolutions: Sequence[int]) -> list[str]:
        """The upsamplers (a comma-separated string or names), each known and with its weights, and every
        resolution a multiple of the backbone's patch; ValueError naming the flag otherwise."""
        names = [u for u in upsamplers.split(",") if u] if isinstance(upsamplers, str) else list(upsamplers)
        if not names:
            raise ValueError(f"--upsampler names no upsampler; choose from {', '.join(PIPELINE_UPSAMPLERS)}")
        if not resolutions:
            raise ValueError("--resolutions names no size; e.g. --resolutions 112,224")
        spec = get_spec(self.backbone)
        for size in resolutions:
            try:
                check_resolution(spec, size, size)
            except ValueError as exc:  # the defaults suit patch 8: say which flag to change
                raise ValueError(f"--resolutions {size}: {exc}") from None
        for name in names:
            if name not in PIPELINE_UPSAMPLERS:
                raise ValueError(f"unknown upsampler {name!r}; choose one of {', '.join(PIPELINE_UPSAMPLERS)}")
            if name == "lift" and self.lift is None and not self.random_init:
                raise ValueError(f"upsampler lift needs --lift CKPT (the authors' {spec.lift_file}) or --random-init")
        return names

    def row_label(self, upsampler: str) -> str:
        """The table row of ``upsampler``: its name, or "rc (untrained)" for an rc row without --rc."""
        return "rc (untrained)" if upsampler == "rc" and self.rc is None else upsampler

    def features(self, upsampler: str) -> Backend:
        """``B x 3 x S x S`` images in [0, 1] on :attr:`device` -> ``B x C x h x w`` features of ``upsampler``
        ("none": the backbone's own) on the Engine backend."""
        pipeline = build_pipeline(
            self.backbone, self.lift, upsampler=upsampler, rc=self.rc, random_init=self.random_init,
            backbone_weights=self.backbone_weights, iterations=self.iterations, seed=self.seed,
        )
        return build_backend(pipeline, self.backend, device=self.device, precision=self.precision)[0]

    def settings(self) -> dict:
        """The source as JSON-ready settings."""
        return {
            "backbone": self.backbone, "weights": self.weights, "lift": self.lift, "rc": self.rc,
            "backbone_weights": self.backbone_weights, "seed": self.seed, "iterations": self.iterations,
            "backend": self.backend, "precision": self.precision, "device": str(self.device),
        }
