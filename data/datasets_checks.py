"""The data checks of :class:`data.datasets_module.DatasetDataModule` (a mixin): each used volume's
header, read once; the full check that loads and preprocesses every volume before any result
(:meth:`DatasetChecks.validate`); the pairs' preprocessed grids predicted from the headers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import DataLoader

from data.io import DataError, read_grid
from data.preprocess import preprocessed_grid
from data.volume_pairs import VolumeCheck, check_labels_kept, check_pair_grids

__all__ = ["DatasetChecks"]


class DatasetChecks:
    """Mixin of :class:`data.datasets_module.DatasetDataModule`: it reads the module's
    ``used_volumes()``, ``store``, ``with_labels``, ``num_workers``, ``preprocess_config``,
    ``labels_subset``, ``label_mapping``, ``label_map_file``, ``root``, ``layout_cls`` and its splits,
    and keeps ``_header_grids``, ``_unplaced``, ``_grids``, ``_kept``, ``_label_values``."""

    # ------------------------------------------------------------------ headers
    def _headers(self) -> dict[str, Any]:
        """Each used volume's header :class:`~data.geometry.Grid` (``read_grid``), read once."""
        if self._header_grids is None:
            self._header_grids = {ref.key: read_grid(ref.image) for ref in self.used_volumes()}
        return self._header_grids

    def unplaced_volume(self) -> tuple[Path, str] | None:
        """``(image file, why)`` of the first used volume whose header places it nowhere in world
        space (:attr:`data.geometry.Grid.unplaced`: an Analyze ``.img/.hdr``, as the Klein sets are
        distributed, or NIfTI with sform and qform codes 0), or None. Its voxel order, and any
        reorientation by ``data.orientation``, is then a reader's guess (nibabel's LAS, ITK's LPS):
        consistent within a set of such files, so classical registration and metrics are sound, but
        a network trained on other data may see it flipped (:meth:`validate`, eval.py refuse)."""
        if self._unplaced is None:
            headers = self._headers()
            found = next(((ref.image, headers[ref.key].unplaced) for ref in self.used_volumes()
                          if headers[ref.key].unplaced is not None), None)
            self._unplaced = found or ()
        return self._unplaced or None

    def _grid_values(self) -> set[tuple]:
        if self._grids is None:
            grids = set()
            for ref in self.used_volumes():
                p = self.store.get(ref.key, ref.image, ref.label if self.with_labels else None)
                grids.add((tuple(p.image.shape), tuple(round(s, 6) for s in p.spacing)))
            self._grids = grids
        return self._grids

    # ------------------------------------------------------------------ checks
    def _scan(self) -> None:
        """Load every used volume once (in ``num_workers`` processes): the full data check."""
        volumes = self.used_volumes()
        work = VolumeCheck(volumes, self.store, self.with_labels)
        if self.num_workers > 0 and len(volumes) > 1:
            loader = DataLoader(work, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                collate_fn=_as_is)
            results = list(loader)
        else:
            results = [work[i] for i in range(len(work))]
        labels: set[int] = set()
        grids = set()
        self._kept = {}  # every volume's label ids before and after preprocessing
        for ref, res in zip(volumes, results):
            if "error" in res:
                raise DataError(res["error"])
            if res["labels"] is not None:
                labels.update(res["labels"])
                if res.get("kept") is not None:
                    self._kept[ref.key] = (ref, res["labels"], res["kept"])
            if res["shape"] is not None:
                grids.add((tuple(res["shape"]), tuple(round(s, 6) for s in res["spacing"])))
        self._label_values = sorted(labels)
        if grids:
            self._grids = grids

    def validate(self) -> None:
        """The full data check, run before any result is written; raises DataError on the first problem.

        Every volume of the train/val/test sets is loaded once and checked (readable, 3-D,
        finite, non-constant image not all zero after ``data.normalize``, whole non-negative
        labels, not all zero, on the image's grid in world space: shape and voxel-to-world
        affine) and preprocessed, so an image all zero after the crop or a label the crop
        removes fails here; with ``cache_dir`` into the cache (a later run trusts cache
        entries whose source files are unchanged), without one it is preprocessed again
        when its pair is loaded. Then: ``labels_subset`` ids
        must occur in the data, and with ``label_map_file`` the mapping is written there.
        """
        self._scan()
        self._check_pair_grids()
        unplaced = self.unplaced_volume()
        if unplaced is not None:  # a tree mixing placed and unplaced files: one set, two voxel orders
            headers = self._headers()
            placed = next((ref.image for ref in self.used_volumes() if headers[ref.key].unplaced is None), None)
            if placed is not None:
                raise DataError(f"{unplaced[0]}: {unplaced[1]}, while {placed} is placed in world space: the two "
                                "would be read in different voxel orders (one a reader's guess); store every "
                                "volume of the set in one format")
        if self.with_labels and self.labels_subset is not None:
            absent = [v for v in self.labels_subset if v not in set(self._label_values or [])]
            if absent:
                raise DataError(
                    f"{self.root}: data.labels_subset ids {absent} occur in no label file of {self.layout_cls.title} "
                    f"(found ids {_short(self._label_values or [])})"
                )
        self._mapping_ready = False
        mapping = self.label_mapping
        for ref, source, kept in self._kept.values():  # a label the crop removed: refused before any result
            check_labels_kept(ref, source, kept, mapping if self.with_labels else None, self.preprocess_config)
        if self.label_map_file and mapping is not None:
            mapping.save(os.path.expanduser(str(self.label_map_file)))
        self._validated = True

    def _check_pair_grids(self) -> None:
        """Every pair the run can load (validation and test pairs; any two training volumes) on one
        preprocessed grid, predicted from the headers (:func:`data.preprocess.preprocessed_grid`): a
        volume in another voxel order or of another size fails here, before any result, and not at its
        pair in the middle of a run (:func:`data.volume_pairs.check_pair_grids`)."""
        grids = {key: preprocessed_grid(g.shape, g.affine, self.preprocess_config) for key, g in self._headers().items()}
        train = list(self.train_volumes)
        pairs = [*self.val_pairs, *self.test_pairs, *((train[0], v) for v in train[1:])]
        for f, m in pairs:
            check_pair_grids(f, grids[f.key], m, grids[m.key])


def _as_is(x):
    return x


def _short(values: Sequence[int], n: int = 12) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:n])
    return f"[{text}{', ...' if len(values) > n else ''}] ({len(values)} ids)"
