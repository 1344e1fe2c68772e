"""NIfTI input/output with validation that fails early, in one line, naming the file.

Every problem with input data raises :class:`DataError` (a ``ValueError``) whose message
names the file (or CSV row / config key) at fault and says what was expected, e.g.::

    DataError: /data/s1.nii.gz: expected a 3-D volume, got shape (160, 192, 224, 2)

Arrays are returned in the file's voxel order (no reorientation); ``affine`` and
``spacing`` come from the header so callers can check or convert spaces themselves.

Three neighbours hold the rest of the NIfTI story and are re-exported here: :mod:`data.headers`
(opening a file and the checks that need no voxel data: :func:`read_grid`, :func:`check_itk_header`,
:func:`check_label_grid`), :mod:`data.geometry` (:class:`Grid`, :func:`grid_mismatch` and its
tolerances: when two grids are one in world space) and :mod:`data.save` (:func:`save_nifti_atomic`,
:func:`nifti_bytes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# re-exported: ``from data.io import grid_mismatch, save_nifti_atomic`` keeps working
from data.errors import DataError  # noqa: F401 - re-exported: data.io.DataError
from data.plain import to_plain  # noqa: F401 - re-exported: data.io.to_plain
from data.geometry import DIRECTION_TOLERANCE, ORIGIN_TOLERANCE, SPACING_TOLERANCE, Grid, grid_mismatch
from data.headers import READ_ERRORS, check_itk_header, check_label_grid, one_line, open_checked, read_grid, read_header
from data.save import nifti_bytes, save_nifti_atomic

__all__ = [
    "DataError",
    "check_itk_header",
    "Volume",
    "Grid",
    "load_volume",
    "read_header",
    "read_grid",
    "grid_mismatch",
    "check_label_grid",
    "require_contrast",
    "SPACING_TOLERANCE",
    "DIRECTION_TOLERANCE",
    "ORIGIN_TOLERANCE",
    "MAX_LABEL_VALUES",
    "normalize_intensity",
    "save_nifti_atomic",
    "nifti_bytes",
    "volume_id",
]

_KINDS = ("image", "label")

# A label map has at most this many distinct values: FreeSurfer's largest lookup tables use a few
# hundred ids; an intensity image given as labels (e.g. whole-valued intensities 0..4000) has more.
MAX_LABEL_VALUES = 2000




@dataclass
class Volume:
    """A loaded 3-D volume.

    Attributes:
        array: ``(X, Y, Z)`` numpy array, ``float32`` for images, ``int64`` for labels,
            in the file's voxel order.
        spacing: voxel size in mm along the three array axes (header zooms).
        affine: ``(4, 4)`` voxel-to-world matrix of the file.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: Path | None = None


def volume_id(path: str | os.PathLike) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (or any other last suffix): the item id."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]





def load_volume(path: str | os.PathLike, kind: str = "image") -> Volume:
    """Load and validate a 3-D NIfTI (or any nibabel-readable) volume.

    Args:
        path: file path.
        kind: ``"image"`` -> ``float32`` array (header scaling applied); ``"label"`` ->
            ``int64`` array; values must be whole numbers (an integer stored as float is
            fine) and non-negative.

    Raises:
        DataError: missing, unreadable, corrupt or truncated file; a vector/RGB image (RGB voxel
            type, ``(X, Y, Z, 1, K)``, ``(X, Y, Z, 3)``); not 3-D (a trailing singleton 4th
            dimension is squeezed); NaN or infinite voxels; for labels, non-integer or negative
            values, no foreground voxel at all (an all-zero map: every label map is used for Dice,
            which is undefined without foreground), or more than :data:`MAX_LABEL_VALUES` distinct
            values (an intensity image given as labels). The message names ``path``.
    """
    if kind not in _KINDS:
        raise ValueError(f"load_volume() 'kind' must be one of {_KINDS}, got {kind!r}")
    path = Path(path)
    img, grid = open_checked(path, complete=False)
    shape, spacing = grid.shape, grid.spacing
    try:
        if kind == "image":
            data = np.asarray(img.get_fdata(dtype=np.float32))
        else:
            data = np.asanyarray(img.dataobj)
    except READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image data ({one_line(err)})") from err
    data = data.reshape(shape)
    if data.dtype.kind == "c":
        raise DataError(f"{path}: expected real-valued voxels, got complex dtype {data.dtype}")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise DataError(f"{path}: expected finite voxel values, found {n_nan} NaN and {n_inf} inf voxels")
    if kind == "label":
        data = _as_labels(path, data)
        if not data.any():
            raise DataError(f"{path}: label map is empty (every voxel is 0); expected at least one foreground "
                            "label (Dice is undefined on an empty label map)")
        _check_label_count(path, data)
    else:
        data = np.ascontiguousarray(data, dtype=np.float32)
    return Volume(array=data, spacing=spacing, affine=np.asarray(img.affine, dtype=np.float64), path=path)


