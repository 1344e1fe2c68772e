"""NIfTI headers: opening a file and the checks that need no voxel data (one scalar channel, 3-D,
voxel sizes that agree with the affine, not truncated, sform and qform that agree, a label map on
its image's grid). :mod:`data.io` re-exports :func:`read_grid`, :func:`read_header`,
:func:`check_itk_header` and :func:`check_label_grid`; every problem is one :class:`DataError`
naming the file."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from data.errors import DataError
from data.geometry import SPACING_TOLERANCE, Grid, grid_mismatch

__all__ = ["read_grid", "read_header", "open_checked", "check_itk_header", "check_label_grid", "open_image",
           "unplaced_reason", "one_line", "READ_ERRORS"]

# Everything nibabel, gzip and zlib raise on unreadable or corrupt files.
READ_ERRORS = (
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

def one_line(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def open_image(path: str | os.PathLike) -> nib.spatialimages.SpatialImage:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a NIfTI file, got a directory or special file")
    try:
        return nib.load(str(path))
    except READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image file ({one_line(err)})") from err


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
    space (resampling) the affine, and a header where they disagree would make the two describe
    different images. (ITK/ANTs space voxels by pixdim: :func:`check_itk_header` bounds the
    difference over the whole grid before an export.)"""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: expected three positive voxel sizes in the header, got {zooms}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        # NaN would pass every later comparison (grid_mismatch, the label-on-image check) as "no difference"
        raise DataError(f"{path}: the header's voxel-to-world affine (sform/qform) is not finite; fix the header")
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
    except READ_ERRORS as err:
        raise DataError(f"{path}: unreadable or corrupt image file ({one_line(err)})") from err
    if total < end:
        raise DataError(f"{path}: truncated file, header needs {end} bytes of data but it holds {total}")


_MM_UNITS = ("mm", "unknown")  # ITK/ANTs read "unknown" as mm too


def _check_units(path: Path | str, img) -> None:
    """Refuse a NIfTI header whose spatial unit (``xyzt_units``) is not mm: nibabel, and with it this
    project (world space, HD95 in mm), reads every file in mm, while ITK/ANTs scale micron and meter
    files by 1e-3 / 1e3, so an exported transform would act on another image."""
    header = img.header
    if not hasattr(header, "get_xyzt_units"):
        return  # Analyze, MGH: no unit field (read as mm by every reader)
    unit = header.get_xyzt_units()[0]
    if unit not in _MM_UNITS:
        raise DataError(f"{path}: its header gives voxel sizes in {unit} (xyzt_units); this project reads every file "
                        "in mm, ITK/ANTs would scale it: convert it to mm (scale the affine, then "
                        "img.header.set_xyzt_units('mm') in nibabel)")


def open_checked(path: str | os.PathLike, complete: bool = True) -> tuple[nib.spatialimages.SpatialImage, Grid]:
    """Open ``path`` and check its header: the image and its :class:`Grid`. Checks that the file
    exists, nibabel can parse its header, it holds one scalar channel (not a vector/RGB image), it
    is 3-D (a trailing singleton 4th dimension is allowed), its spatial unit is mm (or unknown), its
    voxel sizes agree with its affine and, with ``complete``, that it is not obviously truncated (file size for ``.nii``, the gzip
    size trailer for ``.nii.gz``; a reader of the voxels finds truncation anyway)."""
    path = Path(path)
    img = open_image(path)
    _check_scalar(path, img)
    shape = _spatial_shape(path, img.shape)
    _check_units(path, img)
    spacing = _spacing(path, img)
    if complete:
        _check_complete(path, img)
    return img, Grid(shape, spacing, np.asarray(img.affine, dtype=np.float64), unplaced_reason(img.header))


def unplaced_reason(header) -> str | None:
    """Why a header does not place its image in world space, or None when it does. An Analyze
    header holds no orientation and a NIfTI one with sform and qform codes 0 none either: nibabel
    then guesses an affine (x flipped, the grid centred on 0) and ITK another (identity, origin 0),
    so neither a resampling in world space nor a transform exported for ITK/ANTs means anything."""
    if isinstance(header, nib.Nifti1Header):  # NIfTI-1 and -2, single files and .img/.hdr pairs
        if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
            return "its NIfTI header has sform_code = qform_code = 0 (no position in world space)"
        return None
    if isinstance(header, nib.analyze.AnalyzeHeader):
        return f"it has an Analyze header ({_analyze_storage(header)}), which holds no orientation (no position in world space)"
    return None


