"""VoxelMorph-style U-Net (Balakrishnan et al., TMI 2019), written from the paper.

The network maps the channel-concatenated pair ``(moving, fixed)`` to a dense field
with one channel per spatial axis, in voxel units (the project convention). Whether
that field is a displacement or a stationary velocity is decided by the
:class:`~models.module.RegistrationModule` (``model.field``), not here.

This module also holds the pieces every network of :mod:`models.networks` shares: the
divisibility check (:func:`check_divisible`, one error message for all networks),
:func:`pad_to_multiple` for callers that would rather pad than crop, and
:func:`upsample_conv`, a 3×3(×3) convolution of a ×2 nearest-upsampled tensor computed on the
coarse grid, and :func:`checkpointed`, the activation-checkpointing switch every network's
``checkpoint`` option goes through.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["VoxelMorphUNet", "VXM_WIDTHS", "check_divisible", "check_net_args", "checkpointed", "pad_to_multiple",
           "upsample_conv", "conv_nd"]

# Encoder / decoder widths of the paper's two variants.
VXM_WIDTHS = {
    "vxm1": ([16, 32, 32, 32], [32, 32, 32, 8, 8]),
    "vxm2": ([16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]),
}


def _conv(ndim: int):
    return getattr(nn, f"Conv{ndim}d")


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def check_divisible(net: str, shape: Sequence[int], multiple: int) -> None:
    """Raise ``ValueError`` unless every spatial size in ``shape`` is divisible by ``multiple``.

    One message for every network: it names the network, the shape and the multiple, and
    says how to fix it (crop/pad the data, or :func:`pad_to_multiple`).
    """
    shape = tuple(int(s) for s in shape)
    if any(s % multiple for s in shape):
        raise ValueError(
            f"{net} needs spatial sizes divisible by {multiple}, got {shape}; crop or pad the data "
            f"(e.g. data.shape, or models.networks.pad_to_multiple) to a multiple of {multiple}"
        )


def check_net_args(net: str, ndim: Any, **ints: tuple[Any, int]) -> None:
    """One ``ValueError`` naming the network and the argument: ``ndim`` must be 2 or 3, and each
    ``name=(value, low)`` an int ``>= low`` (bools refused)."""
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"{net} 'ndim' must be 2 or 3, got {ndim!r}")
    for name, (value, low) in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{net} '{name}' must be an int >= {low}, got {value!r}")


def checkpointed(net: nn.Module, fn: Callable, *args):
    """``fn(*args)``, run under activation checkpointing when ``net.checkpoint`` is set, ``net``
    is in training mode and gradients are enabled; a plain call otherwise (eval, ``no_grad``).

    Checkpointed, ``fn``'s intermediate tensors are not kept for the backward pass: only its
    inputs (``args``) are, and ``fn`` runs a second time in the backward pass to rebuild the rest
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``; the RNG state is replayed,
    so dropout / stochastic depth give the same numbers). Same outputs and gradients, less peak
    memory, one extra forward of ``fn``. ``fn`` must not change module state (no running
    statistics), and anything it reads besides ``args`` must not change before the backward.
    """
    if getattr(net, "checkpoint", False) and net.training and torch.is_grad_enabled():
        return _checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``x`` ``(B, C, *S)`` at the end of each spatial axis up to a multiple of ``multiple``.

    Returns the padded tensor and the index that crops a tensor on the padded grid back to
    ``S`` (``field[crop]``). Padding at the end keeps voxel coordinates of the original grid
    unchanged, so a displacement cropped this way stays valid on ``S``.
    """
    shape = x.shape[2:]
    extra = [(-s) % multiple for s in shape]
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    crop = (slice(None), slice(None), *(slice(0, s) for s in shape))
    if not any(extra):
        return x, crop
    return F.pad(x, pad, mode=mode), crop


