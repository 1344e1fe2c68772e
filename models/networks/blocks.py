"""Building blocks shared by the networks of :mod:`models.networks` (VoxelMorph, LKU-Net,
TransMorph, LapIRN); each network module holds only its own architecture.

Arguments and shapes (one error message per kind for every network):

* :func:`check_net_args` – ``ndim`` is 2 or 3 and each named int argument is in range;
* :func:`check_divisible` – every spatial size is divisible by the network's ``multiple``;
* :func:`pad_to_multiple` – pads a batch up to that multiple, for callers that would rather pad.

Running:

* :func:`checkpointed` – the activation-checkpointing switch every network's ``checkpoint``
  option goes through.

Memory layout (channels-last features run faster on CPU, where oneDNN has the faster kernels):

* :func:`memory_format_of` – the layout a tensor is in;
* :func:`feature_format` – the layout a network runs its features in (its ``channels_last``
  option; ``None`` = channels-last on CPU only);
* :func:`pair_input` – the checked, concatenated ``(moving, fixed)`` pair in that layout;
* :func:`concat_skip` – a decoder's ``cat([x, skip])`` in the skip's layout.

Convolutions and layers:

* :func:`conv_class` – ``nn.Conv2d`` or ``nn.Conv3d``;
* :func:`conv_nd` / :func:`apply_conv` – a 2-D/3-D convolution kept on oneDNN on CPU (same numbers);
* :func:`upsample_conv` / :func:`conv_up_cat` – a 3×3(×3) convolution of a ×2 nearest-upsampled
  tensor (concatenated with a skip) computed on the coarse grid, without building the upsampled
  tensor (VoxelMorph's decoder);
* :class:`ConvAct` – 3×3(×3) convolution + LeakyReLU(0.2) or PReLU, He-initialised;
* :func:`flow_conv` – the final 3×3(×3) convolution to ``D`` field channels, initialised near
  zero so that every network starts at the identity map;
* :func:`up_conv` – a 2×2(×2) stride-2 transposed convolution, He-initialised by its true fan-in.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "check_net_args", "check_divisible", "pad_to_multiple", "checkpointed", "memory_format_of", "feature_format",
    "pair_input", "concat_skip", "conv_class", "conv_nd", "apply_conv", "upsample_conv", "conv_up_cat", "ConvAct",
    "flow_conv", "up_conv",
]


# ---------------------------------------------------------------------------------------------
# arguments and shapes
# ---------------------------------------------------------------------------------------------
def check_net_args(net: str, ndim: Any, **ints: tuple[Any, int]) -> None:
    """One ``ValueError`` naming the network and the argument: ``ndim`` must be 2 or 3, and each
    ``name=(value, low)`` an int ``>= low`` (bools refused)."""
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"{net} 'ndim' must be 2 or 3, got {ndim!r}")
    for name, (value, low) in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{net} '{name}' must be an int >= {low}, got {value!r}")


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


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# memory layout
# ---------------------------------------------------------------------------------------------
def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout ``t`` is in: channels-last (2-D or 3-D) when it is that and not also plainly
    contiguous, else ``torch.contiguous_format``."""
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def feature_format(net: nn.Module, device: torch.device) -> torch.memory_format:
    """The layout ``net`` runs its features in on ``device``: channels-last when
    ``net.channels_last`` is set, or is ``None`` and ``device`` is the CPU; plain otherwise."""
    cl = net.channels_last if net.channels_last is not None else device.type == "cpu"
    if not cl:
        return torch.contiguous_format
    return torch.channels_last_3d if net.ndim == 3 else torch.channels_last


