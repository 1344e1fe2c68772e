"""Preprocessing of dataset volumes with torchio, its on-disk cache, label mapping, augmentation.

One volume (an image and its label map) goes through, in this order:

1. :func:`data.io.load_volume` for both files (every input check of ``data/io.py``), then the
   label map must lie on its image's grid in world space: the same shape and voxel-to-world
   affine (:func:`data.io.grid_mismatch`; a :class:`~data.io.DataError` naming both files and
   the difference otherwise, e.g. a label map stored flipped); within those tolerances it is
   then placed on the image's voxel-to-world matrix;
2. ``orientation``: :class:`torchio.ToOrientation` (``"RAS"`` = canonical; ``None`` keeps the
   file's voxel order, as the OASIS sets do so that their grid matches the literature);
3. ``spacing``: :class:`torchio.Resample` to that spacing in mm (a number = isotropic;
   ``None`` keeps the native grid). Images are interpolated linearly, labels with nearest
   neighbour; skipped when the volume already has the target spacing (within 1e-3 mm);
4. ``shape``: :class:`torchio.CropOrPad` to a fixed shape (zero padding), centred on the
   volume (``crop_center="volume"``) or on the bounding box of the brain, the voxels with
   intensity > 0 (``"foreground"``; skull-stripped images have a zero background);
5. ``normalize``: ``"percentile"`` = :func:`data.io.normalize_intensity` (0.5/99.5
   percentiles of the nonzero voxels), ``"minmax"`` = ``(x - min) / (max - min)`` over all
   voxels, ``"none"`` = the file must already hold [0, 1] intensities (clipped to it). A
   result that is all zeros (a binary mask under ``"percentile"``, a brain cropped away) is a
   :class:`~data.io.DataError` naming the image file.

The result (:class:`Prepared`) carries the spacing and affine of the *preprocessed* grid: the
spacing the metrics use (the voxels the network and the metrics see have that size) and the
affine written into saved outputs. The label values found in the source file are recorded
too (before any crop), for label mapping and checks.

Loading and preprocessing on demand, through an optional on-disk cache, is
:class:`data.cache.VolumeStore`'s (re-exported here).

Labels (:class:`LabelMapping`, in :mod:`data.label_mapping`): optionally keep a subset of label
ids (others become 0, background) and remap the kept ids to ``1..K`` in increasing order of the original id; the
mapping is saved as JSON next to results (:meth:`LabelMapping.save`).

Augmentation (:class:`VolumeAugmentation`): torchio draws ONE random transform per call and
applies it to every image of the Subject it is given. A fixed/moving pair put into one
Subject would get identical augmentation (the pair's relative deformation unchanged), so
here each volume (an image with its own label map) is its own Subject and the dataset calls
the augmentation once for the fixed and once for the moving volume: independent draws,
while an image and its label still move together.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from data.io import (
    SPACING_TOLERANCE,  # one tolerance (mm) for "same grid" everywhere
    DataError,
    Volume,
    check_label_grid,
    load_volume,
    normalize_intensity,
    read_grid,
    require_contrast,
)
from data.label_mapping import LabelMapping  # noqa: F401 - re-exported (its home is data.label_mapping)

__all__ = [
    "CACHE_VERSION",
    "NORMALIZATIONS",
    "CROP_CENTERS",
    "PreprocessConfig",
    "Prepared",
    "load_source",
    "preprocess",
    "preprocessed_shape",
    "preprocessed_grid",
    "LabelMapping",
    "VolumeAugmentation",
]

CACHE_VERSION = 1  # bump when the preprocessing code changes what it produces
NORMALIZATIONS = ("percentile", "minmax", "none")
CROP_CENTERS = ("volume", "foreground")
_PERCENTILES = (0.5, 99.5)


def _triple(value, name: str, kind=float) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = (value,) * 3
    else:
        values = tuple(value)
    if len(values) != 3:
        raise ValueError(f"PreprocessConfig() '{name}' must be one number or three, got {value!r}")
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"PreprocessConfig() '{name}' must hold numbers, got {value!r}") from err
    if any(not v > 0 for v in out):
        raise ValueError(f"PreprocessConfig() '{name}' must be positive, got {value!r}")
    if kind is int and any(float(v) != float(w) for v, w in zip(out, values)):
        raise ValueError(f"PreprocessConfig() '{name}' must hold whole numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`preprocess` does (see the module docstring for the order).

    Attributes:
        orientation: 3-letter orientation code (``"RAS"`` = canonical) or None (keep).
        spacing: target voxel size in mm (one number = isotropic, or three) or None (keep).
        shape: target grid ``(X, Y, Z)`` (crop or zero-pad) or None (keep).
        crop_center: ``"volume"`` or ``"foreground"`` (the bounding box of intensity > 0).
        normalize: ``"percentile"``, ``"minmax"`` or ``"none"``.
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    shape: tuple[int, int, int] | None = None
    crop_center: str = "volume"
    normalize: str = "percentile"

    def __post_init__(self):
        orientation = self.orientation
        if orientation is not None:
            orientation = str(orientation).upper()
            axes = [set(orientation) & set(pair) for pair in ("RL", "AP", "IS")]
            if len(orientation) != 3 or not set(orientation) <= set("RLAPIS") or any(len(a) != 1 for a in axes):
                raise ValueError(
                    f"PreprocessConfig() 'orientation' must be a code such as 'RAS' (one of R/L, A/P, I/S each) "
                    f"or None, got {self.orientation!r}"
                )
        object.__setattr__(self, "orientation", orientation)
        object.__setattr__(self, "spacing", _triple(self.spacing, "spacing", float))
        object.__setattr__(self, "shape", _triple(self.shape, "shape", int))
        if self.crop_center not in CROP_CENTERS:
            raise ValueError(f"PreprocessConfig() 'crop_center' must be one of {CROP_CENTERS}, got {self.crop_center!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"PreprocessConfig() 'normalize' must be one of {NORMALIZATIONS}, got {self.normalize!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("spacing", "shape"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    def key(self) -> str:
        """Cache key (16 hex digits): a hash of this config, :data:`CACHE_VERSION`, the code that
        prepares a volume (this module, :mod:`data.io`, :mod:`data.headers` and :mod:`data.geometry`,
        whose tolerances decide whether a volume is resampled) and the torchio / nibabel / SimpleITK
        versions (torchio resamples through SimpleITK), so that a cached volume is never one an
        earlier version of the code or of those packages made."""
        from importlib.metadata import PackageNotFoundError, version

        from data.signature import source_signature

        def _version(package: str) -> str | None:
            try:
                return version(package)
            except PackageNotFoundError:
                return None

        code = source_signature("data/preprocess.py", "data/io.py", "data/headers.py", "data/geometry.py")
        text = json.dumps({"version": CACHE_VERSION, "code": code, "torchio": _version("torchio"),
                           "nibabel": _version("nibabel"), "SimpleITK": _version("SimpleITK"), **self.to_dict()},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Prepared:
    """One preprocessed volume.

    Attributes:
        image: ``(X, Y, Z)`` float32 in [0, 1].
        label: ``(X, Y, Z)`` int64 (original label ids; mapping happens later) or None.
        affine: ``(4, 4)`` voxel-to-world matrix of the preprocessed grid.
        spacing: voxel size (mm) of the preprocessed grid, along the array axes.
        source_labels: sorted label ids present in the source label file (None without labels).
        source_shape, source_spacing: the grid of the source image file.
        labels: sorted label ids present in ``label`` (after the crop/pad and resampling; None
            without labels): :func:`data.volume_pairs.check_labels_kept` compares the two sets.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source_labels: tuple[int, ...] | None = None
    source_shape: tuple[int, int, int] | None = None
    source_spacing: tuple[float, float, float] | None = None
    labels: tuple[int, ...] | None = None


