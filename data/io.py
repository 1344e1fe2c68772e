"""NIfTI input/output with validation that fails early, in one line, naming the file.

Every problem with input data raises :class:`DataError` (a ``ValueError``) whose message
names the file (or CSV row / config key) at fault and says what was expected, e.g.::

    DataError: /data/s1.nii.gz: expected a 3-D volume, got shape (160, 192, 224, 2)

Arrays are returned in the file's voxel order (no reorientation); ``affine`` and
``spacing`` come from the header so callers can check or convert spaces themselves.

Two neighbours hold the rest of the NIfTI story and are re-exported here: :mod:`data.geometry`
(:class:`Grid`, :func:`grid_mismatch` and its tolerances: when two grids are one in world space)
and :mod:`data.save` (:func:`save_nifti_atomic`, :func:`nifti_bytes`).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

# re-exported: ``from data.io import grid_mismatch, save_nifti_atomic`` keeps working
from data.errors import DataError  # noqa: F401 - re-exported: data.io.DataError
from data.plain import to_plain  # noqa: F401 - re-exported: data.io.to_plain
from data.geometry import DIRECTION_TOLERANCE, ORIGIN_TOLERANCE, SPACING_TOLERANCE, Grid, grid_mismatch
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

# Everything nibabel, gzip and zlib raise on unreadable or corrupt files.
_READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    WrapStructError,
    OSError,  # includes gzip.BadGzipFile
    EOFError,  # truncated gzip stream
    zlib.error,
    struct.error,
    ValueError,  # nibabel: "mmap length is greater than file size", bad header values
    MemoryError,  # absurd header dims in a garbage file
)

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


def _one_line(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def _open(path: str | os.PathLike) -> nib.spatialimages.SpatialImage:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a NIfTI file, got a directory or special file")
    try:
        return nib.load(str(path))
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image file ({_one_line(err)})") from err


_VECTOR_INTENTS = ("vector", "displacement vector", "rgb vector", "rgba vector")


def _check_scalar(path: Path | str, img) -> None:
    """Refuse a vector or colour image: an RGB/RGBA voxel type, a NIfTI vector (5-D
    ``(X, Y, Z, 1, K)`` or a vector intent code), or ``(X, Y, Z, 3|4)`` components on a 4th axis."""
    header = img.header
    dtype = header.get_data_dtype()
    shape = tuple(int(s) for s in img.shape)
    what = None
    if dtype.names is not None:
        what = f"voxel type {'/'.join(dtype.names)} with {len(dtype.names)} components"
    else:
        try:
            intent = header.get_intent()[0] if hasattr(header, "get_intent") else ""
        except (KeyError, ValueError, HeaderDataError):  # unknown intent code: not a vector one
            intent = ""
        extra = [s for s in shape[3:] if s != 1]
        if (len(shape) >= 5 and extra) or (len(shape) == 4 and shape[3] in (3, 4)) or (
            intent in _VECTOR_INTENTS and extra
        ):
            what = f"shape {shape}: {int(np.prod(extra))} components per voxel"
    if what is not None:
        raise DataError(f"{path}: vector/RGB image, expected one scalar channel ({what})")


def _spatial_shape(path: Path | str, shape: Sequence[int]) -> tuple[int, int, int]:
    """3-D shape, allowing trailing singleton dimensions (``(X, Y, Z, 1)``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise DataError(f"{path}: expected a 3-D volume, got shape {shape}")
    if any(s < 1 for s in shape[:3]):
        raise DataError(f"{path}: expected a 3-D volume with positive sizes, got shape {shape}")
    return shape[:3]  # type: ignore[return-value]


def _spacing(path: Path | str, img) -> tuple[float, float, float]:
    """The voxel sizes of the header (pixdim), which must be those of the voxel -> world affine
    (its column norms) within :data:`SPACING_TOLERANCE`: metrics in mm (HD95) use the sizes, world
    space (resampling, ITK exports) the affine, and a header where they disagree would make the two
    describe different images."""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: expected three positive voxel sizes in the header, got {zooms}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape == (4, 4) and np.all(np.isfinite(affine)):
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(np.abs(norms - np.asarray(zooms)) > SPACING_TOLERANCE):
            raise DataError(f"{path}: the header's voxel sizes (pixdim {_fmt3(zooms)} mm) disagree with its affine "
                            f"(sform/qform: {_fmt3(norms)} mm); fix the header so that both describe the same grid")
    return zooms  # type: ignore[return-value]


def _fmt3(values) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


def _expected_data_end(img) -> int | None:
    """Byte offset where the voxel data of a single-file NIfTI ends, or None if unknown."""
    header = img.header
    try:
        offset = int(header.get_data_offset())
        nbytes = int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    except (AttributeError, TypeError, ValueError):
        return None
    return offset + nbytes


def _check_complete(path: Path, img) -> None:
    """Cheap truncation check without decompressing: file size, or the gzip ISIZE trailer.

    A gzip member ends with its uncompressed size mod 2**32. When that trailer differs from
    what the header implies (a truncated file ends in arbitrary bytes), the file is streamed
    once to decide: multi-member gzip files, or files with bytes after the voxel data, have
    an honest trailer that differs too and pass after the stream check.
    """
    end = _expected_data_end(img)
    if end is None:
        return
    name = path.name.lower()
    size = path.stat().st_size
    if name.endswith(".nii"):
        if size < end:
            raise DataError(f"{path}: truncated file, header needs {end} bytes but the file has {size}")
        return
    if not name.endswith(".gz"):
        return
    if size >= 18:  # gzip header (10) + trailer (8)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
        if isize == end % 2**32:
            return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image file ({_one_line(err)})") from err
    if total < end:
        raise DataError(f"{path}: truncated file, header needs {end} bytes of data but it holds {total}")


def read_grid(path: str | os.PathLike) -> Grid:
    """Validate a file cheaply from its header and return its :class:`Grid` (shape, spacing, affine).

    Checks that the file exists, nibabel can parse its header, it holds one scalar channel
    (not a vector/RGB image), it is 3-D (a trailing singleton 4th dimension is allowed) and is
    not obviously truncated (file size for ``.nii``, the gzip size trailer for ``.nii.gz``).
    Voxel values are not read: NaNs or non-integer labels are only found by :func:`load_volume`.

    Raises:
        DataError: naming ``path`` and what was expected.
    """
    path = Path(path)
    img = _open(path)
    _check_scalar(path, img)
    shape = _spatial_shape(path, img.shape)
    spacing = _spacing(path, img)
    _check_complete(path, img)
    return Grid(shape, spacing, np.asarray(img.affine, dtype=np.float64))


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing)`` of :func:`read_grid` (same checks)."""
    grid = read_grid(path)
    return grid.shape, grid.spacing


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
    img = _open(path)
    _check_scalar(path, img)
    shape = _spatial_shape(path, img.shape)
    spacing = _spacing(path, img)
    try:
        if kind == "image":
            data = np.asarray(img.get_fdata(dtype=np.float32))
        else:
            data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image data ({_one_line(err)})") from err
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


def check_itk_header(path: str | os.PathLike) -> None:
    """DataError naming ``path`` when its NIfTI header holds an sform and a qform (both codes > 0)
    that describe different grids: nibabel (and this project) place the image by the sform, ITK and
    ANTs by the qform in that case, so a transform exported for them would act on another image."""
    try:
        header = nib.load(str(path)).header
    except Exception:  # noqa: BLE001 - read_grid names an unreadable file
        return
    if not isinstance(header, nib.Nifti1Header):
        return  # Analyze and others: one orientation only
    s_code, q_code = int(header["sform_code"]), int(header["qform_code"])
    if s_code > 0 and q_code > 0:
        diff = grid_mismatch(header.get_sform(), header.get_qform())
        if diff is not None:
            raise DataError(f"{path}: its sform (code {s_code}) and qform (code {q_code}) describe different grids "
                            f"({diff}); nibabel and this tool use the sform, ITK/ANTs the qform: make them agree "
                            "(e.g. nibabel: img.set_qform(img.get_sform()))")


def check_label_grid(label: Grid, image: Grid, label_name: str, image_name: str) -> None:
    """Refuse a label map that is not on its image's grid: another shape, or another voxel-to-world
    affine beyond the tolerances of :func:`grid_mismatch` (a label map stored flipped or shifted
    against its image would be scored against the wrong voxels).

    Raises:
        DataError: ``"<label_name> is not on the grid of its image <image_name> ..."`` with the
            shapes or the difference (orientation, origin, spacing).
    """
    if tuple(label.shape) != tuple(image.shape):
        raise DataError(f"{label_name} is not on the grid of its image {image_name}: it has shape "
                        f"{tuple(label.shape)}, the image {tuple(image.shape)}; expected equal shapes")
    diff = grid_mismatch(image.affine, label.affine, image.spacing, label.spacing)
    if diff:
        raise DataError(f"{label_name} is not on the grid of its image {image_name} in world space ({diff}); "
                        "expected the label map in its image's voxel-to-world frame")
