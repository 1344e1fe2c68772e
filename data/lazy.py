"""Names of a package loaded on first use (PEP 562), shared by ``data``, ``models`` and ``app``.

A package lists ``{name: the module that defines it}`` and takes its ``__getattr__`` and
``__dir__`` from :func:`lazy_names`: ``import data`` or ``from app import guarded`` then imports
only what is asked for (no nibabel for in-memory data, no Lightning before a command line is
checked). A lazy name must not also be a submodule's name (``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose globals are ``namespace``: a name of ``homes``
    is imported from its module on first use and kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # once
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
