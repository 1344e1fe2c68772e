"""Signatures of a pair's inputs: what a result was computed from, so a rerun reuses it only
when nothing changed (:class:`app.results.ResultsWriter`).

Every pair dataset puts ``pair_signature`` (a str, :func:`signature` of a description) in its
items: for files the resolved paths, sizes and modification times of the fixed, moving and label
files plus the preprocessing / normalisation settings; for generated subjects the generator's
settings and the subject indices. The preprocessing cache (:mod:`data.preprocess`) keys its
entries by the same :func:`file_signature`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["file_signature", "signature"]


def file_signature(path: str | os.PathLike | None) -> list:
    """``[resolved path, size, mtime_ns]`` of a file (``[absolute path, None, None]`` when it
    cannot be read; ``[None]`` for no file): changes when the file is replaced or rewritten."""
    if path is None:
        return [None]
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return [str(path.absolute()), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def signature(description: Any) -> str:
    """SHA-256 (hex) of ``description`` as canonical JSON (sorted keys; other objects by ``repr``)."""
    text = json.dumps(description, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
