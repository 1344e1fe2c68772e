"""LapIRN's progressive coarse-to-fine training (Mok & Chung, MICCAI 2020) as a RegistrationModule.

:class:`LapIRNModule` differs from :class:`~models.module.RegistrationModule` only in training:

* **stages**: stage ``s`` (1 = coarsest level alone, ..., ``L`` = the whole pyramid) trains the
  first ``s`` levels of :class:`~models.networks.LapIRN`; ``stage_epochs[s - 2]`` is the epoch at
  which level ``s`` becomes active. The stage is a pure function of ``current_epoch``
  (:meth:`LapIRNModule.stage_at`), so a run resumed from a checkpoint resumes its stage.
* **freezing**: for the first ``freeze_epochs`` epochs of stage ``s > 1`` the coarser levels
  ``1 .. s-1`` are frozen (``requires_grad=False``, set at every epoch start), then all active
  levels train jointly.
* **stage loss at the stage's resolution**: in stage ``s < L`` the field of the finest active level
  is compared, on its own grid ``S // (downsize · 2**(L - s))``, with the images (and soft labels)
  downsampled there, through the shared loss code (:meth:`RegistrationModule._loss_parts`, as with
  ``loss_grid="coarse"``): similarity + ``reg_weight`` · smoothness (+ ``dice_weight`` · Dice).
  The last stage is the shared full-model loss (at full resolution unless ``loss_grid="coarse"``).

Validation, test and :meth:`register` always use the whole pyramid's final displacement
through the shared code, whatever the stage. ``train/stage`` is logged every epoch.

**cLapIRN** (Mok & Chung, MICCAI 2021; ``model.net.conditional=true``, ``model=clapirn``): every
training step draws one regularisation code ``λ ~ U(0, 1)`` for its batch; the network is
conditioned on it and the step's smoothness weight is ``λ · model.loss.reg_weight`` (the largest
weight). Validation, test and :meth:`register` use ``model.reg_code`` (``eval.py reg_code=...``
changes it for a checkpoint; ``summary.json`` records it), so one trained network gives the whole
range of smoothness.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from data.plain import to_plain
from models.specs import built
from models.module import RegistrationModule
from models.networks import pad_to_multiple
from spatial import as_float32, resize_field

__all__ = ["LapIRNModule"]


class LapIRNModule(RegistrationModule):
    """Progressive coarse-to-fine training of a :class:`~models.networks.LapIRN` (see module docstring).

    Args:
        net: a network with ``levels``, ``field``, ``multiple`` and
            ``forward(moving, fixed, active_levels=None, upsample=True)`` (a ``LapIRN``).
        stage_epochs: ``L - 1`` non-decreasing epochs ``[e_2, ..., e_L]``: level ``k`` joins at
            epoch ``e_k`` (0-based epochs). ``[0, 0]`` trains the whole pyramid from the start.
        freeze_epochs: epochs the coarser levels stay frozen after a level joins (0: never).
        field: must equal ``net.field`` (``None``: taken from the net), as the network sums
            velocities itself and this module integrates the total.
        integration_steps: ``None``: taken from the net.
        reg_code: the code ``λ`` in [0, 1] of validation, test and :meth:`register` for a
            conditional net (cLapIRN; required there, refused otherwise).
        method: name in results (default ``"lapirn"``); other keyword arguments go to
            :class:`~models.module.RegistrationModule` (loss, optimizer, downsize, ...).
    """

    def __init__(
        self,
        net: nn.Module,
        stage_epochs: Sequence[int] = (4, 8),
        freeze_epochs: int = 1,
        method: str = "lapirn",
        field: str | None = None,
        integration_steps: int | None = None,
        reg_code: float | None = None,
        **kwargs: Any,
    ) -> None:
        net_obj = built(net)  # a spec (from the config or a checkpoint's hyper-parameters) or the net
        for attr in ("levels", "field", "multiple"):
            if not hasattr(net_obj, attr):
                raise ValueError(f"LapIRNModule 'net' must be a LapIRN-like network with '{attr}', "
                                 f"got {type(net_obj).__name__}")
        if field is not None and field != net_obj.field:
            raise ValueError(f"model.field={field!r} but model.net.field={net_obj.field!r}: LapIRN adds its "
                             "levels' fields inside the network, so both must agree")
        if kwargs.get("bidirectional") and net_obj.field == "displacement":
            # the reverse pass of a displacement net would run the whole pyramid on the full grid,
            # not the stage's; a velocity's reverse (-v) stays on the stage grid
            raise ValueError("model.bidirectional=true needs model.field=velocity for LapIRN (the coarse stages "
                             "train on their own grid; the reverse field is then exp(-v) on that grid)")
        steps = getattr(net_obj, "integration_steps", 7) if integration_steps is None else integration_steps
        super().__init__(net=net_obj, method=method, field=net_obj.field, integration_steps=steps, **kwargs)
        self.levels = int(net_obj.levels)
        stage_epochs = to_plain(stage_epochs)
        if (not isinstance(stage_epochs, (list, tuple)) or len(stage_epochs) != self.levels - 1
                or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in stage_epochs)
                or list(stage_epochs) != sorted(stage_epochs)):
            raise ValueError(f"model.stage_epochs must be {self.levels - 1} non-decreasing ints >= 0 (the epoch "
                             f"each finer level of the {self.levels}-level net joins), got {stage_epochs!r}")
        self.stage_epochs = tuple(int(e) for e in stage_epochs)
        if isinstance(freeze_epochs, bool) or not isinstance(freeze_epochs, int) or freeze_epochs < 0:
            raise ValueError(f"model.freeze_epochs must be an int >= 0, got {freeze_epochs!r}")
        self.freeze_epochs = freeze_epochs
        self.conditional = bool(getattr(net_obj, "conditional", False))
        self._step_code: float | None = None  # the code drawn for the current training step
        self.reg_code: float | None = None
        self.set_reg_code(reg_code)

    # ------------------------------------------------------------------ cLapIRN's code
    def set_reg_code(self, value: float | None) -> None:
        """The code of validation, test and :meth:`register` (recorded in the hyper-parameters, so a
        result of another code is never reused as this one's); ValueError naming ``model.reg_code``."""
        if not self.conditional:
            if value is not None:
                raise ValueError(f"model.reg_code={value!r} is for a conditional LapIRN (model.net.conditional=true, "
                                 "model=clapirn); this net is not conditional")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"model.reg_code must be a number in [0, 1] for a conditional LapIRN (cLapIRN: the "
                             f"smoothness weight is reg_code x model.loss.reg_weight), got {value!r}")
        self.reg_code = float(value)
        self.hparams["reg_code"] = self.reg_code

    def _code(self) -> float | None:
        return self._step_code if self._step_code is not None else self.reg_code

    def net_kwargs(self) -> dict[str, Any]:
        return {"reg_code": self._code()} if self.conditional else {}

    def step_reg_weight(self) -> float:
        weight = super().step_reg_weight()
        return weight * self._code() if self.conditional else weight

    def test_settings(self) -> dict[str, Any]:
        return {"reg_code": self.reg_code} if self.conditional else {}

    # ------------------------------------------------------------------ schedule
    def stage_at(self, epoch: int) -> int:
        """Stage (= number of active levels, 1..L) at 0-based ``epoch``."""
        return 1 + sum(int(epoch) >= e for e in self.stage_epochs)

    def frozen_levels_at(self, epoch: int) -> list[int]:
        """0-based levels frozen at ``epoch``: the coarser ones during a stage's first ``freeze_epochs``."""
        stage = self.stage_at(epoch)
        if stage == 1 or int(epoch) >= self.stage_epochs[stage - 2] + self.freeze_epochs:
            return []
        return list(range(stage - 1))

    @property
    def stage(self) -> int:
        """The stage of the current epoch (``current_epoch`` is 0 without a trainer)."""
        return self.stage_at(self.current_epoch)

    def apply_schedule(self, epoch: int) -> None:
        """``requires_grad`` of every level for ``epoch``: False on the frozen levels, True elsewhere
        (inactive finer levels get no gradient anyway, so the optimiser leaves them unchanged)."""
        frozen = set(self.frozen_levels_at(epoch))
        for k, level in enumerate(self.net.level_nets):
            for p in level.parameters():
                p.requires_grad_(k not in frozen)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        epoch = self.current_epoch
        self.apply_schedule(epoch)
        self.log("train/stage", float(self.stage_at(epoch)), on_step=False, on_epoch=True, batch_size=1)

    def configure_optimizers(self):
        # every level belongs to the optimiser, whatever was frozen when it is built (a resumed run)
        for p in self.parameters():
            p.requires_grad_(True)
        return super().configure_optimizers()

    # ------------------------------------------------------------------ stage loss
    def stage_factor(self, stage: int) -> int:
        """Downsampling of the full images to stage ``stage``'s grid: ``downsize · 2**(L - stage)``."""
        return self.downsize * 2 ** (self.levels - stage)

    def stage_output(self, moving: torch.Tensor, fixed: torch.Tensor, stage: int) -> torch.Tensor:
        """Network output (velocity or displacement) of the first ``stage`` levels on the stage's
        grid ``S // stage_factor(stage)``, ``(B, D, *grid)``; ``stage = L`` is :meth:`forward`."""
        if stage == self.levels:
            return self(moving, fixed)
        grid = tuple(s // self.stage_factor(stage) for s in fixed.shape[2:])
        moving, fixed = self._coarse(moving), self._coarse(fixed)
        if any(s % self.net.multiple for s in moving.shape[2:]):
            # padded input: the pyramid's coarse grids do not line up with the cropped one; bring the
            # field to the cropped network grid, then to the stage grid
            moving, crop = pad_to_multiple(moving, self.net.multiple)
            fixed, _ = pad_to_multiple(fixed, self.net.multiple)
            return resize_field(as_float32(self.net(moving, fixed, active_levels=stage, **self.net_kwargs())[crop]),
                                grid)
        out = as_float32(self.net(moving, fixed, active_levels=stage, upsample=False, **self.net_kwargs()))
        if tuple(out.shape[2:]) != grid:  # cannot happen for sizes divisible by the multiple
            raise RuntimeError(f"LapIRNModule stage {stage} grid {tuple(out.shape[2:])} != expected {grid}")
        return out

    def compute_loss(self, batch: Mapping[str, Any], stage: int | None = None) -> dict[str, torch.Tensor]:
        """Named loss parts of stage ``stage`` (``None``: the current epoch's) at its resolution."""
        stage = self.stage if stage is None else int(stage)
        if not 1 <= stage <= self.levels:
            raise ValueError(f"LapIRNModule.compute_loss() 'stage' must be in [1, {self.levels}], got {stage}")
        if self.conditional and self.training:  # cLapIRN: one code per step, drawn from the seeded torch RNG
            self._step_code = float(torch.rand(()))
        try:
            if stage == self.levels:
                parts = super().compute_loss(batch)
            else:
                out = self.stage_output(batch["moving"], batch["fixed"], stage)
                parts = self._loss_parts(batch, out, grid_factor=self.stage_factor(stage))
            if self.conditional:
                parts["reg_code"] = torch.tensor(self._code(), dtype=torch.float64)
            return parts
        finally:
            self._step_code = None
