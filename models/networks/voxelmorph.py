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

# Encoder / decoder widths and how many decoder convs after the level convs run at half resolution.
# The first len(enc) decoder widths are one conv per level (reading the upsampled level below and
# its skip); the next `half_convs` widths run at half resolution; the rest at full resolution, after the
# last upsampling and the concatenation of the input pair. vxm1_paper and vxm2 are the paper's
# VoxelMorph-1 and -2 (TMI 2019 and its reference code's unet_core: dec_nf[3] and dec_nf[4] at half
# resolution, then dec_nf[5] (and dec_nf[6]) at full; 259,675 and 300,547 parameters in 3-D);
# vxm1_paper is the default of configs/model/voxelmorph.yaml. vxm1, SymNet's default backbone
# (configs/model/symnet.yaml), is a narrower VoxelMorph-1: its last level conv has 8 channels where
# the paper has 32 then 8, and its one full-resolution conv reads those 8 (221,627 parameters).
# (Until 2026-12-04 vxm1_paper and vxm2 ran dec_nf[4] at full resolution: the same parameter count
# for vxm1_paper, 2.6x the full-resolution work; a helper's review against the reference code.)
VXM_WIDTHS = {
    "vxm1": ([16, 32, 32, 32], [32, 32, 32, 8, 8], 0),
    "vxm1_paper": ([16, 32, 32, 32], [32, 32, 32, 32, 8, 8], 1),
    "vxm2": ([16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16], 1),
}


class VoxelMorphUNet(nn.Module):
    """U-Net of VoxelMorph: ``forward(moving, fixed) -> field``, ``(B,1,*S)×2 -> (B,D,*S)``.

    Encoder: one stride-2 conv per level (widths ``enc``); decoder: one conv per level, each
    but the first reading the ×2 nearest-upsampled level below concatenated with its skip; then
    ``half_convs`` more convs at half resolution; then ×2 upsampling, the input pair concatenated, the
    remaining ``dec`` widths at full resolution; a final 3×3 conv with tiny-normal init
    (σ = 1e-5) gives the field. Spatial sizes must be divisible by :attr:`multiple` ``= 2 ** len(enc)``
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
        half_convs: decoder convs after the level convs that run at half resolution (default: the
            variant's; 0 with explicit ``enc``/``dec``).
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
        half_convs: int | None = None,
        in_channels: int = 1,
        channels_last: bool | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_net_args("VoxelMorphUNet", ndim)
        if enc is None or dec is None or half_convs is None:
            if variant not in VXM_WIDTHS:
                raise ValueError(f"VoxelMorphUNet 'variant' must be one of {sorted(VXM_WIDTHS)}, got {variant!r}")
            enc_d, dec_d, half_d = VXM_WIDTHS[variant]
            explicit = enc is not None or dec is not None
            enc = enc if enc is not None else enc_d
            dec = dec if dec is not None else dec_d
            half_convs = half_convs if half_convs is not None else (0 if explicit else half_d)
        enc, dec, half = list(enc), list(dec), int(half_convs)
        if len(dec) < len(enc):
            raise ValueError(f"VoxelMorphUNet needs len(dec) >= len(enc), got enc={enc} dec={dec}")
        if not 0 <= half <= len(dec) - len(enc) or (half and not enc):
            raise ValueError(f"VoxelMorphUNet 'half_convs' must lie in [0, len(dec) - len(enc)] = "
                             f"[0, {len(dec) - len(enc)}] (and need an encoder), got {half}")
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
        n = len(enc)
        self.up = nn.ModuleList()
        for i, w in enumerate(dec[:n]):
            self.up.append(ConvAct(ndim, cin, w))
            cin = w + (skips.pop() if i < n - 1 else 0)  # the next level conv reads cat([up2(x), skip])
        self.half_convs = nn.ModuleList()  # at half resolution, after the last level conv
        for w in dec[n: n + half]:
            self.half_convs.append(ConvAct(ndim, cin, w))
            cin = w
        if n:
            cin += skips.pop()  # the input pair, concatenated at full resolution
        self.extra = nn.ModuleList()
        for w in dec[n + half:]:
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
        for layer in self.half_convs:
            x = checkpointed(self, layer, x)
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
        for i, layer in enumerate(self.up):
            if i:
                x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), feats.pop()], dim=1)
            x = layer(x)
        for layer in self.half_convs:
            x = layer(x)
        if self.up:
            x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), feats.pop()], dim=1)
        for layer in self.extra:
            x = layer(x)
        return self.flow(x)
