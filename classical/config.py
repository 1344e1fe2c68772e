"""Settings of the classical optimisers, checked once at construction.

Every length is in voxels of the grid the stage runs on; ``scales`` are downsampling factors
(``4`` = a quarter of the input size per axis), run coarse to fine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

__all__ = ["AffineConfig", "GreedyConfig", "SyNConfig", "ALGORITHMS", "config_from_dict"]

SIMILARITIES = ("lncc", "mse", "mi")


def _check_schedule(owner: str, scales: Sequence[float], iterations: Sequence[int],
                    all_zero: bool = False) -> tuple[tuple, tuple]:
    """Checked ``(scales, iterations)``; ``all_zero``: no iteration at all is allowed (moments only)."""
    scales = tuple(float(s) for s in scales)
    iterations = tuple(int(i) for i in iterations)
    if not scales:
        raise ValueError(f"{owner}: 'scales' is empty; give at least one downsampling factor, e.g. [4, 2, 1]")
    if len(scales) != len(iterations):
        raise ValueError(
            f"{owner}: 'scales' {list(scales)} and 'iterations' {list(iterations)} must have the same length"
        )
    if any(s < 1 for s in scales):
        raise ValueError(f"{owner}: every scale must be >= 1 (a downsampling factor), got {list(scales)}")
    if any(i < 0 for i in iterations) or (sum(iterations) == 0 and not all_zero):
        raise ValueError(f"{owner}: 'iterations' must be >= 0 with at least one > 0, got {list(iterations)}")
    return tuple(int(s) if s.is_integer() else s for s in scales), iterations


def _check_sim(owner: str, sim: str) -> None:
    # "none" (labels-only network training) gives an optimiser nothing to follow
    usable = [name for name in SIMILARITIES if name != "none"]
    if sim not in usable:
        raise ValueError(f"{owner}: 'sim' must be one of {usable}, got {sim!r}")


@dataclass
class AffineConfig:
    """Moments initialisation, then Adam on the affine matrix over a pyramid.

    Args:
        scales, iterations: pyramid schedule (coarse to fine).
        lr: Adam learning rate on the matrix (in normalised coordinates, image half-size = 1).
        sim, sim_kwargs: similarity from :mod:`losses` (``lncc | mse | mi``).
        init: ``"moments"`` (match intensity centres of mass) or ``"identity"``. With ``"moments"``
            every iteration may be 0 (``iterations: [0]``): the moments translation alone.
        rigid_only: optimise rotation + translation only (no scale or shear).
        tolerance: stop a scale when the loss improved by less than this (relative) over the
            last ``patience`` iterations; 0 disables.
    """

    scales: Sequence[float] = (4, 2, 1)
    iterations: Sequence[int] = (200, 100, 50)
    lr: float = 1e-2
    sim: str = "mse"
    sim_kwargs: Mapping[str, Any] = field(default_factory=dict)
    init: str = "moments"
    tolerance: float = 1e-6
    patience: int = 20

    def __post_init__(self) -> None:
        self.scales, self.iterations = _check_schedule("affine", self.scales, self.iterations,
                                                       all_zero=self.init == "moments")
        _check_sim("affine", self.sim)
        if self.init not in ("moments", "identity"):
            raise ValueError(f"affine: 'init' must be 'moments' or 'identity', got {self.init!r}")
        if not self.lr > 0:
            raise ValueError(f"affine: 'lr' must be > 0, got {self.lr!r}")
        self.sim_kwargs = dict(self.sim_kwargs or {})


@dataclass
class GreedyConfig:
    """Greedy deformable registration: one displacement, compositive Adam updates.

    Args:
        scales, iterations: pyramid schedule (coarse to fine), e.g. ``[4, 2, 1]``, ``[250, 200, 100]``.
        lr: Adam step size in voxels of the current scale (the largest step of a component).
            FireANTs' ``optimizer_lr`` scales the step to ``lr / (max(shape) - 1)`` in [-1, 1]
            coordinates, half a voxel per unit along the longest axis: its ``lr`` is twice ours.
        grad_sigma: Gaussian std (voxels) applied to the similarity gradient (0 = none).
        warp_sigma: Gaussian std (voxels) applied to the field after each update (0 = none).
            Both smooth with each voxel's Gaussian mass (FireANTs' kernel). The defaults (1.5, 1.0)
            are stronger than the FireANTs paper scripts' (1.0, 0.25), which give 0.005 lower Dice
            and rougher fields on MNI (``configs/model/greedy.yaml``, docs/classical.md).
        sim, sim_kwargs: similarity from :mod:`losses` (``lncc`` with ``{window: 7}`` by default).
        betas: Adam's moment decay rates.
        tolerance, patience: stop a scale when the loss improved by less than ``tolerance``
            (relative) over the last ``patience`` iterations; 0 disables.
        affine: an :class:`AffineConfig` run first (its matrix initialises the field), or None.
    """

    scales: Sequence[float] = (4, 2, 1)
    iterations: Sequence[int] = (250, 200, 100)
    lr: float = 0.25
    grad_sigma: float = 1.5
    warp_sigma: float = 1.0
    sim: str = "lncc"
    sim_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"window": 7})
    betas: Sequence[float] = (0.9, 0.99)
    tolerance: float = 1e-6
    patience: int = 10
    affine: AffineConfig | Mapping[str, Any] | None = None

    name = "greedy"

    def __post_init__(self) -> None:
        self.scales, self.iterations = _check_schedule(self.name, self.scales, self.iterations)
        _check_sim(self.name, self.sim)
        if not self.lr > 0:
            raise ValueError(f"{self.name}: 'lr' must be > 0, got {self.lr!r}")
        for key in ("grad_sigma", "warp_sigma", "tolerance"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{self.name}: '{key}' must be >= 0, got {getattr(self, key)!r}")
        if int(self.patience) < 1:
            raise ValueError(f"{self.name}: 'patience' must be >= 1, got {self.patience!r}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{self.name}: 'betas' must be two numbers in [0, 1), got {list(self.betas)}")
        self.sim_kwargs = dict(self.sim_kwargs or {})
        if isinstance(self.affine, Mapping):
            self.affine = AffineConfig(**dict(self.affine))


@dataclass
class SyNConfig(GreedyConfig):
    """Symmetric normalisation: two fields, fixed and moving each warped half-way to a midpoint.

    The result is ``phi_fixed->moving = psi_m o psi_f^-1`` (both fields composed through the
    numerical inverse of the fixed-side field); the inverse ``psi_f o psi_m^-1`` comes with it.
    Same settings as :class:`GreedyConfig`; ``inverse_iterations`` damped fixed-point steps invert a
    field (:func:`spatial.invert`).
    """

    scales: Sequence[float] = (4, 2, 1)
    iterations: Sequence[int] = (200, 100, 50)
    lr: float = 0.1
    grad_sigma: float = 1.5
    warp_sigma: float = 1.0
    sim_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"window": 5})
    inverse_iterations: int = 30

    name = "syn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.inverse_iterations) < 1:
            raise ValueError(f"syn: 'inverse_iterations' must be >= 1, got {self.inverse_iterations!r}")


ALGORITHMS = {"affine": AffineConfig, "greedy": GreedyConfig, "syn": SyNConfig}


def config_from_dict(algorithm: str, values: Mapping[str, Any]) -> AffineConfig | GreedyConfig | SyNConfig:
    """Build the config of ``algorithm`` from a plain mapping, naming any unknown key."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"model.algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    cls = ALGORITHMS[algorithm]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{algorithm}: unknown setting(s) {unknown}; valid: {sorted(valid)}")
    return cls(**dict(values))


def as_dict(cfg: AffineConfig | GreedyConfig | SyNConfig) -> dict[str, Any]:
    return asdict(cfg)
