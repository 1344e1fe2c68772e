"""Logger factories used by ``configs/logger/*.yaml``.

W&B is the dashboard. With no credentials (no ``WANDB_API_KEY`` and no wandb login) or
``WANDB_MODE=offline`` the run is written offline under ``save_dir/wandb`` and can be
uploaded later with ``wandb sync <run dir>``.
"""

from __future__ import annotations

import os
from typing import Any


def wandb_has_credentials() -> bool:
    """True when wandb finds an API key (environment or ``~/.netrc``) and is not forced offline."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return auth is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(project: str = "registration", offline: str | bool = "auto", **kwargs: Any):
    """A Lightning ``WandbLogger``; ``offline="auto"`` goes offline without credentials."""
    from lightning.pytorch.loggers import WandbLogger

    if offline == "auto":
        offline = not wandb_has_credentials()
    save_dir = kwargs.get("save_dir")
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(project=project, offline=bool(offline), **kwargs)
