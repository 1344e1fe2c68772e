"""Saving volumes as NIfTI files: atomically (:mod:`data.files`), or as the bytes of such a file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from data.files import atomic_write_with
from data.geometry import SHEAR_TOLERANCE, shear

__all__ = ["save_nifti_atomic", "nifti_bytes"]


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


def _nifti_image(array, affine, description: str | None, fn: str, intent: tuple[str, str] | None = None) -> "nib.Nifti1Image":
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
    # a qform is a rotation, spacing and origin: it cannot hold a shear, and nibabel would store the
    # nearest rotation, which ITK/ANTs (reading the qform) would place elsewhere without a word
    if shear(affine) <= SHEAR_TOLERANCE:
        img.set_qform(affine, code=2)
    else:
        img.set_qform(None, code=0)
    if description is not None:
        img.header["descrip"] = description.encode("ascii", "replace")[:80]
    if intent is not None:  # e.g. ("vector", name): a displacement field (data.transforms)
        img.header.set_intent(intent[0], (), name=intent[1][:16])
    return img


def nifti_bytes(array, affine, name: str | os.PathLike, description: str | None = None,
                intent: tuple[str, str] | None = None) -> bytes:
    """The bytes of the NIfTI file :func:`save_nifti_atomic` would write at ``name`` (gzip-compressed
    when it ends in ``.gz``), for writing several files all or none
    (:func:`data.files.atomic_write_files`). ``intent``: ``(NIfTI intent, intent name)``, e.g.
    ``("vector", "voxel disp")`` for a displacement field (:mod:`data.transforms`)."""
    data = _nifti_image(array, affine, description, "nifti_bytes", intent).to_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if str(name).lower().endswith(".gz") else data


def save_nifti_atomic(
    array,
    affine,
    path: str | os.PathLike,
    description: str | None = None,
) -> Path:
    """Write a NIfTI file atomically (:func:`data.files.atomic_write_with`: a temporary file in
    the target folder, then ``os.replace``).

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
    return atomic_write_with(path, img.to_filename, suffix=f".tmp{suffix}")  # nibabel: gzip from the name
