"""Jacobians of a displacement in the project's convention (:mod:`spatial.functional`): the matrix
and the determinant of ``x -> x + u(x)`` by finite differences, the scheme of ``numpy.gradient`` that
the Learn2Reg scorer uses."""

from __future__ import annotations

from typing import Sequence

import torch

from spatial.functional import check_field

__all__ = ["jacobian_matrix", "jacobian_determinant"]


def _diff(x: torch.Tensor, dim: int, spacing: float = 1.0) -> torch.Tensor:
    """Finite difference of ``x`` along ``dim``: central inside, one-sided on the two borders.

    The same scheme as ``numpy.gradient`` / ``torch.gradient`` (edge_order=1), written with
    slices into one output buffer (``torch.gradient`` allocates several full-size temporaries).
    """
    n = x.shape[dim]
    out = torch.empty_like(x)
    out.narrow(dim, 1, n - 2).copy_(x.narrow(dim, 2, n - 2)).sub_(x.narrow(dim, 0, n - 2)).mul_(0.5 / spacing)
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 1, 1)).sub_(x.narrow(dim, 0, 1)).div_(spacing)
    out.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1)).sub_(x.narrow(dim, n - 2, 1)).div_(spacing)
    return out


def jacobian_matrix(u: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Jacobian of the map ``x -> x + u(x)`` by finite differences.

    Central differences inside, one-sided at the border (the scheme of ``numpy.gradient``,
    used by the Learn2Reg scorer). ``spacing`` only matters when ``u`` is expressed in
    physical units; for voxel-unit fields leave it None.
    Returns ``(B, D, D, *S)`` with ``J[:, i, j] = d(x_i + u_i) / d x_j``.
    """
    ndim = check_field(u, "u", "jacobian_matrix")
    for s in u.shape[2:]:
        if s < 2:
            raise ValueError(f"jacobian_matrix() needs at least 2 voxels per axis, got {tuple(u.shape)}")
    sp = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if len(sp) != ndim:
        raise ValueError(f"jacobian_matrix() 'spacing' must have {ndim} entries, got {spacing!r}")
    jac = torch.stack([_diff(u, 2 + j, sp[j]) for j in range(ndim)], dim=2)  # (B, D(i), D(j), *S)
    for i in range(ndim):
        jac[:, i, i] += 1.0
    return jac


def jacobian_determinant(u: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)``: ``(B, D, *S) -> (B, *S)``.

    The identity has determinant 1 everywhere; ``x -> 2x`` (``u = x``) has ``2**D``.
    Finite differences as :func:`jacobian_matrix`; computed without materialising the
    ``(B, D, D, *S)`` matrix, so it needs about ``D**2 + 2`` field-sized buffers, not more.
    """
    ndim = check_field(u, "u", "jacobian_determinant")
    for s in u.shape[2:]:
        if s < 2:
            raise ValueError(f"jacobian_determinant() needs at least 2 voxels per axis, got {tuple(u.shape)}")
    # g[i][j] = d u_i / d x_j (+1 on the diagonal)
    g = [[_diff(u[:, i], 1 + j) for j in range(ndim)] for i in range(ndim)]
    for i in range(ndim):
        g[i][i] += 1.0
    if ndim == 2:
        return g[0][0] * g[1][1] - g[0][1] * g[1][0]
    det = g[1][1] * g[2][2]
    det.sub_(g[1][2] * g[2][1]).mul_(g[0][0])
    t = g[1][0] * g[2][2]
    t.sub_(g[1][2] * g[2][0]).mul_(g[0][1])
    det.sub_(t)
    t = g[1][0] * g[2][1]
    t.sub_(g[1][1] * g[2][0]).mul_(g[0][2])
    return det.add_(t)
