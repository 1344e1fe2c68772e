"""Argument checks and precision handling shared by the similarity losses."""

from __future__ import annotations

import functools

import torch

from spatial.precision import HALF_DTYPES, float32_region


def _check_pair(fixed: torch.Tensor, moving: torch.Tensor, fn: str) -> int:
    """Validate an image pair ``(B, C, *S)`` (2 or 3 spatial dims) and return the number of spatial dims."""
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}() '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (4, 5):
            raise ValueError(
                f"{fn}() '{name}' must have shape (B, C, *spatial) with 2 or 3 spatial dims, "
                f"got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{fn}() '{name}' must be floating point, got {t.dtype}")
    if fixed.dtype != moving.dtype:
        raise ValueError(f"{fn}() 'fixed' and 'moving' must have the same dtype, got {fixed.dtype} and {moving.dtype}")
    if fixed.shape != moving.shape:
        raise ValueError(
            f"{fn}() 'fixed' and 'moving' must have the same shape, got {tuple(fixed.shape)} "
            f"and {tuple(moving.shape)}"
        )
    return fixed.dim() - 2


def _full_precision(fn):
    """Run ``fn(fixed, moving, ...)`` with autocast disabled and half inputs promoted to float32
    (:mod:`spatial.precision`, the one rule for float32 regions).

    Window statistics ``E[I^2] - E[I]^2`` and histogram counts over a million voxels are not
    representable in float16/bfloat16; the scalar result is float32 for such inputs.
    """

    @functools.wraps(fn)
    def wrapper(fixed: torch.Tensor, moving: torch.Tensor, *args, **kwargs):
        if fixed.dtype in HALF_DTYPES or moving.dtype in HALF_DTYPES:
            fixed, moving = fixed.float(), moving.float()
        with float32_region(fixed.device):
            return fn(fixed, moving, *args, **kwargs)

    return wrapper
