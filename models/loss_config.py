"""What a ``model.loss`` mapping may hold: its keys, their defaults and their checks (one place,
shared by :class:`models.RegistrationModule` and its subclasses' extra loss weights)."""

from __future__ import annotations

from typing import Any, Mapping

from data.plain import to_plain

__all__ = ["LOSS_DEFAULTS", "loss_config"]

LOSS_DEFAULTS = {
    "sim": "lncc",
    "sim_kwargs": {},
    "reg": "diffusion",
    "reg_kwargs": {},
    "reg_weight": 1.0,
    "dice_weight": 0.0,
    "inverse_consistency_weight": 0.0,
}


def loss_config(cfg: Mapping[str, Any] | None, extra_weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fill a ``model.loss`` mapping with defaults and reject unknown keys (naming them).

    ``extra_weights``: the defaults of a subclass's own loss weights (e.g. the symmetric
    method's), accepted and checked like ``reg_weight``."""
    cfg = to_plain(cfg or {})
    defaults = {**LOSS_DEFAULTS, **(extra_weights or {})}
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"model.loss has unknown key(s) {unknown}; valid keys: {sorted(defaults)}")
    out = {**defaults, **cfg}
    out["sim_kwargs"] = dict(out["sim_kwargs"] or {})
    out["reg_kwargs"] = dict(out["reg_kwargs"] or {})
    for key in ("reg_weight", "dice_weight", "inverse_consistency_weight", *(extra_weights or {})):
        if isinstance(out[key], bool) or not isinstance(out[key], (int, float)) or out[key] < 0:
            raise ValueError(f"model.loss.{key} must be a number >= 0, got {out[key]!r}")
    return out
