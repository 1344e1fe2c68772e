"""Smoothness regularisers of a displacement field ``u`` of shape ``(B, D, *S)`` (voxel units).

Both are finite-difference energies in voxel units (no spacing), summed over the ``D``
displacement channels and averaged over batch and voxels:

* ``diffusion(u)    = sum_j mean_x sum_i (u_i(x + e_j) - u_i(x))^2``  (``||grad u||_F^2``)
* ``bending_energy(u) = mean_x sum_i [ sum_j (d_jj u_i)^2 + 2 sum_{j<k} (d_jk u_i)^2 ]``

Note on scale: VoxelMorph's ``Grad('l2')`` averages over the ``D`` axes *and* the ``D``
channels, so its value is ``diffusion(u) / D**2``; multiply a weight tuned for it by ``1 / D**2``
(1/9 in 3-D) to use it here.
"""

from __future__ import annotations

import torch
from torch import nn

from spatial.functional import check_field

__all__ = ["diffusion", "bending_energy", "Diffusion", "BendingEnergy", "NoRegulariser"]


def _check_min_size(u: torch.Tensor, n: int, fn: str) -> None:
    if any(s < n for s in u.shape[2:]):
        raise ValueError(f"{fn}() 'u' needs at least {n} voxels along every spatial axis, got {tuple(u.shape)}")


def diffusion(u: torch.Tensor) -> torch.Tensor:
    """Diffusion (gradient-L2) energy: ``sum_j mean_{b,x} sum_i (u_i(x + e_j) - u_i(x))^2``.

    Forward differences along each spatial axis ``j``; for axis ``j`` the mean runs over the
    batch and the ``S_j - 1`` positions where the difference is defined (times the other axes);
    the squared differences are **summed** over the ``D`` channels and the ``D`` axes, i.e. the
    voxel-mean squared Frobenius norm of the displacement's Jacobian. ``u = c * x_0`` in channel
    0 gives ``c**2``; a constant field gives 0.

    Args:
        u: ``(B, D, *S)`` displacement, ``D = len(S)`` in (2, 3), at least 2 voxels per axis.

    Returns:
        Scalar tensor.
    """
    ndim = check_field(u, "u", "diffusion")
    _check_min_size(u, 2, "diffusion")
    total = u.new_zeros(())
    for axis in range(2, 2 + ndim):
        d = torch.diff(u, dim=axis)
        total = total + d.pow(2).sum(dim=1).mean()
    return total


def _second_diff(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Central second difference ``x[n+1] - 2 x[n] + x[n-1]`` along ``axis`` (size shrinks by 2)."""
    n = x.shape[axis]
    return x.narrow(axis, 2, n - 2) - 2.0 * x.narrow(axis, 1, n - 2) + x.narrow(axis, 0, n - 2)


def _central_diff(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Central first difference ``(x[n+1] - x[n-1]) / 2`` along ``axis`` (size shrinks by 2)."""
    n = x.shape[axis]
    return 0.5 * (x.narrow(axis, 2, n - 2) - x.narrow(axis, 0, n - 2))


def _interior(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """Drop one voxel at both ends of each of ``axes``."""
    for axis in axes:
        x = x.narrow(axis, 1, x.shape[axis] - 2)
    return x


def bending_energy(u: torch.Tensor) -> torch.Tensor:
    """Bending energy: ``mean_{b,x} sum_i [sum_j (d_jj u_i)^2 + 2 sum_{j<k} (d_jk u_i)^2]``.

    Second derivatives by central finite differences in voxel units, evaluated on the interior
    voxels only (one voxel dropped at both ends of every axis, so all terms share one domain):
    ``d_jj u = u(x+e_j) - 2u(x) + u(x-e_j)``, ``d_jk u = D_k D_j u`` with the central first
    difference ``D_j u = (u(x+e_j) - u(x-e_j)) / 2``. Mixed derivatives are counted twice
    (``d_jk = d_kj``), channels are summed. Any affine field gives 0 up to rounding;
    ``u_0 = a * x_1**2`` gives ``4 a**2``; ``u_0 = a * x_1 * x_2`` gives ``2 a**2``.

    Unlike :func:`diffusion`, its value depends on the grid: the same physical field on a grid
    ``f`` times coarser, in that grid's voxel units, has ``f**2`` times the energy. The networks
    regularise their output on their own grid (``model.downsize``, LapIRN's stages) and divide by
    ``f**2`` (:attr:`BendingEnergy.grid_power`), so one ``reg_weight`` means the same at any grid.

    Args:
        u: ``(B, D, *S)`` displacement, ``D = len(S)`` in (2, 3), at least 3 voxels per axis.

    Returns:
        Scalar tensor.
    """
    ndim = check_field(u, "u", "bending_energy")
    _check_min_size(u, 3, "bending_energy")
    axes = list(range(2, 2 + ndim))
    energy = None
    for j in axes:
        d_jj = _interior(_second_diff(u, j), [a for a in axes if a != j])
        term = d_jj.pow(2)
        energy = term if energy is None else energy + term
        d_j = _central_diff(u, j)
        for k in axes:
            if k <= j:
                continue
            d_jk = _interior(_central_diff(d_j, k), [a for a in axes if a not in (j, k)])
            energy = energy + 2.0 * d_jk.pow(2)
    return energy.sum(dim=1).mean()


class Diffusion(nn.Module):
    """``forward(u) = diffusion(u)``: ``(B, D, *S) -> scalar``.

    ``grid_power`` (every regulariser module has one): the value of one physical field on a grid
    ``f`` times coarser, in that grid's voxel units, is ``f ** grid_power`` times its value at full
    resolution; :class:`models.training_loss.TrainingLoss` divides by it, so one ``reg_weight``
    regularises alike at any ``model.downsize`` or coarse stage. Diffusion: 0 (grid-free)."""

    grid_power = 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return diffusion(u)


class BendingEnergy(nn.Module):
    """``forward(u) = bending_energy(u)``: ``(B, D, *S) -> scalar``; ``grid_power`` 2 (see
    :class:`Diffusion`)."""

    grid_power = 2

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return bending_energy(u)


class NoRegulariser(nn.Module):
    """``forward(u) = 0``: a scalar zero on ``u``'s device and dtype (the registry's ``"none"``)."""

    grid_power = 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_field(u, "u", "NoRegulariser")
        return u.new_zeros(())