def load_source(
    image_path: str | os.PathLike, label_path: str | os.PathLike | None, normalize: str | None = None
) -> tuple[Volume, Volume | None]:
    """Load an image and its label map with every check of :mod:`data.io`, plus pair checks.

    ``normalize`` (a :data:`NORMALIZATIONS` name, or None to skip): the source image normalised
    that way must not be all zeros, the check :func:`preprocess` makes on its result, made here
    on the source voxels so that a data check without preprocessing finds it (resampling and
    crop/pad can still change the outcome; :func:`preprocess` checks again).

    Raises:
        DataError: a file is missing/unreadable/invalid (named by :func:`load_volume`); the
            image is constant, or all zeros after ``normalize`` (a binary mask under
            ``"percentile"``); the label map's shape differs from its image's, or its
            voxel-to-world affine does (orientation, origin, spacing: :func:`data.io.grid_mismatch`),
            naming both files.
    """
    image = load_volume(image_path, kind="image")
    lo, hi = float(image.array.min()), float(image.array.max())
    if not hi > lo:
        raise DataError(f"{image_path}: image is constant (every voxel {lo:g}); expected an image with contrast")
    if normalize is not None:
        _normalized(image, normalize)
    if label_path is None:
        return image, None
    label = load_volume(label_path, kind="label")
    check_label_grid(read_grid(label_path)._replace(shape=label.array.shape, spacing=label.spacing, affine=label.affine),
                     read_grid(image_path)._replace(shape=image.array.shape, spacing=image.spacing, affine=image.affine),
                     f"{label_path}: label map", str(image_path))
    return image, label


