"""Label overlap: Dice per label, with the label rule of the official Learn2Reg 2021 scorer.

The rule (shared with :func:`metrics.surface.hd95` and :func:`metrics.evaluate_pair`), as the
scorer's ``evaluation.py`` applies it to every candidate label ``l``::

    if (fixed == l).sum() == 0 or (moving == l).sum() == 0: nan
    else: score(fixed == l, moving_warped == l)
    mean = nanmean(per-label scores)

* only foreground labels are scored; label 0 is background and never scored;
* which labels are scored is decided on the fixed map and the UN-WARPED moving map, never on the
  warped one: a label is scored iff it is present in both (and in ``labels`` when given);
* a scored label that the warp erased (absent from the warped moving map) scores Dice
  ``2·0 / (|F_l| + 0) = 0``; it is scored, not skipped, and listed in ``LabelScores.erased``;
* a candidate label absent from the fixed or the un-warped moving map is not scored (the
  scorer's NaN) and is listed in ``LabelScores.skipped``;
* the mean is the unweighted mean over the scored labels (``nanmean``); NaN when no label is
  scored (:func:`metrics.evaluate_pair` refuses such a labelled pair with a ``ValueError``).

:func:`klein_overlaps` adds the overlap measures of Klein et al. 2009 (NeuroImage 46, "Evaluation
of 14 nonlinear deformation algorithms applied to human brain MRI registration") on the same
scored labels, from the same voxel counts (:data:`KLEIN_MEASURES`, per label and pooled "total").
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch

from metrics._inputs import label_maps, label_subset

# Above this label value bincount tables get large: labels are first mapped to 0..K-1.
_MAX_DIRECT_LABEL = 1 << 22


class LabelScores(NamedTuple):
    """Per-label scores of one image pair.

    ``per_label``: ``{label: value}`` for the scored labels (present in the fixed AND the
    un-warped moving map), ascending label order.
    ``mean``: unweighted mean of ``per_label`` values; ``nan`` when ``per_label`` is empty.
    ``skipped``: candidate labels not scored because they are absent from the fixed or the
    un-warped moving map (candidates are ``labels`` if given, else every foreground label found
    in any of the three maps), ascending.
    ``erased``: scored labels absent from the warped moving map (the warp erased them); they
    are in ``per_label`` with Dice 0 / the HD95 penalty, ascending.
    """

    per_label: dict[int, float]
    mean: float
    skipped: tuple[int, ...] = ()
    erased: tuple[int, ...] = ()


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


class _Counts(NamedTuple):
    """Voxel counts per label value of the three maps (``values[i]`` is the label of index i)."""

    values: list[int]
    fixed: list[int]
    moving: list[int]
    moved: list[int]
    inter: list[int]  # |F_l ∩ W_l| (fixed vs warped moving)


def _label_counts(f: torch.Tensor, moving: torch.Tensor, moved: torch.Tensor) -> _Counts:
    """O(N) voxel counts per label: four ``bincount`` passes over the flattened maps (the
    intersection counts the fixed labels where fixed and warped moving agree), not one pass
    per label."""
    f = f.reshape(-1)
    mv = moving.reshape(-1)
    m = moved.reshape(-1)
    top = max((int(x.max()) for x in (f, mv, m) if x.numel()), default=0)
    if top < _MAX_DIRECT_LABEL:
        values = list(range(top + 1))
    else:  # sparse, huge label values: compact to 0..K-1 first (sort-based, still one pass each)
        uniq = torch.unique(torch.cat([f, mv, m]))
        f, mv, m = (torch.searchsorted(uniq, x) for x in (f, mv, m))
        values = uniq.tolist()
    n = len(values)

    def count(x: torch.Tensor) -> list[int]:
        return torch.bincount(x, minlength=n).cpu().tolist()

    return _Counts(values, count(f), count(mv), count(m), count(f[f == m]))


def _label_rule(
    in_fixed: set[int], in_moving: set[int], in_moved: set[int], labels: list[int] | None
) -> tuple[list[int], tuple[int, ...], tuple[int, ...]]:
    """The scorer's label rule, ONE place for Dice and HD95: ``(scored, skipped, erased)``.

    Args: the sets of foreground labels present in the fixed, the un-warped moving and the
    warped moving map; ``labels`` the validated subset or None.
    Scored: candidates present in the fixed AND the un-warped moving map. Skipped: the other
    candidates. Erased: scored labels absent from the warped moving map. Candidates:
    ``labels`` when given, else every foreground label of the three maps. All ascending.
    """
    candidates = sorted(in_fixed | in_moving | in_moved) if labels is None else labels
    scored = [lab for lab in candidates if lab in in_fixed and lab in in_moving]
    skipped = tuple(lab for lab in candidates if not (lab in in_fixed and lab in in_moving))
    erased = tuple(lab for lab in scored if lab not in in_moved)
    return scored, skipped, erased


def _present(values: list[int], counts: list[int]) -> set[int]:
    return {v for v, c in zip(values, counts) if c and v != 0}


def _moving_present(c: _Counts, moving_present: set[int] | None) -> set[int]:
    """The labels of the un-warped moving map for the rule: ``moving_present`` when the caller knows
    them from the map as stored (see :func:`metrics.evaluate_pair`), else those of the counted map."""
    return _present(c.values, c.moving) if moving_present is None else moving_present


def _dice_from_counts(c: _Counts, labels: list[int] | None, moving_present: set[int] | None = None) -> LabelScores:
    index = {v: i for i, v in enumerate(c.values)}
    scored, skipped, erased = _label_rule(
        _present(c.values, c.fixed), _moving_present(c, moving_present), _present(c.values, c.moved), labels
    )
    per_label: dict[int, float] = {}
    for lab in scored:
        i = index[lab]
        # |F_l| > 0 for a scored label, so the denominator is never 0; an erased label gives 0
        per_label[lab] = 2.0 * c.inter[i] / (c.fixed[i] + c.moved[i])
    return LabelScores(per_label, _mean(per_label.values()), skipped, erased)


# Klein et al. 2009's overlap measures, in the order of the results files
KLEIN_MEASURES = ("target_overlap", "mean_overlap", "union_overlap", "volume_similarity", "fn_error", "fp_error")


class OverlapScores(NamedTuple):
    """Klein et al. 2009's overlap measures of one image pair (:func:`klein_overlaps`).

    ``per_label``: ``{label: {measure: value}}`` for the scored labels (the Dice rule: present in
    the fixed AND the un-warped moving map), ascending; ``measure`` runs over :data:`KLEIN_MEASURES`.
    ``total``: ``{measure: value}`` pooled over the scored labels (Klein's "total" overlap: sums
    over labels in numerator and denominator); empty when no label is scored.
    ``skipped``, ``erased``: as :class:`LabelScores`.
    """

    per_label: dict[int, dict[str, float]]
    total: dict[str, float]
    skipped: tuple[int, ...] = ()
    erased: tuple[int, ...] = ()


def _klein_measures(inter: int, target: int, source: int) -> dict[str, float]:
    r"""The six measures of a target region ``T`` (fixed) and a source region ``S`` (warped moving)
    from ``|S ∩ T|``, ``|T| > 0`` and ``|S|`` (one label's counts, or their sums over labels).
    ``|S| = 0`` (the warp erased the label): the false positive error ``|S \ T| / |S|`` is 0/0 and is
    defined as 0 (no voxel is falsely given the label); the others follow from the formulas
    (target, mean and union overlap 0, volume similarity -2, false negative error 1)."""
    union = target + source - inter
    return {
        "target_overlap": inter / target,
        "mean_overlap": 2 * inter / (target + source),
        "union_overlap": inter / union,
        "volume_similarity": 2 * (source - target) / (source + target),
        "fn_error": (target - inter) / target,
        "fp_error": (source - inter) / source if source else 0.0,
    }


def _klein_from_counts(c: _Counts, labels: list[int] | None, moving_present: set[int] | None = None) -> OverlapScores:
    """:func:`klein_overlaps` from the counts of :func:`_label_counts` (the Dice rule's labels)."""
    index = {v: i for i, v in enumerate(c.values)}
    scored, skipped, erased = _label_rule(
        _present(c.values, c.fixed), _moving_present(c, moving_present), _present(c.values, c.moved), labels
    )
    per_label: dict[int, dict[str, float]] = {}
    inter = target = source = 0
    for lab in scored:
        i = index[lab]
        per_label[lab] = _klein_measures(c.inter[i], c.fixed[i], c.moved[i])
        inter, target, source = inter + c.inter[i], target + c.fixed[i], source + c.moved[i]
    total = _klein_measures(inter, target, source) if scored else {}
    return OverlapScores(per_label, total, skipped, erased)


def klein_overlaps(fixed_label, moving_label, moved_label, labels: Iterable[int] | None = None) -> OverlapScores:
    r"""Klein et al. 2009's overlap measures per foreground label and pooled over labels.

    With the target region ``T_r`` = label ``r`` in ``fixed_label`` and the source region ``S_r`` =
    label ``r`` in ``moved_label`` (the moving map warped to the fixed grid), per label:

    * target overlap ``TO = |S ∩ T| / |T|``;
    * mean overlap (Dice) ``MO = 2 |S ∩ T| / (|S| + |T|)``;
    * union overlap (Jaccard) ``UO = |S ∩ T| / |S ∪ T|``;
    * volume similarity ``VS = 2 (|S| - |T|) / (|S| + |T|)`` (signed: < 0 when the warped label is
      smaller than the target);
    * false negative error ``FN = |T \ S| / |T|``;
    * false positive error ``FP = |S \ T| / |S|``.

    ``total`` pools the scored labels as Klein et al. do, sums over labels in numerator and
    denominator (e.g. ``TO = Σ_r |S_r ∩ T_r| / Σ_r |T_r|``): a volume-weighted value, not the mean
    of the per-label values.

    Which labels (the Dice rule, :func:`dice`): foreground labels present in ``fixed_label`` AND
    the UN-WARPED ``moving_label`` (within ``labels`` when given); the others are ``skipped``.
    Voxels of unscored labels count in no ``S_r`` or ``T_r``. A scored label the warp erased
    (``|S_r| = 0``, listed in ``erased``) scores TO = MO = UO = 0, VS = -2, FN = 1 and FP = 0
    (``0/0`` defined as 0: no voxel is falsely given the label); in ``total`` it adds its ``|T_r|``
    to the denominators and nothing to FP's (which is 0 only if every scored label is erased).

    Args: as :func:`dice`. Cost: the four ``bincount`` passes of :func:`dice`.
    """
    f, mv, m = label_maps(fixed_label, moving_label, moved_label, "klein_overlaps")
    subset = label_subset(labels, "klein_overlaps")
    return _klein_from_counts(_label_counts(f, mv, m), subset)


def dice(fixed_label, moving_label, moved_label, labels: Iterable[int] | None = None, *,
         moving_present: Iterable[int] | None = None) -> LabelScores:
    """Dice overlap per foreground label, ``2 |F_l ∩ W_l| / (|F_l| + |W_l|)``, with the label
    rule of the Learn2Reg 2021 scorer (``compute_dice(fixed, moving, moving_warped, labels)``).

    Args:
        fixed_label: fixed image's label map ``F``, integer tensor ``(*S)``, ``(1, *S)`` or
            ``(1, 1, *S)`` (floats allowed only with integer values).
        moving_label: the UN-WARPED moving label map (same spatial shape); it decides, with
            ``fixed_label``, which labels are scored. Required: scoring on the warped map
            alone would skip the labels a bad warp erases.
        moved_label: the moving label map warped to the fixed grid, ``W`` (same shape).
        labels: optional subset of foreground labels to consider (each >= 1); default: every
            foreground label found in any of the three maps.
        moving_present: the moving map's labels as stored when ``moving_label`` is that map
            resampled onto the fixed grid (as :func:`metrics.evaluate_pair`); default: its own.

    Returns:
        :class:`LabelScores`. Rule (Learn2Reg scorer): background 0 is never scored; a label
        is scored iff it is present in ``fixed_label`` AND ``moving_label``; otherwise it is
        skipped (listed in ``skipped``; the scorer's NaN). A scored label absent from
        ``moved_label`` (erased by the warp) scores 0 and is listed in ``erased``. ``mean`` is
        the unweighted mean over scored labels (``nanmean``), NaN if no label is scored.

    Cost: O(N) with four ``bincount`` passes, independent of the number of labels.
    """
    f, mv, m = label_maps(fixed_label, moving_label, moved_label, "dice")
    subset = label_subset(labels, "dice")
    present = None if moving_present is None else set(label_subset(moving_present, "dice", "moving_present"))
    return _dice_from_counts(_label_counts(f, mv, m), subset, present)
