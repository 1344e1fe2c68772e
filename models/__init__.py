"""Methods as LightningModules: the shared :class:`RegistrationModule` and its networks."""

from models.module import IdentityRegistration, RegistrationModule

__all__ = ["RegistrationModule", "IdentityRegistration"]
