"""The plain API: ``register(fixed, moving, config) -> RegistrationResult``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from classical.affine import affine
from classical.config import AffineConfig, GreedyConfig, SyNConfig, config_from_dict
from classical.deformable import greedy, syn
from classical.pyramid import check_pair, level_need, min_input_size
from spatial.precision import as_float32, float32_region

__all__ = ["register", "RegistrationResult", "input_size_requirement"]

Config = AffineConfig | GreedyConfig | SyNConfig


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes:
        displacement: ``(B, D, *S)`` fixed -> moving in voxel units (``moved = warp(moving, u)``).
        inverse: moving -> fixed displacement on the moving grid (SyN), else None.
        affine: ``(B, D, D+1)`` voxel-coordinate matrix of the affine stage, or None.
        losses: loss trace per stage (``"affine"``, ``"greedy"``/``"syn"``), one list per level.
        seconds: wall time of the optimisation.
    """

    displacement: torch.Tensor
    inverse: torch.Tensor | None = None
    affine: torch.Tensor | None = None
    losses: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0


def input_size_requirement(config: Config) -> tuple[int, str]:
    """``(fewest voxels per axis, the config keys that set it)`` for ``config``.

    Each stage (the affine one, then the deformable one) needs on every pyramid level
    :func:`classical.pyramid.level_need` voxels: at least 4, the LNCC window, and the ±2 sigma
    core of the Gaussian smoothing (``2 * ceil(2 sigma) + 1`` for ``grad_sigma`` and
    ``warp_sigma``). :func:`classical.pyramid.min_input_size` turns that into an input size
    through the scales (a level keeps ``min(8, n)`` voxels, so the largest scale matters once a
    level needs more than 8). Defaults: greedy 7 (window 7; grad_sigma 1.5 -> 7), SyN 7
    (grad_sigma 1.5), affine 4 (MSE). The keys are named as in ``configs/model/*.yaml``.
    """
    stages = []
    if isinstance(config, AffineConfig):
        stages.append(("model.", config, level_need(config.sim, config.sim_kwargs)))
    else:
        if config.affine is not None:
            aff = config.affine
            stages.append(("model.affine.", aff, level_need(aff.sim, aff.sim_kwargs)))
        stages.append(("model.", config, level_need(config.sim, config.sim_kwargs,
                                                      (config.grad_sigma, config.warp_sigma))))
    size, parts = 1, []
    for prefix, cfg, need in stages:
        size = max(size, min_input_size(cfg.scales, need))
        keys = f"{prefix}scales={list(cfg.scales)}, {prefix}sim={cfg.sim}"
        if cfg.sim == "lncc":
            keys += f", {prefix}sim_kwargs.window={cfg.sim_kwargs.get('window', 9)}"
        if isinstance(cfg, GreedyConfig):
            keys += f", {prefix}grad_sigma={cfg.grad_sigma:g}, {prefix}warp_sigma={cfg.warp_sigma:g}"
        parts.append(f"{need} voxels on every pyramid level: {keys}")
    return size, "; ".join(parts)


