"""Affine registration: moments initialisation, then Adam on the matrix over a pyramid.

The map is optimised in normalised coordinates ``p = x * 2 / (S - 1) - 1`` (each axis spans
[-1, 1], so translations and linear parts are on comparable scales across grid sizes) and
reported in voxel coordinates: ``x_moving = M x + b`` with ``M`` ``(D, D)`` and ``b`` ``(D,)``,
the displacement being ``u(x) = M x + b - x``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from classical.config import AffineConfig
from classical.pyramid import ConvergenceMonitor, downsample, level_line
from losses import build_similarity
from spatial import identity_grid, warp

__all__ = ["affine", "AffineResult", "affine_displacement", "centre_of_mass"]


@dataclass
class AffineResult:
    """``matrix`` ``(B, D, D+1)`` voxel-coordinate map fixed -> moving (``[M | b]``), its
    ``displacement`` ``(B, D, *S)`` and the loss trace of each pyramid level."""

    matrix: torch.Tensor
    displacement: torch.Tensor
    losses: list[list[float]] = field(default_factory=list)


def centre_of_mass(img: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre of ``(B, 1, *S)`` images in voxel coordinates: ``(B, D)``."""
    ndim = img.dim() - 2
    w = img.clamp_min(0)[:, 0]
    total = w.flatten(1).sum(dim=1).clamp_min(1e-12)
    grid = identity_grid(img.shape[2:], img.device, img.dtype)
    return torch.stack([(w * grid[i]).flatten(1).sum(dim=1) / total for i in range(ndim)], dim=1)


def affine_displacement(matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(B, D, D+1)`` voxel-coordinate matrix -> displacement ``(B, D, *shape)``: ``M x + b - x``."""
    ndim = len(shape)
    grid = identity_grid(shape, matrix.device, matrix.dtype).reshape(ndim, -1)  # (D, N)
    lin = matrix[:, :, :ndim] - torch.eye(ndim, device=matrix.device, dtype=matrix.dtype)
    u = torch.einsum("bij,jn->bin", lin, grid) + matrix[:, :, ndim:]
    return u.reshape(matrix.shape[0], ndim, *shape)


def _to_voxel(a: torch.Tensor, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised-coordinate map ``p' = A p + t`` -> voxel matrix ``[M | b]`` on grid ``shape``."""
    h = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=a.device, dtype=a.dtype)
    m = a * h.view(1, 1, -1) / h.view(1, -1, 1)  # H^-1 A H
    b = (t + 1 - a.sum(dim=2)) / h.view(1, -1)  # H^-1 (t + 1 - A 1)
    return torch.cat([m, b.unsqueeze(2)], dim=2)


def affine(fixed: torch.Tensor, moving: torch.Tensor, cfg: AffineConfig,
           report: Callable[[str], None] | None = None) -> AffineResult:
    """Affine registration of ``moving`` to ``fixed`` (``(B, 1, *S)``, already validated);
    ``report`` is called with one line per pyramid level as it ends (:func:`classical.pyramid.level_line`)."""
    ndim = fixed.dim() - 2
    bsz = fixed.shape[0]
    shape = tuple(fixed.shape[2:])
    a = torch.eye(ndim, device=fixed.device, dtype=fixed.dtype).repeat(bsz, 1, 1)
    t = fixed.new_zeros(bsz, ndim)
    if cfg.init == "moments":
        h = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=fixed.device, dtype=fixed.dtype)
        t = (centre_of_mass(moving) - centre_of_mass(fixed)) * h
    a = a.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    opt = torch.optim.Adam([a, t], lr=cfg.lr)
    sim = build_similarity(cfg.sim, **cfg.sim_kwargs)
    traces: list[list[float]] = []
    for k, (scale, iters) in enumerate(zip(cfg.scales, cfg.iterations)):
        start = time.perf_counter()
        f_level, m_level = downsample(fixed, scale), downsample(moving, scale)
        level = tuple(f_level.shape[2:])
        monitor = ConvergenceMonitor(cfg.tolerance, cfg.patience)
        for _ in range(iters):
            with torch.enable_grad():
                u = affine_displacement(_to_voxel(a, t, level), level)
                loss = sim(f_level, warp(m_level, u))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if monitor.update(loss.detach()):
                break
        traces.append(monitor.trace)
        if report is not None:
            report(level_line("affine", k, len(cfg.scales), scale, level, monitor.trace, iters,
                              time.perf_counter() - start))
    with torch.no_grad():
        matrix = _to_voxel(a.detach(), t.detach(), shape)
        return AffineResult(matrix=matrix, displacement=affine_displacement(matrix, shape), losses=traces)
