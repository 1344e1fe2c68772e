"""VoxelMorph-style U-Net (Balakrishnan et al., TMI 2019), written from the paper.

The network maps the channel-concatenated pair ``(moving, fixed)`` to a dense field
with one channel per spatial axis, in voxel units (the project convention). Whether
that field is a displacement or a stationary velocity is decided by the
:class:`~models.module.RegistrationModule` (``model.field``), not here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["VoxelMorphUNet", "VXM_WIDTHS"]

# Encoder / decoder widths of the paper's two variants.
VXM_WIDTHS = {
    "vxm1": ([16, 32, 32, 32], [32, 32, 32, 8, 8]),
    "vxm2": ([16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]),
}


def _conv(ndim: int):
    return getattr(nn, f"Conv{ndim}d")


class ConvAct(nn.Module):
    """3×3(×3) convolution (optionally strided) followed by LeakyReLU(0.2)."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = _conv(ndim)(cin, cout, kernel_size=3, stride=stride, padding=1)
        self.act = nn.LeakyReLU(0.2)
        # He init for LeakyReLU(0.2): torch's default (variance 1/(3 fan_in)) shrinks the signal
        # by ~2.4x per layer, so a deep U-Net starts with a vanishing output and learns slowly.
        nn.init.kaiming_normal_(self.conv.weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class VoxelMorphUNet(nn.Module):
    """U-Net of VoxelMorph: ``forward(moving, fixed) -> field``, ``(B,1,*S)×2 -> (B,D,*S)``.

    Encoder: one stride-2 conv per level (widths ``enc``); decoder: conv then ×2
    nearest upsampling and skip concatenation per level, then the remaining ``dec``
    widths at full resolution; a final 3×3 conv with tiny-normal init (σ = 1e-5) gives
    the field. Spatial sizes must be divisible by ``2 ** len(enc)`` (see ``stride``).

    Args:
        ndim: 2 or 3.
        variant: ``"vxm1"`` or ``"vxm2"`` (the paper's widths) unless ``enc``/``dec`` given.
        enc, dec: explicit widths; ``len(dec) >= len(enc)``.
        in_channels: channels of each image (1 for grey-level MRI).
    """

    def __init__(
        self,
        ndim: int = 3,
        variant: str = "vxm2",
        enc: Sequence[int] | None = None,
        dec: Sequence[int] | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"VoxelMorphUNet 'ndim' must be 2 or 3, got {ndim}")
        if enc is None or dec is None:
            if variant not in VXM_WIDTHS:
                raise ValueError(f"VoxelMorphUNet 'variant' must be one of {sorted(VXM_WIDTHS)}, got {variant!r}")
            enc_d, dec_d = VXM_WIDTHS[variant]
            enc = enc if enc is not None else enc_d
            dec = dec if dec is not None else dec_d
        enc, dec = list(enc), list(dec)
        if len(dec) < len(enc):
            raise ValueError(f"VoxelMorphUNet needs len(dec) >= len(enc), got enc={enc} dec={dec}")
        self.ndim = ndim
        self.stride = 2 ** len(enc)
        self.down = nn.ModuleList()
        cin = 2 * in_channels
        skips = [cin]
        for w in enc:
            self.down.append(ConvAct(ndim, cin, w, stride=2))
            cin = w
            skips.append(w)
        skips.pop()  # the bottleneck is not a skip
        self.up = nn.ModuleList()
        for w in dec[: len(enc)]:
            self.up.append(ConvAct(ndim, cin, w))
            cin = w + skips.pop()
        self.extra = nn.ModuleList()
        for w in dec[len(enc):]:
            self.extra.append(ConvAct(ndim, cin, w))
            cin = w
        self.flow = _conv(ndim)(cin, ndim, kernel_size=3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        shape = moving.shape[2:]
        if any(s % self.stride for s in shape):
            raise ValueError(
                f"VoxelMorphUNet needs spatial sizes divisible by {self.stride}, got {tuple(shape)}; "
                f"crop or pad the data (e.g. data.shape) to a multiple of {self.stride}"
            )
        x = torch.cat([moving, fixed], dim=1)
        feats = [x]
        for layer in self.down:
            x = layer(x)
            feats.append(x)
        feats.pop()
        for layer in self.up:
            x = layer(x)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, feats.pop()], dim=1)
        for layer in self.extra:
            x = layer(x)
        return self.flow(x)
