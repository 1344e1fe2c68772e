"""Prepared volumes on demand: :func:`data.preprocess.load_source` + :func:`data.preprocess.preprocess`,
through an optional on-disk cache.

Cache (:class:`VolumeStore` with ``cache_dir``): each prepared volume is one uncompressed
``.npz`` in ``cache_dir/<config key>/``, where the key hashes the preprocessing config (and
``CACHE_VERSION``); the file name holds the volume id and a hash of the source files' paths,
sizes and modification times, so an edited source file or another config never reads a stale
entry. Files are written atomically (:mod:`data.files`: temporary file + ``os.replace``, with
the mode an ordinary new file gets), so DataLoader workers can fill the cache concurrently.
``cache_dir/<key>/config.json`` says which config made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from data.files import atomic_write_text, atomic_write_with
from data.preprocess import CACHE_VERSION, PreprocessConfig, Prepared, load_source, preprocess
from data.signature import file_signature as _file_signature  # one file signature: cache and results

__all__ = ["VolumeStore"]


def _label_dtype(label: np.ndarray) -> np.dtype:
    hi = int(label.max()) if label.size else 0
    for dt in (np.uint8, np.uint16, np.int32):
        if hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


class VolumeStore:
    """Prepared volumes on demand: load + :func:`preprocess`, through an optional disk cache.

    Args:
        config: the :class:`PreprocessConfig`.
        cache_dir: folder of the cache (created when first written), or None for no cache.
    """

    def __init__(self, config: PreprocessConfig, cache_dir: str | os.PathLike | None = None):
        self.config = config
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))

    @property
    def cache_folder(self) -> Path | None:
        """``cache_dir/<config key>``, or None without a cache."""
        return None if self.cache_dir is None else self.cache_dir / self.config.key()

    def cache_path(self, volume_id: str, image: Path, label: Path | None) -> Path | None:
        """Where the cache keeps this volume (None without a cache)."""
        if self.cache_folder is None:
            return None
        sig = json.dumps([_file_signature(image), _file_signature(label)])
        digest = hashlib.sha256(sig.encode()).hexdigest()[:16]
        return self.cache_folder / f"{_safe(volume_id)}-{digest}.npz"

    def cached(self, volume_id: str, image: Path, label: Path | None) -> bool:
        path = self.cache_path(volume_id, image, label)
        return path is not None and path.is_file()

    def get(self, volume_id: str, image: Path, label: Path | None) -> Prepared:
        """The prepared volume: from the cache when present, else loaded, preprocessed and cached."""
        path = self.cache_path(volume_id, image, label)
        if path is not None and path.is_file():
            prepared = self._read(path)
            if prepared is not None:
                return prepared
        img, lab = load_source(image, label)
        prepared = preprocess(img, lab, self.config)  # its errors name the file at fault
        if path is not None:
            self._write(path, prepared, volume_id, image, label)
        return prepared

    # --------------------------------------------------------------- cache files
    def _read(self, path: Path) -> Prepared | None:
        """A cache entry, or None when it is unreadable (then it is rebuilt and overwritten)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                label = z["label"].astype(np.int64) if "label" in z.files else None
                src = z["source_labels"] if "source_labels" in z.files else None
                kept = z["labels"] if "labels" in z.files else (None if label is None else np.unique(label))
                return Prepared(
                    image=z["image"],
                    label=label,
                    affine=z["affine"].astype(np.float64),
                    spacing=tuple(float(s) for s in z["spacing"]),
                    source_labels=None if src is None else tuple(int(v) for v in src),
                    source_shape=tuple(int(s) for s in z["source_shape"]),
                    source_spacing=tuple(float(s) for s in z["source_spacing"]),
                    labels=None if kept is None else tuple(int(v) for v in kept),
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def _write(self, path: Path, p: Prepared, volume_id: str, image: Path, label: Path | None) -> None:
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "config.json"
        if not config_file.exists():
            atomic_write_text(config_file, json.dumps({"version": CACHE_VERSION, **self.config.to_dict()}, indent=2))
        arrays = {
            "image": p.image.astype(np.float32, copy=False),
            "affine": p.affine,
            "spacing": np.asarray(p.spacing, dtype=np.float64),
            "source_shape": np.asarray(p.source_shape, dtype=np.int64),
            "source_spacing": np.asarray(p.source_spacing, dtype=np.float64),
        }
        if p.label is not None:
            arrays["label"] = p.label.astype(_label_dtype(p.label))
            arrays["source_labels"] = np.asarray(p.source_labels, dtype=np.int64)
            arrays["labels"] = np.asarray(p.labels if p.labels is not None else np.unique(p.label), dtype=np.int64)
        atomic_write_with(path, lambda tmp: _savez(tmp, arrays))


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # an open file: numpy adds no ".npz" to its name
        np.savez(fh, **arrays)
