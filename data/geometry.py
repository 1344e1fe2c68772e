"""Grids in world space: when two voxel-to-world matrices are "the same grid", and how they differ.

Registration here works in voxel space, so two images are compared only when they lie on one
grid in world space (the same shape and voxel-to-world affine); :func:`grid_mismatch` says, in
words, how two grids differ, within the tolerances below. The readers (:func:`data.io.read_grid`)
return a file's :class:`Grid`; the pair datasets refuse a pair whose grids differ, or resample the
moving image onto the fixed grid in world space (``data.resample=fixed``, :mod:`data.transforms`).

ITK and ANTs work in LPS millimetres: :func:`itk_geometry` is a grid's ITK geometry from its NIfTI
(RAS) affine, and :func:`physical_to_voxel_displacement` / :func:`voxel_to_physical_displacement`
are THE converters between a physical (LPS mm) displacement field and the project's voxel-unit
one (``u(x) = M^-1 d(x)``, ``M = diag(-1, -1, 1) A[:3, :3]``); :mod:`classical.itk_bridge` (the
ANTs / SimpleITK baselines) and the transform files (:mod:`data.transforms`) both use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["Grid", "grid_mismatch", "corner_drift", "shear", "SHEAR_TOLERANCE", "axcodes", "SPACING_TOLERANCE", "DIRECTION_TOLERANCE", "ORIGIN_TOLERANCE",
           "ItkGeometry", "itk_geometry", "physical_to_voxel_displacement", "voxel_to_physical_displacement", "LPS"]

# "Same grid in world space" (:func:`grid_mismatch`): two voxel-to-world matrices agree when
SPACING_TOLERANCE = 1e-3  # mm: voxel sizes (header zooms and affine column norms) agree within this
DIRECTION_TOLERANCE = 1e-4  # unit axis directions (direction cosines) agree within this per component
ORIGIN_TOLERANCE = 1e-3  # mm: the world positions of voxel (0, 0, 0) lie within this distance


class Grid(NamedTuple):
    """A file's grid from its header: ``shape`` (3 ints), ``spacing`` (mm, header zooms) and
    ``affine`` (``(4, 4)`` voxel-to-world). ``unplaced``: why the header does not place the image
    in world space (an Analyze header; a NIfTI one with sform and qform codes 0), its ``affine``
    then being a reader's guess, or None when it does (:func:`data.headers.unplaced_reason`)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    unplaced: str | None = None


def axcodes(affine: np.ndarray) -> str:
    """Orientation code of a voxel-to-world matrix, e.g. ``"RAS"`` (:func:`nibabel.aff2axcodes`)."""
    import nibabel as nib  # here, not at import: the in-memory data path runs without nibabel

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
    for name, m in (("first", a), ("second", b)):
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):  # NaN compares as "no difference" below
            return f"the {name} grid's voxel-to-world matrix is not a finite 4x4"
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


def corner_drift(affine_a: np.ndarray, affine_b: np.ndarray, shape: Sequence[int]) -> float:
    """The largest distance (mm) between where two voxel-to-world matrices put the same corner voxel
    of a grid of ``shape``: the per-voxel tolerances of :func:`grid_mismatch` add up over a grid
    (voxel sizes 1.0009 and 1.0 mm agree per voxel, yet lie 0.23 mm apart after 256 voxels)."""
    a = np.asarray(affine_a, dtype=np.float64)
    b = np.asarray(affine_b, dtype=np.float64)
    far = np.asarray([max(int(n) - 1, 0) for n in shape], dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0.0, f] for f in far], indexing="ij")).reshape(len(far), -1)
    diff = (a[:3, :3] - b[:3, :3]) @ corners + (a[:3, 3] - b[:3, 3])[:, None]
    return float(np.linalg.norm(diff, axis=0).max())


# --------------------------------------------------------------------------- ITK / ANTs physical space
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS for 3-vectors (its own inverse)


