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

Labels (the label rule of the official Learn2Reg 2021 scorer, see :mod:`metrics.overlap`):
foreground only (0 never scored); a label is scored iff it is present in the fixed map AND the
UN-WARPED moving map, else skipped (the scorer's NaN; listed in ``LabelScores.skipped``). A
scored label that the warp erased (absent from the warped moving map) has no surface to measure:
the surface-distance package returns ``inf`` there, a common scorer variant the image diagonal.
Here it scores the finite penalty ``diag = sqrt(sum((n_i * spacing_i)^2))``, the diagonal of the
fixed grid in mm (an upper bound of any distance inside the image), and is listed in
``LabelScores.erased``; the mean (over scored labels) therefore stays finite.

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

from metrics._inputs import label_maps, label_subset, refuse_thin_3d, spacing_tuple, spatial_ndim_from_spacing
from metrics.overlap import _MAX_DIRECT_LABEL, LabelScores, _label_rule, _mean

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


def erased_penalty(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """HD95 of a label erased by the warp: the diagonal of the fixed grid in mm,
    ``sqrt(sum((n_i * spacing_i)^2))`` for a grid of ``n_i`` voxels of ``spacing_i`` mm."""
    return float(np.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _hd95_arrays(
    f: np.ndarray,
    mv: np.ndarray,
    m: np.ndarray,
    spacing: Sequence[float],
    labels: list[int] | None,
    method: str = "kdtree",
    workers: int | None = None,
    fn: str = "hd95",
    moving_present: set[int] | None = None,
) -> LabelScores:
    """HD95 on validated ``(*S)`` non-negative int numpy arrays (the core of :func:`hd95`):
    fixed ``f``, un-warped moving ``mv``, warped moving ``m``; ``moving_present``: the un-warped
    moving map's labels when the caller knows them from the map as stored (see
    :func:`metrics.evaluate_pair`), else those of ``mv``."""
    if method not in _METHODS:
        raise ValueError(f"{fn}() 'method' must be one of {_METHODS}, got {method!r}")
    penalty = erased_penalty(f.shape, spacing)
    top = int(max(f.max(), mv.max(), m.max())) if f.size else 0
    if top < _MAX_DIRECT_LABEL:
        return _hd95_direct(f, mv, m, spacing, labels, method, workers, penalty, moving_present)
    # sparse, huge label values: relabel to 0..K-1 (0 stays background), score, map back
    values = np.union1d([0], np.unique(np.concatenate([np.unique(f), np.unique(mv), np.unique(m)])))
    index = {int(v): i for i, v in enumerate(values)}
    fc, mvc, mc = (np.searchsorted(values, x) for x in (f, mv, m))
    # a requested label found in no map is kept in the rule's input under an index past the
    # table (absent everywhere, so skipped) and mapped back to its own value below
    back = {i: int(v) for i, v in enumerate(values)}
    sub = None
    if labels is not None:
        sub = []
        for lab in labels:
            if lab not in index:
                index[lab] = len(back)
                back[len(back)] = lab
            sub.append(index[lab])
    present = None if moving_present is None else {index[v] for v in moving_present if v in index}
    res = _hd95_direct(fc, mvc, mc, spacing, sub, method, workers, penalty, present)
    per_label = {back[i]: v for i, v in res.per_label.items()}
    return LabelScores(
        per_label,
        res.mean,
        tuple(back[i] for i in res.skipped),
        tuple(back[i] for i in res.erased),
    )


def _hd95_direct(
    f: np.ndarray,
    mv: np.ndarray,
    m: np.ndarray,
    spacing: Sequence[float],
    labels: list[int] | None,
    method: str,
    workers: int | None,
    penalty: float,
    moving_present: set[int] | None = None,
) -> LabelScores:
    if labels is not None and not labels:
        return LabelScores({}, _mean(()), (), ())
    max_label = max(labels) if labels else 0
    # One O(N) pass per image gives the bounding box of every label value 1..max
    # (None where the label is absent).
    objs_f, objs_mv, objs_m = (ndi.find_objects(x, max_label=max_label) for x in (f, mv, m))

    def box(objs: list, lab: int):
        return objs[lab - 1] if lab <= len(objs) else None

    def present(objs: list) -> set[int]:
        return {i + 1 for i, o in enumerate(objs) if o is not None}

    in_moving = present(objs_mv) if moving_present is None else moving_present
    scored, skipped, erased = _label_rule(present(objs_f), in_moving, present(objs_m), labels)
    erased_set = set(erased)
    measured = [lab for lab in scored if lab not in erased_set]  # both masks non-empty

    def one(lab: int) -> float:
        return _label_hd95(f, m, lab, box(objs_f, lab), box(objs_m, lab), spacing, method)

    workers = _default_workers() if workers is None else int(workers)
    if workers > 1 and len(measured) > 1:
        # scipy's distance transform, cKDTree queries and numpy's boolean kernels release the
        # GIL, so labels run in parallel threads; largest boxes are submitted first so that
        # the threads finish together.
        def volume(lab: int) -> int:
            return int(np.prod([max(a.stop, b.stop) - min(a.start, b.start)
                                for a, b in zip(box(objs_f, lab), box(objs_m, lab))]))

        order = sorted(measured, key=volume, reverse=True)
        with ThreadPoolExecutor(max_workers=min(workers, len(measured))) as pool:
            found = dict(zip(order, pool.map(one, order)))
    else:
        found = {lab: one(lab) for lab in measured}
    per_label = {lab: (penalty if lab in erased_set else found[lab]) for lab in scored}
    return LabelScores(per_label, _mean(per_label.values()), skipped, erased)


def hd95(
    fixed_label,
    moving_label,
    moved_label,
    spacing,
    labels: Iterable[int] | None = None,
    *,
    method: str = "kdtree",
    workers: int | None = None,
) -> LabelScores:
    """95th-percentile symmetric Hausdorff distance between label surfaces, in mm, with the
    label rule of the Learn2Reg 2021 scorer.

    ``HD95_l = max(P95 d(∂F_l → ∂W_l), P95 d(∂W_l → ∂F_l))`` over voxel surfaces (face
    connectivity) of the fixed map ``F`` and the warped moving map ``W``, Euclidean distances
    scaled by ``spacing``, linear-interpolated percentiles: the definition of MONAI's
    ``HausdorffDistanceMetric(percentile=95, include_background=False)``.

    Args:
        fixed_label: fixed label map, ``(*S)``, ``(1, *S)`` or ``(1, 1, *S)``.
        moving_label: the UN-WARPED moving label map (same shape); with ``fixed_label`` it
            decides which labels are scored. Required.
        moved_label: the moving label map warped to the fixed grid (same shape).
        spacing: mm per voxel along each spatial axis of the fixed grid (scalar = isotropic);
            for 2-D maps pass a length-2 ``spacing``.
        labels: optional subset of foreground labels (each >= 1).
        method: ``"kdtree"`` (default: exact nearest surface voxel by a k-d tree over the
            surface voxels, cost ~ surface area) or ``"edt"`` (exact Euclidean distance
            transform, ``scipy.ndimage.distance_transform_edt(sampling=spacing)``, on each
            label's cropped box, cost ~ box volume). Both give the same values; k-d trees
            measured 1.6-4x faster on 35-label brain-sized maps.
        workers: threads over labels (default ``torch.get_num_threads()``).

    Returns:
        :class:`LabelScores`. Rule (Learn2Reg scorer): background never scored; a label is
        scored iff present in ``fixed_label`` AND ``moving_label``, else skipped (listed in
        ``skipped``). A scored label absent from ``moved_label`` (erased by the warp) scores
        the finite penalty :func:`erased_penalty`, the fixed grid's diagonal in mm
        ``sqrt(sum((n_i * spacing_i)^2))``, and is listed in ``erased``. ``mean`` is the
        unweighted mean over scored labels, NaN if no label is scored.
    """
    ndim = spatial_ndim_from_spacing(spacing)
    f, mv, m = label_maps(fixed_label, moving_label, moved_label, "hd95", ndim)
    refuse_thin_3d(f, ndim, "hd95")
    sp = spacing_tuple(spacing, f.dim(), "hd95")
    subset = label_subset(labels, "hd95")
    return _hd95_arrays(f.cpu().numpy(), mv.cpu().numpy(), m.cpu().numpy(), sp, subset, method, workers)
