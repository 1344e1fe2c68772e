"""Methods as LightningModules: the shared :class:`RegistrationModule` and its networks.

The names below load their module on first use (PEP 562), as ``data``'s and ``app``'s do:
``from models.evaluation import warp_label`` or ``from models.evaluation import PARADIGMS`` in an
analysis script does not import Lightning until a LightningModule is asked for.
"""

from __future__ import annotations

from data.lazy import lazy_names

# name -> the module that defines it
_HOMES = {
    "RegistrationModule": "models.module",
    "IdentityRegistration": "models.module",
    "LapIRNModule": "models.lapirn",
    "SymmetricRegistrationModule": "models.symmetric",
}

__all__ = list(_HOMES)

__getattr__, __dir__ = lazy_names("models", _HOMES, globals())
