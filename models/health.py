"""Training health and checkpoint hygiene of a :class:`models.module.RegistrationModule`: a non-finite
loss or weight stops the run with one line (:class:`NonFiniteError`), an optimiser built from
config names its key when it refuses a value, and a checkpoint holds only plain data (what
``torch.load(weights_only=True)`` reads back)."""

from __future__ import annotations

import math

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from spatial import DISPLACEMENT_CONVENTION

__all__ = ["HealthChecks", "CHECKPOINT_FORMAT", "NonFiniteError", "configured_call", "format_parts", "non_finite_names", "plain_data", "is_plain"]


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or non-finite weights: the run stops with this one line
    (the global step and the loss parts); such weights are never saved nor tested."""


def configured_call(factory: Callable[..., Any], args: Sequence[Any], key: str) -> Any:
    """``factory(*args)`` (an optimiser / scheduler built from config); its ``TypeError`` /
    ``ValueError`` becomes a ``ValueError`` naming the config key: ``"<key>.lr: Invalid learning
    rate: -1"`` when exactly one configured value appears in the message, else ``"<key>: ..."``."""
    try:
        return factory(*args)
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        values = dict(getattr(factory, "keywords", None) or {})
        named = [k for k, v in values.items() if str(v) in message]
        where = f"{key}.{named[0]}" if len(named) == 1 else key
        raise ValueError(f"{where}: {message}") from None


def format_parts(parts: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items() if k != "loss")


def non_finite_names(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a ``state_dict``) that hold NaN or inf."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist()
    return [k for k, ok in zip(tensors, flags) if not ok]


def plain_data(value: Any, where: str) -> Any:
    """``value`` as the types a weights-only ``torch.load`` accepts (tensors, numbers, strings, None,
    dtypes, lists, tuples, dicts); OmegaConf containers, paths and numpy values are converted; a
    ``ValueError`` naming ``where`` for anything else."""
    from collections import OrderedDict
    from pathlib import PurePath

    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.Size,
                                           torch.device)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    try:
        from omegaconf import Container, OmegaConf

        if isinstance(value, Container):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, OrderedDict):
        return OrderedDict((k, plain_data(v, f"{where}/{k}")) for k, v in value.items())
    if isinstance(value, dict):
        return {k: plain_data(v, f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else set(items) if isinstance(value, set) else items
    raise ValueError(f"checkpoint entry {where} holds a {type(value).__module__}.{type(value).__name__}, "
                     "which a weights-only checkpoint load refuses; store plain values (numbers, strings, "
                     "tensors, lists, dicts) instead")


def is_plain(value: Any) -> bool:
    """Plain data or a spec (what a hyper-parameter may hold), not an object."""
    from models.specs import plain

    value = plain(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


# 2: the model is rebuilt from Lightning's hyper_parameters and registration.target;
# 1 (before): from registration.model_config, a resolved Hydra config (still read)
CHECKPOINT_FORMAT = 2


class HealthChecks:
    """Mixin of :class:`models.module.RegistrationModule`: a non-finite loss stops training before its
    update, non-finite weights after the step that made them, and a checkpoint is described and kept
    plain data. It reads the module's ``hparams``, ``method``, ``field``, ``global_step`` and trainer."""

    def _all_ranks(self, ok: bool) -> bool:
        """``ok`` on every DDP rank (each rank's loss differs: all stop together); ``ok`` alone without DDP."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(ok, all=True))
        return ok

    def _check_finite_loss(self, parts: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        """Stop before a non-finite loss reaches the weights: one error naming the global step,
        the pair and every loss part with its value."""
        loss = parts["loss"].detach()
        if self._all_ranks(bool(torch.isfinite(loss).all())):
            return
        pairs = ", ".join(f"{f} <- {m}" for f, m in zip(batch.get("fixed_id", []), batch.get("moving_id", [])))
        raise NonFiniteError(
            f"step {self.global_step}: loss is {float(loss):.4g} ({format_parts(parts)})"
            + (f" on pair {pairs}" if pairs else "")
            + "; training stopped before this step's update (lower model.optimizer.lr, set "
            "trainer.gradient_clip_val, or check the data)"
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimiser step: weights that became non-finite stop training at this step."""
        self.check_finite_weights(f"step {self.global_step}: the optimiser step made")

    def non_finite_weights(self, state: Mapping[str, torch.Tensor] | None = None) -> list[str]:
        """Names of the floating-point weights (``state``, default the module's) that hold NaN or inf."""
        return non_finite_names(self.state_dict() if state is None else state)

    def check_finite_weights(self, context: str, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """:class:`NonFiniteError` ``"<context> weights non-finite (<names>)"`` if any weight is NaN/inf.
        Local (no collective): DDP ranks hold the same weights."""
        bad = self.non_finite_weights(state)
        if bad:
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteError(f"{context} weights non-finite ({names}); they are not saved nor tested")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Describe the checkpoint (``registration``: the class whose ``hyper_parameters`` rebuild the
        model, the method, the field, the displacement convention) and
        keep it plain data that ``torch.load(weights_only=True)`` reads back: configs and paths
        become plain values; anything else that is not plain stops the save, naming its place.
        Non-finite weights are never saved (:class:`NonFiniteError`)."""
        self.check_finite_weights(f"step {self.global_step}: checkpoint not saved:", checkpoint.get("state_dict"))
        for key in list(checkpoint):
            if key != "state_dict":
                checkpoint[key] = plain_data(checkpoint[key], key)
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        training_inputs = getattr(datamodule, "training_inputs", None)
        checkpoint["registration"] = {
            "format": CHECKPOINT_FORMAT,
            "target": f"{type(self).__module__}.{type(self).__qualname__}",
            "hyper_parameters": plain_data(dict(self.hparams), "registration/hyper_parameters"),
            "method": self.method,
            "field": self.field,
            "displacement_convention": DISPLACEMENT_CONVENTION,
            # the voxel order of the data it was trained on (a network sees voxels, not world
            # space): eval.py refuses test data in another order; None when unknown
            "voxel_axes": getattr(datamodule, "voxel_axes", None),
            # how its images' intensities were brought to [0, 1] (data.normalize): eval.py refuses
            # test data normalised otherwise (app.checkpoints.check_trained_data); None when unknown
            "intensity_normalisation": getattr(datamodule, "intensity_normalisation", None),
            # what it was trained on (file names and sizes of the training and validation sets; None
            # for generated data): resuming under other data is refused (app.checkpoints)
            "training_inputs": plain_data(training_inputs() if callable(training_inputs) else None,
                                          "registration/training_inputs"),
            # the best validation Dice so far (val/dice_best), restored on resume: else the resumed
            # run logs the best of the epochs after the resume only
            "val_dice_best": (float(self._val_best) if math.isfinite(getattr(self, "_val_best", math.nan))
                              else None),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run's ``val/dice_best`` continues from the checkpoint's (see :meth:`on_save_checkpoint`)."""
        best = (checkpoint.get("registration") or {}).get("val_dice_best")
        if best is not None and math.isfinite(float(best)):
            self._val_best = max(getattr(self, "_val_best", -math.inf), float(best))
