"""Separable filtering: the one implementation behind LNCC's box sums and Gaussian smoothing.

``separable_filter(x, kernels)`` convolves each channel of ``(B, C, *S)`` with one 1-D kernel
per spatial axis ('same' size); ``gaussian_blur`` and the box sums of :mod:`losses.lncc` are
thin wrappers over it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["separable_filter", "gaussian_kernel1d", "gaussian_blur", "PADDINGS"]

PADDINGS = ("zeros", "replicate")


def separable_filter(
    x: torch.Tensor,
    kernels: Sequence[torch.Tensor | None],
    padding: str = "zeros",
    channels_last: bool | None = None,
) -> torch.Tensor:
    """Depthwise separable filtering: ``(B, C, *S) -> (B, C, *S)``.

    ``out = x * k_0 (axis 0) * k_1 (axis 1) ...``: each channel is correlated with the odd-length
    1-D kernel ``kernels[i]`` along spatial axis ``i`` (``None`` skips an axis); 'same' output
    size with ``padding`` ``"zeros"`` or ``"replicate"`` (edge values repeated).

    On CPU the passes run in channels-last layout, where oneDNN's depthwise kernels are several
    times faster, and the first-axis pass is a 2-D convolution with kernel ``(k, 1)`` on the
    ``(B, C, S0, S1 * S2)`` view: a 3-D kernel ``(k, 1, 1)`` falls back to PyTorch's slow
    reference convolution when single-threaded (its "1x1 filter" heuristic). Other devices use
    plain grouped convolutions (``channels_last=None`` picks by device). Same sums either way.
    """
    ndim = x.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"separable_filter() expects (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    if len(kernels) != ndim:
        raise ValueError(f"separable_filter() needs one kernel per spatial axis ({ndim}), got {len(kernels)}")
    if padding not in PADDINGS:
        raise ValueError(f"separable_filter() 'padding' must be one of {list(PADDINGS)}, got {padding!r}")
    for axis, k in enumerate(kernels):
        if k is not None and (k.dim() != 1 or k.numel() % 2 == 0):
            raise ValueError(f"separable_filter() kernel {axis} must be 1-D of odd length, got shape {tuple(k.shape)}")
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    c = x.shape[1]
    conv = F.conv2d if ndim == 2 else F.conv3d

    def weight(k: torch.Tensor, axis: int, nd: int) -> torch.Tensor:
        shape = [1] * nd
        shape[axis] = k.numel()
        return k.to(device=x.device, dtype=x.dtype).reshape(1, 1, *shape).expand(c, 1, *shape)

    def pad_for(axis: int, r: int, nd: int) -> tuple[tuple[int, ...], list[int]]:
        """(conv padding, F.pad list) for a pass along ``axis`` of an ``nd``-D tensor."""
        if padding == "zeros":
            conv_pad = [0] * nd
            conv_pad[axis] = r
            return tuple(conv_pad), []
        pad = [0] * (2 * nd)  # F.pad lists the last axis first
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
        return (0,) * nd, pad

    def one_pass(t: torch.Tensor, k: torch.Tensor, axis: int, nd: int) -> torch.Tensor:
        r = k.numel() // 2
        conv_pad, pad = pad_for(axis, r, nd)
        if pad:
            t = F.pad(t, pad, mode="replicate")
        f = F.conv2d if nd == 2 else F.conv3d
        return f(t, weight(k, axis, nd), padding=conv_pad, groups=c)

    if not channels_last:
        for axis, k in enumerate(kernels):
            if k is not None:
                x = one_pass(x, k, axis, ndim)
        return x
    del conv
    x = x.contiguous(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
    for axis in range(ndim - 1, 0, -1):  # last axis first; the first axis below
        if kernels[axis] is not None:
            x = one_pass(x, kernels[axis], axis, ndim)
    if kernels[0] is None:
        return x
    if padding == "replicate":
        r = kernels[0].numel() // 2
        x = F.pad(x, [0] * (2 * (ndim - 1)) + [r, r], mode="replicate")
    shape = x.shape
    flat = x.reshape(shape[0], c, shape[2], -1)
    r0 = kernels[0].numel() // 2
    flat = F.conv2d(flat, weight(kernels[0], 0, 2), padding=(r0 if padding == "zeros" else 0, 0), groups=c)
    return flat.reshape(shape[0], c, flat.shape[2], *shape[3:])


def gaussian_kernel1d(sigma: float, truncate: float = 3.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised sampled Gaussian of std ``sigma`` (voxels), radius ``ceil(truncate * sigma)``."""
    if not float(sigma) > 0:
        raise ValueError(f"gaussian_kernel1d() 'sigma' must be > 0, got {sigma!r}")
    r = max(int(math.ceil(truncate * float(sigma))), 1)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(
    x: torch.Tensor,
    sigma: float | Sequence[float],
    truncate: float = 3.0,
    padding: str = "replicate",
) -> torch.Tensor:
    """Gaussian smoothing of every channel: ``(B, C, *S) -> (B, C, *S)``.

    ``sigma`` in voxels, one value or one per spatial axis; an axis with ``sigma <= 0`` is left
    alone. ``padding="replicate"`` (default) keeps a constant image or field constant up to the
    border; ``"zeros"`` treats the outside as 0.
    """
    ndim = x.dim() - 2
    sigmas = [float(sigma)] * ndim if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != ndim:
        raise ValueError(f"gaussian_blur() 'sigma' needs 1 or {ndim} values, got {len(sigmas)}")
    kernels = [gaussian_kernel1d(s, truncate, x.dtype, x.device) if s > 0 else None for s in sigmas]
    if all(k is None for k in kernels):
        return x
    return separable_filter(x, kernels, padding=padding)