class _Interleave(torch.autograd.Function):
    """``(B, P·C, *(n+1)) -> (B, C, *2n)``: phase ``a`` (a bit per axis, ``P = 2**D`` phases,
    phase-major channels) fills output voxels ``2i + a`` from input voxel ``i + a``.

    A strided gather written as one copy; its backward scatters the gradient back with the
    same strides (zeros where no output reads). Works for any memory layout of the input and
    gives the output the input's layout (channels-last stays channels-last).
    """

    @staticmethod
    def _geometry(y: torch.Tensor, channels: int):
        ndim = y.dim() - 2
        n = [s - 1 for s in y.shape[2:]]
        sb, sc, *ss = y.stride()
        size, stride = [y.shape[0], channels], [sb, sc]
        for axis in range(ndim):
            bit = 2 ** (ndim - 1 - axis)  # phase index p = sum_axis a_axis * bit_axis
            size += [n[axis], 2]
            stride += [ss[axis], ss[axis] + bit * channels * sc]
        return size, stride, n

    @staticmethod
    def forward(ctx, y: torch.Tensor, channels: int) -> torch.Tensor:  # noqa: D102
        size, stride, n = _Interleave._geometry(y, channels)
        ctx.meta = (tuple(y.shape), y.stride(), channels)
        view = y.as_strided(size, stride, y.storage_offset())
        fmt = _memory_format(y)
        out = torch.empty((y.shape[0], channels, *(2 * k for k in n)), dtype=y.dtype, device=y.device,
                          memory_format=fmt)
        out.view(size).copy_(view)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        shape, strides, channels = ctx.meta
        gy = torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device).zero_()
        size, stride, _ = _Interleave._geometry(gy, channels)
        # splitting each output axis 2n into (n, 2) is a view whatever grad's layout
        gy.as_strided(size, stride, gy.storage_offset()).copy_(grad.view(size))
        return gy, None


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# PyTorch's CPU dispatcher (torch 2.x, ``_select_conv_backend``) runs a float32 convolution with
# a kernel of at most 3 per axis at batch 1 on its native kernel instead of oneDNN when
# channels * S0 * S1 <= 20480 — e.g. the 2-channel image pair up to 100x100xN. That kernel is
# 2-4x slower forward and backward here, and returns channels-first output, which then slows
# every later layer. If a torch version changes the rule, conv_nd's padding is merely redundant.
_ONEDNN_MIN = 20480


def conv_nd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
            padding: int = 0) -> torch.Tensor:
    """``F.conv{2,3}d(x, weight, bias, stride, padding)``, the same numbers, kept on oneDNN on CPU.

    When the dispatcher would pick the native kernel (see ``_ONEDNN_MIN``) and at most doubling
    the input channels avoids it, ``x`` gets extra all-zero channels and ``weight`` matching
    zero columns: the result is unchanged and computed by oneDNN. Other devices: plain conv.
    """
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1 and max(weight.shape[2:]) <= 3:
        b, c = x.shape[:2]
        rows = x.shape[2] * x.shape[3]
        need = _ONEDNN_MIN // rows + 1
        if c < need <= 2 * c:
            fmt = _memory_format(x)
            x = torch.cat([x, x.new_zeros(b, need - c, *x.shape[2:])], 1).contiguous(memory_format=fmt)
            weight = torch.cat([weight, weight.new_zeros(weight.shape[0], need - c, *weight.shape[2:])], 1)
    return conv(x, weight, bias, stride=stride, padding=padding)