def _check_label_count(path: Path, data: np.ndarray) -> None:
    """At most :data:`MAX_LABEL_VALUES` distinct values (``data``: non-negative int64)."""
    hi = int(data.max()) if data.size else 0
    if hi < MAX_LABEL_VALUES:  # non-negative ids 0..hi: at most hi + 1 distinct values
        return
    flat = data.reshape(-1)
    if hi < 2**24:  # a count table is faster than sorting
        n = int(np.count_nonzero(np.bincount(flat, minlength=0)))
    else:
        n = int(np.unique(flat).size)
    if n > MAX_LABEL_VALUES:
        raise DataError(
            f"{path}: label map has {n} distinct values, more than a segmentation has (at most "
            f"{MAX_LABEL_VALUES}, data.io.MAX_LABEL_VALUES); is this an intensity image given as labels?"
        )


def _as_labels(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "b":
        return data.astype(np.int64)
    if data.dtype.kind == "f":
        frac = data != np.round(data)
        if frac.any():
            value = float(data[frac].flat[0])
            raise DataError(
                f"{path}: expected integer labels, found {int(frac.sum())} non-integer voxels "
                f"(e.g. {value:g}); is this an intensity image?"
            )
    if data.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected numeric labels, got dtype {data.dtype}")
    if data.size and data.min() < 0:
        raise DataError(f"{path}: expected non-negative labels, found minimum {data.min():g}")
    if data.size and data.max() > np.iinfo(np.int64).max:
        raise DataError(f"{path}: label values too large for int64 (max {data.max():g})")
    return np.ascontiguousarray(data, dtype=np.int64)


def normalize_intensity(
    array: np.ndarray,
    lower: float = 0.5,
    upper: float = 99.5,
    nonzero: bool = True,
) -> np.ndarray:
    """Percentile clip, then rescale linearly to [0, 1]: ``(clip(x, lo, hi) - lo) / (hi - lo)``.

    Args:
        array: finite image of any shape.
        lower, upper: percentiles (0-100) giving ``lo`` and ``hi``.
        nonzero: compute the percentiles over voxels ``!= 0`` only (default), so that a
            skull-stripped image's zero background does not drag them down; zero background
            then maps to 0 as long as ``lo >= 0``. Falls back to all voxels when every voxel is 0.

    Returns:
        ``float32`` array of the same shape in [0, 1]. A constant image (``hi <= lo``)
        returns all zeros, and so does an image whose nonzero voxels share one value (a binary
        mask, a single bright voxel in zeros): callers refuse that with :func:`require_contrast`.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"normalize_intensity() needs 0 <= lower < upper <= 100, got {lower}, {upper}")
    x = np.asarray(array, dtype=np.float32)
    sample = x[x != 0] if nonzero else x.reshape(-1)
    if sample.size == 0:
        sample = x.reshape(-1)
    if sample.size == 0:
        return np.zeros_like(x)
    lo, hi = (np.float32(p) for p in np.percentile(sample, [lower, upper]))
    if not hi > lo:
        return np.zeros_like(x)
    out = (np.clip(x, lo, hi) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def require_contrast(path: str | os.PathLike, normalized: np.ndarray, how: str) -> np.ndarray:
    """Return ``normalized`` (an image after intensity normalisation ``how``), or raise when it
    is all zeros: nothing to register. Normalising a binary 0/1 mask or a single bright voxel in
    zeros gives all zeros (its nonzero voxels share one value, so the percentiles coincide).

    Raises:
        DataError: naming ``path``.
    """
    if not np.any(normalized > 0):
        raise DataError(
            f"{path}: image is all zeros after intensity normalisation ({how}); a binary mask or a "
            f"single bright voxel normalises so (its nonzero voxels share one value): expected an intensity image"
        )
    return normalized


