"""Registration metrics: pure functions of tensors (torch in, python floats / dicts out).

Conventions (Learn2Reg 2021 scorer, each named in its function's docstring):

* :func:`dice`, :func:`hd95`: foreground labels only; a label absent from either image is
  skipped (not 0); means over scored labels, NaN if none. HD95 in mm from ``spacing``, with
  MONAI's ``HausdorffDistanceMetric(percentile=95)`` definition.
* :func:`sdlogj` = std(log(clip(J, 1e-9, 1e9))), :func:`sdlogj_l2r` = std(log(clip(J + 3,
  1e-9, 1e9))) on a 2-voxel border crop (official scorer), :func:`folding_pct` = % voxels with
  J <= 0; all on the FINAL integrated displacement ``(1, D, *S)`` / ``(D, *S)``, voxel units.
* :func:`evaluate_pair` is the one code path used for validation, test and evaluation.
"""

from metrics.evaluate import evaluate_pair
from metrics.jacobian import folding_pct, jacobian_metrics, sdlogj, sdlogj_l2r
from metrics.overlap import LabelScores, dice
from metrics.surface import hd95

__all__ = [
    "LabelScores",
    "dice",
    "hd95",
    "sdlogj",
    "sdlogj_l2r",
    "folding_pct",
    "jacobian_metrics",
    "evaluate_pair",
]