def register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: Config | Mapping[str, Any],
    init: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    moving_spacing: Sequence[float] | None = None,
    report: Callable[[str], None] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (``(B, 1, *S)`` float tensors on one grid).

    Args:
        config: an :class:`AffineConfig`, :class:`GreedyConfig` or :class:`SyNConfig`, or a
            mapping with ``algorithm: affine | greedy | syn`` and that config's fields.
        init: initial displacement ``(B, D, *S)`` fixed -> moving (e.g. a network's prediction);
            the deformable stage starts from it (not allowed together with an affine stage).
        spacing, moving_spacing: voxel sizes (mm) when known; they must agree (the optimiser
            works in voxels of one grid; resample first otherwise).
        report: called with one line per pyramid level of each stage as it ends (iterations run of
            the budget, final loss, seconds: :func:`classical.pyramid.level_line`), e.g. ``print``.

    Runs in float32 (float64 inputs stay float64) with autocast disabled, whatever the caller's
    mixed precision: half-precision images and ``init`` are promoted (:mod:`spatial.precision`).
    The loop keeps the loss on the device (:mod:`classical.deformable`); on a GPU ``seconds``
    waits for the device to finish.

    Raises ``ValueError`` naming the problem for shape or spacing mismatch, an axis shorter
    than :func:`input_size_requirement`, NaN/infinite or constant images (similarity undefined),
    images of two dtypes, images outside [0, 1] with ``sim: mi`` (which clamps to [0, 1]) and
    invalid settings.
    """
    if isinstance(config, Mapping):
        values = dict(config)
        config = config_from_dict(values.pop("algorithm", "greedy"), values)
    if not isinstance(config, (AffineConfig, GreedyConfig)):
        raise TypeError(f"register(): 'config' must be an AffineConfig, GreedyConfig or SyNConfig, got {type(config).__name__}")
    check_pair(fixed, moving, "register()")
    _check_mi_range(fixed, moving, config)
    minimum, reason = input_size_requirement(config)
    for axis, n in enumerate(fixed.shape[2:]):
        if n < minimum:
            raise ValueError(
                f"register(): input shape {tuple(fixed.shape[2:])} has {n} voxel(s) on axis {axis}, fewer than "
                f"the {minimum} this config needs ({reason})"
            )
    if spacing is not None and moving_spacing is not None:
        a, b = [float(s) for s in spacing], [float(s) for s in moving_spacing]
        if len(a) != len(b) or any(abs(x - y) > 1e-4 * max(abs(x), 1.0) for x, y in zip(a, b)):
            raise ValueError(f"register(): fixed spacing {a} and moving spacing {b} differ; resample to one grid first")
    with float32_region(fixed.device):  # under a caller's autocast too: no bf16 sampling coordinates
        fixed, moving = as_float32(fixed), as_float32(moving)
        return _run(fixed, moving, config, None if init is None else as_float32(init), report)


# how far outside [0, 1] an image may reach for sim "mi" (which clamps to [0, 1]): rounding of a normalisation
MI_RANGE_TOLERANCE = 1e-3


def _check_mi_range(fixed: torch.Tensor, moving: torch.Tensor, config: Config) -> None:
    """Sim ``"mi"`` (:func:`losses.mutual_information`) reads intensities in [0, 1] and clamps the
    rest: on raw scanner intensities every voxel clamps to 1, the loss is flat and the result the
    identity, silently. Refuse such an image by name instead."""
    stages = [config] + ([config.affine] if getattr(config, "affine", None) is not None else [])
    if not any(stage.sim == "mi" for stage in stages):
        return
    for name, t in (("fixed", fixed), ("moving", moving)):
        lo, hi = float(t.min()), float(t.max())
        if lo < -MI_RANGE_TOLERANCE or hi > 1 + MI_RANGE_TOLERANCE:
            raise ValueError(f"register(): sim 'mi' reads intensities in [0, 1] (clamping the rest), but '{name}' "
                             f"spans [{lo:g}, {hi:g}]: the loss would be flat and the result the identity; "
                             "normalise both images to [0, 1] first (data.io.normalize_intensity) or use lncc / mse")


def _run(fixed: torch.Tensor, moving: torch.Tensor, config: Config, init: torch.Tensor | None,
         report: Callable[[str], None] | None) -> RegistrationResult:
    start = time.perf_counter()
    result = RegistrationResult(displacement=fixed.new_zeros(0))
    if isinstance(config, AffineConfig):
        out = affine(fixed, moving, config, report=report)
        result.displacement, result.affine, result.losses["affine"] = out.displacement, out.matrix, out.losses
    else:
        if config.affine is not None:
            if init is not None:
                raise ValueError("register(): give either an initial displacement or an affine stage, not both")
            out = affine(fixed, moving, config.affine, report=report)
            init, result.affine, result.losses["affine"] = out.displacement, out.matrix, out.losses
        run = syn if isinstance(config, SyNConfig) else greedy
        out = run(fixed, moving, config, init=init, report=report)
        result.displacement, result.inverse = out.displacement, out.inverse
        result.losses[config.name] = out.losses
    if result.displacement.device.type == "cuda":  # the wall time of the work, not of its queueing
        torch.cuda.synchronize(result.displacement.device)
    result.seconds = time.perf_counter() - start
    return result

