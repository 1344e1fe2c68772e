"""Separable filtering: the one implementation behind LNCC's box sums and Gaussian smoothing.

``separable_filter(x, kernels)`` correlates each channel of ``(B, C, *S)`` with one 1-D kernel
per spatial axis ('same' size); ``gaussian_blur`` and the box sums of :mod:`losses.lncc` are
thin wrappers over it.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

__all__ = ["separable_filter", "gaussian_kernel1d", "gaussian_blur", "PADDINGS", "GAUSSIAN_KINDS"]

PADDINGS = ("zeros", "replicate")


def _filter_axis(x: torch.Tensor, k: list[float], axis: int, padding: str) -> torch.Tensor:
    """One 1-D pass along tensor dim ``axis``: ``out[i] = sum_t k[t] x[i + t - r]`` ('same' size).

    Accumulates shifted views of ``x`` (``2 r + 1`` multiply-adds per voxel, no padded copy):
    the in-image part of each shift is one strided ``add_``; with ``"replicate"`` the part that
    falls outside adds the edge slice, broadcast.
    """
    r = len(k) // 2
    n = x.shape[axis]
    out = x * k[r]
    for j in range(1, r + 1):
        m = min(j, n)
        if n > m:
            out.narrow(axis, 0, n - m).add_(x.narrow(axis, m, n - m), alpha=k[r + j])
            out.narrow(axis, m, n - m).add_(x.narrow(axis, 0, n - m), alpha=k[r - j])
        if padding == "replicate":
            out.narrow(axis, n - m, m).add_(x.narrow(axis, n - 1, 1), alpha=k[r + j])
            out.narrow(axis, 0, m).add_(x.narrow(axis, 0, 1), alpha=k[r - j])
    return out


def separable_filter(
    x: torch.Tensor,
    kernels: Sequence[torch.Tensor | Sequence[float] | None],
    padding: str = "zeros",
) -> torch.Tensor:
    """Depthwise separable filtering: ``(B, C, *S) -> (B, C, *S)``.

    ``out = x * k_0 (axis 0) * k_1 (axis 1) ...``: each channel is correlated with the odd-length
    1-D kernel ``kernels[i]`` along spatial axis ``i`` (``None`` skips an axis); 'same' output
    size with ``padding`` ``"zeros"`` or ``"replicate"`` (edge values repeated; kernels longer
    than an axis repeat the edge too). A kernel is a 1-D tensor or a sequence of floats: its taps
    are scalars of the passes, so a CPU tensor or a list costs no device synchronisation.

    Each pass is a sum of shifted views (:func:`_filter_axis`), memory-bound and the same on
    every device: on 2 CPU cores it is 5-10x faster than grouped 1-D convolutions for the short
    kernels used here (LNCC boxes of 5-9, Gaussians of sigma <= 2), and needs no padded copy or
    layout change. Differentiable (autograd through the in-place adds of a fresh tensor).
    """
    ndim = x.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"separable_filter() expects (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    if len(kernels) != ndim:
        raise ValueError(f"separable_filter() needs one kernel per spatial axis ({ndim}), got {len(kernels)}")
    if padding not in PADDINGS:
        raise ValueError(f"separable_filter() 'padding' must be one of {list(PADDINGS)}, got {padding!r}")
    taps: list[list[float] | None] = []
    for axis, k in enumerate(kernels):
        if isinstance(k, torch.Tensor):
            if k.dim() != 1:
                raise ValueError(f"separable_filter() kernel {axis} must be 1-D of odd length, got shape {tuple(k.shape)}")
            k = k.detach().cpu().tolist()
        if k is not None and len(k) % 2 == 0:
            raise ValueError(f"separable_filter() kernel {axis} must be 1-D of odd length, got length {len(k)}")
        taps.append(None if k is None else [float(v) for v in k])
    for axis, k in enumerate(taps):
        if k is not None:
            x = _filter_axis(x, k, axis + 2, padding)
    return x


# how a Gaussian of std sigma becomes taps on the voxel grid: "sampled", its density at each integer
# offset; "integrated", its mass over each voxel's bin [t - 1/2, t + 1/2] (FireANTs' kernel). They agree
# for sigma >= 1; below, the sampled kernel collapses to the identity (sigma 0.25: neighbour weight
# 3e-4, variance 0.001) while the integrated one still smooths (0.023, variance 0.046)
GAUSSIAN_KINDS = ("sampled", "integrated")


def gaussian_kernel1d(sigma: float, truncate: float = 3.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None, kind: str = "sampled") -> torch.Tensor:
    """Normalised Gaussian of std ``sigma`` (voxels), radius ``ceil(truncate * sigma)`` (at least 1),
    discretised as ``kind`` says (:data:`GAUSSIAN_KINDS`)."""
    if not float(sigma) > 0:
        raise ValueError(f"gaussian_kernel1d() 'sigma' must be > 0, got {sigma!r}")
    if kind not in GAUSSIAN_KINDS:
        raise ValueError(f"gaussian_kernel1d() 'kind' must be one of {GAUSSIAN_KINDS}, got {kind!r}")
    r = max(int(math.ceil(truncate * float(sigma))), 1)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    if kind == "sampled":
        k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    else:
        scale = 1.0 / (float(sigma) * math.sqrt(2.0))
        k = 0.5 * (torch.erf((t + 0.5) * scale) - torch.erf((t - 0.5) * scale))
    return (k / k.sum()).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _gaussian_taps(sigma: float, truncate: float, kind: str = "sampled") -> tuple[float, ...]:
    """The taps of :func:`gaussian_kernel1d` (float64) as Python floats, computed once per
    ``(sigma, truncate, kind)``: an optimiser smoothing every iteration builds no tensor for them."""
    return tuple(gaussian_kernel1d(sigma, truncate, torch.float64, kind=kind).tolist())


def gaussian_blur(
    x: torch.Tensor,
    sigma: float | Sequence[float],
    truncate: float = 3.0,
    padding: str = "replicate",
    kind: str = "sampled",
) -> torch.Tensor:
    """Gaussian smoothing of every channel: ``(B, C, *S) -> (B, C, *S)``.

    ``sigma`` in voxels, one value or one per spatial axis; an axis with ``sigma <= 0`` is left
    alone. ``padding="replicate"`` (default) keeps a constant image or field constant up to the
    border; ``"zeros"`` treats the outside as 0. ``kind``: the kernel's discretisation
    (:data:`GAUSSIAN_KINDS`; ``"integrated"`` where a sigma below 1 voxel must still smooth).
    """
    ndim = x.dim() - 2
    sigmas = [float(sigma)] * ndim if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != ndim:
        raise ValueError(f"gaussian_blur() 'sigma' needs 1 or {ndim} values, got {len(sigmas)}")
    kernels = [_gaussian_taps(s, float(truncate), kind) if s > 0 else None for s in sigmas]
    if all(k is None for k in kernels):
        return x
    return separable_filter(x, kernels, padding=padding)