def preprocess(image: Volume, label: Volume | None, config: PreprocessConfig) -> Prepared:
    """Reorient, resample, crop/pad and normalise one volume (module docstring); labels nearest.

    Raises:
        DataError: the normalised image is all zeros, or a label id exceeds int32; naming the
            file (``Volume.path``).
    """
    import torchio as tio

    affine = np.asarray(image.affine, dtype=np.float64)
    images = {"image": tio.ScalarImage(tensor=torch.from_numpy(image.array[None]), affine=affine)}
    if label is not None:
        # int32: nibabel (inside torchio's reorientation) refuses int64 without a header
        lab = label.array
        if lab.size and lab.max() > np.iinfo(np.int32).max:
            raise DataError(f"{_name(label)}: expected label ids <= {np.iinfo(np.int32).max}, found {lab.max()}")
        images["label"] = tio.LabelMap(tensor=torch.from_numpy(lab.astype(np.int32)[None]), affine=affine)
    use_mask = config.shape is not None and config.crop_center == "foreground"
    if use_mask:
        brain = torch.from_numpy((image.array > 0).astype(np.uint8)[None])
        images["brain"] = tio.LabelMap(tensor=brain, affine=affine)
    subject = tio.Subject(**images)  # one Subject per volume: every transform here is deterministic
    if config.orientation is not None:
        subject = tio.ToOrientation(config.orientation)(subject)
    if config.spacing is not None and not np.allclose(
        subject.spacing, config.spacing, rtol=0.0, atol=SPACING_TOLERANCE
    ):
        subject = tio.Resample(config.spacing, image_interpolation="linear", label_interpolation="nearest")(subject)
    if config.shape is not None and tuple(subject.spatial_shape) != tuple(config.shape):
        crop = tio.CropOrPad(config.shape, padding_mode=0, mask_name="brain" if use_mask else None)
        if use_mask and not subject["brain"].data.any():
            crop = tio.CropOrPad(config.shape, padding_mode=0)
        subject = crop(subject)
    after = "" if config.shape is None else f", after crop/pad to data.shape={list(config.shape)}"
    arr = _normalized(image, config.normalize, subject["image"].data[0].numpy(), after)
    out_label = None
    if label is not None:
        out_label = subject["label"].data[0].numpy().astype(np.int64)
    return Prepared(
        image=np.ascontiguousarray(arr, dtype=np.float32),
        label=out_label,
        affine=np.asarray(subject["image"].affine, dtype=np.float64),
        spacing=tuple(float(s) for s in subject["image"].spacing),
        source_labels=None if label is None else tuple(int(v) for v in np.unique(label.array)),
        source_shape=tuple(int(s) for s in image.array.shape),
        source_spacing=tuple(float(s) for s in image.spacing),
        labels=None if out_label is None else tuple(int(v) for v in np.unique(out_label)),
    )


