"""Image pyramids and the small numerical pieces the optimisers share."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from spatial.filters import gaussian_blur

__all__ = ["level_shape", "downsample", "check_pair", "ConvergenceMonitor"]


def level_shape(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """Grid of a pyramid level: ``round(n / scale)`` per axis, at least 8 voxels."""
    return tuple(max(int(round(n / scale)), min(8, n)) for n in shape)


def downsample(img: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, C, *S)`` -> the pyramid level ``scale``: Gaussian blur (std ``scale / 2`` voxels,
    the usual anti-aliasing choice), then linear resampling with ``align_corners=True``.
    ``scale == 1`` returns the input."""
    if scale == 1:
        return img
    shape = level_shape(img.shape[2:], scale)
    mode = "trilinear" if img.dim() == 5 else "bilinear"
    return F.interpolate(gaussian_blur(img, 0.5 * scale), size=shape, mode=mode, align_corners=True)


def check_pair(fixed: torch.Tensor, moving: torch.Tensor, fn: str) -> int:
    """Validate a pair ``(B, 1, *S)``: same shape, finite, not constant. Returns ``D``."""
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not torch.is_tensor(t) or t.dim() not in (4, 5) or t.shape[1] != 1:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{fn}: '{name}' must be a (B, 1, *S) tensor with 2 or 3 spatial dims, got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"{fn}: '{name}' must be floating point, got {t.dtype}")
    if fixed.shape != moving.shape:
        raise ValueError(
            f"{fn}: fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} differ in shape; "
            "resample both to one grid first"
        )
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{fn}: '{name}' has NaN or infinite voxels")
        flat = t.flatten(1)
        if (flat.amax(dim=1) == flat.amin(dim=1)).any():
            raise ValueError(f"{fn}: '{name}' is constant: there is nothing to register (similarity undefined)")
    return fixed.dim() - 2


class ConvergenceMonitor:
    """Stops a pyramid level when the loss improved by less than ``tolerance`` (relative)
    over the last ``patience`` iterations. ``tolerance == 0`` never stops early."""

    def __init__(self, tolerance: float, patience: int) -> None:
        self.tolerance = float(tolerance)
        self.patience = int(patience)
        self.trace: list[float] = []

    def update(self, loss: float) -> bool:
        self.trace.append(float(loss))
        if self.tolerance <= 0 or len(self.trace) <= self.patience:
            return False
        before = self.trace[-1 - self.patience]
        return (before - self.trace[-1]) < self.tolerance * max(abs(before), 1e-12)