def pair_input(name: str, net: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """``cat([moving, fixed], 1)`` in ``net``'s feature layout (:func:`feature_format`), after
    :func:`check_divisible` of the spatial shape by ``net.multiple`` (``name`` in the error)."""
    check_divisible(name, moving.shape[2:], net.multiple)
    x = torch.cat([moving, fixed], dim=1)
    fmt = feature_format(net, x.device)
    if fmt != torch.contiguous_format:
        x = x.contiguous(memory_format=fmt)
    return x


def concat_skip(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``cat([x, skip], 1)`` in ``skip``'s layout (a decoder level reading an encoder feature)."""
    return torch.cat([x, skip], dim=1).contiguous(memory_format=memory_format_of(skip))


# ---------------------------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------------------------
def conv_class(ndim: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d`` for ``ndim`` 2 or 3."""
    return getattr(nn, f"Conv{ndim}d")


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
            fmt = memory_format_of(x)
            x = torch.cat([x, x.new_zeros(b, need - c, *x.shape[2:])], 1).contiguous(memory_format=fmt)
            weight = torch.cat([weight, weight.new_zeros(weight.shape[0], need - c, *weight.shape[2:])], 1)
    return conv(x, weight, bias, stride=stride, padding=padding)


def apply_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for an ``nn.Conv{2,3}d`` with the same stride and padding on every axis, run
    by :func:`conv_nd` (kept on oneDNN on CPU)."""
    return conv_nd(x, conv.weight, conv.bias, stride=conv.stride[0], padding=conv.padding[0])


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
        fmt = memory_format_of(y)
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


def conv_up_cat(conv: nn.Module, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(cat([up2(coarse), skip], 1))`` for a 3×3(×3), padding-1, stride-1 ``conv``, without
    the upsampled or concatenated tensor: the convolution splits over the two inputs, the coarse
    part runs by :func:`upsample_conv`."""
    w, c = conv.weight, coarse.shape[1]
    return conv_nd(skip, w[:, c:], conv.bias, padding=1) + upsample_conv(coarse, w[:, :c])


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
class ConvAct(nn.Module):
    """3×3(×3) convolution (optionally strided) followed by LeakyReLU(0.2), or by PReLU when
    ``prelu``; He-initialised for that activation's slope (0.2, or PReLU's initial 0.25)."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int = 1, prelu: bool = False) -> None:
        super().__init__()
        self.conv = conv_class(ndim)(cin, cout, kernel_size=3, stride=stride, padding=1)
        self.act = nn.PReLU() if prelu else nn.LeakyReLU(0.2, inplace=True)
        # He init: torch's default (variance 1/(3 fan_in)) shrinks the signal by ~2.4x per layer,
        # so a deep U-Net starts with a vanishing output and learns slowly.
        nn.init.kaiming_normal_(self.conv.weight, a=0.25 if prelu else 0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(apply_conv(self.conv, x))

    def forward_up_cat(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``forward(cat([up2(coarse), skip], 1))`` by :func:`conv_up_cat` (no upsampled or
        concatenated tensor)."""
        return self.act(conv_up_cat(self.conv, coarse, skip))


def flow_conv(ndim: int, cin: int) -> nn.Module:
    """The final 3×3(×3) convolution ``cin -> ndim`` field channels, weights normal(σ = 1e-5) and
    zero bias, so that the network starts at (almost) the identity map."""
    flow = conv_class(ndim)(cin, ndim, kernel_size=3, padding=1)
    nn.init.normal_(flow.weight, std=1e-5)
    nn.init.zeros_(flow.bias)
    return flow


def up_conv(ndim: int, cin: int, cout: int, slope: float) -> nn.Module:
    """2×2(×2) transposed convolution, stride 2 (×2 upsampling), He-initialised by its true
    fan-in for a leaky-ReLU-like activation of ``slope``: with stride = kernel each output voxel
    sees one tap per input channel (torch's default init, by fan-in ``cout · 2**D``, shrinks the
    signal ~6x per upsampling, so the field starts learning from near-dead features)."""
    up = getattr(nn, f"ConvTranspose{ndim}d")(cin, cout, kernel_size=2, stride=2)
    nn.init.normal_(up.weight, std=nn.init.calculate_gain("leaky_relu", slope) / cin**0.5)
    nn.init.zeros_(up.bias)
    return up
