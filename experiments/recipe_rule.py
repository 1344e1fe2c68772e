"""The decision of :mod:`experiments.recipe` (paper item 5): the evidence it weighs, its thresholds and
the rule (:func:`recommend`), and the classical Dice a fitted MI curve expects. Plain data in,
a recommendation out; the tool's data measurements are in :mod:`experiments.recipe_data`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["CLASSICAL", "SUPERVISED", "UNSUPERVISED", "MIN_LABELLED", "JS_THRESHOLD", "MI_THRESHOLD", "MAX_IMAGES",
           "Evidence", "Recommendation", "recommend", "is_shifted", "expected_classical_dice"]

CLASSICAL = "classical"
SUPERVISED = "supervised learned"
UNSUPERVISED = "unsupervised learned"

MIN_LABELLED = 20
JS_THRESHOLD = 0.04  # bits
MI_THRESHOLD = 0.1  # bits
MAX_IMAGES = 8


# ---------------------------------------------------------------------------------- the rule
@dataclass
class Evidence:
    """What :func:`recommend` decides on (all MI / JS values in bits; None: not measured).

    ``n_train_images``: distinct training images (0: no training set); ``n_labelled``: those
    with a label map; ``test_labelled``: the test images have label maps; ``mi_train`` /
    ``mi_test``: mean MI(i; s) over the sampled images; ``js``: train/test histogram JS
    divergence; ``histogram_mask``: the voxels that JS counted.
    """

    n_train_images: int = 0
    n_labelled: int = 0
    test_labelled: bool = False
    mi_train: float | None = None
    mi_test: float | None = None
    js: float | None = None
    histogram_mask: str | None = None
    n_test_images: int = 0
    n_train_sampled: int = 0
    n_test_sampled: int = 0

    @property
    def mi_diff(self) -> float | None:
        """``|mi_train - mi_test|``, or None unless both are measured."""
        if self.mi_train is None or self.mi_test is None:
            return None
        return abs(self.mi_train - self.mi_test)


@dataclass
class Recommendation:
    """``method`` (one of :data:`CLASSICAL`, :data:`SUPERVISED`, :data:`UNSUPERVISED`), the ``rule``
    that fired (R1-R4 of the module docstring), ``shifted`` (None: no training set to compare)
    and one line per ``reasons``."""

    method: str
    rule: str
    shifted: bool | None
    reasons: list[str] = field(default_factory=list)


def is_shifted(evidence: Evidence, js_threshold: float = JS_THRESHOLD, mi_threshold: float = MI_THRESHOLD) -> bool | None:
    """``js > js_threshold or mi_diff > mi_threshold`` (unmeasured terms ignored); None if nothing measured."""
    js, mi_diff = evidence.js, evidence.mi_diff
    if js is None and mi_diff is None:
        return None
    return bool((js is not None and js > js_threshold) or (mi_diff is not None and mi_diff > mi_threshold))


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def recommend(
    evidence: Evidence,
    min_labelled: int = MIN_LABELLED,
    js_threshold: float = JS_THRESHOLD,
    mi_threshold: float = MI_THRESHOLD,
    need_fast: bool = False,
) -> Recommendation:
    """The paper's recipe (rules R1-R4 of the module docstring) on measured ``evidence``."""
    e = evidence
    shifted = is_shifted(e, js_threshold, mi_threshold) if e.n_train_images > 0 else None
    reasons: list[str] = []
    if e.n_train_images == 0:
        reasons.append("no training set: nothing to train a network on")
    else:
        reasons.append(
            f"training set: {e.n_train_images} images, {e.n_labelled} with label maps "
            f"({'>=' if e.n_labelled >= min_labelled else '<'} --min-labelled {min_labelled})"
        )
        parts = [f"JS = {_f(e.js, 4)} bits (threshold {js_threshold:g}, voxels {e.histogram_mask})"]
        if e.mi_diff is not None:
            parts.append(f"|MI_train - MI_test| = |{_f(e.mi_train)} - {_f(e.mi_test)}| = {_f(e.mi_diff)} bits "
                         f"(threshold {mi_threshold:g})")
        else:
            parts.append("MI difference not measured (a side has no labels)")
        reasons.append(f"train/test shift: {'yes' if shifted else 'no'}: " + "; ".join(parts))
    enough = e.n_train_images > 0 and e.n_labelled >= min_labelled

    if enough and shifted:
        reasons.append("paper finding 4: the gain of label supervision does not survive domain shift; "
                       "out of domain, classical methods (FireANTs, Greedy, ANTs) rank first")
        if need_fast:
            reasons.append("--need-fast ignored: any network trained on the shifted training set suffers the same shift")
        return Recommendation(CLASSICAL, "R2", shifted, reasons)
    if enough:
        reasons.append("paper finding 3: with a Dice loss, learned methods beat every classical method "
                       "in distribution (OASIS, p < 0.01)")
        return Recommendation(SUPERVISED, "R3", shifted, reasons)
    if need_fast and e.n_train_images > 0 and shifted is False:
        reasons.append("--need-fast: an unsupervised network registers in one forward pass and the test data "
                       "match the training data; paper finding 2: expect Dice no better than classical")
        return Recommendation(UNSUPERVISED, "R4", shifted, reasons)
    if e.n_train_images > 0:
        reasons.append(f"too few labelled training images ({e.n_labelled} < {min_labelled}) for supervision")
    reasons.append("paper finding 2: unsupervised learned methods do not beat classical optimisers (OASIS)")
    if need_fast:
        why = "no training set" if e.n_train_images == 0 else "train/test shift"
        reasons.append(f"--need-fast ignored: {why}; a classical optimiser on a GPU takes ~1 s per pair")
    if not e.test_labelled:
        reasons.append("test set has no label maps: its MI (and expected classical Dice) cannot be measured"
                       if e.mi_test is None else
                       "only some sampled test images have label maps: its MI is the mean over those")
    return Recommendation(CLASSICAL, "R1", shifted, reasons)


def expected_classical_dice(fit: Mapping[str, Any], mi: float) -> tuple[float | None, str | None]:
    """Classical Dice expected at ``mi`` from an ``mi_fit.json`` (log model) and a warning or None."""
    from experiments.mi_analysis import predict_dice

    line = fit.get("log") or {}
    if not all(isinstance(line.get(k), (int, float)) and math.isfinite(line[k]) for k in ("slope", "intercept")):
        return None, "the curve's log fit is undefined (too few pairs or constant values); no Dice prediction"
    dice = predict_dice(fit, mi, "log")
    lo, hi = (list(fit.get("mi_range") or [float("nan")] * 2) + [float("nan")] * 2)[:2]
    if not (lo <= mi <= hi):
        return dice, f"test MI {mi:.3f} bits lies outside the curve's MI range [{lo:.3f}, {hi:.3f}]: extrapolated"
    return dice, None
