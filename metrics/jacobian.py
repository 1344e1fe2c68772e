"""Regularity of the FINAL displacement: SDlogJ (two conventions) and folding %.

All metrics take the integrated displacement from fixed to moving, never a velocity
(a velocity looks far smoother and never folds). ``u`` is one pair, ``(1, D, *S)`` or
``(D, *S)``, in voxel units (the project convention, see :mod:`spatial.functional`).
``J = det(I + ∇u)`` comes from :func:`spatial.jacobian_determinant` (central differences
inside, one-sided on the border, as ``numpy.gradient``). Every value of ``u`` must be finite:
a NaN or inf raises ``ValueError`` naming the count (``NaN <= 0`` is False, so a NaN field
would otherwise report 0 % folding).

Conventions:

* ``sdlogj``: population std (ddof 0) of ``log(clip(J, 1e-9, 1e9))`` over all voxels
  (``crop=0``). The clip keeps folded voxels (``J <= 0``) in the statistic with
  ``log(1e-9) ≈ -20.7`` instead of dropping them, so any folding inflates it strongly.
* ``sdlogj_l2r``: the official Learn2Reg scorer, std of ``log(clip(J + 3, 1e-9, 1e9))`` over
  the field cropped by 2 voxels on every side (``crop=2``; the scorer crops ``[2:-2]`` because
  its zero-padded gradients are wrong on the border). Inside that crop our central differences
  equal the scorer's, so the value matches it.
* ``folding_pct``: ``100 * mean(J <= 0)`` over all voxels (``crop=0``).
"""

from __future__ import annotations

import torch

from metrics._inputs import displacement
from spatial.jacobian import jacobian_determinant

_CLIP_MIN = 1e-9
_CLIP_MAX = 1e9


def _jacobian_det(u: torch.Tensor, fn: str) -> torch.Tensor:
    """``(1, D, *S) -> (*S)`` determinant by :func:`spatial.jacobian_determinant` (no autograd).

    A finite ``u`` whose determinant is not finite everywhere (values so large that the finite
    differences overflow its dtype) raises ``ValueError``: no statistic of it would be a number.
    """
    with torch.no_grad():
        j = jacobian_determinant(u)[0]
    bad = int(j.numel() - torch.count_nonzero(torch.isfinite(j)))
    if bad:
        raise ValueError(
            f"{fn}() the Jacobian determinant of 'u' has {bad} non-finite value"
            f"{'s' if bad != 1 else ''} of {j.numel()} (max |u| {float(u.abs().max()):.3g} "
            f"overflows {u.dtype}); the displacement is not a usable field"
        )
    return j


def _crop(x: torch.Tensor, crop: int, fn: str) -> torch.Tensor:
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
        raise ValueError(f"{fn}() 'crop' must be a non-negative int, got {crop!r}")
    if crop == 0:
        return x
    if any(s <= 2 * crop for s in x.shape):
        raise ValueError(
            f"{fn}() 'crop'={crop} leaves no voxel of a field with spatial shape {tuple(x.shape)}"
        )
    return x[tuple(slice(crop, s - crop) for s in x.shape)]


def _std_log(x: torch.Tensor) -> tuple[float, float]:
    """(population std, mean) of ``log(clip(x, 1e-9, 1e9))``, reduced in float64."""
    logs = x.clamp(_CLIP_MIN, _CLIP_MAX).log_().double()
    std, mean = torch.std_mean(logs, correction=0)
    return float(std), float(mean)


def _metrics_from_det(j: torch.Tensor, crop: int, l2r_crop: int, fn: str) -> dict[str, float]:
    jc = _crop(j, crop, fn)
    sd, mean = _std_log(jc)
    folding = 100.0 * float(torch.count_nonzero(jc <= 0)) / jc.numel()
    sd_l2r, _ = _std_log(_crop(j, l2r_crop, fn) + 3.0)
    return {"sdlogj": sd, "sdlogj_l2r": sd_l2r, "folding_pct": folding, "logj_mean": mean}


def jacobian_metrics(u, crop: int = 0, l2r_crop: int = 2) -> dict[str, float]:
    """All Jacobian metrics from ONE determinant computation.

    Args:
        u: final displacement of one pair, ``(1, D, *S)`` or ``(D, *S)``, voxel units.
        crop: voxels dropped on every side for ``sdlogj``, ``folding_pct`` and ``logj_mean``.
        l2r_crop: voxels dropped on every side for ``sdlogj_l2r`` (2 = Learn2Reg scorer).

    Returns:
        ``{"sdlogj", "sdlogj_l2r", "folding_pct", "logj_mean"}`` (python floats), with the
        conventions of :func:`sdlogj`, :func:`sdlogj_l2r` and :func:`folding_pct`;
        ``logj_mean`` is the mean of ``log(clip(J, 1e-9, 1e9))``.
    """
    u = displacement(u, "jacobian_metrics")
    return _metrics_from_det(_jacobian_det(u, "jacobian_metrics"), crop, l2r_crop, "jacobian_metrics")


def sdlogj(u, crop: int = 0) -> float:
    """Std of the log Jacobian determinant: ``std(log(clip(J, 1e-9, 1e9)))``.

    ``u``: final displacement ``(1, D, *S)`` or ``(D, *S)`` (voxel units, never a velocity).
    Population std (ddof 0) over all voxels (``crop=0``; ``crop=k`` drops k voxels per side).
    Folded voxels (``J <= 0``) are clipped to ``1e-9`` (log ≈ -20.7), not dropped.
    """
    u = displacement(u, "sdlogj")
    return _std_log(_crop(_jacobian_det(u, "sdlogj"), crop, "sdlogj"))[0]


def sdlogj_l2r(u, crop: int = 2) -> float:
    """Learn2Reg scorer's SDlogJ: ``std(log(clip(J + 3, 1e-9, 1e9)))`` on the field cropped by
    ``crop`` voxels per side (default 2, as the official scorer crops ``[2:-2]``).

    ``u``: final displacement ``(1, D, *S)`` or ``(D, *S)`` (voxel units, never a velocity).
    Population std (ddof 0), like ``numpy.std``.
    """
    u = displacement(u, "sdlogj_l2r")
    return _std_log(_crop(_jacobian_det(u, "sdlogj_l2r"), crop, "sdlogj_l2r") + 3.0)[0]


def folding_pct(u, crop: int = 0) -> float:
    """Percentage of folded voxels: ``100 * mean(J <= 0)`` over all voxels (``crop=0``).

    ``u``: final displacement ``(1, D, *S)`` or ``(D, *S)`` (voxel units, never a velocity).
    """
    u = displacement(u, "folding_pct")
    j = _crop(_jacobian_det(u, "folding_pct"), crop, "folding_pct")
    return 100.0 * float(torch.count_nonzero(j <= 0)) / j.numel()

