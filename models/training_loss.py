"""The training loss of :class:`models.module.RegistrationModule`, composed from its loss config
(``model.loss``): similarity + ``reg_weight`` x regulariser (the step's weight: ``step_reg_weight``),
the reverse direction and inverse consistency for a bidirectional model, a Dice loss on the
labels when ``dice_weight > 0``; in float32 with autocast off (:mod:`spatial.precision`), on the
full or the network's coarse grid."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from losses import compact_labels, dice_loss, one_hot
from spatial import as_float32, compose, float32_region, warp

__all__ = ["TrainingLoss"]


class TrainingLoss:
    """Mixin of :class:`models.module.RegistrationModule`: the loss parts of one batch. It reads the
    module's ``similarity``, ``regulariser``, ``loss_cfg``, ``step_reg_weight``, ``field``,
    ``bidirectional``, ``downsize``, ``loss_grid``, ``to_displacement`` and ``_coarse``."""

    def compute_loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss parts: ``loss, sim, reg`` and ``dice_loss`` when labels supervise."""
        return self._loss_parts(batch, self(batch["moving"], batch["fixed"]))

    def _loss_parts(
        self, batch: Mapping[str, Any], out: torch.Tensor, u: torch.Tensor | None = None,
        grid_factor: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss parts from the network output ``out`` (and its full-resolution displacement
        ``u`` when already computed); with ``loss_grid="coarse"`` the coarse displacement and
        images downsampled to the network's grid are compared instead. ``grid_factor``: compare
        on ``S // grid_factor``, where ``out`` lives (a coarse training stage, e.g. LapIRN's)."""
        out_rev = None
        if self.bidirectional and self.field != "velocity":  # the reverse pass, at the forward pass's precision
            out_rev = as_float32(self(batch["fixed"], batch["moving"]))
        out = as_float32(out)  # the loss of a mixed-precision step: float32, autocast off (spatial.precision)
        with float32_region(out):
            return self._loss_parts_float32(batch, out, u, grid_factor, out_rev)

    def _loss_parts_float32(self, batch: Mapping[str, Any], out: torch.Tensor, u: torch.Tensor | None,
                            grid_factor: int | None, out_rev: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        factor = grid_factor if grid_factor is not None else (self.downsize if self.loss_grid == "coarse" else 1)
        coarse = factor > 1
        if coarse:
            u = self.to_displacement(out)
        elif u is None:
            u = self.to_displacement(out, batch["fixed"].shape[2:])
        fixed = self._coarse(batch["fixed"], factor)
        moving = self._coarse(batch["moving"], factor)
        moved = warp(moving, u)
        out_factor = grid_factor if grid_factor is not None else self.downsize  # the grid `out` lives on
        parts = {"sim": self.similarity(fixed, moved), "reg": self.regularise(out, out_factor)}
        reg_weight = self.step_reg_weight()
        if not self.bidirectional:
            loss = parts["sim"] + reg_weight * parts["reg"]
        else:  # each direction's term weighs one half (diffeomorphic VoxelMorph's 0.5 / 0.5), so one
            # reg_weight means the same smoothness against the image match with or without the reverse
            u_rev, reverse = self._reverse_parts(batch, out, u, fixed, moving, coarse, out_rev)
            parts.update(reverse)
            reg = parts["reg"] if "reg_reverse" not in parts else 0.5 * (parts["reg"] + parts["reg_reverse"])
            loss = (0.5 * (parts["sim"] + parts["sim_reverse"]) + reg_weight * reg
                    + self.loss_cfg["inverse_consistency_weight"] * parts["inverse_consistency"])
        if self.loss_cfg["dice_weight"] > 0:
            moving_oh, fixed_oh = self._label_maps(batch, factor)
            parts["dice_loss"] = dice_loss(warp(moving_oh, u), fixed_oh)
            dice = parts["dice_loss"]
            if self.bidirectional:
                parts["dice_loss_reverse"] = dice_loss(warp(fixed_oh, u_rev), moving_oh)
                dice = 0.5 * (dice + parts["dice_loss_reverse"])
            loss = loss + self.loss_cfg["dice_weight"] * dice
        parts["loss"] = loss
        return parts

    def regularise(self, out: torch.Tensor, factor: int) -> torch.Tensor:
        """The regulariser of a network output on the grid ``S // factor``, in full-resolution
        units: divided by ``factor ** grid_power`` (:class:`losses.regularisers.Diffusion`), so
        the bending energy of one physical field, and with it ``reg_weight``, does not grow with
        ``model.downsize`` or a coarse stage (diffusion is grid-free)."""
        return self.regulariser(out) / float(factor) ** self.regulariser.grid_power

    def _label_maps(self, batch: Mapping[str, Any], factor: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot ``(moving, fixed)`` label maps for a Dice loss (soft maps on ``S // factor``
        when ``factor > 1``); one clear error when the batch has no labels."""
        if "moving_label" not in batch or "fixed_label" not in batch:
            raise ValueError(
                "model.loss.dice_weight > 0 needs labels, but the batch has no 'fixed_label'/'moving_label'; "
                "use a dataset with labels or set model.loss.dice_weight=0"
            )
        # sparse ids ({0, 7, 40000}) -> contiguous channels over fixed and moving together: the
        # channels absent from both are all zero and masked out of the Dice loss, so the loss equals
        # the dense one-hot's on K + 1 channels instead of max id + 1
        ids, (moving_idx, fixed_idx) = compact_labels(batch["moving_label"], batch["fixed_label"])
        n = int(ids.numel())
        moving_oh, fixed_oh = one_hot(moving_idx, n), one_hot(fixed_idx, n)
        return self._coarse(moving_oh, factor), self._coarse(fixed_oh, factor)

    def _reverse_parts(
        self, batch: Mapping[str, Any], out: torch.Tensor, u: torch.Tensor, fixed: torch.Tensor,
        moving: torch.Tensor, coarse: bool, out_rev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``bidirectional``: the reverse displacement ``u_mf`` (moving -> fixed, on ``u``'s grid)
        and the parts ``sim_reverse``, ``inverse_consistency`` (+ ``reg_reverse`` for a
        displacement net, whose reverse field is a second pass ``net(fixed, moving)``: ``out_rev``,
        run by :meth:`_loss_parts` before autocast is turned off, at the forward pass's precision)."""
        parts = {}
        if self.field == "velocity":
            out_rev = -out  # exp(-v) is the inverse of exp(v)
        else:
            if out_rev is None:
                out_rev = self(batch["fixed"], batch["moving"])
            parts["reg_reverse"] = self.regularise(out_rev, self.downsize)
        u_rev = self.to_displacement(out_rev, None if coarse else batch["moving"].shape[2:])
        parts["sim_reverse"] = self.similarity(moving, warp(fixed, u_rev))
        ic = [compose(u, u_rev), compose(u_rev, u)]  # moving -> fixed -> moving, and the other way
        parts["inverse_consistency"] = 0.5 * sum(w.pow(2).sum(dim=1).mean() for w in ic)
        return u_rev, parts
