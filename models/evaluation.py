"""Scoring a batch of registered pairs: labels warped as configured, then the one metric code path
(:func:`metrics.evaluate_pair`) on every pair. Used by the validation and test steps of
:class:`models.module.RegistrationModule`."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from losses import compact_labels, one_hot
from metrics import MetricError, evaluate_pair
from metrics import dice as dice_metric
from spatial import warp

__all__ = ["LABEL_INTERPS", "PARADIGMS", "warp_label", "evaluate_batch", "mae_identity", "spacing_of", "nanmean",
           "gather_objects", "each_pair_once"]

LABEL_INTERPS = ("nearest", "linear")
# how a method got its field (``summary.json``'s ``paradigm``, what compare.py groups by): no
# registration, per-pair optimisation, a network trained without / with labels, or a network's
# prediction refined by per-pair optimisation
PARADIGMS = ("identity", "classical", "unsupervised", "supervised", "hybrid")


def warp_label(label: torch.Tensor, u: torch.Tensor, interp: str = "nearest") -> torch.Tensor:
    """Warp an int label map ``(B,1,*S)`` by ``u`` with ``interp`` (a ``label_interp`` of :data:`LABEL_INTERPS`). ``"linear"``
    warps a one-hot over the ids present (:func:`losses.compact_labels`: K + 1 channels, not
    max id + 1) and maps the argmax back to the ids.

    A point read more than half a voxel outside the moving grid is background (0), within that
    margin it takes the border label: ITK's rule, which ``register.py`` applies in world space
    (:func:`spatial.world.sample`), so both tools score the same moved labels at the edge."""
    if interp == "nearest":
        return warp(label, u, mode="nearest", padding_mode="half_voxel")
    # one-hot over the ids present (0 included), warped linearly, argmax, back to the ids: the
    # same result as a dense one-hot of max id + 1 channels (absent channels stay 0 and never win)
    ids, (index,) = compact_labels(label)
    warped = warp(one_hot(index, int(ids.numel())), u, padding_mode="half_voxel")
    moved = ids.to(label.dtype)[warped.argmax(dim=1, keepdim=True)]
    # beyond the margin every channel reads 0: background, not the first id present
    return torch.where(warped.sum(dim=1, keepdim=True) > 0.5, moved, torch.zeros_like(moved))


def evaluate_batch(batch: Mapping[str, Any], u: torch.Tensor, with_hd95: bool, interp: str = "nearest",
                   moved_label: torch.Tensor | None = None,
                   moving_present: Sequence[set[int]] | None = None) -> list[dict[str, Any]]:
    """:func:`metrics.evaluate_pair` on every pair of the batch (labels: the fixed, the
    un-warped moving and the warped moving map). A pair that cannot be scored raises
    :class:`metrics.MetricError` ``"pair <fixed_id> <- <moving_id>: <reason>"``.

    ``moved_label`` ``(B, 1, *S)``: the warped moving maps when the caller read them itself (the
    one-pair tool reads the moving label in world space from its own grid,
    :func:`data.transforms.transform_volume`); default: ``batch["moving_label"]`` warped by ``u``.
    ``moving_present``: per pair, the moving label map's foreground labels as stored when
    ``batch["moving_label"]`` is that map resampled onto the fixed grid (the one-pair tool; see
    :func:`metrics.evaluate_pair`), for the registered and the identity scores alike."""
    has_labels = "fixed_label" in batch and "moving_label" in batch
    if has_labels and moved_label is None:
        moved_label = warp_label(batch["moving_label"], u, interp)
    rows = []
    for i in range(u.shape[0]):
        try:
            spacing = spacing_of(batch, i, u.shape[1])
            present = moving_present[i] if moving_present is not None else None
            res = evaluate_pair(
                batch["fixed_label"][i] if has_labels else None,
                batch["moving_label"][i] if has_labels else None,
                moved_label[i] if has_labels else None,
                u[i : i + 1],
                spacing,
                hd95_enabled=with_hd95,
                moving_present=present,
            )
            if has_labels:  # no registration: the moving map is its own warp
                moving = batch["moving_label"][i]
                res["dice_identity"] = dice_metric(batch["fixed_label"][i], moving, moving,
                                                   moving_present=present).mean
            else:
                res["dice_identity"] = float("nan")
            res["mae_identity"] = (mae_identity(batch["fixed"][i], batch["moving"][i])
                                   if "fixed" in batch and "moving" in batch else float("nan"))
        except ValueError as exc:
            ids = [batch.get(key) for key in ("fixed_id", "moving_id")]
            pair = " <- ".join(str(v[i]) if isinstance(v, (list, tuple)) and i < len(v) else f"#{i}"
                               for v in ids)
            raise MetricError(f"pair {pair}: {exc}") from None
        res["moved_label"] = moved_label[i] if has_labels else None
        rows.append(res)
    return rows


def mae_identity(fixed: torch.Tensor, moving: torch.Tensor) -> float:
    """Mean absolute intensity difference of a pair's images ``(C, *S)`` before registration
    (float64): with ``dice_identity`` a property of the data, not of the method, that two results
    of one pair must share (:func:`experiments.comparison.check_same_data`)."""
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed image {tuple(fixed.shape)} and moving image {tuple(moving.shape)} differ in shape")
    return float((fixed.double() - moving.double()).abs().mean())


def spacing_of(batch: Mapping[str, Any], i: int, ndim: int) -> tuple[float, ...]:
    sp = batch.get("spacing")
    if sp is None:
        return (1.0,) * ndim
    sp = torch.as_tensor(sp)
    row = sp[i] if sp.dim() == 2 else sp
    return tuple(float(s) for s in row[:ndim])


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (a validation epoch's logged means), NaN when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return math.fsum(finite) / len(finite) if finite else math.nan


def gather_objects(trainer: Any, obj: Any) -> list[Any]:
    """``obj`` of every process (DDP: ``all_gather_object``; one process: ``[obj]``)."""
    import torch.distributed as dist

    if getattr(trainer, "world_size", 1) > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def each_pair_once(trainer: Any, rows: Sequence[Mapping[str, Any]], key: str = "pairs") -> list[Mapping[str, Any]]:
    """The rows of every process (:func:`gather_objects`), each ``row[key]`` (the pair ids it scores)
    once. Under DDP, Lightning's sampler pads the validation and test pairs with repeats so that
    every process gets as many: a mean over all rows would count the repeated pairs twice."""
    seen: set = set()
    out = []
    for rank_rows in gather_objects(trainer, list(rows)):
        for row in rank_rows:
            if row[key] not in seen:
                seen.add(row[key])
                out.append(row)
    return out

