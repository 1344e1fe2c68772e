"""NIfTI input/output with validation that fails early, in one line, naming the file.

Every problem with input data raises :class:`DataError` (a ``ValueError``) whose message
names the file (or CSV row / config key) at fault and says what was expected, e.g.::

    DataError: /data/s1.nii.gz: expected a 3-D volume, got shape (160, 192, 224, 2)

Arrays are returned in the file's voxel order (no reorientation); ``affine`` and
``spacing`` come from the header so callers can check or convert spaces themselves.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

__all__ = [
    "DataError",
    "Volume",
    "Grid",
    "load_volume",
    "read_header",
    "read_grid",
    "grid_mismatch",
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

# "Same grid in world space" (:func:`grid_mismatch`): two voxel-to-world matrices agree when
SPACING_TOLERANCE = 1e-3  # mm: voxel sizes (header zooms and affine column norms) agree within this
DIRECTION_TOLERANCE = 1e-4  # unit axis directions (direction cosines) agree within this per component
ORIGIN_TOLERANCE = 1e-3  # mm: the world positions of voxel (0, 0, 0) lie within this distance
# A label map has at most this many distinct values: FreeSurfer's largest lookup tables use a few
# hundred ids; an intensity image given as labels (e.g. whole-valued intensities 0..4000) has more.
MAX_LABEL_VALUES = 2000


class DataError(ValueError):
    """Bad input data. The message names the file (or key) at fault and what was expected."""


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


class Grid(NamedTuple):
    """A file's grid from its header: ``shape`` (3 ints), ``spacing`` (mm, header zooms) and
    ``affine`` (``(4, 4)`` voxel-to-world)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray


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


def _spacing(path: Path | str, header) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: expected three positive voxel sizes in the header, got {zooms}")
    return zooms  # type: ignore[return-value]


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
    spacing = _spacing(path, img.header)
    _check_complete(path, img)
    return Grid(shape, spacing, np.asarray(img.affine, dtype=np.float64))


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing)`` of :func:`read_grid` (same checks)."""
    grid = read_grid(path)
    return grid.shape, grid.spacing


def _axcodes(affine: np.ndarray) -> str:
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def grid_mismatch(
    affine_a: np.ndarray,
    affine_b: np.ndarray,
    spacing_a: Sequence[float] | None = None,
    spacing_b: Sequence[float] | None = None,
) -> str | None:
    """How two voxel-to-world matrices differ, in words, or None when they agree.

    Two grids of one shape are the same grid in world space when, within the tolerances
    (module constants): the voxel sizes agree within :data:`SPACING_TOLERANCE` mm (the header
    zooms ``spacing_a``/``spacing_b`` when given, and the affine column norms); the unit axis
    directions (direction cosines) agree within :data:`DIRECTION_TOLERANCE` per component; and
    the world positions of voxel ``(0, 0, 0)`` (the origins) lie within
    :data:`ORIGIN_TOLERANCE` mm. The words name each difference: orientation codes (e.g.
    ``"orientation LAS vs RAS"``, :func:`nibabel.aff2axcodes`) or the rotation between axes with
    the same codes, the origin offset in mm, the voxel sizes.
    """
    a = np.asarray(affine_a, dtype=np.float64)
    b = np.asarray(affine_b, dtype=np.float64)
    norms_a, norms_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    words = []
    codes_a, codes_b = _axcodes(a), _axcodes(b)
    dir_a = a[:3, :3] / np.where(norms_a > 0, norms_a, 1.0)
    dir_b = b[:3, :3] / np.where(norms_b > 0, norms_b, 1.0)
    if codes_a != codes_b:
        words.append(f"orientation {codes_a} vs {codes_b}")
    elif np.abs(dir_a - dir_b).max() > DIRECTION_TOLERANCE:
        cosines = np.clip(np.sum(dir_a * dir_b, axis=0), -1.0, 1.0)
        angle = float(np.degrees(np.arccos(cosines)).max())
        words.append(f"axis directions rotated by up to {angle:.3g} degrees (both {codes_a})")
    offset = a[:3, 3] - b[:3, 3]
    if np.linalg.norm(offset) > ORIGIN_TOLERANCE:
        words.append(f"origin offset {np.linalg.norm(offset):.4g} mm {_fmt(offset)}")
    if spacing_a is not None and spacing_b is not None and not np.allclose(
        spacing_a, spacing_b, rtol=0.0, atol=SPACING_TOLERANCE
    ):
        words.append(f"spacing {_fmt(spacing_a)} vs {_fmt(spacing_b)} mm")
    elif not np.allclose(norms_a, norms_b, rtol=0.0, atol=SPACING_TOLERANCE):
        words.append(f"voxel sizes in the affine {_fmt(norms_a)} vs {_fmt(norms_b)} mm")
    return ", ".join(words) if words else None


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
    spacing = _spacing(path, img.header)
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


def _nifti_dtype(array: np.ndarray) -> np.dtype:
    kind = array.dtype.kind
    if kind == "b":
        return np.dtype(np.uint8)
    if kind in "iu":
        if array.size == 0:
            return np.dtype(np.int16)
        lo, hi = int(array.min()), int(array.max())
        for dt in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return np.dtype(dt)
        return np.dtype(np.int64)
    if kind == "f":
        return np.dtype(np.float32)
    raise ValueError(f"save_nifti_atomic() cannot store an array of dtype {array.dtype}")


def _file_mode(path: Path) -> int:
    """Mode of an existing target, else 0o666 minus the process umask (one rule for every file
    this project writes: :func:`app.results.file_mode`)."""
    from app.results import file_mode

    return file_mode(path)


def _nifti_image(array, affine, description: str | None, fn: str) -> "nib.Nifti1Image":
    """The NIfTI image :func:`save_nifti_atomic` and :func:`nifti_bytes` write (see there)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    dtype = _nifti_dtype(array)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{fn}() 'affine' must be 4x4, got shape {affine.shape}")
    img = nib.Nifti1Image(array.astype(dtype, copy=False), affine)
    img.header.set_data_dtype(dtype)
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=2)
    if description is not None:
        img.header["descrip"] = description.encode("ascii", "replace")[:80]
    return img


