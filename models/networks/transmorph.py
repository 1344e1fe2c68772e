"""TransMorph (Chen et al., "TransMorph: Transformer for unsupervised medical image
registration", Medical Image Analysis 2022), written from the paper.

A Swin-transformer encoder on the concatenated pair ``(moving, fixed)`` and a convolutional
decoder. Encoder: patch embedding (patch size 4, linear embedding to ``C`` channels), then four
stages of Swin blocks (window and shifted-window self-attention with relative position bias)
at 1/4, 1/8, 1/16, 1/32 resolution with ``C, 2C, 4C, 8C`` channels, a patch-merging layer
between stages, each stage's output layer-normalised and used as a skip. Two small
convolutional skips carry full- and half-resolution detail the 4-voxel patches lose. The
Swin blocks, patch embedding and patch merging are MONAI's
(``monai.networks.nets.swin_unetr.BasicLayer`` / ``PatchMerging``,
``monai.networks.blocks.PatchEmbed``); the assembly follows the paper.

TransMorph-diff (diffeomorphic) is this network with ``model.field=velocity``: the
RegistrationModule integrates the output by scaling and squaring.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from models.networks.blocks import apply_conv, check_divisible, check_net_args, checkpointed, concat_skip, \
    conv_class, feature_format, flow_conv

__all__ = ["TransMorph", "TRANSMORPH_SIZES"]

# The paper's variants (its table of hyper-parameters): embedding dimension C, Swin blocks per
# stage, attention heads per stage. Parameter counts of this implementation in 3-D (16 decoder
# head channels): tiny 0.24 M, small 11.8 M, base 46.8 M, large 108 M.
TRANSMORPH_SIZES = {
    "tiny": {"embed_dim": 6, "depths": (2, 2, 4, 2), "num_heads": (2, 2, 4, 4)},
    "small": {"embed_dim": 48, "depths": (2, 2, 4, 2), "num_heads": (4, 4, 4, 4)},
    "base": {"embed_dim": 96, "depths": (2, 2, 4, 2), "num_heads": (4, 4, 8, 8)},
    "large": {"embed_dim": 128, "depths": (2, 2, 12, 2), "num_heads": (4, 4, 8, 16)},
}


class ConvNormAct(nn.Module):
    """3×3(×3) convolution (no bias), instance norm, LeakyReLU(0.01): TransMorph's ``Conv3dReLU``
    (``nn.LeakyReLU(inplace=True)``, torch's default slope; 0.2 here until 2026-12-04)."""

    def __init__(self, ndim: int, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_class(ndim)(cin, cout, kernel_size=3, padding=1, bias=False)
        self.norm = getattr(nn, f"InstanceNorm{ndim}d")(cout)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(apply_conv(self.conv, x)))


class DecoderBlock(nn.Module):
    """×2 (bi/tri)linear upsampling, concatenation with a skip, two :class:`ConvNormAct`."""

    def __init__(self, ndim: int, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.mode = "trilinear" if ndim == 3 else "bilinear"
        self.conv1 = ConvNormAct(ndim, cin + skip, cout)
        self.conv2 = ConvNormAct(ndim, cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.conv2(self.conv1(concat_skip(x, skip)))


def _swin_args(ndim: int, size: str, window_size: Sequence[int] | int | None, embed_dim: int | None,
               depths: Sequence[int] | None, num_heads: Sequence[int] | None):
    """TransMorph's checked encoder arguments ``(embed_dim, depths, num_heads, window_size)``: the
    ``size`` preset's values where not given (``window_size``: the paper's default), each named in a
    ``ValueError`` when out of range."""
    check_net_args("TransMorph", ndim)
    if size not in TRANSMORPH_SIZES:
        raise ValueError(f"TransMorph 'size' must be one of {sorted(TRANSMORPH_SIZES)}, got {size!r}")
    cfg = TRANSMORPH_SIZES[size]
    embed_dim = int(embed_dim if embed_dim is not None else cfg["embed_dim"])
    depths = tuple(int(d) for d in (depths if depths is not None else cfg["depths"]))
    num_heads = tuple(int(h) for h in (num_heads if num_heads is not None else cfg["num_heads"]))
    if len(depths) != len(num_heads) or len(depths) < 2:
        raise ValueError(f"TransMorph needs as many 'depths' as 'num_heads' (>= 2), got {depths} and {num_heads}")
    for i, h in enumerate(num_heads):
        if (embed_dim * 2**i) % h:
            raise ValueError(
                f"TransMorph stage {i} has {embed_dim * 2**i} channels, not divisible by num_heads[{i}] = {h}"
            )
    if window_size is None:
        window_size = (5, 6, 7) if ndim == 3 else (7, 7)
    if isinstance(window_size, int):
        window_size = (window_size,) * ndim
    window_size = tuple(int(w) for w in window_size)
    if len(window_size) != ndim or min(window_size) < 1:
        raise ValueError(f"TransMorph 'window_size' must be {ndim} positive ints, got {window_size}")
    if embed_dim < 2:
        raise ValueError(f"TransMorph 'embed_dim' must be >= 2, got {embed_dim}")
    return embed_dim, depths, num_heads, window_size


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


class TransMorph(nn.Module):
    """TransMorph: ``forward(moving, fixed) -> field``, ``(B,1,*S)×2 -> (B,D,*S)``.

    Encoder features ``f0..f3`` (``C, 2C, 4C, 8C`` channels at 1/4 .. 1/32); convolutional
    skips ``h = ConvNormAct(avgpool(x))`` (``C/2`` channels, 1/2) and ``g = ConvNormAct(x)``
    (``head_channels``, full resolution). Decoder: ``DecoderBlock(f3, f2) -> 4C``,
    ``(·, f1) -> 2C``, ``(·, f0) -> C``, ``(·, h) -> C/2``, ``(·, g) -> head_channels``, then a
    3×3 conv to ``D`` channels initialised normal(σ = 1e-5), zero bias.

    Spatial sizes must be divisible by :attr:`multiple` (``patch_size · 2**(stages - 1)``,
    32 by default); a ``ValueError`` names the shape otherwise. Windows larger than a
    stage's feature map shrink to it (MONAI's rule); feature maps not divisible by the window
    are padded inside the attention.

    Args:
        ndim: 2 or 3.
        size: ``"tiny"``, ``"small"``, ``"base"`` (the paper's TransMorph) or ``"large"``;
            ``embed_dim``/``depths``/``num_heads`` override it.
        window_size: attention window per axis; ``None`` = ``(5, 6, 7)`` in 3-D (the paper's
            choice for 160×192×224 brains: the 1/32 grid 5×6×7 is one window) and ``(7, 7)`` in 2-D.
        patch_size: patch edge of the embedding (the paper's 4).
        mlp_ratio: hidden width of the Swin MLPs relative to the stage width.
        drop_path_rate: stochastic depth, linearly increasing over blocks (0 = off).
        head_channels: channels of the full-resolution decoder stage (the paper's 16).
        in_channels: channels of each image.
        channels_last: run the convolutions in channels-last layout; ``None`` = on CPU only.
        checkpoint: activation checkpointing in training (see
            :func:`models.networks.blocks.checkpointed`): each Swin stage (with the patch
            embedding or the patch merging before it and its output norm) and each decoder block
            (with the convolutional skip it reads, and the flow conv after the last) keep only
            their inputs and are recomputed in the backward pass. Same outputs and gradients
            (stochastic depth replays its random draws); no effect in eval or under ``no_grad``.
    """

    def __init__(
        self,
        ndim: int = 3,
        size: str = "base",
        window_size: Sequence[int] | int | None = None,
        patch_size: int = 4,
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        head_channels: int = 16,
        in_channels: int = 1,
        channels_last: bool | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        from monai.networks.blocks import PatchEmbed
        from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging

        embed_dim, depths, num_heads, window_size = _swin_args(ndim, size, window_size, embed_dim, depths, num_heads)
        self.ndim = ndim
        self.patch_size = int(patch_size)
        self.window_size = window_size
        self.channels_last = channels_last
        self.checkpoint = bool(checkpoint)
        cin = 2 * in_channels
        c = embed_dim
        self.patch_embed = PatchEmbed(patch_size=self.patch_size, in_chans=cin, embed_dim=c,
                                      norm_layer=nn.LayerNorm, spatial_dims=ndim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = c * 2**i
            if i > 0:
                self.merges.append(PatchMerging(dim=dim // 2, norm_layer=nn.LayerNorm, spatial_dims=ndim))
            self.stages.append(BasicLayer(
                dim=dim, depth=depth, num_heads=heads, window_size=window_size,
                drop_path=dpr[sum(depths[:i]): sum(depths[: i + 1])], mlp_ratio=mlp_ratio,
                qkv_bias=False, downsample=None,
            ))
            self.norms.append(nn.LayerNorm(dim))
        half = max(c // 2, 1)
        self.skip_full = ConvNormAct(ndim, cin, head_channels)
        self.skip_half = ConvNormAct(ndim, cin, half)
        widths = [c * 2**i for i in range(len(depths))]  # f0 .. f_last
        self.decoder = nn.ModuleList()
        x_ch = widths[-1]
        for skip_ch in reversed(widths[:-1]):
            self.decoder.append(DecoderBlock(ndim, x_ch, skip_ch, skip_ch))
            x_ch = skip_ch
        self.decoder.append(DecoderBlock(ndim, x_ch, half, half))
        self.decoder.append(DecoderBlock(ndim, half, head_channels, head_channels))
        self.flow = flow_conv(ndim, head_channels)
        self._stride = self.patch_size * 2 ** (len(depths) - 1)

    @property
    def multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (patch size × 2**(stages-1))."""
        return self._stride

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Swin features ``[f0, ..., f_last]``, channels-first, at 1/4, 1/8, ... resolution."""
        feats = []
        for i in range(len(self.stages)):
            x, f = checkpointed(self, self._stage, i, x)
            feats.append(f)
        return feats

    def _stage(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage ``i`` on the previous stage's output (stage 0: on the image pair, after the patch
        embedding; later ones after patch merging): ``(its output, its normalised feature)``."""
        if i == 0:
            x = self.patch_embed(x)
        else:
            x = _channels_first(self.merges[i - 1](_channels_last(x)))
        x = self.stages[i](x.contiguous())
        return x, _channels_first(self.norms[i](_channels_last(x)))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_divisible("TransMorph", moving.shape[2:], self.multiple)
        x = torch.cat([moving, fixed], dim=1)
        feats = self.encode(x)
        fmt = feature_format(self, x.device)
        x = x.contiguous(memory_format=fmt)
        # skips, last one first; the two convolutional ones (None here) are computed inside the
        # decoder block that reads them, so checkpointing does not keep them either
        skips: list[torch.Tensor | None] = [None, None]
        skips += [f.contiguous(memory_format=fmt) for f in feats[:-1]]
        y = feats[-1].contiguous(memory_format=fmt)
        for j in range(len(self.decoder)):
            y = checkpointed(self, self._decoder_level, j, y, skips.pop(), x)
        return y

    def _decoder_level(self, j: int, y: torch.Tensor, skip: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Decoder block ``j`` on ``y`` and its skip; the last two blocks compute their skip from the
        image pair ``x`` (``skip_half``, ``skip_full``); the last one ends with the flow conv."""
        last = len(self.decoder) - 1
        if j == last:
            skip = self.skip_full(x)
        elif j == last - 1:
            pool = F.avg_pool3d if self.ndim == 3 else F.avg_pool2d
            skip = self.skip_half(pool(x, 3, stride=2, padding=1))
        y = self.decoder[j](y, skip)
        if j == last:
            y = apply_conv(self.flow, y).contiguous()
        return y
