"""Symmetric diffeomorphic registration in the spirit of SymNet (Mok & Chung, CVPR 2020), from the paper.

Two stationary velocity fields, one per image, carry both images to a common midpoint space ``Z``
(displacements in the project convention, voxel units, ``warp(img, u)(z) = img(z + u(z))``)::

    u_f = exp(v_f)    psi_f: Z -> fixed,   the fixed image at the midpoint:  warp(fixed, u_f)
    u_m = exp(v_m)    psi_m: Z -> moving,  the moving image at the midpoint: warp(moving, u_m)

The final map fixed -> moving is ``psi_m o psi_f^-1`` with ``psi_f^-1 = exp(-v_f)``::

    forward  = compose(u_m, exp(-v_f))     # apply psi_f^-1, then psi_m   (what metrics see)
    backward = compose(u_f, exp(-v_m))     # moving -> fixed: the inverse of ``forward``

Both are diffeomorphic and inverse to each other up to interpolation and scaling-and-squaring error.
The network is any project network ``net(moving, fixed) -> (B, D, *S)`` run by :class:`SymmetricNet`
on both orders with shared weights (``v_f = net(fixed, moving)``, ``v_m = net(moving, fixed)``), so
swapping the two images swaps the velocities and gives exactly the inverse map: inverse consistency
by construction, not only by a loss.

Loss (named parts, see :meth:`SymmetricRegistrationModule._loss_parts`)::

    sim            sim(fixed at the midpoint, moving at the midpoint)
    sim_forward    sim(fixed, warp(moving, forward))     } weight full_sim_weight (0: not computed)
    sim_backward   sim(moving, warp(fixed, backward))    }
    orientation    mean relu(-det J(u_f)) + mean relu(-det J(u_m))   (orientation consistency)
    magnitude      mean over voxels of |v_f + v_m|^2                 (keeps the halves opposite)
    reg            reg(v_f) + reg(v_m)                               (smoothness, weight reg_weight)
    dice_loss, dice_loss_reverse   Dice of the forward / backward warped one-hot labels (dice_weight)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from losses import dice_loss
from models.specs import built
from models.module import RegistrationModule
from spatial import as_float32, compose, float32_region, integrate, jacobian_determinant, resize_field, warp

__all__ = ["SymmetricNet", "SymmetricRegistrationModule", "symmetric_maps", "SYMMETRIC_LOSS_DEFAULTS"]

# loss weights of the symmetric method, accepted under ``model.loss`` beside the shared keys
SYMMETRIC_LOSS_DEFAULTS = {
    "full_sim_weight": 1.0,      # forward and backward full-warp similarities (0: midpoint only)
    "orientation_weight": 1000.0,  # mean relu(-det J) of the half maps
    "magnitude_weight": 0.1,     # mean |v_f + v_m|^2
}


def symmetric_maps(
    v_f: torch.Tensor, v_m: torch.Tensor, steps: int = 7, full: bool = True
) -> dict[str, torch.Tensor]:
    """Displacements of the symmetric model from its two half velocities.

    Args:
        v_f, v_m: ``(B, D, *S)`` stationary velocities of the fixed and the moving half maps
            (voxel units, on the same grid).
        steps: scaling-and-squaring steps (:func:`spatial.integrate`).
        full: also return ``"backward"`` (moving -> fixed); ``"forward"`` is always returned.

    Returns:
        ``{"half_fixed": exp(v_f), "half_moving": exp(v_m), "forward": psi_m o psi_f^-1,
        "backward": psi_f o psi_m^-1}``, each ``(B, D, *S)``:
        ``forward = compose(exp(v_m), exp(-v_f))``, ``backward = compose(exp(v_f), exp(-v_m))``.
    """
    if v_f.shape != v_m.shape:
        raise ValueError(f"symmetric_maps() 'v_f' and 'v_m' differ in shape: {tuple(v_f.shape)} vs {tuple(v_m.shape)}")
    u_f, u_m = integrate(v_f, steps), integrate(v_m, steps)
    out = {"half_fixed": u_f, "half_moving": u_m, "forward": compose(u_m, integrate(-v_f, steps))}
    if full:
        out["backward"] = compose(u_f, integrate(-v_m, steps))
    return out


class SymmetricNet(nn.Module):
    """Runs a network ``backbone(moving, fixed) -> (B, D, *S)`` on both orders with shared weights.

    ``forward(moving, fixed) -> (B, 2D, *S)`` = ``cat([v_f, v_m], 1)`` with
    ``v_f = backbone(fixed, moving)`` (the fixed image's half velocity) and
    ``v_m = backbone(moving, fixed)``; the two orders run as one batch of ``2B``. Swapping the
    inputs swaps ``v_f`` and ``v_m``. ``multiple`` is the backbone's.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"SymmetricNet 'backbone' must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone

    @property
    def multiple(self) -> int:
        return int(getattr(self.backbone, "multiple", 1))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        b, ndim = moving.shape[0], moving.dim() - 2
        out = self.backbone(torch.cat([fixed, moving], 0), torch.cat([moving, fixed], 0))
        if out.shape[1] != ndim:
            raise ValueError(
                f"SymmetricNet 'backbone' must return one channel per spatial axis ({ndim}), got {tuple(out.shape)}"
            )
        return torch.cat([out[:b], out[b:]], 1)


class SymmetricRegistrationModule(RegistrationModule):
    """SymNet-style symmetric, inverse-consistent diffeomorphic registration.

    The network (any project network, wrapped in :class:`SymmetricNet` unless it already is one)
    predicts the two half velocities ``(B, 2D, *S)`` on its grid (``S // downsize``);
    :meth:`register` (the base class's, through :meth:`to_displacement`) returns the integrated forward displacement
    fixed -> moving ``compose(exp(v_m), exp(-v_f))`` at full resolution, never a velocity.
    The loss is in the module docstring; its extra weights live under ``model.loss``
    (:data:`SYMMETRIC_LOSS_DEFAULTS`). Everything else (padding, downsize, ``loss_grid``,
    validation, test and the results contract) is :class:`RegistrationModule`'s.

    ``field`` must be ``"velocity"``; ``bidirectional`` and ``loss.inverse_consistency_weight``
    do not apply (the method is symmetric and inverse consistent by construction) and must stay
    off.
    """

    EXTRA_LOSS_WEIGHTS = SYMMETRIC_LOSS_DEFAULTS

    def __init__(
        self,
        net: nn.Module | None = None,
        method: str = "symnet",
        field: str = "velocity",
        loss: Mapping[str, Any] | None = None,
        bidirectional: bool = False,
        **kwargs: Any,
    ) -> None:
        if field != "velocity":
            raise ValueError(
                f"model.field must be 'velocity' for SymmetricRegistrationModule (it predicts two "
                f"stationary velocities), got {field!r}"
            )
        if bidirectional is True:
            raise ValueError("model.bidirectional must be false for SymmetricRegistrationModule "
                             "(it trains both directions by construction)")
        if net is None:
            raise ValueError("model.net must be a network for SymmetricRegistrationModule, got None")
        net_obj = built(net)  # a spec (from the config or a checkpoint's hyper-parameters) or the net
        if not isinstance(net_obj, SymmetricNet):
            net_obj = SymmetricNet(net_obj)
        super().__init__(net=net_obj, method=method, field="velocity", loss=loss, bidirectional=bidirectional, **kwargs)
        if self.loss_cfg["inverse_consistency_weight"] != 0:
            raise ValueError("model.loss.inverse_consistency_weight must be 0 for SymmetricRegistrationModule "
                             "(its forward and backward maps are inverse by construction)")

    # ------------------------------------------------------------------ fields
    @staticmethod
    def half_velocities(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2D, *S)`` network output -> ``(v_f, v_m)``, each ``(B, D, *S)``."""
        ndim = out.dim() - 2
        if out.shape[1] != 2 * ndim:
            raise ValueError(
                f"SymmetricRegistrationModule expects the net to output 2*{ndim} channels (v_f, v_m), "
                f"got {tuple(out.shape)}"
            )
        return out[:, :ndim], out[:, ndim:]

    def to_displacement(self, out: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Network output (two half velocities) -> the forward displacement fixed -> moving
        ``compose(exp(v_m), exp(-v_f))`` on grid ``shape`` (the network's grid when None)."""
        out = as_float32(out)
        with float32_region(out):  # as RegistrationModule.to_displacement: float32, autocast off
            v_f, v_m = self.half_velocities(out)
            u = symmetric_maps(v_f, v_m, self.integration_steps, full=False)["forward"]
            return u if shape is None else resize_field(u, shape)

    def inverse_displacement(self, out: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """The backward map moving -> fixed ``compose(exp(v_f), exp(-v_m))``: the forward map with the
        half velocities swapped (its exact inverse by construction)."""
        v_f, v_m = self.half_velocities(out)
        return self.to_displacement(torch.cat([v_m, v_f], dim=1), shape)

    # ------------------------------------------------------------------ training
    def _loss_parts(
        self, batch: Mapping[str, Any], out: torch.Tensor, u: torch.Tensor | None = None,
        grid_factor: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named parts (module docstring). Similarities and Dice are computed on the full grid
        (``loss_grid="full"``, fields upsampled) or the network's grid (``"coarse"``); the
        orientation, magnitude and smoothness terms always on the network's grid. ``u`` is
        not needed (the maps are recomputed together); ``grid_factor`` is not supported."""
        if grid_factor is not None:
            raise NotImplementedError("SymmetricRegistrationModule computes its loss on the full or the network's grid only")
        out = as_float32(out)
        with float32_region(out):  # as RegistrationModule._loss_parts: float32, autocast off
            return self._symmetric_parts(batch, out)

    def _symmetric_parts(self, batch: Mapping[str, Any], out: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.loss_cfg
        coarse = self.loss_grid == "coarse" and self.downsize > 1
        v_f, v_m = self.half_velocities(out)
        full = cfg["full_sim_weight"] > 0 or cfg["dice_weight"] > 0
        maps = symmetric_maps(v_f, v_m, self.integration_steps, full=full)
        if coarse:
            fixed, moving = self._coarse(batch["fixed"]), self._coarse(batch["moving"])
            fields = maps
        else:
            fixed, moving = batch["fixed"], batch["moving"]
            fields = {k: resize_field(w, fixed.shape[2:]) for k, w in maps.items()}
        parts = {"sim": self.similarity(warp(fixed, fields["half_fixed"]), warp(moving, fields["half_moving"]))}
        loss = parts["sim"]
        if cfg["full_sim_weight"] > 0:
            parts["sim_forward"] = self.similarity(fixed, warp(moving, fields["forward"]))
            parts["sim_backward"] = self.similarity(moving, warp(fixed, fields["backward"]))
            loss = loss + cfg["full_sim_weight"] * (parts["sim_forward"] + parts["sim_backward"])
        parts["orientation"] = sum(
            F.relu(-jacobian_determinant(maps[k])).mean() for k in ("half_fixed", "half_moving")
        )
        parts["magnitude"] = (v_f + v_m).pow(2).sum(dim=1).mean()
        parts["reg"] = self.regularise(v_f, self.downsize) + self.regularise(v_m, self.downsize)
        loss = (loss + cfg["orientation_weight"] * parts["orientation"]
                + cfg["magnitude_weight"] * parts["magnitude"] + cfg["reg_weight"] * parts["reg"])
        if cfg["dice_weight"] > 0:
            moving_oh, fixed_oh = self._label_maps(batch, self.downsize if coarse else 1)
            parts["dice_loss"] = dice_loss(warp(moving_oh, fields["forward"]), fixed_oh)
            parts["dice_loss_reverse"] = dice_loss(warp(fixed_oh, fields["backward"]), moving_oh)
            loss = loss + cfg["dice_weight"] * (parts["dice_loss"] + parts["dice_loss_reverse"])
        parts["loss"] = loss
        return parts
