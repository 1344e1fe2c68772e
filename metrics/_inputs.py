"""Input checks shared by the metric functions (label maps, spacing, displacement fields).

Every check raises ``ValueError``/``TypeError`` with a one-line message naming the public
function and the argument, e.g. ``"dice() 'fixed_label' must be ..."``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from spatial.functional import check_field


def _to_tensor(x: Any, fn: str, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}() '{name}' must be a torch.Tensor, got {type(x).__name__}")
    return x


def label_map(x: Any, fn: str, name: str, ndim: int | None = None) -> torch.Tensor:
    """Validate one integer label map and return it as an ``int64`` tensor shaped ``(*S)``.

    Accepted shapes: ``(*S)``, ``(1, *S)``, ``(1, 1, *S)`` with ``len(S) == ndim``. When
    ``ndim`` is None it is inferred: a 2-D tensor is a 2-D map, anything larger is 3-D
    (so a 2-D map with leading singleton axes needs ``ndim=2``).
    Integer and bool dtypes are accepted; a floating tensor only if every value is a finite
    integer (e.g. labels loaded by nibabel as float64). Negative labels are rejected.
    """
    x = _to_tensor(x, fn, name)
    shape = tuple(x.shape)
    if ndim is None:
        ndim = 2 if x.dim() == 2 else 3
    lead = x.dim() - ndim
    if lead < 0 or lead > 2 or any(s != 1 for s in shape[:lead]):
        raise ValueError(
            f"{fn}() '{name}' must be one label map shaped (*S), (1, *S) or (1, 1, *S) with "
            f"{ndim} spatial dims (one pair at a time), got shape {shape}"
        )
    x = x.reshape(shape[lead:])
    if x.dtype == torch.bool:
        return x.long()
    if x.is_complex():
        raise ValueError(f"{fn}() '{name}' must hold integer labels, got dtype {x.dtype}")
    if x.is_floating_point():
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{fn}() '{name}' holds NaN or inf; labels must be integers")
        if x.numel() and not torch.equal(x, torch.round(x)):
            raise ValueError(
                f"{fn}() '{name}' is floating point with non-integer values (dtype {x.dtype}); "
                f"pass an integer label map, not a probability or an interpolated image"
            )
    x = x.long()
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{fn}() '{name}' has negative labels (min {int(x.min())}); labels must be >= 0")
    return x


def label_maps(
    fixed: Any, moving: Any, moved: Any, fn: str, ndim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the fixed, un-warped moving and warped moving label maps of one pair.

    All three must be on the same grid (the fixed image's; the datasets resample the moving
    image to it). Returns three ``(*S)`` int64 tensors on the fixed map's device.
    """
    names = ("fixed_label", "moving_label", "moved_label")
    maps = [label_map(x, fn, name, ndim) for x, name in zip((fixed, moving, moved), names)]
    if len({tuple(x.shape) for x in maps}) > 1:
        shapes = ", ".join(
            f"{name} {tuple(_to_tensor(x, fn, name).shape)}"
            for x, name in zip((fixed, moving, moved), names)
        )
        raise ValueError(
            f"{fn}() label maps differ in shape: {shapes}; all must be on the fixed image's grid"
        )
    f = maps[0]
    return f, maps[1].to(f.device), maps[2].to(f.device)


def label_subset(labels: Iterable[int] | torch.Tensor | None, fn: str, key: str = "labels") -> list[int] | None:
    """Validate the ``labels`` option (or another option ``key`` holding labels): None, or
    foreground integer labels (>= 1). Sorted, unique."""
    if labels is None:
        return None
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).ravel().tolist()
    out = set()
    for lab in labels:
        if isinstance(lab, float) and lab.is_integer():
            lab = int(lab)
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)):
            raise ValueError(f"{fn}() '{key}' must be integers, got {lab!r}")
        if int(lab) < 1:
            raise ValueError(
                f"{fn}() '{key}' must be foreground labels >= 1 "
                f"(0 is background and never scored), got {lab!r}"
            )
        out.add(int(lab))
    return sorted(out)


