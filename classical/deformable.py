"""Greedy and SyN deformable instance optimisation, written from the FireANTs paper's description.

Per pyramid level (coarse to fine):

1. ``moved = moving(x + u(x))`` and the gradient ``g`` of the loss with respect to ``u`` by
   autograd through the sampler. (Sampling the image gradient instead, ``dL/dmoved * (grad
   moving)(x+u)``, skips the sampler's backward pass but is not the gradient of the discretised
   objective: measured on a 2 mm MNI pair it ends 0.04 Dice lower.)
2. ``g`` is Gaussian-smoothed (``grad_sigma``) and fed **as it is** to Adam, whose direction
   ``m_hat / (sqrt(v_hat) + eps)`` is then **normalised** so that its largest per-voxel norm is
   ``lr`` voxels (the step the paper describes: Adam on the raw gradient, the step scaled after;
   a direction whose largest norm is below 1, rounding noise at an optimum, is not scaled up).
   Adam's ``eps = 1e-8`` is compared with the raw gradient of the voxel-mean similarity (about
   1e-7 per voxel on a 96x112x96 grid), so voxels whose gradient is negligible get negligible
   steps. (Normalising the gradient *before* Adam, as this module did until 2026-12, lifts every
   voxel's ratio to about +-1 wherever the gradient is not exactly 0: fields twice as rough
   (SDlogJ 0.20 -> 0.13 on MNI pair 20-21, equal Dice) and folding at the paper's smoothing.)
3. The step ``d`` is applied compositively, ``u <- d + u o (x + d)`` (:func:`spatial.compose`),
   then the field is Gaussian-smoothed (``warp_sigma``).

An initial transform (``init``: an affine stage's displacement, a network's prediction) is not
part of the optimised field: each level reads the moving image through it once, the field starts
at zero as the residual on top of it, and the result is ``compose(init, u)``.

Boundary: the optimised field is the identity (zero displacement) outside the grid. Both smoothings pad
with zeros and the composition samples ``u`` with zero padding (so do SyN's final inversion and
composition), so nothing outside the image feeds displacement in: a border voxel's displacement decays unless the similarity sustains it.
(Edge-replicating padding, used until 2026-12, extends the border displacement outwards at
every smoothing: on MNI pair 20-21 the background then moved 1.6 voxels on average, 0.56 with
zeros, against 0.55 for FireANTs.)

Results do not depend on the thread count: every reduction on the gradient's path is
order-independent (see :func:`losses.lncc` for its centring mean, taken in float64), so one and
two threads give bitwise the same field for LNCC and MSE (tested).

Between levels the field is resized with its magnitudes rescaled (:func:`spatial.resize_field`)
and Adam's moments start afresh. SyN runs the same update on two fields that warp the fixed and
the moving image to a midpoint, and returns ``psi_m o psi_f^-1`` (fixed -> moving).

The loop stays on the device: the loss is never read on the host per iteration; the stop test
(:class:`classical.pyramid.ConvergenceMonitor`) is read every iteration on the CPU and every
:data:`classical.pyramid.SYNC_EVERY` iterations on a GPU, with the updates after a stop masked,
so both give the same field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from classical.config import GreedyConfig, SyNConfig
from classical.pyramid import Adam, ConvergenceMonitor, downsample, level_line, level_shape
from losses import build_similarity
from spatial import compose, gaussian_blur, invert, resize_field, warp

__all__ = ["greedy", "syn", "DeformableResult"]


@dataclass
class DeformableResult:
    """``displacement`` fixed -> moving ``(B, D, *S)``; ``inverse`` (moving -> fixed) or None;
    ``losses``: the loss trace of each pyramid level."""

    displacement: torch.Tensor
    inverse: torch.Tensor | None = None
    losses: list[list[float]] = field(default_factory=list)


# the discretisation of the gradient and field smoothing (spatial.filters.GAUSSIAN_KINDS): each tap the
# Gaussian's mass over its voxel, as FireANTs builds it, so that grad_sigma / warp_sigma mean what
# they mean there; sampled taps left a warp sigma of 0.25 doing nothing (neighbour weight 3e-4 against
# 0.023), and the paper's settings folded (a helper's ablation against FireANTs 1.5.0, docs/classical.md)
SMOOTHING_KERNEL = "integrated"


def _normalised(d: torch.Tensor, length: float) -> torch.Tensor:
    """``d * length / max(1, max_x |d(x)|)`` per batch item (in place): Adam's direction, about 1 per
    component wherever the gradient is consistent, gets its largest per-voxel norm scaled to
    ``|length|`` (a negative ``length`` also reverses ``d``). A direction whose peak is below 1 (the
    gradient is at the level of Adam's eps everywhere: rounding noise at an optimum) is only scaled
    by ``length``, not blown up to a full step. (It matters little in practice: in the runs measured,
    MNI pair (20, 21) with greedy and greedy_fast, the peak never fell below 1.47, and an identical
    pair still drifts by up to 0.64 voxel under greedy (0.72 with every step blown up; SyN stays at
    0), as the coarse levels' gradients, larger per voxel, pass Adam's eps.)"""
    peak = d.square().sum(dim=1).flatten(1).amax(dim=1).sqrt_()
    return d.mul_((length / peak.clamp_min(1.0)).view(-1, *([1] * (d.dim() - 1))))


def _loss_and_grads(loss_fn: Callable, sides: list["_Side"]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Similarity (a device scalar: never read on the host here) and its gradient with respect
    to each side's field.

    Greedy: ``sides = [moving]`` and ``loss_fn(moved)`` compares with the fixed level; SyN:
    ``sides = [fixed, moving]`` (both warped to the midpoint) and ``loss_fn(fixed_w, moving_w)``.
    """
    with torch.enable_grad():
        fields = [side.u.detach().requires_grad_(True) for side in sides]
        warped = [warp(side.level, u) for side, u in zip(sides, fields)]
        loss = loss_fn(*warped)
        grads = torch.autograd.grad(loss, fields)
    return loss.detach(), list(grads)


def _to_fixed(sim: Callable, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``moved -> sim(fixed, moved)``, with the fixed image's part precomputed where the
    similarity offers it (:meth:`losses.LNCC.to_fixed`)."""
    if hasattr(sim, "to_fixed"):
        return sim.to_fixed(fixed)
    return lambda moved: sim(fixed, moved)


class _Side:
    """One image whose field is optimised: its pyramid level, gradient image, field and Adam.

    ``init`` (a full-resolution displacement: an affine stage's, a network's prediction) is kept
    outside the optimised field: each level reads the image through it once, and the field ``u``,
    starting at zero, is the residual on top of it; :meth:`field` returns the whole map,
    ``compose(init, u)``. (Merged into ``u``, the zero-padded smoothing and composition of every
    update would wear the initial transform away, towards zero at the border and in the background:
    started from the exact affine, greedy ended 0.5 voxel off inside the object and 3.7 outside.)"""

    def __init__(self, img: torch.Tensor, cfg: GreedyConfig, init: torch.Tensor | None = None) -> None:
        self.img = img
        self.cfg = cfg
        self.init = None if init is None else init.to(img)
        self.u: torch.Tensor | None = None
        self.adam: Adam | None = None
        self.level: torch.Tensor | None = None

    def start_level(self, scale: float) -> None:
        level = downsample(self.img, scale)
        shape = tuple(level.shape[2:])
        if self.init is not None:  # the image through the initial transform, read once per level
            level = warp(level, resize_field(self.init, shape))
        self.level = level
        if self.u is None:
            self.u = level.new_zeros(level.shape[0], level.dim() - 2, *shape)
        else:
            self.u = resize_field(self.u, shape)
        self.adam = Adam(self.u, self.cfg.betas)

    def field(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The whole map on the grid ``shape``: the optimised field, after the initial transform
        when there is one (``x + u(x) + init(x + u(x))``; ``init`` read with border values outside
        the grid, where an affine's displacement goes on)."""
        u = resize_field(self.u, shape)
        return u if self.init is None else compose(self.init, u, padding_mode="border")

    def update(self, g: torch.Tensor, live: torch.Tensor | None = None) -> None:
        """One step along the similarity gradient ``g`` w.r.t. the field (module docstring):
        smooth, Adam on the raw gradient, normalise to ``lr``, compose, smooth the field; kept only
        where ``live`` (:meth:`ConvergenceMonitor.live`) when given. The level's Adam moments are
        discarded with the level, so they need no mask."""
        if self.cfg.grad_sigma > 0:
            g = gaussian_blur(g, self.cfg.grad_sigma, padding="zeros", kind=SMOOTHING_KERNEL)
        step = _normalised(self.adam.direction(g), -self.cfg.lr)
        u = compose(self.u, step, padding_mode="zeros")
        if self.cfg.warp_sigma > 0:
            u = gaussian_blur(u, self.cfg.warp_sigma, padding="zeros", kind=SMOOTHING_KERNEL)
        self.u = u if live is None else torch.where(live, u, self.u)


def _check_init(init: torch.Tensor | None, fixed: torch.Tensor) -> None:
    if init is None:
        return
    want = (fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
    if tuple(init.shape) != want:
        raise ValueError(f"initial displacement must have shape {want}, got {tuple(init.shape)}")


Report = Callable[[str], None]


@torch.no_grad()
def greedy(
    fixed: torch.Tensor, moving: torch.Tensor, cfg: GreedyConfig, init: torch.Tensor | None = None,
    report: Report | None = None,
) -> DeformableResult:
    """Greedy registration of ``moving`` to ``fixed`` (``(B, 1, *S)`` each, already validated).

    ``init``: an initial displacement ``(B, D, *S)`` (an affine or a network's prediction).
    ``report``: called with one line per pyramid level as it ends (:func:`classical.pyramid.level_line`).
    Returns the displacement fixed -> moving on the full grid; no inverse.
    """
    _check_init(init, fixed)
    sim = build_similarity(cfg.sim, **cfg.sim_kwargs)
    side = _Side(moving, cfg, init)
    traces: list[list[float]] = []
    for k, (scale, iters) in enumerate(zip(cfg.scales, cfg.iterations)):
        start = time.perf_counter()
        side.start_level(scale)
        loss_fn = _to_fixed(sim, downsample(fixed, scale))
        monitor = ConvergenceMonitor(cfg.tolerance, cfg.patience, iters, fixed)
        for _ in range(iters):
            live = monitor.live()
            loss, (grad,) = _loss_and_grads(loss_fn, [side])
            side.update(grad, live)
            if monitor.update(loss):
                break
        traces.append(monitor.trace)  # the level's one host read
        if report is not None:
            report(level_line(cfg.name, k, len(cfg.scales), scale, side.level.shape[2:], traces[-1], iters,
                              time.perf_counter() - start))
    return DeformableResult(displacement=side.field(tuple(fixed.shape[2:])), losses=traces)


@torch.no_grad()
def syn(
    fixed: torch.Tensor, moving: torch.Tensor, cfg: SyNConfig, init: torch.Tensor | None = None,
    report: Report | None = None,
) -> DeformableResult:
    """Symmetric registration: ``fixed o psi_f`` and ``moving o psi_m`` meet at a midpoint.

    ``init`` (fixed -> moving) starts the moving-side field; ``report`` as :func:`greedy`. Returns the
    displacement ``psi_m o psi_f^-1`` (fixed -> moving) and its inverse ``psi_f o psi_m^-1``.
    """
    _check_init(init, fixed)
    sim = build_similarity(cfg.sim, **cfg.sim_kwargs)
    f_side, m_side = _Side(fixed, cfg), _Side(moving, cfg, init)
    traces: list[list[float]] = []
    for k, (scale, iters) in enumerate(zip(cfg.scales, cfg.iterations)):
        start = time.perf_counter()
        f_side.start_level(scale)
        m_side.start_level(scale)
        monitor = ConvergenceMonitor(cfg.tolerance, cfg.patience, iters, fixed)
        for _ in range(iters):
            live = monitor.live()
            loss, (grad_f, grad_m) = _loss_and_grads(sim, [f_side, m_side])
            f_side.update(grad_f, live)
            m_side.update(grad_m, live)
            if monitor.update(loss):
                break
        traces.append(monitor.trace)  # the level's one host read
        if report is not None:
            report(level_line(cfg.name, k, len(cfg.scales), scale, m_side.level.shape[2:], traces[-1], iters,
                              time.perf_counter() - start))
    shape = tuple(fixed.shape[2:])
    u_f, u_m = f_side.field(shape), m_side.field(shape)
    n = cfg.inverse_iterations
    # the optimised fields are the identity outside the grid (module docstring): read with zeros
    # there; the moving side's map after an initial transform (an affine's goes on) with border values
    m_pad = "zeros" if init is None else "border"
    forward = compose(u_m, invert(u_f, n, padding_mode="zeros"), padding_mode=m_pad)  # psi_m o psi_f^-1
    inverse = compose(u_f, invert(u_m, n, padding_mode=m_pad), padding_mode="zeros")
    return DeformableResult(displacement=forward, inverse=inverse, losses=traces)


def level_shapes(shape: tuple[int, ...], cfg: GreedyConfig) -> list[tuple[int, ...]]:
    """The grid of each pyramid level (for logs and docs)."""
    return [level_shape(shape, s) for s in cfg.scales]