@dataclass(frozen=True)
class ItkGeometry:
    """ITK image geometry in our array-axis order (index ``i`` = array axis ``i``), LPS mm.

    ``physical(x) = origin + direction @ diag(spacing) @ x``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray  # (D, D), orthonormal columns

    @property
    def matrix(self) -> np.ndarray:
        """``M = direction @ diag(spacing)``: voxel steps -> physical vectors, ``(D, D)``."""
        return self.direction @ np.diag(self.spacing)


SHEAR_TOLERANCE = 1e-4  # |cos| between two voxel axes in world space above which a grid is sheared


def shear(affine: Any) -> float:
    """How far a voxel -> world ``affine`` ``(4, 4)`` is from orthogonal axes: the largest |cosine|
    between two of its columns (0 for any rotation, flip, permutation and spacing). ITK and ANTs
    images cannot be sheared (orthonormal direction cosines): above :data:`SHEAR_TOLERANCE` they
    read such a NIfTI header without its shear."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    cos = cols.T @ cols - np.eye(3)
    return float(np.abs(cos).max())


def itk_geometry(ndim: int, spacing: Sequence[float] | None = None, affine: Any = None) -> ItkGeometry:
    """Geometry of a grid from a NIfTI voxel->RAS ``affine`` ``(4, 4)`` (3-D) or from ``spacing``.

    The affine wins when given (3-D only): ``M = diag(-1,-1,1) A[:3,:3]`` (RAS -> LPS), spacing
    = column norms of ``M``, direction = normalised columns (replaced by the nearest rotation if
    the affine has shear, which ITK cannot represent; the same geometry converts the result
    back, so the voxel-unit field stays exact). Without one: ``diag(spacing)``, origin 0.
    """
    if affine is not None and ndim == 3:
        a = affine.detach().cpu().double().numpy() if isinstance(affine, torch.Tensor) else np.array(affine, np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ValueError(f"itk_geometry() 'affine' must be a finite (4, 4) matrix, got shape {a.shape}")
        m = LPS @ a[:3, :3]
        origin = LPS @ a[:3, 3]
        sp = np.linalg.norm(m, axis=0)
        if np.any(sp <= 0):
            raise ValueError(f"itk_geometry() 'affine' has a zero column: {a[:3, :3].tolist()}")
        direction = m / sp
        if shear(a) > SHEAR_TOLERANCE:
            u_, _, vt = np.linalg.svd(direction)
            direction = u_ @ vt
        return ItkGeometry(tuple(float(s) for s in sp), tuple(float(o) for o in origin), direction)
    sp = (1.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)[:ndim]
    if len(sp) != ndim or any(not s > 0 for s in sp):
        raise ValueError(f"itk_geometry() 'spacing' must be {ndim} positive numbers, got {spacing!r}")
    return ItkGeometry(sp, (0.0,) * ndim, np.eye(ndim))


def physical_to_voxel_displacement(d: np.ndarray, geometry: ItkGeometry) -> torch.Tensor:
    """Physical (LPS mm) displacement ``(*S, D)`` on a grid -> our voxel-unit field ``(1, D, *S)``.

    ``u(x) = M^{-1} d(x)`` with ``M = direction @ diag(spacing)``; float32.
    """
    d = np.asarray(d, dtype=np.float64)
    ndim = len(geometry.spacing)
    if d.ndim != ndim + 1 or d.shape[-1] != ndim:
        raise ValueError(f"physical_to_voxel_displacement() 'd' must be (*S, {ndim}), got {d.shape}")
    u = d @ np.linalg.inv(geometry.matrix).T  # row-wise M^{-1} d
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, -1, 0), dtype=np.float32)).unsqueeze(0)


def voxel_to_physical_displacement(u: torch.Tensor, geometry: ItkGeometry) -> np.ndarray:
    """Inverse of :func:`physical_to_voxel_displacement`: ``(1, D, *S)`` or ``(D, *S)`` -> ``(*S, D)``."""
    u = torch.as_tensor(u).detach().cpu().double()
    if u.dim() == len(geometry.spacing) + 2:
        u = u[0]
    return np.moveaxis(u.numpy(), 0, -1) @ geometry.matrix.T