def spacing_tuple(spacing: Any, ndim: int, fn: str) -> tuple[float, ...]:
    """Voxel spacing in mm as a ``ndim``-tuple of positive floats.

    Accepts a scalar (isotropic), a sequence/array/tensor of ``ndim`` values, or a ``(1, ndim)``
    tensor (the ``spacing`` entry of a batch of one pair).
    """
    if spacing is None:
        raise ValueError(f"{fn}() 'spacing' is required (mm per voxel along each axis), got None")
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().double().numpy()
    arr = np.asarray(spacing, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise ValueError(f"{fn}() 'spacing' must have {ndim} values (one per spatial axis), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{fn}() 'spacing' must be positive and finite, got {arr.tolist()}")
    return tuple(float(s) for s in arr)


def spatial_ndim_from_spacing(spacing: Any) -> int | None:
    """Number of spatial dims implied by a per-axis spacing (None for a scalar / None)."""
    if spacing is None:
        return None
    if isinstance(spacing, torch.Tensor):
        n = spacing.numel()
    else:
        n = np.asarray(spacing).size
    return n if n in (2, 3) else None


def refuse_thin_3d(f: torch.Tensor, ndim: int | None, fn: str) -> None:
    """A label map whose dimensionality was guessed (``ndim`` None) as 3-D with a one-voxel axis is
    refused: every voxel of a one-voxel-thick 3-D map lies on its surface, so a 2-D map read that way
    gets a wrong HD95 (and an erased label a penalty with a spurious axis) without a word."""
    if ndim is None and 1 in tuple(f.shape):
        raise ValueError(f"{fn}() label maps of shape {tuple(f.shape)} read as 3-D with a one-voxel axis: for a 2-D "
                         "map pass it as (H, W), give a spacing per axis (2 values) or a 2-D 'disp'; for a 3-D slab, "
                         "3 spacing values")


def displacement(u: Any, fn: str) -> torch.Tensor:
    """Validate a displacement of ONE pair, ``(1, D, *S)`` or ``(D, *S)``; returns ``(1, D, *S)``.

    Every value must be finite: a NaN or inf anywhere raises ``ValueError`` naming the count
    (a NaN field would otherwise give a NaN SDlogJ and 0 % folding, since ``NaN <= 0`` is
    False). Half precision is promoted to float32 (finite differences in fp16 are too coarse).
    """
    u = _to_tensor(u, fn, "u")
    if u.dim() == 4 and tuple(u.shape[:2]) == (3, 2):
        raise ValueError(f"{fn}() 'u' of shape {tuple(u.shape)} is ambiguous: three 2-D fields (B, 2, H, W) or one "
                         "3-D field two voxels deep (3, *S); pass one pair as (1, D, *S)")
    if u.dim() in (3, 4) and u.shape[0] == u.dim() - 1:
        u = u.unsqueeze(0)
    elif u.dim() in (4, 5) and u.shape[1] == u.dim() - 2 and u.shape[0] != 1:
        raise ValueError(
            f"{fn}() 'u' must hold one pair, (1, D, *S) or (D, *S); "
            f"got a batch of {u.shape[0]}: {tuple(u.shape)}"
        )
    check_field(u, "u", fn)
    u = u.detach()
    bad = int(u.numel() - torch.count_nonzero(torch.isfinite(u)))
    if bad:
        n_nan = int(torch.count_nonzero(torch.isnan(u)))
        raise ValueError(
            f"{fn}() 'u' has {bad} non-finite value{'s' if bad != 1 else ''} "
            f"({n_nan} NaN, {bad - n_nan} inf) of "
            f"{u.numel()}; the displacement must be finite (a diverged registration?)"
        )
    if u.dtype in (torch.float16, torch.bfloat16):
        u = u.float()
    return u


__all__: Sequence[str] = [
    "label_map",
    "label_maps",
    "label_subset",
    "spacing_tuple",
    "spatial_ndim_from_spacing",
    "displacement",
]