# 1-D taps of "3-tap conv of a x2 nearest-upsampled signal" on the coarse grid: output voxel
# 2i + a reads coarse voxels (i - 1, i) for a = 0 and (i, i + 1) for a = 1; row t of _TAPS[a]
# says which of the 3 fine taps (-1, 0, +1) fall on coarse tap t.
_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def upsample_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv(up2(x), weight, padding=1)`` without building the upsampled tensor (no bias).

    ``x`` ``(B, Cin, *n)``, ``weight`` ``(Cout, Cin, 3, ..., 3)``; ``up2`` is ×2 nearest
    upsampling; returns ``(B, Cout, *2n)``. Each output phase ``a`` (``2**D`` of them) is a
    2-tap-per-axis convolution of ``x`` whose weights are sums of the 3-tap ones, so all phases
    run as ONE convolution with kernel 2 and ``2**D · Cout`` outputs on the coarse grid
    (``8/27`` of the multiply-adds in 3-D), interleaved by one strided copy. Exact up to
    floating-point summation order; gradients flow to ``x`` and ``weight``.
    """
    ndim = x.dim() - 2
    cout, cin = weight.shape[:2]
    taps = weight.new_tensor(_TAPS)  # (phase a, coarse tap t, fine tap k)
    if ndim == 3:
        kernels = torch.einsum("oiXYZ,axX,byY,czZ->abcoixyz", weight, taps, taps, taps)
    else:
        kernels = torch.einsum("oiXY,axX,byY->aboixy", weight, taps, taps)
    # (a_0, ..., a_{D-1}, Cout, Cin, 2, ..., 2) -> (2**D · Cout, Cin, 2, ..., 2), phase-major
    kernels = kernels.reshape(2**ndim * cout, cin, *([2] * ndim))
    y = conv_nd(x, kernels, padding=1)  # (B, 2**D · Cout, *(n + 1))
    return _Interleave.apply(y, cout)


# ---------------------------------------------------------------------------------------------
# VoxelMorph
# ---------------------------------------------------------------------------------------------
class ConvAct(nn.Module):
    """3×3(×3) convolution (optionally strided) followed by LeakyReLU(0.2)."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = _conv(ndim)(cin, cout, kernel_size=3, stride=stride, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        # He init for LeakyReLU(0.2): torch's default (variance 1/(3 fan_in)) shrinks the signal
        # by ~2.4x per layer, so a deep U-Net starts with a vanishing output and learns slowly.
        nn.init.kaiming_normal_(self.conv.weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return self.act(conv_nd(x, c.weight, c.bias, stride=c.stride[0], padding=1))

    def forward_up_cat(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``forward(cat([up2(coarse), skip], 1))`` without the upsampled or concatenated tensor:
        the convolution splits over the two inputs; the coarse part runs by :func:`upsample_conv`."""
        w = self.conv.weight
        c = coarse.shape[1]
        out = conv_nd(skip, w[:, c:], self.conv.bias, padding=1)
        out = out + upsample_conv(coarse, w[:, :c])
        return self.act(out)


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
    :func:`upsample_conv` of the coarse ``x``, so neither the upsampled nor the concatenated
    tensor is built and the coarse part costs 8/27 of the multiply-adds.

    Args:
        ndim: 2 or 3.
        variant: ``"vxm1"`` or ``"vxm2"`` (the paper's widths) unless ``enc``/``dec`` given.
        enc, dec: explicit widths; ``len(dec) >= len(enc)``.
        in_channels: channels of each image (1 for grey-level MRI).
        channels_last: run features in channels-last layout; ``None`` (default) = on CPU only.
        checkpoint: activation checkpointing in training (:func:`checkpointed`): each encoder
            level and each decoder level (the full-resolution one: every conv there and the
            flow) keeps only its inputs and recomputes the rest in the backward pass. Same
            outputs and gradients; no effect in eval or under ``no_grad``.
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
        self.flow = _conv(ndim)(cin, ndim, kernel_size=3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    @property
    def multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (the total stride)."""
        return self.stride

    def _input(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_divisible("VoxelMorphUNet", moving.shape[2:], self.multiple)
        x = torch.cat([moving, fixed], dim=1)
        cl = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if cl:
            x = x.contiguous(memory_format=torch.channels_last_3d if self.ndim == 3 else torch.channels_last)
        return x

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = self._input(moving, fixed)
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
            w, c = self.flow.weight, x.shape[1]
            out = conv_nd(skip, w[:, c:], self.flow.bias, padding=1) + upsample_conv(x, w[:, :c])
            return out.contiguous()
        return self._tail(self.extra[0].forward_up_cat(x, skip), self.extra[1:])

    def _tail(self, x: torch.Tensor, layers: Sequence[nn.Module] | None = None) -> torch.Tensor:
        for layer in self.extra if layers is None else layers:
            x = layer(x)
        return conv_nd(x, self.flow.weight, self.flow.bias, padding=1).contiguous()

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
