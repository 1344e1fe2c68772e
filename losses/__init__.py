"""Losses for registration: image similarity, field regularisers and the Dice loss.

Functional core (shapes and formulas in each docstring) with thin ``nn.Module`` wrappers, and two
registries by name for configs:

* ``build_similarity(name, **kwargs)``: ``"lncc"`` | ``"mse"`` | ``"mi"`` | ``"none"`` (a zero:
  train on labels only, SynthMorph-style); the module's ``forward(fixed, moving)`` returns a
  scalar loss (lower is better).
* ``build_regulariser(name, **kwargs)``: ``"diffusion"`` | ``"bending"`` | ``"none"``; the module's
  ``forward(u)`` takes a displacement ``(B, D, *S)`` in voxel units and returns a scalar; its
  ``grid_power`` says how that scalar grows for one physical field on a coarser grid (the training
  loss divides it out: :meth:`models.training_loss.TrainingLoss.regularise`).
"""

from __future__ import annotations

from torch import nn

from losses.dice import DiceLoss, compact_labels, dice_loss, one_hot
from losses.regularisers import BendingEnergy, Diffusion, NoRegulariser, bending_energy, diffusion
from losses.similarity import LNCC, MSE, MutualInformation, NoSimilarity, lncc, mse, mutual_information

__all__ = [
    "lncc",
    "mse",
    "mutual_information",
    "LNCC",
    "MSE",
    "MutualInformation",
    "NoSimilarity",
    "diffusion",
    "bending_energy",
    "Diffusion",
    "BendingEnergy",
    "NoRegulariser",
    "one_hot",
    "compact_labels",
    "dice_loss",
    "DiceLoss",
    "SIMILARITIES",
    "REGULARISERS",
    "build_similarity",
    "build_regulariser",
]

SIMILARITIES: dict[str, type[nn.Module]] = {
    "lncc": LNCC,
    "mse": MSE,
    "mi": MutualInformation,
    "none": NoSimilarity,
}

REGULARISERS: dict[str, type[nn.Module]] = {
    "diffusion": Diffusion,
    "bending": BendingEnergy,
    "none": NoRegulariser,
}


def _build(registry: dict[str, type[nn.Module]], name: str, fn: str, kwargs: dict) -> nn.Module:
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{fn}() 'name' must be one of {sorted(registry)}, got {name!r}")
    try:
        return registry[name](**kwargs)
    except TypeError as err:  # unexpected keyword: say which loss refused it
        raise ValueError(f"{fn}() bad keyword arguments {sorted(kwargs)} for {name!r}: {err}") from err


def build_similarity(name: str, **kwargs) -> nn.Module:
    """Similarity loss module by name: ``"lncc"`` (``window``, ``eps``), ``"mse"``, ``"mi"`` (``bins``, ``sigma``),
    ``"none"`` (returns 0: labels-only training with ``dice_weight > 0``)."""
    return _build(SIMILARITIES, name, "build_similarity", kwargs)


def build_regulariser(name: str, **kwargs) -> nn.Module:
    """Regulariser module by name: ``"diffusion"``, ``"bending"`` or ``"none"`` (returns 0)."""
    return _build(REGULARISERS, name, "build_regulariser", kwargs)
