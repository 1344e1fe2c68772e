"""Grids in world space: when two voxel-to-world matrices are "the same grid", and how they differ.

Registration here works in voxel space, so two images are compared only when they lie on one
grid in world space (the same shape and voxel-to-world affine); :func:`grid_mismatch` says, in
words, how two grids differ, within the tolerances below. The readers (:func:`data.io.read_grid`)
return a file's :class:`Grid`; the pair datasets refuse a pair whose grids differ.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import nibabel as nib
import numpy as np

__all__ = ["Grid", "grid_mismatch", "axcodes", "SPACING_TOLERANCE", "DIRECTION_TOLERANCE", "ORIGIN_TOLERANCE"]

# "Same grid in world space" (:func:`grid_mismatch`): two voxel-to-world matrices agree when
SPACING_TOLERANCE = 1e-3  # mm: voxel sizes (header zooms and affine column norms) agree within this
DIRECTION_TOLERANCE = 1e-4  # unit axis directions (direction cosines) agree within this per component
ORIGIN_TOLERANCE = 1e-3  # mm: the world positions of voxel (0, 0, 0) lie within this distance


class Grid(NamedTuple):
    """A file's grid from its header: ``shape`` (3 ints), ``spacing`` (mm, header zooms) and
    ``affine`` (``(4, 4)`` voxel-to-world)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray


def axcodes(affine: np.ndarray) -> str:
    """Orientation code of a voxel-to-world matrix, e.g. ``"RAS"`` (:func:`nibabel.aff2axcodes`)."""
    return "".join(str(c) for c in nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


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
    codes_a, codes_b = axcodes(a), axcodes(b)
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
