"""The plain API: ``register(fixed, moving, config) -> RegistrationResult``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from classical.affine import affine
from classical.config import AffineConfig, GreedyConfig, SyNConfig, config_from_dict
from classical.deformable import greedy, syn
from classical.pyramid import check_pair

__all__ = ["register", "RegistrationResult"]

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


def register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: Config | Mapping[str, Any],
    init: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    moving_spacing: Sequence[float] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (``(B, 1, *S)`` float tensors on one grid).

    Args:
        config: an :class:`AffineConfig`, :class:`GreedyConfig` or :class:`SyNConfig`, or a
            mapping with ``algorithm: affine | greedy | syn`` and that config's fields.
        init: initial displacement ``(B, D, *S)`` fixed -> moving (e.g. a network's prediction);
            the deformable stage starts from it (not allowed together with an affine stage).
        spacing, moving_spacing: voxel sizes (mm) when known; they must agree (the optimiser
            works in voxels of one grid; resample first otherwise).

    Raises ``ValueError`` naming the problem for shape or spacing mismatch, NaN/infinite or
    constant images (similarity undefined) and invalid settings.
    """
    if isinstance(config, Mapping):
        values = dict(config)
        config = config_from_dict(values.pop("algorithm", "greedy"), values)
    if not isinstance(config, (AffineConfig, GreedyConfig)):
        raise TypeError(f"register(): 'config' must be an AffineConfig, GreedyConfig or SyNConfig, got {type(config).__name__}")
    check_pair(fixed, moving, "register()")
    if spacing is not None and moving_spacing is not None:
        a, b = [float(s) for s in spacing], [float(s) for s in moving_spacing]
        if len(a) != len(b) or any(abs(x - y) > 1e-4 * max(abs(x), 1.0) for x, y in zip(a, b)):
            raise ValueError(f"register(): fixed spacing {a} and moving spacing {b} differ; resample to one grid first")
    start = time.perf_counter()
    result = RegistrationResult(displacement=fixed.new_zeros(0))
    if isinstance(config, AffineConfig):
        out = affine(fixed, moving, config)
        result.displacement, result.affine, result.losses["affine"] = out.displacement, out.matrix, out.losses
    else:
        if config.affine is not None:
            if init is not None:
                raise ValueError("register(): give either an initial displacement or an affine stage, not both")
            out = affine(fixed, moving, config.affine)
            init, result.affine, result.losses["affine"] = out.displacement, out.matrix, out.losses
        run = syn if isinstance(config, SyNConfig) else greedy
        out = run(fixed, moving, config, init=init)
        result.displacement, result.inverse = out.displacement, out.inverse
        result.losses[config.name] = out.losses
    result.seconds = time.perf_counter() - start
    return result

