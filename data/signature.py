"""Signatures of a pair's inputs: what a result was computed from, so a rerun reuses it only
when nothing changed (:class:`app.results.ResultsWriter`).

Every pair dataset puts ``pair_signature`` (a str, :func:`signature` of a description) in its
items: for files the resolved paths, sizes and modification times of the fixed, moving and label
files plus the preprocessing / normalisation settings; for generated subjects the generator's
settings, the files it reads (the MNI template's) and the subject indices. The preprocessing cache (:mod:`data.preprocess`) keys its
entries by the same :func:`file_signature`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["file_signature", "file_identity", "signature", "code_signature", "source_signature", "CODE_PACKAGES"]

# the packages whose code computes a pair's numbers (its inputs, the warp, the method, the metrics) and
# writes them (app: evaluation, results files, moved volumes)
CODE_PACKAGES = ("data", "spatial", "classical", "models", "metrics", "losses", "app")


def _sidecars(path: Path) -> list[Path]:
    """Every other file nibabel reads for the image at ``path``: for one half of an Analyze /
    NIfTI pair, the other half, then SPM's ``x.mat`` (``x.mat.gz``, ``x.MAT``) beside it, whose matrix
    replaces the header's voxel-to-world map when it exists (nibabel's SPM Analyze reader: it can flip
    an axis), so creating, editing or deleting it changes what is read; none for a single-file format."""
    name = path.name
    for a, b in ((".img", ".hdr"), (".hdr", ".img"), (".IMG", ".HDR"), (".HDR", ".IMG")):
        for gz in ("", ".gz", ".GZ"):
            if name.endswith(a + gz):
                stem = name[: -len(a + gz)]
                mat = ".MAT" if a.isupper() else ".mat"
                return [path.with_name(stem + b + gz), path.with_name(stem + mat + gz)]
    return []


def _one_file(path: Path) -> list:
    try:
        st = path.stat()
    except OSError:
        return [str(path.absolute()), None, None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_signature(path: str | os.PathLike | None) -> list:
    """``[resolved path, size, mtime_ns, ctime_ns]`` of a file (``[absolute path, None, None, None]``
    when it cannot be read; ``[None]`` for no file): changes when the file is replaced or rewritten,
    also by a copy that keeps the old modification time (``cp -p``, ``rsync -t``, ``touch -r``: the
    status-change time ``ctime`` cannot be set back, so an uncompressed file of the same size
    rewritten that way is not taken for the old one). For one half of an Analyze / NIfTI pair
    (``.img`` + ``.hdr``) the other half's four follow, then those of SPM's ``.mat`` beside them
    (absent: path and None), so a header edited in place (orientation, voxel size) or a ``.mat``
    created, edited or removed changes it too."""
    if path is None:
        return [None]
    path = Path(path)
    return [value for p in (path, *_sidecars(path)) for value in _one_file(p)]


def file_identity(path: str | os.PathLike | None) -> list:
    """``[file name, size]`` of a file (size None when it cannot be read; ``[None]`` for no file),
    and those of its Analyze / NIfTI-pair half and SPM ``.mat`` (:func:`file_signature`): what stays the same when a dataset is moved or copied
    to another folder, unlike :func:`file_signature`'s path and modification time."""
    if path is None:
        return [None]
    out = []
    for p in (Path(path), *_sidecars(Path(path))):
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        out += [p.name, size]
    return out


def signature(description: Any) -> str:
    """SHA-256 (hex) of ``description`` as canonical JSON (sorted keys; other objects by ``repr``)."""
    text = json.dumps(description, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_signature(root: str | os.PathLike | None = None) -> str:
    """SHA-256 (hex) of the Python sources of :data:`CODE_PACKAGES` under ``root`` (default: this
    project), path and bytes of each ``.py`` file in sorted order: any edit of the code that makes
    a result (a fixed bug in a method, another generator) changes it, so a resumed run never mixes
    pairs computed by two versions of the code. Computed once per process and root."""
    base = Path(__file__).resolve().parents[1] if root is None else Path(root).resolve()
    return _code_digest(str(base))


@functools.lru_cache(maxsize=4)
def _code_digest(base: str) -> str:
    root = Path(base)
    return _digest(root, [path for package in CODE_PACKAGES for path in sorted((root / package).rglob("*.py"))])


@functools.lru_cache(maxsize=16)
def source_signature(*files: str) -> str:
    """SHA-256 (hex) of the given source files of this project (paths relative to its root, e.g.
    ``"data/preprocess.py"``): for a cache whose entries depend on a few modules only."""
    root = Path(__file__).resolve().parents[1]
    return _digest(root, [root / f for f in files])


def _digest(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
