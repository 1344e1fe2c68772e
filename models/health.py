"""Training health and checkpoint hygiene of a :class:`models.module.RegistrationModule`: a non-finite
loss or weight stops the run with one line (:class:`NonFiniteError`), an optimiser built from
config names its key when it refuses a value, and a checkpoint holds only plain data (what
``torch.load(weights_only=True)`` reads back)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["NonFiniteError", "configured_call", "format_parts", "non_finite_names", "plain_data", "is_plain"]


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