def _normalized(image: Volume, normalize: str, array: np.ndarray | None = None, after: str = "") -> np.ndarray:
    """``array`` (default: the image's voxels) normalised as ``normalize`` says; DataError naming
    the image file when the result is all zeros (:func:`data.io.require_contrast`)."""
    arr = image.array if array is None else array
    if normalize == "percentile":
        arr = normalize_intensity(arr, *_PERCENTILES, nonzero=True)
        how = "data.normalize=percentile: 0.5/99.5 percentiles of the nonzero voxels"
    elif normalize == "minmax":
        arr = normalize_intensity(arr, 0.0, 100.0, nonzero=False)
        how = "data.normalize=minmax"
    elif normalize == "none":
        arr = np.clip(arr, 0.0, 1.0)
        how = "data.normalize=none: values clipped to [0, 1]"
    else:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    return require_contrast(_name(image), arr, how + after)


def preprocessed_shape(
    shape: Sequence[int], affine: np.ndarray, config: PreprocessConfig
) -> tuple[int, int, int]:
    """The grid shape :func:`preprocess` makes from a file of ``shape`` and ``affine`` (its header),
    without reading voxels (:func:`preprocessed_grid`)."""
    return preprocessed_grid(shape, affine, config)[1]


def preprocessed_grid(
    shape: Sequence[int], affine: np.ndarray, config: PreprocessConfig
) -> tuple[str, tuple[int, int, int], tuple[float, float, float]]:
    """``(axis codes, shape, spacing)`` of the grid :func:`preprocess` makes from a file of ``shape``
    and ``affine`` (its header), without reading voxels: reorientation permutes the axes, resampling
    gives ``floor(n * spacing / target)`` per axis (torchio's rule; singleton axes stay 1) and the
    target spacing, crop/pad gives ``config.shape``."""
    import nibabel as nib

    from data.geometry import axcodes

    shape_a = np.array([int(s) for s in shape[:3]])
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    codes = axcodes(affine)
    if config.orientation is not None:
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(config.orientation))
        )
        order = ornt[:, 0].astype(int)  # source axis i becomes axis order[i]
        new_shape, new_spacing = np.empty_like(shape_a), np.empty_like(spacing)
        new_shape[order], new_spacing[order] = shape_a, spacing
        shape_a, spacing, codes = new_shape, new_spacing, str(config.orientation)
    if config.spacing is not None and not np.allclose(spacing, config.spacing, rtol=0.0, atol=SPACING_TOLERANCE):
        target = np.broadcast_to(np.asarray(config.spacing, dtype=np.float64), (3,))
        resampled = np.floor(shape_a * spacing / target).astype(int)
        shape_a = np.where(shape_a == 1, 1, resampled)
        spacing = target
    if config.shape is not None:
        shape_a = np.asarray(config.shape)
    return (codes, tuple(int(s) for s in shape_a),  # type: ignore[return-value]
            tuple(float(s) for s in spacing))


def _name(volume: Volume) -> str:
    """The file a volume was loaded from (for messages)."""
    return str(volume.path) if getattr(volume, "path", None) is not None else "volume"


from data.augment import VolumeAugmentation  # noqa: E402,F401 - re-exported (its home is data.augment)


def __getattr__(name: str):
    """``data.preprocess.VolumeStore``: re-exported from its home, :mod:`data.cache` (imported on
    first use, as that module builds on this one)."""
    if name == "VolumeStore":
        from data.cache import VolumeStore

        return VolumeStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
