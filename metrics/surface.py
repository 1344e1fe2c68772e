"""Surface distance: the 95th-percentile Hausdorff distance (HD95) per label, in mm.

Definition (the one of MONAI's ``HausdorffDistanceMetric(percentile=95, include_background=False)``
with its default euclidean distance, re-implemented here):

* surface of a binary mask ``X``: voxels of ``X`` with at least one of their 2·D face
  neighbours (6 in 3-D) outside ``X``; outside the image counts as outside ``X``
  (``X & ~erode(X)``, cross-shaped structuring element, zero border);
* directed distances ``d(a, ∂B)`` for every surface voxel ``a ∈ ∂A``: Euclidean distance in
  mm (voxel index differences times ``spacing``) to the nearest surface voxel of ``B``;
* ``HD95 = max(P95({d(a, ∂B)}_{a∈∂A}), P95({d(b, ∂A)}_{b∈∂B}))`` where ``P95`` is the 95th
  percentile with linear interpolation between order statistics (``numpy.percentile`` /
  ``torch.quantile`` default).

Labels: foreground only (0 never scored); a label absent from either image is skipped
(Learn2Reg convention) and listed in ``LabelScores.skipped``.

Each label is processed inside the bounding box of its union in both images (exact, see
``_label_hd95``), labels in parallel threads. Nearest surface voxels come from a k-d tree
(default) or a Euclidean distance transform; both are exact and give the same values.

Note: the Learn2Reg scorer computes HD95 with DeepMind's ``surface-distance`` package
(surfels weighted by area, unit spacing), which differs slightly from this voxel-surface
definition.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from metrics._inputs import label_pair, label_subset, spacing_tuple, spatial_ndim_from_spacing
from metrics.overlap import _MAX_DIRECT_LABEL, LabelScores, _mean

_METHODS = ("kdtree", "edt")


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: ``mask & ~erode(mask)`` with a face-connected
    (cross) structuring element and zero border (voxels on the array border are surface)."""
    interior = mask.copy()
    for axis in range(mask.ndim):
        inner = np.moveaxis(interior, axis, 0)  # views: writing to them writes ``interior``
        full = np.moveaxis(mask, axis, 0)
        inner[1:] &= full[:-1]
        inner[:-1] &= full[1:]
        inner[0] = False
        inner[-1] = False
    return mask & ~interior


def _percentile95(d: np.ndarray) -> float:
    return float(np.percentile(d, 95.0))


def _hd95_edt(edge_a: np.ndarray, edge_b: np.ndarray, spacing: Sequence[float]) -> float:
    # distance_transform_edt(~E) is, at every voxel, the exact Euclidean distance (with
    # ``sampling``) to the nearest voxel of E; sampled on the other surface it gives the
    # directed surface distances.
    d_ab = ndi.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    d_ba = ndi.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    return max(_percentile95(d_ab), _percentile95(d_ba))


def _hd95_kdtree(edge_a: np.ndarray, edge_b: np.ndarray, spacing: Sequence[float]) -> float:
    scale = np.asarray(spacing, dtype=np.float64)
    pa = np.argwhere(edge_a) * scale
    pb = np.argwhere(edge_b) * scale
    d_ab = cKDTree(pb).query(pa, k=1)[0]
    d_ba = cKDTree(pa).query(pb, k=1)[0]
    return max(_percentile95(d_ab), _percentile95(d_ba))


def _label_hd95(
    f: np.ndarray,
    m: np.ndarray,
    label: int,
    box_f: tuple[slice, ...],
    box_m: tuple[slice, ...],
    spacing: Sequence[float],
    method: str,
) -> float:
    # Work inside the bounding box of (F == label) | (M == label), padded by one voxel and
    # clipped to the image. Cropping is exact:
    #  * surfaces: a voxel's surface status depends only on its face neighbours. Every voxel
    #    of either mask is inside the box; the padding voxel around it is either outside the
    #    label (it lies outside the union's bounding box) or beyond the image, where the zero
    #    border of the erosion treats it as outside, just as on the full image.
    #  * distances: both surfaces lie entirely inside the box, and the nearest surface voxel
    #    of the other mask is searched among exactly those voxels; the distance transform of
    #    the box therefore equals that of the full image at every box voxel ("edt"), and
    #    distances between box-local coordinates equal those between image coordinates
    #    ("kdtree": a translation changes no distance).
    box = []
    for sf, sm, n in zip(box_f, box_m, f.shape):
        box.append(slice(max(min(sf.start, sm.start) - 1, 0), min(max(sf.stop, sm.stop) + 1, n)))
    box = tuple(box)
    edge_a = _surface(f[box] == label)
    edge_b = _surface(m[box] == label)
    if method == "edt":
        return _hd95_edt(edge_a, edge_b, spacing)
    return _hd95_kdtree(edge_a, edge_b, spacing)


def _default_workers() -> int:
    """Threads over labels: torch's intra-op thread count (respects OMP_NUM_THREADS /
    ``torch.set_num_threads``, so DDP processes on one node do not oversubscribe it)."""
    return max(torch.get_num_threads(), 1)


