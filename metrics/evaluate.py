"""The one metric code path of the project: every validation, test and eval run calls
:func:`evaluate_pair` on each pair, so learned and classical methods are scored identically.

Rules (the official Learn2Reg 2021 scorer's, see :mod:`metrics.overlap` / :mod:`metrics.surface`):
Dice, HD95 and Klein et al. 2009's overlap measures score the foreground labels present in the fixed AND the un-warped moving label
map; a label the warp erases scores Dice 0 and the HD95 penalty (fixed grid diagonal in mm) and
is counted in ``n_erased``. A labelled pair must yield a finite value for every metric it
computes: no label in common, a non-finite displacement or any NaN result raises ``ValueError``
(a failed pair is never turned into a NaN that a ``nanmean`` later drops). Callers that know
the pair's ids re-raise it as :class:`MetricError` naming the pair.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from metrics._inputs import displacement, label_maps, label_subset, refuse_thin_3d, spacing_tuple, \
    spatial_ndim_from_spacing
from metrics.jacobian import _jacobian_det, _metrics_from_det
from metrics.overlap import KLEIN_MEASURES, _dice_from_counts, _klein_from_counts, _label_counts, _present
from metrics.surface import _hd95_arrays

_NAN = math.nan
# Klein et al. 2009's measures pooled over a pair's scored labels ("total" overlap, metrics.klein_overlaps)
TOTAL_METRICS = tuple(f"total_{m}" for m in KLEIN_MEASURES)
# the per-pair metrics every result row holds, in the order of the results files (the one list)
PAIR_METRICS = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", *TOTAL_METRICS)
# the per-label metrics of every pair (labels.csv), in file order; a label's Klein mean overlap is its Dice
LABEL_METRICS = ("dice", *(m for m in KLEIN_MEASURES if m != "mean_overlap"))


class MetricError(ValueError):
    """A pair whose metrics cannot be computed (no label in common, a non-finite displacement,
    a NaN result); the message names the pair: ``"pair <fixed_id> <- <moving_id>: <reason>"``.
    The entry points report it as one ``error: ...`` line."""


def _label_list(labels: set[int], limit: int = 12) -> str:
    ordered = sorted(labels)
    shown = ", ".join(str(v) for v in ordered[:limit])
    return f"[{shown}{', ...' if len(ordered) > limit else ''}] ({len(ordered)})"


def evaluate_pair(
    fixed_label,
    moving_label,
    moved_label,
    disp,
    spacing,
    labels: Iterable[int] | None = None,
    hd95_enabled: bool = True,
    *,
    hd95_method: str = "kdtree",
    moving_present: Iterable[int] | None = None,
) -> dict[str, Any]:
    """All metrics of one registered pair.

    Args:
        fixed_label: fixed label map ``(*S)``, ``(1, *S)`` or ``(1, 1, *S)`` (integer), or None
            when the pair has no labels: then every label metric is NaN (label-free data).
        moving_label: the UN-WARPED moving label map on the fixed grid (same shape; required
            when ``fixed_label`` is given). With ``fixed_label`` it decides which labels are
            scored (Learn2Reg scorer rule), so a warp that erases a label cannot hide it.
        moved_label: the moving label map warped to the fixed grid with the final displacement
            (same shape; required when ``fixed_label`` is given).
        disp: FINAL displacement from fixed to moving, ``(1, D, *S)`` or ``(D, *S)``, voxel
            units (never a velocity), every value finite; None gives NaN Jacobian metrics.
        spacing: mm per voxel of the fixed grid (scalar or one value per axis); used by HD95
            only (may be None when ``fixed_label`` is None or ``hd95_enabled`` is False).
        labels: optional subset of foreground labels (each >= 1) for Dice and HD95.
        hd95_enabled: False skips HD95 (reported as NaN) to save time, e.g. during validation.
        hd95_method: ``"kdtree"`` (default) or ``"edt"`` (see :func:`metrics.hd95`; same values).
        moving_present: the foreground labels of the moving label map as stored, when
            ``moving_label`` is that map resampled onto the fixed grid (another grid in world
            space): a label too small for the fixed grid can vanish in that resampling yet is
            present in the moving map, so the rule must score it. Must include every foreground
            label of ``moving_label`` (a resampling creates none). Default: those of ``moving_label``.

    Returns:
        ``{"dice": float, "hd95": float, "sdlogj": float, "sdlogj_l2r": float,
        "folding_pct": float, "total_<measure>": float for each of :data:`TOTAL_METRICS`,
        "dice_per_label": {label: float}, "hd95_per_label": {label: float}, "label_metrics":
        {label: {name: float}} (names: :data:`LABEL_METRICS`), "n_erased": int,
        "erased_labels": tuple}`` with the conventions of :func:`metrics.klein_overlaps` (the
        ``total_*`` values pool the scored labels' voxel counts; an erased label has target,
        mean and union overlap 0, volume similarity -2, false negative error 1 and false
        positive error 0), of
        :func:`metrics.dice` and :func:`metrics.hd95` (foreground labels present in the fixed
        AND the un-warped moving map; a label erased by the warp scores Dice 0 and HD95 = the
        fixed grid's diagonal in mm; ``n_erased`` / ``erased_labels`` count / list those,
        0 / () for a label-free pair), :func:`metrics.sdlogj` (whole field),
        :func:`metrics.sdlogj_l2r` (2-voxel crop) and :func:`metrics.folding_pct` (whole
        field). The Jacobian is computed once. NaN only for what was not asked (no labels,
        ``hd95_enabled=False``, no ``disp``).

    Raises:
        ValueError: bad inputs; a labelled pair with no foreground label in common between
        ``fixed_label`` and ``moving_label`` (within ``labels`` when given); a non-finite
        ``disp`` (naming the count); any computed metric that is not finite.
    """
    fn = "evaluate_pair"
    out: dict[str, Any] = {
        "dice": _NAN,
        "hd95": _NAN,
        "sdlogj": _NAN,
        "sdlogj_l2r": _NAN,
        "folding_pct": _NAN,
        **{name: _NAN for name in TOTAL_METRICS},
        "dice_per_label": {},
        "hd95_per_label": {},
        "label_metrics": {},
        "n_erased": 0,
        "erased_labels": (),
    }
    computed: list[str] = []
    u = displacement(disp, fn) if disp is not None else None

    if fixed_label is not None:
        computed += _label_metrics(out, fixed_label, moving_label, moved_label, u, spacing, labels, hd95_enabled,
                                   hd95_method, fn, moving_present)

    if u is not None:
        jac = _metrics_from_det(_jacobian_det(u, fn), 0, 2, fn)
        out["sdlogj"] = jac["sdlogj"]
        out["sdlogj_l2r"] = jac["sdlogj_l2r"]
        out["folding_pct"] = jac["folding_pct"]
        computed += ["sdlogj", "sdlogj_l2r", "folding_pct"]

    for key in computed:
        if not math.isfinite(out[key]):
            raise ValueError(f"{fn}() '{key}' is {out[key]} (not finite); a metric must be a number")
    return out


def _label_metrics(out: dict[str, Any], fixed_label, moving_label, moved_label, u, spacing, labels,
                   hd95_enabled: bool, hd95_method: str, fn: str, moving_present=None) -> list[str]:
    """Fill ``out``'s label metrics (Dice, Klein's overlaps, HD95, erased labels) of :func:`evaluate_pair`; returns the
    names of the metrics computed."""
    computed = []
    ndim = u.dim() - 2 if u is not None else spatial_ndim_from_spacing(spacing)
    for name, value in (("moving_label", moving_label), ("moved_label", moved_label)):
        if value is None:
            raise ValueError(f"{fn}() '{name}' is None but 'fixed_label' is given")
    f, mv, m = label_maps(fixed_label, moving_label, moved_label, fn, ndim)
    if u is not None and tuple(u.shape[2:]) != tuple(f.shape):
        raise ValueError(
            f"{fn}() 'disp' spatial shape {tuple(u.shape[2:])} differs from the label maps' "
            f"{tuple(f.shape)}; labels must be on the displacement's (fixed) grid"
        )
    subset = label_subset(labels, fn)
    counts = _label_counts(f, mv, m)
    in_mv = _present(counts.values, counts.moving)
    if moving_present is not None:
        given = set(label_subset(moving_present, fn, "moving_present"))
        if not in_mv <= given:
            raise ValueError(f"{fn}() 'moving_present' {_label_list(given)} lacks labels of moving_label "
                             f"{_label_list(in_mv - given)}; it must name every label of the moving map as stored")
        in_mv = given
    d = _dice_from_counts(counts, subset, in_mv)
    if not d.per_label:
        in_f = _present(counts.values, counts.fixed)
        within = "" if subset is None else f" within labels={_label_list(set(subset))}"
        raise ValueError(
            f"{fn}() no foreground label in common between fixed_label {_label_list(in_f)} and "
            f"moving_label {_label_list(in_mv)}{within}: nothing to score (wrong label maps?)"
        )
    out["dice"], out["dice_per_label"] = d.mean, d.per_label
    out["n_erased"], out["erased_labels"] = len(d.erased), d.erased
    computed.append("dice")
    k = _klein_from_counts(counts, subset, in_mv)  # the same counts and labels as Dice
    out.update({f"total_{m}": v for m, v in k.total.items()})
    out["label_metrics"] = {lab: {"dice": d.per_label[lab], **{m: v[m] for m in LABEL_METRICS if m != "dice"}}
                            for lab, v in k.per_label.items()}
    computed += TOTAL_METRICS
    if hd95_enabled:
        refuse_thin_3d(f, ndim, fn)
        sp = spacing_tuple(spacing, f.dim(), fn)
        h = _hd95_arrays(
            f.cpu().numpy(), mv.cpu().numpy(), m.cpu().numpy(), sp, subset, hd95_method, fn=fn, moving_present=in_mv
        )
        out["hd95"], out["hd95_per_label"] = h.mean, h.per_label
        computed.append("hd95")

    return computed