def nifti_bytes(array, affine, name: str | os.PathLike, description: str | None = None) -> bytes:
    """The bytes of the NIfTI file :func:`save_nifti_atomic` would write at ``name`` (gzip-compressed
    when it ends in ``.gz``), for writing several files all or none
    (:func:`app.results.atomic_write_files`)."""
    data = _nifti_image(array, affine, description, "nifti_bytes").to_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if str(name).lower().endswith(".gz") else data


def save_nifti_atomic(
    array,
    affine,
    path: str | os.PathLike,
    description: str | None = None,
) -> Path:
    """Write a NIfTI file atomically: a temporary file in the target folder, then ``os.replace``.

    Readers never see a half-written file: on any error the temporary file is removed and
    an existing ``path`` is left untouched.

    Args:
        array: numpy array or torch tensor (``(X, Y, Z)`` or any nibabel-storable shape).
            Floats are stored as ``float32``; integers in the smallest of uint8/int16/int32/int64
            that holds their range (lossless: label ids are never narrowed); booleans as uint8.
        affine: ``(4, 4)`` voxel-to-world matrix (identity if None); written as sform and qform.
        path: target file; ``.nii.gz`` compresses, ``.nii`` does not.
        description: stored in the header's ``descrip`` field, cut to its 80 bytes
            (non-ASCII characters replaced by ``?``).

    Returns:
        The target path.
    """
    path = Path(path)
    if not path.name:
        raise ValueError("save_nifti_atomic() 'path' must name a file")
    img = _nifti_image(array, affine, description, "save_nifti_atomic")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        img.to_filename(tmp)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):  # name the target, not the temporary file
            reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
            raise OSError(exc.errno, f"cannot write ({reason})", str(path)) from exc
        raise
    return path


def to_plain(value: Any) -> Any:
    """Hydra/OmegaConf ``DictConfig``/``ListConfig`` -> plain Python containers (resolved);
    anything else unchanged. Constructors built by Hydra call it on nested config values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
