"""Methods as LightningModules: the shared :class:`RegistrationModule` and its networks."""

from models.lapirn import LapIRNModule
from models.module import IdentityRegistration, RegistrationModule
from models.symmetric import SymmetricRegistrationModule

__all__ = ["RegistrationModule", "IdentityRegistration", "LapIRNModule", "SymmetricRegistrationModule"]
