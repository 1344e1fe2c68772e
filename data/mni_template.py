"""The MNI152 template that ships with nilearn, with tissue labels, on a cropped/padded grid.

Nothing is downloaded: nilearn ships the 1 mm ICBM152 2009 T1, GM and WM maps inside its
package (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``; that is
what ``nilearn.datasets.load_mni152_template`` and its GM/WM siblings read). They are read
directly with nibabel (importing ``nilearn.datasets`` takes seconds), falling back to those
nilearn loaders if the files move. The 2 mm grid is nilearn's (99 x 117 x 95, same origin;
2 mm voxel ``i`` sits on 1 mm voxel ``2i``), computed here with a [1/4, 1/2, 1/4] anti-alias
filter per axis and stride 2 (a fraction of a second, vs nilearn's spline resampling).

Labels (:func:`load_mni_template`): 0 background, 1 CSF, 2 GM, 3 WM.
    brain = fill_holes(T1 > 0.1) (the template is skull-stripped; filling the holes keeps the
    dark ventricles), p_GM, p_WM = nilearn's probability maps, p_CSF = brain * clip(1 - p_GM -
    p_WM, 0, 1), p_background = 1 - brain; label = argmax(p_bg, p_CSF, p_GM, p_WM).
The subjects made from it are :class:`data.mni.MNISubjects`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from data.io import DataError

__all__ = ["LABEL_NAMES", "PARCEL_NAMES", "DEFAULT_SHAPES", "MNITemplate", "load_mni_template"]

LABEL_NAMES = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}


def _parcel_names() -> dict[int, str]:
    """``labels="parcels"``: CSF, then GM and WM each split into 8 parts by the MNI planes x = 0
    (right R / left L), y = 0 (anterior A / posterior P) and z = 0 (superior S / inferior I)."""
    names = {0: "background", 1: "CSF"}
    for t, tissue in enumerate(("GM", "WM")):
        for o in range(8):
            side = ("L", "R")[(o >> 2) & 1] + ("P", "A")[(o >> 1) & 1] + ("I", "S")[o & 1]
            names[2 + 8 * t + o] = f"{tissue}_{side}"
    return names


PARCEL_NAMES = _parcel_names()
DEFAULT_SHAPES = {1: (192, 224, 192), 2: (96, 112, 96)}
_BRAIN_THRESHOLD = 0.1


@dataclass(frozen=True)
class MNITemplate:
    """The template on the cropped/padded grid.

    Attributes:
        image: ``(X, Y, Z)`` float32 T1 in [0, 1].
        probs: ``(4, X, Y, Z)`` float32 class probabilities (background, CSF, GM, WM).
        labels: ``(X, Y, Z)`` int64 argmax of ``probs``.
        spacing: ``(r, r, r)`` mm.
        affine: ``(4, 4)`` voxel-to-MNI-mm matrix of the cropped grid.
    """

    image: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


def check_resolution(resolution) -> int:
    if resolution not in (1, 2) or isinstance(resolution, bool):
        raise ValueError(f"MNI 'resolution' must be 1 or 2 (mm), got {resolution!r}")
    return int(resolution)


def _crop_or_pad(array: np.ndarray, shape: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """Place ``array``'s window starting at ``offsets`` (negative: pad) into ``shape``, zero fill."""
    out = np.zeros(tuple(array.shape[: array.ndim - 3]) + tuple(shape), dtype=array.dtype)
    src, dst = [], []
    for n_in, n_out, off in zip(array.shape[-3:], shape, offsets):
        s0, s1 = max(off, 0), min(off + n_out, n_in)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - off, s1 - off))
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _nilearn_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed; the MNI152 template ships with it (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def template_source() -> dict:
    """What the template is read from: nilearn's version and each file's path, size and mtime
    (:func:`data.signature.file_signature`); part of every MNI pair's input signature, so results
    computed on another template (a nilearn update) are not reused."""
    from importlib.metadata import PackageNotFoundError, version

    from data.signature import file_signature

    try:
        nilearn = version("nilearn")
    except PackageNotFoundError:
        nilearn = None
    folder = _nilearn_folder()
    return {"nilearn": nilearn, "files": [file_signature(folder / name) for name in _NILEARN_FILES.values()]}


@functools.lru_cache(maxsize=1)
def _load_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm T1, GM, WM maps (each scaled to max 1, float32) and their affine."""
    folder = _nilearn_folder()
    paths = {key: folder / name for key, name in _NILEARN_FILES.items()}
    if all(p.is_file() for p in paths.values()):
        imgs = {key: nib.load(str(p)) for key, p in paths.items()}
    else:  # files moved in another nilearn version: use its loaders (no download either)
        from nilearn import datasets

        imgs = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    arrays = []
    for key in ("t1", "gm", "wm"):
        arr = np.asarray(imgs[key].get_fdata(), dtype=np.float32)
        arrays.append(arr / max(float(arr.max()), 1e-12))
    return arrays[0], arrays[1], arrays[2], np.asarray(imgs["t1"].affine, dtype=np.float64)


def _downsample2(volumes: np.ndarray) -> np.ndarray:
    """``(C, X, Y, Z)`` 1 mm -> ``(C, ceil(X/2), ...)`` 2 mm: [1/4, 1/2, 1/4] filter, stride 2, zero pad."""
    x = np.asarray(volumes, dtype=np.float32)
    for axis in (1, 2, 3):
        n = (x.shape[axis] + 1) // 2
        pad = [(0, 0)] * 4
        pad[axis] = (1, 2)
        xp = np.pad(x, pad)

        def take(start: int) -> np.ndarray:
            index = [slice(None)] * 4
            index[axis] = slice(start, start + 2 * n, 2)
            return xp[tuple(index)]

        x = 0.25 * take(0) + 0.5 * take(1) + 0.25 * take(2)
    return x


def load_mni_template(resolution: int = 2, shape: Sequence[int] | None = None) -> MNITemplate:
    """Load the nilearn MNI152 template with tissue labels on a centred crop/pad of ``shape``.

    ``shape`` defaults to ``DEFAULT_SHAPES[resolution]`` ((96, 112, 96) at 2 mm from the
    99 x 117 x 95 template, (192, 224, 192) at 1 mm from 197 x 233 x 189), sizes divisible by 16.
    The crop is centred on the volume (the brain fits inside both defaults). Cached per process;
    the returned arrays are read-only.
    """
    resolution = check_resolution(resolution)
    shape = DEFAULT_SHAPES[resolution] if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"load_mni_template() 'shape' must be 3 sizes >= 8, got {shape}")
    return _load_template(resolution, shape)


@functools.lru_cache(maxsize=4)
def _load_template(resolution: int, shape: tuple[int, int, int]) -> MNITemplate:
    t1, gm, wm, affine = _load_1mm()
    if resolution == 2:
        t1, gm, wm = _downsample2(np.stack([t1, gm, wm]))
        affine = affine.copy()
        affine[:3, :3] *= 2.0
    t1 = np.clip(t1, 0.0, None)
    t1 /= t1.max()
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    brain = ndimage.binary_fill_holes(t1 > _BRAIN_THRESHOLD).astype(np.float32)
    csf = brain * np.clip(1.0 - gm - wm, 0.0, 1.0)
    probs = np.stack([1.0 - brain, csf, gm * brain, wm * brain]).astype(np.float32)
    t1 = t1 * brain  # drop resampling ringing outside the brain

    offsets = [(n_in - n_out) // 2 for n_in, n_out in zip(t1.shape, shape)]
    t1 = _crop_or_pad(t1, shape, offsets)
    probs = _crop_or_pad(probs, shape, offsets)
    probs[0][probs[1:].sum(0) == 0] = 1.0  # padded voxels are background
    labels = probs.argmax(0).astype(np.int64)
    affine = np.array(affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, :3] @ np.asarray(offsets, dtype=np.float64)
    for arr in (t1, probs, labels, affine):
        arr.setflags(write=False)
    return MNITemplate(
        image=t1, probs=probs, labels=labels, spacing=(float(resolution),) * 3, affine=affine
    )
