"""Fold a :class:`lift_rt.model.LiFT` (eval mode) into the weights the kernels read.

Done once, at load, in float64, then cast to the compute dtype:

* every batch norm is folded into the conv before it (``w * s``, ``(b - mean) * s + beta``);
* conv weights are stored taps-major, ``KH*KW x Cin x Cout``, so the kernels read
  ``Cin x Cout`` GEMM tiles for each tap;
* the 2x transposed conv (k2 s2) is composed into the first double-conv 3x3 conv.

Composition. ``up[2i+a, 2j+b] = Wt[:, :, a, b]^T x[i, j] + bt`` is a per-pixel
linear map, so for an output pixel of parity (a, b) the 3x3 taps over ``up``
touch only the 2 x 2 coarse pixels ``(i + a - 1 + ry, j + b - 1 + rx)``,
``ry, rx in {0, 1}``. Summing the taps that land on each coarse pixel gives
16 (parity x offset) weight matrices of ``(C+32) x N`` that read ``x`` directly:
``4 * (C+32) = 1664`` MACs per output channel and pixel for C = 384, against
``9 * 208 = 1872`` for the 3x3 conv over ``up`` plus ``416 * 208 / 192 = 451`` for
the transposed conv itself (25 % fewer FLOPs, and ``up`` never exists).
The transposed conv's bias becomes a virtual input channel equal to 1 inside
the image and 0 in the padding: a coarse pixel is outside the grid exactly when
the ``up`` pixel a tap reads is, so the bias vanishes at the borders as it must.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from lift_rt.model import IMAGE_CHANNELS, LiFT


@dataclass
class FoldedConv:
    """A conv (+ folded BN): ``weight`` ``K*K x Cin x Cout``, ``bias`` ``Cout``."""

    weight: torch.Tensor
    bias: torch.Tensor
    kernel_size: int
    stride: int


@dataclass
class FoldedUpConv:
    """Transposed conv composed into the first 3x3 conv (+ BN).

    ``wx``: ``16 x (C + img_ch) x N``, index ``parity * 4 + offset`` with
    ``parity = 2a + b`` (output row / column parity) and ``offset = 2 ry + rx``;
    ``wb``: ``16 x N`` (the transposed conv's bias through the same taps);
    ``wimg``: ``9 x img_ch x N`` (3x3 taps over the skip tensor ``img1``); ``bias``: ``N``.
    """

    wx: torch.Tensor
    wb: torch.Tensor
    wimg: torch.Tensor
    bias: torch.Tensor


@dataclass
class FoldedLiFT:
    """Everything the Triton LiFT reads; ``image`` is empty for the 'No Img.' variant."""

    dim: int
    patch_size: int
    image: list[FoldedConv]
    image2: list[FoldedConv]
    up: FoldedUpConv
    conv2: FoldedConv
    head: FoldedConv

    @property
    def use_image(self) -> bool:
        return bool(self.image)

    @property
    def img_channels(self) -> int:
        return IMAGE_CHANNELS if self.use_image else 0

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FoldedLiFT":
        """Move / cast every weight tensor (in place); returns self."""
        for part in [*self.image, *self.image2, self.up, self.conv2, self.head]:
            for f in fields(part):
                value = getattr(part, f.name)
                if isinstance(value, torch.Tensor):
                    setattr(part, f.name, value.to(device=device, dtype=dtype).contiguous())
        return self


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(weight Cout x Cin x K x K, bias Cout)`` of ``conv`` followed by ``bn`` (eval statistics)."""
    weight = conv.weight.detach().double().cpu()
    bias = conv.bias.detach().double().cpu() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is None:
        return weight, bias
    if not bn.affine or bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: the Triton kernels need an affine batch norm with running statistics")
    scale = bn.weight.detach().double().cpu() / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
    shift = bn.bias.detach().double().cpu() - bn.running_mean.detach().double().cpu() * scale
    return weight * scale[:, None, None, None], bias * scale + shift


def taps_major(weight: torch.Tensor) -> torch.Tensor:
    """``Cout x Cin x K x K`` -> ``K*K x Cin x Cout``."""
    cout, cin, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw, cin, cout).contiguous()


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> FoldedConv:
    if (conv.kernel_size[0] != conv.kernel_size[1] or conv.padding != (conv.kernel_size[0] // 2,) * 2 or conv.groups != 1
            or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]):
        raise ValueError(f"unsupported conv for the Triton kernels: {conv}")
    weight, bias = conv_bn(conv, bn)
    return FoldedConv(taps_major(weight), bias, conv.kernel_size[0], conv.stride[0])


def compose_up_conv(up: nn.ConvTranspose2d, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FoldedUpConv:
    """Compose the k2 s2 transposed conv into the following 3x3 conv (+ BN); see the module docstring."""
    if (up.kernel_size != (2, 2) or up.stride != (2, 2) or up.padding != (0, 0) or up.output_padding != (0, 0)
            or up.dilation != (1, 1) or up.groups != 1):
        raise ValueError(f"expected a kernel-2 stride-2 transposed conv, got {up}")
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"expected a 3x3 conv, padding 1, stride 1 after the transposed conv, got {conv}")
    w1, bias = conv_bn(conv, bn)  # N x (Cup + img) x 3 x 3
    wt = up.weight.detach().double().cpu()  # Cx x Cup x 2 x 2
    bt = up.bias.detach().double().cpu() if up.bias is not None else wt.new_zeros(wt.shape[1])
    cx, cup = wt.shape[:2]
    n = w1.shape[0]
    w_up, w_img = w1[:, :cup], w1[:, cup:]
    wx = wt.new_zeros(2, 2, 2, 2, cx, n)  # a, b, ry, rx, Cx, N
    wb = wt.new_zeros(2, 2, 2, 2, n)
    for a in range(2):
        for b in range(2):
            for dy in range(3):
                for dx in range(3):
                    # up row 2i + a + dy - 1 = 2 * (i + a - 1 + ry) + py
                    ty, tx = a + dy - 1, b + dx - 1
                    ry, py = ty // 2 - a + 1, ty % 2
                    rx, px = tx // 2 - b + 1, tx % 2
                    tap = w_up[:, :, dy, dx]  # N x Cup
                    wx[a, b, ry, rx] += wt[:, :, py, px] @ tap.T
                    wb[a, b, ry, rx] += tap @ bt
    return FoldedUpConv(wx.reshape(16, cx, n), wb.reshape(16, n), taps_major(w_img), bias)


def fold_lift(lift: LiFT, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> FoldedLiFT:
    """The folded weights of an eval-mode ``lift``, cast to ``dtype`` on ``device``."""
    if lift.training:
        raise ValueError("fold_lift needs an eval-mode LiFT (batch norm must use running statistics): call lift.eval()")
    image: list[FoldedConv] = []
    image2: list[FoldedConv] = []
    if lift.use_image:
        s1, s2 = lift.image_convs_1, lift.image_convs_2
        image = [fold_conv(s1[0], s1[1]), fold_conv(s1[3], s1[4])]
        image2 = [fold_conv(s2[0], s2[1])]
    dc = lift.up1.conv_1.double_conv
    folded = FoldedLiFT(
        dim=lift.dim,
        patch_size=lift.patch_size,
        image=image,
        image2=image2,
        up=compose_up_conv(lift.up1.up, dc[0], dc[1]),
        conv2=fold_conv(dc[3], dc[4]),
        head=fold_conv(lift.outc),
    )
    return folded.to(device=device, dtype=dtype)
