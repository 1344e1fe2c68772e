"""LKU-Net (Jia et al., "U-Net vs Transformer: Is U-Net Outdated in Medical Image
Registration?", MLMI 2022), written from the paper.

A 5-level U-Net (full, 1/2, 1/4, 1/8, 1/16 resolution) whose encoder levels below full
resolution each end in a large-kernel (LK) block: parallel ``k×k×k``, ``3×3×3`` and ``1×1×1``
convolutions and the identity, summed, then PReLU. The paper names variants by start channels
and kernel, e.g. LKU-Net(8, 5) and LKU-Net(16, 5). Maps the concatenated pair
``(moving, fixed)`` to a field ``(B, D, *S)`` in voxel units; whether that is a displacement or
a velocity (the paper's diffeomorphic variant) is ``model.field`` of the RegistrationModule.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from models.networks.blocks import ConvAct, apply_conv, check_net_args, checkpointed, concat_skip, conv_class, \
    flow_conv, pair_input, up_conv

__all__ = ["LKUNet", "LKBlock"]


class LKBlock(nn.Module):
    """Large-kernel block: ``PReLU(conv_k(x) + conv_3(x) + conv_1(x) + x)``, same width in and out.

    Every branch is linear, so the block runs as ONE ``k×k×k`` convolution whose kernel is
    the sum of the three kernels (the smaller ones zero-padded to ``k``) plus the identity
    kernel, and whose bias is the sum of the biases: same outputs and gradients for the three
    parameter sets, at the cost of the large convolution alone. :meth:`forward_reference`
    computes the branches separately (for tests).
    """

    def __init__(self, ndim: int, channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"LKBlock 'kernel_size' must be an odd int >= 3, got {kernel_size}")
        conv = conv_class(ndim)
        self.ndim, self.kernel_size = ndim, kernel_size
        # torch's default init for the branches: their summed gain is about that of one He-initialised
        # conv, and the identity keeps the signal alive through the four LK blocks.
        self.large = conv(channels, channels, kernel_size, padding=kernel_size // 2)
        self.small = conv(channels, channels, 3, padding=1)
        self.point = conv(channels, channels, 1)
        self.act = nn.PReLU()

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k×k×k`` kernel and bias of the whole linear part (three branches + identity)."""
        k, c = self.kernel_size, self.large.weight.shape[0]
        r = (k - 3) // 2
        w = self.large.weight + F.pad(self.small.weight, [r, r] * self.ndim)
        centre = (slice(None), slice(None), *([k // 2] * self.ndim))
        eye = torch.eye(c, dtype=w.dtype, device=w.device)
        w[centre] = w[centre] + self.point.weight.reshape(c, c) + eye
        b = self.large.bias + self.small.bias + self.point.bias
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.fused_kernel()
        conv = F.conv3d if self.ndim == 3 else F.conv2d
        return self.act(conv(x, w, b, padding=self.kernel_size // 2))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.large(x) + self.small(x) + self.point(x) + x)


class LKUNet(nn.Module):
    """LKU-Net: ``forward(moving, fixed) -> field``, ``(B,1,*S)×2 -> (B,D,*S)``.

    With start channels ``C`` (``start_channels``):

    * full resolution: two 3×3 conv + PReLU, ``2 -> C -> C``;
    * levels 1/2, 1/4, 1/8, 1/16: a stride-2 3×3 conv + PReLU to ``2C, 4C, 8C, 8C`` channels,
      then an :class:`LKBlock` (kernel ``kernel_size``);
    * decoder, per level from 1/16 up: 2×2 transposed conv (stride 2) + PReLU, concatenation
      with the encoder feature of the finer level, two 3×3 conv + PReLU to
      ``(8C, 4C)`` at 1/8, ``(4C, 2C)`` at 1/4, ``(4C, 2C)`` at 1/2, ``(2C, 2C)`` at full
      resolution;
    * a final 3×3 conv to ``D`` channels, initialised normal(σ = 1e-5) with zero bias, so the
      network starts at the identity map.

    Spatial sizes must be divisible by :attr:`multiple` (16); a ``ValueError`` names the
    shape otherwise. On CPU the features run in channels-last layout (faster oneDNN kernels).

    Args:
        ndim: 2 or 3.
        start_channels: ``C`` (the paper uses 8 and 16).
        kernel_size: ``k`` of the LK blocks (odd, >= 3; the paper's default 5).
        in_channels: channels of each image.
        channels_last: run features in channels-last layout; ``None`` (default) = on CPU only.
        checkpoint: activation checkpointing in training (see
            :func:`models.networks.blocks.checkpointed`): the full-resolution stem, each
            encoder level (stride-2 conv + LK block) and each decoder level (transposed conv,
            concatenation, two convs; the flow conv with the last) keep only their inputs and are
            recomputed in the backward pass. Same outputs and gradients; no effect in eval or
            under ``no_grad``.
    """

    levels = 4

    def __init__(
        self,
        ndim: int = 3,
        start_channels: int = 8,
        kernel_size: int = 5,
        in_channels: int = 1,
        channels_last: bool | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_net_args("LKUNet", ndim, start_channels=(start_channels, 1), kernel_size=(kernel_size, 3))
        if kernel_size % 2 == 0:
            raise ValueError(f"LKUNet 'kernel_size' must be an odd int >= 3, got {kernel_size!r}")
        c = start_channels
        self.ndim = ndim
        self.channels_last = channels_last
        self.checkpoint = bool(checkpoint)
        self.stem = nn.Sequential(ConvAct(ndim, 2 * in_channels, c, prelu=True), ConvAct(ndim, c, c, prelu=True))
        enc = [2 * c, 4 * c, 8 * c, 8 * c]
        self.down = nn.ModuleList()
        self.lk = nn.ModuleList()
        cin = c
        for w in enc:
            self.down.append(ConvAct(ndim, cin, w, stride=2, prelu=True))
            self.lk.append(LKBlock(ndim, w, kernel_size))
            cin = w
        skips = [c, *enc[:-1]]  # widths of the finer-level features, full res first
        dec = [(2 * c, 2 * c), (4 * c, 2 * c), (4 * c, 2 * c), (8 * c, 4 * c)]  # full res first
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in reversed(range(self.levels)):  # 1/8, 1/4, 1/2, full
            self.up.append(nn.Sequential(up_conv(ndim, cin, cin, slope=0.25), nn.PReLU()))
            w1, w2 = dec[level]
            conv1, conv2 = ConvAct(ndim, cin + skips[level], w1, prelu=True), ConvAct(ndim, w1, w2, prelu=True)
            self.dec.append(nn.Sequential(conv1, conv2))
            cin = w2
        self.flow = flow_conv(ndim, cin)

    @property
    def multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (the total stride)."""
        return 2**self.levels

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = pair_input("LKUNet", self, moving, fixed)
        x = checkpointed(self, self.stem, x)
        feats = [x]
        for down, lk in zip(self.down, self.lk):
            x = checkpointed(self, self._encoder_level, down, lk, x)
            feats.append(x)
        feats.pop()  # the bottleneck is not a skip
        last = len(self.up) - 1
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            x = checkpointed(self, self._decoder_level, up, dec, x, feats.pop(), i == last)
        return x

    @staticmethod
    def _encoder_level(down: nn.Module, lk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return lk(down(x))

    def _decoder_level(self, up: nn.Module, dec: nn.Module, x: torch.Tensor, skip: torch.Tensor,
                       flow: bool) -> torch.Tensor:
        """``dec(cat([up(x), skip]))``, then the flow conv if ``flow`` (the full-resolution level)."""
        x = dec(concat_skip(up(x), skip))
        if flow:
            x = apply_conv(self.flow, x).contiguous()
        return x