def _hd95_arrays(
    f: np.ndarray,
    m: np.ndarray,
    spacing: Sequence[float],
    labels: list[int] | None,
    method: str = "kdtree",
    workers: int | None = None,
    fn: str = "hd95",
) -> LabelScores:
    """HD95 on validated ``(*S)`` non-negative int numpy arrays (the core of :func:`hd95`)."""
    if method not in _METHODS:
        raise ValueError(f"{fn}() 'method' must be one of {_METHODS}, got {method!r}")
    top = int(max(f.max(), m.max())) if f.size else 0
    if top < _MAX_DIRECT_LABEL:
        return _hd95_direct(f, m, spacing, labels, method, workers)
    # sparse, huge label values: relabel to 0..K-1 (0 stays background), score, map back
    values = np.union1d([0], np.unique(np.concatenate([np.unique(f), np.unique(m)])))
    index = {int(v): i for i, v in enumerate(values)}
    fc = np.searchsorted(values, f)
    mc = np.searchsorted(values, m)
    sub = None if labels is None else [index[lab] for lab in labels if index.get(lab, 0) > 0]
    res = _hd95_direct(fc, mc, spacing, sub, method, workers)
    per_label = {int(values[i]): v for i, v in res.per_label.items()}
    if labels is None:
        skipped = tuple(int(values[i]) for i in res.skipped)
    else:
        skipped = tuple(lab for lab in labels if lab not in per_label)
    return LabelScores(per_label, res.mean, skipped)


def _hd95_direct(
    f: np.ndarray,
    m: np.ndarray,
    spacing: Sequence[float],
    labels: list[int] | None,
    method: str,
    workers: int | None,
) -> LabelScores:
    max_label = max(labels) if labels else 0
    if labels is not None and not labels:
        return LabelScores({}, _mean(()), ())
    # One O(N) pass per image gives the bounding box of every label value 1..max
    # (None where the label is absent).
    objs_f = ndi.find_objects(f, max_label=max_label)
    objs_m = ndi.find_objects(m, max_label=max_label)

    def box(objs: list, lab: int):
        return objs[lab - 1] if lab <= len(objs) else None

    if labels is None:
        n = max(len(objs_f), len(objs_m))
        candidates = [lab for lab in range(1, n + 1) if box(objs_f, lab) or box(objs_m, lab)]
    else:
        candidates = labels
    scored = [lab for lab in candidates if box(objs_f, lab) is not None and box(objs_m, lab) is not None]
    scored_set = set(scored)
    skipped = tuple(lab for lab in candidates if lab not in scored_set)

    def one(lab: int) -> float:
        return _label_hd95(f, m, lab, box(objs_f, lab), box(objs_m, lab), spacing, method)

    workers = _default_workers() if workers is None else int(workers)
    if workers > 1 and len(scored) > 1:
        # scipy's distance transform, cKDTree queries and numpy's boolean kernels release the
        # GIL, so labels run in parallel threads; largest boxes are submitted first so that
        # the threads finish together.
        def volume(lab: int) -> int:
            return int(np.prod([max(a.stop, b.stop) - min(a.start, b.start)
                                for a, b in zip(box(objs_f, lab), box(objs_m, lab))]))

        order = sorted(scored, key=volume, reverse=True)
        with ThreadPoolExecutor(max_workers=min(workers, len(scored))) as pool:
            found = dict(zip(order, pool.map(one, order)))
        values = [found[lab] for lab in scored]
    else:
        values = [one(lab) for lab in scored]
    per_label = dict(zip(scored, values))
    return LabelScores(per_label, _mean(per_label.values()), skipped)


def hd95(
    fixed_label,
    moved_label,
    spacing,
    labels: Iterable[int] | None = None,
    *,
    method: str = "kdtree",
    workers: int | None = None,
) -> LabelScores:
    """95th-percentile symmetric Hausdorff distance between label surfaces, in mm.

    ``HD95_l = max(P95 d(∂F_l → ∂M_l), P95 d(∂M_l → ∂F_l))`` over voxel surfaces (face
    connectivity), Euclidean distances scaled by ``spacing``, linear-interpolated percentiles:
    the definition of MONAI's ``HausdorffDistanceMetric(percentile=95, include_background=False)``.

    Args:
        fixed_label, moved_label: integer label maps on the fixed grid, ``(*S)``, ``(1, *S)``
            or ``(1, 1, *S)``; for 2-D maps pass a length-2 ``spacing``.
        spacing: mm per voxel along each spatial axis (scalar = isotropic).
        labels: optional subset of foreground labels (each >= 1).
        method: ``"kdtree"`` (default: exact nearest surface voxel by a k-d tree over the
            surface voxels, cost ~ surface area) or ``"edt"`` (exact Euclidean distance
            transform, ``scipy.ndimage.distance_transform_edt(sampling=spacing)``, on each
            label's cropped box, cost ~ box volume). Both give the same values; k-d trees
            measured 1.6-4x faster on 35-label brain-sized maps.
        workers: threads over labels (default ``torch.get_num_threads()``).

    Returns:
        :class:`LabelScores`; background never scored; a label absent from either image is
        skipped (listed in ``skipped``); ``mean`` is NaN if no label is scorable.
    """
    ndim = spatial_ndim_from_spacing(spacing)
    f, m = label_pair(fixed_label, moved_label, "hd95", ndim)
    sp = spacing_tuple(spacing, f.dim(), "hd95")
    subset = label_subset(labels, "hd95")
    return _hd95_arrays(f.cpu().numpy(), m.cpu().numpy(), sp, subset, method, workers)
