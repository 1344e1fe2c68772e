"""The one metric code path of the project: every validation, test and eval run calls
:func:`evaluate_pair` on each pair, so learned and classical methods are scored identically."""

from __future__ import annotations

import math
from typing import Any, Iterable

from metrics._inputs import displacement, label_pair, label_subset, spacing_tuple
from metrics.jacobian import _jacobian_det, _metrics_from_det
from metrics.overlap import _dice_from_counts, _label_counts
from metrics.surface import _hd95_arrays

_NAN = math.nan


def evaluate_pair(
    fixed_label,
    moved_label,
    disp,
    spacing,
    labels: Iterable[int] | None = None,
    hd95_enabled: bool = True,
    *,
    hd95_method: str = "kdtree",
) -> dict[str, Any]:
    """All metrics of one registered pair.

    Args:
        fixed_label: fixed label map ``(*S)``, ``(1, *S)`` or ``(1, 1, *S)`` (integer), or None
            when the pair has no labels: then every label metric is NaN.
        moved_label: moving label map warped to the fixed grid with the final displacement
            (same shape; required when ``fixed_label`` is given).
        disp: FINAL displacement from fixed to moving, ``(1, D, *S)`` or ``(D, *S)``, voxel
            units (never a velocity); None gives NaN Jacobian metrics.
        spacing: mm per voxel of the fixed grid (scalar or one value per axis); used by HD95
            only (may be None when ``fixed_label`` is None or ``hd95_enabled`` is False).
        labels: optional subset of foreground labels (each >= 1) for Dice and HD95.
        hd95_enabled: False skips HD95 (reported as NaN) to save time, e.g. during validation.
        hd95_method: ``"kdtree"`` (default) or ``"edt"`` (see :func:`metrics.hd95`; same values).

    Returns:
        ``{"dice": float, "hd95": float, "sdlogj": float, "sdlogj_l2r": float,
        "folding_pct": float, "dice_per_label": {label: float}, "hd95_per_label":
        {label: float}}`` with the conventions of :func:`metrics.dice`, :func:`metrics.hd95`
        (foreground only; labels absent from either image skipped; mean NaN if none left),
        :func:`metrics.sdlogj` (whole field), :func:`metrics.sdlogj_l2r` (2-voxel crop) and
        :func:`metrics.folding_pct` (whole field). The Jacobian is computed once.
    """
    fn = "evaluate_pair"
    out: dict[str, Any] = {
        "dice": _NAN,
        "hd95": _NAN,
        "sdlogj": _NAN,
        "sdlogj_l2r": _NAN,
        "folding_pct": _NAN,
        "dice_per_label": {},
        "hd95_per_label": {},
    }
    u = displacement(disp, fn) if disp is not None else None
    ndim = u.dim() - 2 if u is not None else None

    if fixed_label is not None:
        if moved_label is None:
            raise ValueError(f"{fn}() 'moved_label' is None but 'fixed_label' is given")
        f, m = label_pair(fixed_label, moved_label, fn, ndim)
        if u is not None and tuple(u.shape[2:]) != tuple(f.shape):
            raise ValueError(
                f"{fn}() 'disp' spatial shape {tuple(u.shape[2:])} differs from the label maps' "
                f"{tuple(f.shape)}; labels must be on the displacement's (fixed) grid"
            )
        subset = label_subset(labels, fn)
        d = _dice_from_counts(*_label_counts(f, m), subset)
        out["dice"], out["dice_per_label"] = d.mean, d.per_label
        if hd95_enabled:
            sp = spacing_tuple(spacing, f.dim(), fn)
            h = _hd95_arrays(f.cpu().numpy(), m.cpu().numpy(), sp, subset, hd95_method, fn=fn)
            out["hd95"], out["hd95_per_label"] = h.mean, h.per_label

    if u is not None:
        jac = _metrics_from_det(_jacobian_det(u), 0, 2, fn)
        out["sdlogj"] = jac["sdlogj"]
        out["sdlogj_l2r"] = jac["sdlogj_l2r"]
        out["folding_pct"] = jac["folding_pct"]
    return out
