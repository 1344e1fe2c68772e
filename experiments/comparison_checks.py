"""Checks that a comparison compares like with like: every method's results were scored the same way
(:func:`check_same_scoring`) and computed from the same data under the same pair ids
(:func:`check_same_data`). Used by :func:`experiments.comparison.align`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from app.errors import ConfigError
from data.io import DataError

if TYPE_CHECKING:
    from experiments.comparison import MethodResults

__all__ = ["SCORING_KEYS", "SAME_DATA_TOLERANCE", "DATA_COLUMNS", "check_same_scoring", "check_same_data"]


# |difference| of two methods' Dice before registration (or mean absolute intensity difference
# before registration) on one pair above which their results are taken to come from different data
# (the identity Dice depends on the label maps alone, the identity MAE on the images alone)
SAME_DATA_TOLERANCE = 1e-6
# the columns that describe a pair's data, not the method: equal for every result of one pair
DATA_COLUMNS = {"dice_identity": "Dice before registration", "mae_identity": "mean |fixed - moving| before registration"}


# summary.json's keys that say how a result's labels were scored: two methods compared must agree on
# each (nearest vs linear label warping alone moves Dice by about 0.01, as much as the paper's gaps
# between classical methods; another metrics version is another scorer)
SCORING_KEYS = ("label_interp", "label_rule", "metrics_version")


def check_same_scoring(results: Sequence[MethodResults]) -> None:
    """ConfigError naming the setting, both methods and folders when two results were scored
    differently (:data:`SCORING_KEYS`); a result without a summary says nothing and passes."""
    for key in SCORING_KEYS:
        seen = [(r, r.scoring[key]) for r in results if key in r.scoring]
        for r, value in seen[1:]:
            first, v0 = seen[0]
            if value != v0:
                raise ConfigError(
                    f"{key} is {v0!r} in {first.name} ({first.source}) but {value!r} in {r.name} ({r.source}): "
                    "their metrics were computed differently and cannot be compared pair by pair; evaluate every "
                    f"method with one {key} (eval.py model.label_interp=... for the label warping; the current "
                    "code for the metrics version)")


def check_same_data(results: Sequence[MethodResults], pairs: Sequence[tuple[str, str]]) -> None:
    """DataError naming the pair, the column and both folders when two methods differ on a pair
    they share in a column of :data:`DATA_COLUMNS` (the Dice before registration, a property of the
    pair's label maps, and the mean absolute intensity difference before registration, one of its
    images; neither depends on the method): their results come from different data under the same
    pair ids (another dataset with the same file names, another label protocol, another contrast,
    another crop) and pairing them would compare unlike things."""
    for pair in pairs:
        for column, what in DATA_COLUMNS.items():
            seen = [(r, r.rows[pair].get(column, float("nan"))) for r in results]
            seen = [(r, v) for r, v in seen if np.isfinite(v)]
            for r, v in seen[1:]:
                first, v0 = seen[0]
                if abs(v - v0) > SAME_DATA_TOLERANCE:
                    raise DataError(
                        f"pair {pair[0]} <- {pair[1]}: {what} ({column}) is {v0:.6g} in {first.name} "
                        f"({first.source}) but {v:.6g} in {r.name} ({r.source}): the two were evaluated on "
                        "different data under the same pair ids (other images, labels, label protocol, contrast "
                        "or crop); compare results of one dataset")
