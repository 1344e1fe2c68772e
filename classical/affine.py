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
from classical.pyramid import Adam, ConvergenceMonitor, downsample, level_line
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


def _to_voxel(a: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Normalised-coordinate map ``p' = A p + t`` -> voxel matrix ``[M | b]`` on the grid whose
    voxel-to-normalised scales are ``h`` (:func:`_scales`)."""
    m = a * h.view(1, 1, -1) / h.view(1, -1, 1)  # H^-1 A H
    b = (t + 1 - a.sum(dim=2)) / h.view(1, -1)  # H^-1 (t + 1 - A 1)
    return torch.cat([m, b.unsqueeze(2)], dim=2)


def _scales(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``2 / (n - 1)`` per axis of grid ``shape`` on ``like``'s device (built once per level:
    a tensor copied from the host blocks a GPU until its queue drains)."""
    return torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=like.device, dtype=like.dtype)


# torch.optim.Adam's defaults, which this stage used before it had its own loop
_BETAS = (0.9, 0.999)


def affine(fixed: torch.Tensor, moving: torch.Tensor, cfg: AffineConfig,
           report: Callable[[str], None] | None = None) -> AffineResult:
    """Affine registration of ``moving`` to ``fixed`` (``(B, 1, *S)``, already validated);
    ``report`` is called with one line per pyramid level as it ends (:func:`classical.pyramid.level_line`).

    Adam on the normalised-coordinate matrix ``[A | t]`` (one tensor, :class:`classical.pyramid.Adam`),
    kept on the device like the deformable loop (:class:`classical.pyramid.ConvergenceMonitor`):
    after a stop read late, the parameters and the moments are masked and the step count is set
    back, so the next level starts where a per-iteration read would have left it.
    """
    ndim = fixed.dim() - 2
    bsz = fixed.shape[0]
    shape = tuple(fixed.shape[2:])
    a = torch.eye(ndim, device=fixed.device, dtype=fixed.dtype).repeat(bsz, 1, 1)
    t = fixed.new_zeros(bsz, ndim)
    if cfg.init == "moments":
        t = (centre_of_mass(moving) - centre_of_mass(fixed)) * _scales(shape, fixed)
    params = torch.cat([a.flatten(1), t], dim=1)  # (B, D*D + D)
    adam = Adam(params, _BETAS)
    sim = build_similarity(cfg.sim, **cfg.sim_kwargs)
    traces: list[list[float]] = []

    def split(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return p[:, : ndim * ndim].view(bsz, ndim, ndim), p[:, ndim * ndim :]

    for k, (scale, iters) in enumerate(zip(cfg.scales, cfg.iterations)):
        start = time.perf_counter()
        f_level, m_level = downsample(fixed, scale), downsample(moving, scale)
        level = tuple(f_level.shape[2:])
        h = _scales(level, fixed)
        monitor = ConvergenceMonitor(cfg.tolerance, cfg.patience, iters, fixed)
        steps_before = adam.t
        for _ in range(iters):
            live = monitor.live()
            with torch.enable_grad():
                p = params.detach().requires_grad_(True)
                u = affine_displacement(_to_voxel(*split(p), h), level)
                loss = sim(f_level, warp(m_level, u))
                (grad,) = torch.autograd.grad(loss, [p])
            step = params - cfg.lr * adam.direction(grad, live)
            params = step if live is None else torch.where(live, step, params)
            if monitor.update(loss.detach()):
                break
        adam.t = steps_before + monitor.count
        traces.append(monitor.trace)  # the level's one host read
        if report is not None:
            report(level_line("affine", k, len(cfg.scales), scale, level, traces[-1], iters,
                              time.perf_counter() - start))
    with torch.no_grad():
        matrix = _to_voxel(*split(params.detach()), _scales(shape, fixed))
        return AffineResult(matrix=matrix, displacement=affine_displacement(matrix, shape), losses=traces)
