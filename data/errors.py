"""The data layer's error type, in a module of its own that imports nothing heavy (no nibabel):
the in-memory data path raises it where nibabel is not installed. :mod:`data.io` re-exports it."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data. The message names the file (or key) at fault and what was expected."""
