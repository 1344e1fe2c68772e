"""Methods as LightningModules: the shared :class:`RegistrationModule` and its networks.

The names below load their module on first use (PEP 562), as ``data``'s and ``app``'s do:
``from models.evaluation import warp_label`` or ``from models.evaluation import PARADIGMS`` in an
analysis script does not import Lightning until a LightningModule is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_HOMES = {
    "RegistrationModule": "models.module",
    "IdentityRegistration": "models.module",
    "LapIRNModule": "models.lapirn",
    "SymmetricRegistrationModule": "models.symmetric",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
