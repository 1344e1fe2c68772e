"""Label mapping of the on-disk datasets: keep a subset of label ids, renumber them ``1..K``.

The mapping is applied to every label map a dataset item holds and saved as JSON next to
results (:meth:`LabelMapping.save`), so that result rows name which original label each id is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.files import atomic_write_text

__all__ = ["LabelMapping"]


class LabelMapping:
    """Keep a subset of label ids and/or renumber them ``1..K`` (background stays 0).

    Args:
        values: the foreground label ids kept (original ids; 0 is ignored), e.g. the union of
            the ids found in a dataset, or a configured subset.
        remap: renumber ``values`` in increasing order to ``1..K``; with ``False`` the kept
            ids keep their value.

    Ids not in ``values`` become 0. :attr:`num_labels` is ``K + 1`` with ``remap``, else
    ``max(values) + 1``.
    """

    def __init__(self, values: Sequence[int], remap: bool):
        kept = sorted({int(v) for v in values if int(v) != 0})
        if any(v < 0 for v in kept):
            raise ValueError(f"LabelMapping() label ids must be non-negative, got {kept}")
        self.values = kept
        self.remap = bool(remap)
        size = (kept[-1] + 1) if kept else 1
        lut = np.zeros(size, dtype=np.int64)
        for new, old in enumerate(kept, start=1):
            lut[old] = new if self.remap else old
        self._lut = lut

    @property
    def num_labels(self) -> int:
        if not self.values:
            return 1
        return len(self.values) + 1 if self.remap else self.values[-1] + 1

    @property
    def new_to_original(self) -> dict[int, int]:
        """``{new id: original id}`` for the kept labels (identity without remap)."""
        return {int(self._lut[v]): v for v in self.values}

    def apply(self, label: np.ndarray) -> np.ndarray:
        """Map an int label array (any shape); ids outside :attr:`values` become 0."""
        label = np.asarray(label)
        out = np.zeros(label.shape, dtype=np.int64)
        inside = label < self._lut.size
        out[inside] = self._lut[label[inside]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "remap": self.remap,
            "num_labels": self.num_labels,
            "original_ids": self.values,
            "new_to_original": {str(k): v for k, v in self.new_to_original.items()},
            "note": "label ids in results are the 'new' ids; 0 is background; other original ids were set to 0",
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        return f"LabelMapping({len(self.values)} labels, remap={self.remap})"
