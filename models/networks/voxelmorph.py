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

from models.networks.blocks import ConvAct, apply_conv, check_divisible, check_net_args, checkpointed, conv_up_cat, \
    flow_conv, pair_input

__all__ = ["VoxelMorphUNet", "VXM_WIDTHS"]

# Encoder / decoder widths (the first len(enc) decoder widths upsample, the rest run at full
# resolution). vxm1_paper and vxm2 are the paper's VoxelMorph-1 and -2 (TMI 2019, and its reference
# code); vxm1_paper is the default of configs/model/voxelmorph.yaml. vxm1, SymNet's default
# backbone (configs/model/symnet.yaml), is a narrower VoxelMorph-1: 8 channels at half resolution
# where the paper has 32, one full-resolution conv fewer (221,627 parameters against 259,675).
VXM_WIDTHS = {
    "vxm1": ([16, 32, 32, 32], [32, 32, 32, 8, 8]),
    "vxm1_paper": ([16, 32, 32, 32], [32, 32, 32, 32, 8, 8]),
    "vxm2": ([16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]),
}


class VoxelMorphUNet(nn.Module):
    """U-Net of VoxelMorph: ``forward(moving, fixed) -> field``, ``(B,1,*S)×2 -> (B,D,*S)``.

    Encoder: one stride-2 conv per level (widths ``enc``); decoder: conv then ×2
    nearest upsampling and skip concatenation per level, then the remaining ``dec``
    widths at full resolution; a final 3×3 conv with tiny-normal init (σ = 1e-5) gives
    the field. Spatial sizes must be divisible by :attr:`multiple` ``= 2 ** len(enc)``
    (a ``ValueError`` names the shape otherwise).

    Speed (same parameters and outputs as the plain layer-by-layer network, which
    :meth:`forward_reference` keeps for tests): on CPU the features run in channels-last
    layout (oneDNN's faster 3-D kernels), activations are in place, and every convolution
    that reads ``cat([up2(x), skip])`` is split into a convolution of the skip plus
    :func:`~models.networks.blocks.upsample_conv` of the coarse ``x``
    (:func:`~models.networks.blocks.conv_up_cat`), so neither the upsampled nor the
    concatenated tensor is built and the coarse part costs 8/27 of the multiply-adds.

    Args:
        ndim: 2 or 3.
        variant: a key of :data:`VXM_WIDTHS` (``"vxm1_paper"``, ``"vxm2"``: the paper's widths;
            ``"vxm1"``: a narrower VoxelMorph-1) unless ``enc``/``dec`` given.
        enc, dec: explicit widths; ``len(dec) >= len(enc)``.
        in_channels: channels of each image (1 for grey-level MRI).
        channels_last: run features in channels-last layout; ``None`` (default) = on CPU only.
        checkpoint: activation checkpointing in training
            (:func:`~models.networks.blocks.checkpointed`): each encoder level and each decoder
            level (the full-resolution one: every conv there and the flow) keeps only its inputs
            and recomputes the rest in the backward pass. Same outputs and gradients; no effect in
            eval or under ``no_grad``.
    """

    def __init__(
        self,
        ndim: int = 3,
        variant: str = "vxm2",
        enc: Sequence[int] | None = None,
        dec: Sequence[int] | None = None,
        in_channels: int = 1,
        channels_last: bool | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_net_args("VoxelMorphUNet", ndim)
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
        self.channels_last = channels_last
        self.checkpoint = bool(checkpoint)
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
        self.flow = flow_conv(ndim, cin)

    @property
    def multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (the total stride)."""
        return self.stride

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = pair_input("VoxelMorphUNet", self, moving, fixed)
        feats = [x]
        for layer in self.down:
            x = checkpointed(self, layer, x)
            feats.append(x)
        feats.pop()
        if not self.up:
            return checkpointed(self, self._tail, x)
        # decoder: up[0] reads the bottleneck; every later conv reads cat([up2(prev), skip])
        x = checkpointed(self, self.up[0], x)
        for layer in self.up[1:]:
            x = checkpointed(self, layer.forward_up_cat, x, feats.pop())
        return checkpointed(self, self._full_resolution, x, feats.pop())

    def _full_resolution(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The last decoder level: the conv reading ``cat([up2(x), skip])`` (the first extra conv,
        or the flow layer itself when there is none), the other extra convs, the flow."""
        if not self.extra:
            return conv_up_cat(self.flow, x, skip).contiguous()
        return self._tail(self.extra[0].forward_up_cat(x, skip), self.extra[1:])

    def _tail(self, x: torch.Tensor, layers: Sequence[nn.Module] | None = None) -> torch.Tensor:
        for layer in self.extra if layers is None else layers:
            x = layer(x)
        return apply_conv(self.flow, x).contiguous()

    def forward_reference(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The same network evaluated layer by layer (upsample, concatenate, convolve), in the
        default memory layout: what :meth:`forward` computes, kept to test it against."""
        check_divisible("VoxelMorphUNet", moving.shape[2:], self.multiple)
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
