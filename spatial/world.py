"""World (physical) space: grids with a voxel-to-world affine, maps of world points, sampling.

A grid is a spatial ``shape`` with a voxel-to-world ``affine`` ``(D+1, D+1)`` (NIfTI: RAS mm).
Everything here works on world points ``(D, *S)`` (float64) of a reference grid and lets two
grids of any shape, spacing and orientation meet in world space:

* :func:`grid_points` ``p(x) = A x`` of every voxel ``x`` of a grid;
* :func:`affine_points` maps points by a world affine ``p -> M p``;
* :func:`displace_points` maps points by a displacement field stored on its own lattice in the
  project's convention (voxel units of that lattice, channel ``i`` along array axis ``i``):
  ``p -> p + A[:D, :D] u(A^-1 p)``;
* :func:`sample` reads an image at voxel coordinates of its own grid (``A_img^-1 p``).

Applying ``warp(moving, u)`` on the fixed grid is, in these terms, ``sample(moving,
voxel_coordinates(displace_points(grid_points(fixed), u, A_fixed), A_moving))``: for a moving
image on another grid the one interpolation reads it in world space. Boundaries follow ITK
(``ResampleImageFilter``, ``DisplacementFieldTransform``): a voxel covers half a voxel around its
centre; a coordinate within that margin outside the grid takes the border value, one beyond it
reads 0 (an image) or no displacement (a field). Nearest neighbour rounds exact ties up, as ITK
does (``grid_sample`` alone rounds them to even, which drops every other label on a half-voxel shift).
"""

from __future__ import annotations

from typing import Sequence

import torch

from spatial.functional import _grid_sample, check_field

__all__ = ["as_affine", "grid_points", "affine_points", "voxel_coordinates", "displace_points", "sample"]


def as_affine(affine, ndim: int, name: str = "affine", fn: str = "spatial.world") -> torch.Tensor:
    """``affine`` (array-like ``(ndim+1, ndim+1)``) as a float64 tensor; ValueError naming it when it
    is not finite, has another shape or is not invertible."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    if tuple(a.shape) != (ndim + 1, ndim + 1) or not bool(torch.isfinite(a).all()):
        raise ValueError(f"{fn}() '{name}' must be a finite ({ndim + 1}, {ndim + 1}) matrix, got shape {tuple(a.shape)}")
    if abs(float(torch.linalg.det(a[:ndim, :ndim]))) < 1e-12:
        raise ValueError(f"{fn}() '{name}' is singular (a zero or repeated axis): {a[:ndim, :ndim].tolist()}")
    return a


def grid_points(shape: Sequence[int], affine, device: torch.device | None = None) -> torch.Tensor:
    """World points of every voxel of a grid: ``(D, *shape)`` float64, ``p(x) = A[:D, :D] x + A[:D, D]``."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    a = as_affine(affine, ndim, "affine", "grid_points").to(device)
    axes = [torch.arange(s, device=device, dtype=torch.float64) for s in shape]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    return affine_points(x, a)


def affine_points(points: torch.Tensor, matrix) -> torch.Tensor:
    """``M[:D, :D] p + M[:D, D]`` for points ``(D, *S)`` and a ``(D+1, D+1)`` matrix ``M``."""
    ndim = points.shape[0]
    m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
    if tuple(m.shape) != (ndim + 1, ndim + 1):
        raise ValueError(f"affine_points() 'matrix' must be ({ndim + 1}, {ndim + 1}) for {ndim}-D points, got {tuple(m.shape)}")
    flat = points.reshape(ndim, -1)
    return (m[:ndim, :ndim] @ flat + m[:ndim, ndim:]).reshape(points.shape)


def voxel_coordinates(points: torch.Tensor, affine) -> torch.Tensor:
    """Voxel coordinates ``A^-1 p`` on the grid of ``affine`` of world points ``(D, *S)``."""
    a = as_affine(affine, points.shape[0], "affine", "voxel_coordinates").to(points.device)
    return affine_points(points, torch.linalg.inv(a))


def _inside(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(*S)`` bool: every coordinate within half a voxel of the grid ``shape`` (ITK's buffer)."""
    ok = torch.ones(coords.shape[1:], dtype=torch.bool, device=coords.device)
    for i, n in enumerate(shape):
        ok &= (coords[i] >= -0.5) & (coords[i] <= n - 0.5)
    return ok


def sample(img: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Read ``img`` ``(1, C, *S_img)`` at voxel coordinates ``coords`` ``(D, *S)`` of its own grid:
    ``out(x) = img(coords(x))``, ``(1, C, *S)``.

    ``mode``: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``. Coordinates within half a
    voxel outside the grid take the border value; beyond, 0 (module docstring). Computed in
    float64 and returned in ``img``'s dtype (an integer label map needs ``"nearest"`` and keeps
    its ids exactly).
    """
    ndim = coords.shape[0]
    if img.dim() != ndim + 2 or img.shape[0] != 1:
        raise ValueError(f"sample() 'img' must be (1, C, *spatial) with {ndim} spatial dims, got {tuple(img.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"sample() 'mode' must be 'bilinear' or 'nearest', got {mode!r}")
    integer = not img.is_floating_point()
    if integer and mode != "nearest":
        raise ValueError("sample() integer images (labels) need mode='nearest'")
    shape = img.shape[2:]
    c = coords.to(torch.float64)
    if mode == "nearest":
        c = torch.floor(c + 0.5)  # exact ties up, as ITK (grid_sample rounds them to even: labels lost)
    grid = []
    for axis in reversed(range(ndim)):  # grid_sample wants (x, y, z) = (last axis, ..., first)
        n = shape[axis]
        grid.append(c[axis].clamp(0, n - 1) * (2.0 / max(n - 1, 1)) - 1.0)
    grid = torch.stack(grid, dim=-1).unsqueeze(0)
    out = _grid_sample(img.to(device=c.device, dtype=torch.float64), grid, mode, "border")
    out = out * _inside(c, shape).to(out.dtype)
    return out.round().to(img.dtype) if integer else out.to(img.dtype)


def displace_points(points: torch.Tensor, u: torch.Tensor, affine) -> torch.Tensor:
    """Map world points ``(D, *S)`` by a displacement field ``u`` ``(1, D, *S_u)`` in voxel units of
    its own lattice (the grid of ``affine``): ``p -> p + A[:D, :D] u(A^-1 p)``, ``u`` read linearly;
    a point more than half a voxel outside the lattice is not moved (ITK's rule)."""
    ndim = check_field(u, "u", "displace_points")
    if u.shape[0] != 1 or points.shape[0] != ndim:
        raise ValueError(f"displace_points() 'u' must be (1, {points.shape[0]}, *S), got {tuple(u.shape)}")
    a = as_affine(affine, ndim, "affine", "displace_points").to(points.device)
    moved = sample(u.to(device=points.device, dtype=torch.float64), voxel_coordinates(points, a))[0]
    return points + (a[:ndim, :ndim] @ moved.reshape(ndim, -1)).reshape(points.shape)
