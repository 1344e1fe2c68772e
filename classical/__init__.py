"""Classical instance optimisation written from the FireANTs paper (affine, greedy, SyN).

Plain API: :func:`register` ``(fixed, moving, config) -> RegistrationResult``; the Lightning
side: :class:`InstanceOptimisationModule` (``python eval.py model=greedy ...``).
"""

from classical.api import RegistrationResult, register
from classical.config import AffineConfig, GreedyConfig, SyNConfig
from classical.module import InstanceOptimisationModule
# external tools (ANTs, SimpleITK): optional extras imported only when a model is built
from classical.external import AntsSyNRegistration, DemonsRegistration

__all__ = [
    "register",
    "RegistrationResult",
    "AffineConfig",
    "GreedyConfig",
    "SyNConfig",
    "InstanceOptimisationModule",
    "AntsSyNRegistration",
    "DemonsRegistration",
]
