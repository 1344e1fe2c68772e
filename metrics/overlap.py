"""Label overlap: Dice per label, Learn2Reg conventions.

Conventions (shared with :func:`metrics.surface.hd95`):

* only foreground labels are scored; label 0 is background and never scored;
* a label absent from EITHER image (fixed or moved) is skipped, not scored 0 and not NaN;
  it is listed in ``LabelScores.skipped``;
* the mean is the unweighted mean over the scored labels; NaN when no label is scorable.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch

from metrics._inputs import label_pair, label_subset

# Above this label value bincount tables get large: labels are first mapped to 0..K-1.
_MAX_DIRECT_LABEL = 1 << 22


class LabelScores(NamedTuple):
    """Per-label scores of one image pair.

    ``per_label``: ``{label: value}`` for the scored labels, ascending label order.
    ``mean``: unweighted mean of ``per_label`` values; ``nan`` when ``per_label`` is empty.
    ``skipped``: candidate labels that were not scored because they are absent from the fixed
    or the moved image (candidates are ``labels`` if given, else every foreground label found
    in either image).
    """

    per_label: dict[int, float]
    mean: float
    skipped: tuple[int, ...] = ()


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


def _label_counts(
    f: torch.Tensor, m: torch.Tensor
) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """O(N) voxel counts per label: ``(label_values, |F_l|, |M_l|, |F_l ∩ M_l|)``.

    Three ``bincount`` passes over the flattened maps (the intersection counts the fixed
    labels where both maps agree), not one pass per label.
    """
    f = f.reshape(-1)
    m = m.reshape(-1)
    top = int(torch.maximum(f.max(), m.max())) if f.numel() else 0
    if top < _MAX_DIRECT_LABEL:
        values = list(range(top + 1))
        n = top + 1
    else:  # sparse, huge label values: compact to 0..K-1 first (sort-based, still one pass each)
        uniq = torch.unique(torch.cat([f, m]))
        f = torch.searchsorted(uniq, f)
        m = torch.searchsorted(uniq, m)
        values = uniq.tolist()
        n = len(values)
    cf = torch.bincount(f, minlength=n)
    cm = torch.bincount(m, minlength=n)
    inter = torch.bincount(f[f == m], minlength=n)
    return values, cf.cpu(), cm.cpu(), inter.cpu()


def _dice_from_counts(
    values: list[int], cf: torch.Tensor, cm: torch.Tensor, inter: torch.Tensor, labels: list[int] | None
) -> LabelScores:
    index = {v: i for i, v in enumerate(values)}
    cf_l, cm_l, in_l = cf.tolist(), cm.tolist(), inter.tolist()
    if labels is None:
        candidates = [v for v, i in index.items() if v != 0 and (cf_l[i] > 0 or cm_l[i] > 0)]
    else:
        candidates = labels
    per_label: dict[int, float] = {}
    skipped: list[int] = []
    for lab in candidates:
        i = index.get(lab)
        if i is None or cf_l[i] == 0 or cm_l[i] == 0:
            skipped.append(lab)
            continue
        per_label[lab] = 2.0 * in_l[i] / (cf_l[i] + cm_l[i])
    return LabelScores(per_label, _mean(per_label.values()), tuple(skipped))


def dice(fixed_label, moved_label, labels: Iterable[int] | None = None) -> LabelScores:
    """Dice overlap per foreground label: ``2 |F_l ∩ M_l| / (|F_l| + |M_l|)``.

    Args:
        fixed_label: fixed image's label map, integer tensor ``(*S)``, ``(1, *S)`` or
            ``(1, 1, *S)`` (floats allowed only with integer values).
        moved_label: moving label map warped to the fixed grid (same spatial shape).
        labels: optional subset of foreground labels to score (each >= 1); default: every
            foreground label present in either image.

    Returns:
        :class:`LabelScores`. Conventions (Learn2Reg): background 0 is never scored; a label
        absent from either image is skipped (listed in ``skipped``), not scored 0; ``mean``
        is the unweighted mean over scored labels and is NaN if no label is scorable.

    Cost: O(N) with three ``bincount`` passes, independent of the number of labels.
    """
    f, m = label_pair(fixed_label, moved_label, "dice")
    subset = label_subset(labels, "dice")
    return _dice_from_counts(*_label_counts(f, m), subset)
