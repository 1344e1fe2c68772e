"""Classical instance optimisation (FireANTs-style affine, greedy and SyN) — issue "Classical".

Not implemented yet: this package is where ``register(fixed, moving, config)`` and the
``InstanceOptimisationModule(RegistrationModule)`` will live.
"""
