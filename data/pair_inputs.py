"""A pair's inputs as items hold them: one image checked and normalised (:func:`prepared_image`),
and a moving volume brought onto its fixed image's grid in world space
(:func:`moving_on_fixed_grid`). Used by :mod:`data.pairs_csv` and ``register.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.io import DataError, Grid, grid_mismatch, normalize_intensity, require_contrast
from data.geometry import corner_drift
from data.transforms import require_overlap, resample_to_grid

__all__ = ["prepared_image", "moving_on_fixed_grid", "require_scored_labels_kept"]

_NORMALISATION = "0.5/99.5 percentiles of its nonzero voxels"
_RANGE_TOLERANCE = 1e-3  # images given with normalize=False must lie in [0, 1] up to this


def prepared_image(path: Path, array: np.ndarray, normalize: bool) -> np.ndarray:
    """An image as items hold it: checked (not constant; in [0, 1] without ``normalize``), then
    normalised (:func:`data.io.normalize_intensity`) or clipped to [0, 1]; never all zeros.

    Raises:
        DataError: naming ``path``.
    """
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        raise DataError(f"{path}: image is constant (every voxel {lo:g}); expected an image with contrast")
    if not normalize and (lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE):
        raise DataError(
            f"{path}: intensities span [{lo:g}, {hi:g}] but normalize=False needs them in [0, 1]; "
            f"set normalize=True or rescale the file"
        )
    if normalize:
        return require_contrast(path, normalize_intensity(array), _NORMALISATION)
    return require_contrast(path, np.clip(array, 0.0, 1.0), "normalize=False: values clipped to [0, 1]")


# the largest corner drift (in voxels of the fixed grid, :func:`data.geometry.corner_drift`) at which
# a moving image is read as lying on the fixed grid already, not resampled
SAME_GRID_DRIFT = 0.01


def moving_on_fixed_grid(array: np.ndarray, moving: Grid, fixed: Grid, kind: str, path: Path,
                         fixed_path: Path | None = None) -> np.ndarray:
    """A moving ``array`` (grid ``moving``) on the ``fixed`` grid in world space: unchanged when both
    are one grid (:func:`data.io.grid_mismatch`, and no corner more than :data:`SAME_GRID_DRIFT` voxel
    apart), else resampled (:func:`data.transforms.resample_to_grid`:
    trilinear for ``kind="image"``, nearest neighbour for ``"label"``, 0 outside the moving image).

    Raises:
        DataError: naming ``path`` when its affine cannot be resampled, when a header that must be
            resampled across places its image nowhere (:attr:`Grid.unplaced`), or when an image
            lies entirely outside the fixed grid (all zeros once resampled).
    """
    if (moving.shape == fixed.shape
            and grid_mismatch(fixed.affine, moving.affine, fixed.spacing, moving.spacing) is None
            and corner_drift(fixed.affine, moving.affine, fixed.shape) <= SAME_GRID_DRIFT * min(fixed.spacing)):
        return array
    for grid, where in ((moving, path), (fixed, fixed_path or "the fixed image")):
        if grid.unplaced is not None:  # its affine is a reader's guess: world space means nothing
            raise DataError(f"{where}: {grid.unplaced}, so it cannot be resampled onto the other image of its "
                            "pair in world space; give it a qform/sform (or store both on one grid)")
    out = resample_to_grid(array, moving.affine, fixed.shape, fixed.affine, kind=kind, path=path)
    if kind == "image":
        require_overlap(array, out, path, f"the grid of the fixed image {fixed_path or ''}".rstrip())
    return out


def require_scored_labels_kept(stored: np.ndarray, resampled: np.ndarray, fixed_label: np.ndarray, path: Path,
                               fixed_path: Path) -> None:
    """Refuse a moving label map that loses, when resampled onto the fixed grid (nearest neighbour),
    a label the fixed map also holds: the scorer's rule would score that label (present in both maps
    as stored), and every method would get Dice 0 for it from the resampling, not from its warp.

    Raises:
        DataError: naming ``path``, the labels lost and ``fixed_path``.
    """
    def foreground(a: np.ndarray) -> set[int]:
        return {int(v) for v in np.unique(a) if v != 0}

    lost = sorted((foreground(stored) - foreground(resampled)) & foreground(fixed_label))
    if lost:
        shown = ", ".join(str(v) for v in lost[:12]) + (", ..." if len(lost) > 12 else "")
        raise DataError(
            f"{path}: label(s) {shown} vanish when this label map is resampled (nearest neighbour) onto the "
            f"grid of {fixed_path}, whose label map holds them: every method would score Dice 0 on them "
            f"from the resampling, not its warp; store the pair's label maps on one grid (the finer one) "
            f"or register it with register.py, which scores the labels as stored")
