"""Registration metrics: pure functions of tensors (torch in, python floats / dicts out).

Conventions (the official Learn2Reg 2021 scorer, each named in its function's docstring):

* :func:`dice`, :func:`hd95` take the fixed, the UN-WARPED moving and the warped moving label
  maps. Foreground labels only; a label is scored iff it is present in the fixed AND the
  un-warped moving map (else skipped: the scorer's NaN); a scored label the warp erased scores
  Dice 0 and HD95 = the fixed grid's diagonal in mm, ``sqrt(sum((n_i * spacing_i)^2))`` (the
  surface-distance package gives inf; a common scorer variant the diagonal); means are over
  scored labels (``nanmean``). HD95 in mm from ``spacing``, with MONAI's
  ``HausdorffDistanceMetric(percentile=95)`` definition otherwise.
* :func:`klein_overlaps`: Klein et al. 2009's target, mean, union overlap, volume similarity,
  false negative and false positive error per label and pooled ("total"), on Dice's labels.
* :func:`sdlogj` = std(log(clip(J, 1e-9, 1e9))), :func:`sdlogj_l2r` = std(log(clip(J + 3,
  1e-9, 1e9))) on a 2-voxel border crop (official scorer), :func:`folding_pct` = % voxels with
  J <= 0; all on the FINAL integrated displacement ``(1, D, *S)`` / ``(D, *S)``, voxel units,
  which must be finite (a NaN/inf value raises ``ValueError`` naming the count).
* :func:`evaluate_pair` is the one code path used for validation, test and evaluation. A
  labelled pair with no label in common, or any non-finite metric, raises ``ValueError``;
  callers naming the pair re-raise :class:`MetricError` (``"pair F <- M: reason"``).
"""

from metrics.evaluate import LABEL_METRICS, PAIR_METRICS, TOTAL_METRICS, MetricError, evaluate_pair
from metrics.jacobian import folding_pct, jacobian_metrics, sdlogj, sdlogj_l2r
from metrics.overlap import KLEIN_MEASURES, LabelScores, OverlapScores, dice, klein_overlaps
from metrics.surface import erased_penalty, hd95

__all__ = [
    "PAIR_METRICS",
    "LABEL_METRICS",
    "TOTAL_METRICS",
    "KLEIN_MEASURES",
    "LabelScores",
    "OverlapScores",
    "klein_overlaps",
    "MetricError",
    "dice",
    "hd95",
    "erased_penalty",
    "sdlogj",
    "sdlogj_l2r",
    "folding_pct",
    "jacobian_metrics",
    "evaluate_pair",
]
