"""Image pyramids and the small numerical pieces the optimisers share."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from spatial.filters import gaussian_blur

__all__ = ["level_shape", "level_need", "min_input_size", "downsample", "check_pair", "ConvergenceMonitor",
           "MIN_LEVEL_VOXELS", "level_line"]

# The fewest voxels per axis of any pyramid level: an affine (12 parameters in 3-D) and a smooth
# field are both determined on 4^3 = 64 voxels, not on 2 or 3 per axis.
MIN_LEVEL_VOXELS = 4


def level_shape(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """Grid of a pyramid level: ``round(n / scale)`` per axis, at least 8 voxels."""
    return tuple(max(int(round(n / scale)), min(8, n)) for n in shape)


def level_need(sim: str, sim_kwargs: dict | None, sigmas: Sequence[float] = ()) -> int:
    """Fewest voxels per axis a pyramid level needs: the largest of :data:`MIN_LEVEL_VOXELS`;
    the LNCC window (``sim == "lncc"``: ``sim_kwargs["window"]``, default 9), which must fit in
    the level, else every window is clipped to the whole axis and the "local" correlation is
    global along it; and ``2 * ceil(2 sigma) + 1`` for each Gaussian smoothing ``sigma`` (the
    gradient's and the field's, in voxels of the level), the kernel's ±2 sigma core (95 % of its
    weight), without which smoothing flattens the field to a translation along that axis."""
    need = MIN_LEVEL_VOXELS
    if sim == "lncc":
        need = max(need, int((sim_kwargs or {}).get("window", 9)))
    for sigma in sigmas:
        if sigma > 0:
            need = max(need, 2 * math.ceil(2 * float(sigma)) + 1)
    return need


def min_input_size(scales: Sequence[float], need: int) -> int:
    """The smallest axis length ``n`` whose every pyramid level (:func:`level_shape` at each of
    ``scales``) has at least ``need`` voxels. :func:`level_shape` keeps ``min(8, n)`` voxels at
    any scale, so for ``need <= 8`` this is ``need`` itself; beyond 8 the largest scale sets it
    (about ``need * max(scales)``)."""
    n = 1
    while any(level_shape((n,), s)[0] < need for s in scales):
        n += 1
    return n


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


def level_line(stage: str, index: int, n_levels: int, scale: float, shape: Sequence[int], trace: Sequence[float],
               iterations: int, seconds: float) -> str:
    """What a verbose run reports when a pyramid level ends: ``"greedy level 2/3 (scale 2, grid
    48x56x48): 87/200 iterations (converged), loss -0.4123, 1.93 s"``; ``trace`` is the level's loss
    trace (:attr:`ConvergenceMonitor.trace`: one value per iteration run), ``iterations`` the
    level's budget (fewer run: the level converged)."""
    ran = len(trace)
    loss = f"loss {trace[-1]:.6g}" if trace else "no loss (no iteration)"
    return (f"{stage} level {index + 1}/{n_levels} (scale {scale:g}, grid {'x'.join(str(n) for n in shape)}): "
            f"{ran}/{iterations} iterations{' (converged)' if ran < iterations else ''}, {loss}, {seconds:.2f} s")