def _analyze_storage(header) -> str:
    """What an Analyze header says of how its voxels are stored and every reader here ignores: the
    ``orient`` code (0 transverse unflipped, 3 transverse flipped, ...; nibabel and ITK read neither)
    and the signs of the raw pixdim (nibabel drops them). Two files of one subject that differ here
    are read alike but were stored differently (:func:`check_label_grid`)."""
    try:
        orient = int(header["orient"])
    except (KeyError, ValueError, TypeError):
        orient = None
    signs = ", ".join("-" if float(v) < 0 else "+" for v in np.asarray(header["pixdim"])[1:4])
    return f"orient code {orient}, pixdim signs ({signs})"


def read_grid(path: str | os.PathLike) -> Grid:
    """Validate a file cheaply from its header and return its :class:`Grid` (shape, spacing, affine):
    the checks of :func:`open_checked`. Voxel values are not read: NaNs or non-integer labels are
    only found by :func:`data.io.load_volume`.

    Raises:
        DataError: naming ``path`` and what was expected.
    """
    return open_checked(path)[1]


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, spacing)`` of :func:`read_grid` (same checks)."""
    grid = read_grid(path)
    return grid.shape, grid.spacing


# the largest difference, in voxels, between where ITK (pixdim) and nibabel (the affine) put the last
# voxel of an axis that an ITK/ANTs export accepts
ITK_SPACING_DRIFT = 0.01


def check_itk_header(path: str | os.PathLike) -> None:
    """DataError naming ``path`` when its NIfTI header holds an sform and a qform (both codes > 0)
    that describe different grids: nibabel (and this project) place the image by the sform, ITK and
    ANTs by the qform in that case, so a transform exported for them would act on another image.
    Also when pixdim and the affine's voxel sizes, close per voxel, drift apart over the grid by more
    than :data:`ITK_SPACING_DRIFT` voxel (ITK spaces voxels by pixdim); and when the header places
    the image nowhere (:func:`unplaced_reason`): nibabel and ITK then
    guess different world positions."""
    try:
        header = nib.load(str(path)).header
    except Exception:  # noqa: BLE001 - read_grid names an unreadable file
        return
    reason = unplaced_reason(header)
    if reason is not None:
        raise DataError(f"{path}: {reason}; a registration in world space and the ITK/ANTs exports need it: give "
                        "the image a qform/sform (e.g. nibabel: img.set_sform(affine, code=1); "
                        "img.set_qform(affine, code=1)), or convert it to NIfTI with its orientation")
    if not isinstance(header, nib.Nifti1Header):
        return  # others (e.g. MGH): one orientation only
    s_code, q_code = int(header["sform_code"]), int(header["qform_code"])
    # ITK takes the voxel sizes from pixdim and only the directions and origin from the sform/qform:
    # a difference :func:`_spacing` lets pass per voxel adds up over the grid
    shape = np.asarray(header.get_data_shape()[:3], dtype=np.float64)
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    if shape.size != 3 or zooms.size != 3:
        return  # not a 3-D volume: read_grid names it
    affine = header.get_sform() if s_code > 0 else header.get_qform()
    drift = np.abs(np.linalg.norm(affine[:3, :3], axis=0) - zooms) * np.maximum(shape - 1, 0)
    if np.any(drift > ITK_SPACING_DRIFT * zooms):
        axis = int(np.argmax(drift / zooms))
        raise DataError(f"{path}: its voxel sizes (pixdim {_fmt3(zooms)} mm) and its affine "
                        f"({_fmt3(np.linalg.norm(affine[:3, :3], axis=0))} mm) differ by {drift[axis]:.3g} mm across "
                        f"axis {axis}: ITK/ANTs place the voxels by pixdim, nibabel and this tool by the affine; make "
                        "them agree (e.g. nibabel: img.header.set_zooms of the affine's column norms)")
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
    if label.unplaced and image.unplaced and label.unplaced != image.unplaced:
        # both Analyze (or both unplaced NIfTI): every reader guesses the same affine for both, but
        # their headers say they were stored differently (e.g. orient code 0 vs 3: one flipped)
        raise DataError(f"{label_name} is not stored as its image {image_name} (the label map: {label.unplaced}; "
                        f"the image: {image.unplaced}); readers ignore the fields that differ, so one of the two "
                        "would be read flipped against the other: store both as NIfTI with their true orientation")
    diff = grid_mismatch(image.affine, label.affine, image.spacing, label.spacing)
    if diff:
        raise DataError(f"{label_name} is not on the grid of its image {image_name} in world space ({diff}); "
                        "expected the label map in its image's voxel-to-world frame")
