"""Config values as plain Python containers, without importing nibabel (:mod:`data.io`
re-exports :func:`to_plain`; models and classical import it from here)."""

from __future__ import annotations

from typing import Any

__all__ = ["to_plain"]


def to_plain(value: Any) -> Any:
    """Hydra/OmegaConf ``DictConfig``/``ListConfig`` -> plain Python containers (resolved);
    anything else unchanged. Constructors built by Hydra call it on nested config values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - OmegaConf absent: no config objects to convert
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
