"""LiFT's self-supervised objective: predict the backbone's 2x-resolution features.

The image at full training size (448 in the paper) and its plain decimations
(``img[:, :, ::2, ::2]``, ``img[:, :, ::4, ::4]``) give a feature pyramid from
the frozen backbone. The upsampler lifts each coarser level and is compared with
the next finer one: ``U(img/2, f(img/2))`` vs ``f(img)`` plus
``U(img/4, f(img/4))`` vs ``f(img/2)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def mean_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over channels of ``B x C x H x W`` maps, averaged over batch and positions (fp32)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return F.cosine_similarity(pred.float(), target.float(), dim=1).mean()


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over positions of (1 - cosine similarity over channels): the paper's loss."""
    return 1.0 - mean_cosine(pred, target)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (ablation)."""
    return F.l1_loss(pred.float(), target.float())


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (ablation)."""
    return F.mse_loss(pred.float(), target.float())


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cos": cosine_loss,
    "l1": l1_loss,
    "l2": l2_loss,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def decimate(image: torch.Tensor, level: int) -> torch.Tensor:
    """Plain decimation by ``2**level``: ``image[:, :, ::2**level, ::2**level]`` (no filtering, as the authors)."""
    step = 2**level
    return image[:, :, ::step, ::step]


@torch.no_grad()
def feature_pyramid(backbone: nn.Module, image: torch.Tensor, levels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(decimate(image, k), backbone(decimate(image, k))) for k < levels]``, without gradients.

    ``image`` is the normalised ``B x 3 x H x W`` input; H and W must be multiples
    of ``2**(levels-1)`` times the patch size.
    """
    side = image.shape[-1]
    if image.shape[-2] % 2 ** (levels - 1) or side % 2 ** (levels - 1):
        raise ValueError(f"image {tuple(image.shape[-2:])} cannot be halved {levels - 1} times")
    pyramid = []
    for level in range(levels):
        small = decimate(image, level)
        pyramid.append((small, backbone(small)))
    return pyramid


def two_scale_loss(
    upsampler: nn.Module,
    backbone: nn.Module,
    image: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cosine_loss,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipe's objective on one batch: ``(total, loss at 2x of img/2, loss at 2x of img/4)``.

    ``image``: normalised ``B x 3 x S x S`` with S a multiple of 4 x patch.
    Targets come from the frozen ``backbone`` without gradients; the gradient
    flows into ``upsampler`` only.
    """
    pyramid = feature_pyramid(backbone, image, levels=3)
    terms = [loss(upsampler(small, feats), pyramid[level][1]) for level, (small, feats) in enumerate(pyramid[1:])]
    return terms[0] + terms[1], terms[0].detach(), terms[1].detach()


class TwoScaleObjective(nn.Module):
    """``forward(image) -> (total, loss_half, loss_quarter)`` of :func:`two_scale_loss`, as one module.

    Both upsampler calls happen inside one forward, which is what
    DistributedDataParallel expects of the module it wraps. The backbone stays in
    eval mode whatever ``train()`` is set to, and has no gradients.
    """

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, loss: str = "cos") -> None:
        super().__init__()
        self.upsampler = upsampler
        self.backbone = backbone.requires_grad_(False)
        self.loss = get_loss(loss)

    def train(self, mode: bool = True) -> "TwoScaleObjective":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return two_scale_loss(self.upsampler, self.backbone, image, self.loss)
