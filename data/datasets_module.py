"""Public brain MRI datasets on disk: the DataModule their layouts share.

A *layout* (:class:`Layout`; :mod:`data.oasis`, :mod:`data.klein`) knows one dataset's file
tree: where each volume's image and label map are, and which ``(fixed, moving)`` pairs each
split registers. It never opens a NIfTI file: discovery only looks at names, so a wrong
tree fails at once with one :class:`~data.io.DataError` line naming the root and the layout
expected (and the layout the tree looks like, when it is another known one).

:class:`DatasetDataModule` turns a layout into the batch contract: it preprocesses each volume
(:mod:`data.preprocess`: torchio reorientation, isotropic resampling, crop/pad, intensity
normalisation; optional on-disk cache), maps labels (subset, contiguous remap), augments
training volumes independently, and draws random training pairs per epoch
(:class:`data.pairs.RandomPairSampler`). Items are those of :class:`data.volume_pairs.PairDataset`
(the batch contract, :mod:`data.batch`, on the preprocessed grid, with mapped label ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from torch.utils.data import DataLoader

from data.augment import VolumeAugmentation
from data.base import RegistrationDataModule, stage_splits
from data.geometry import axcodes
from data.io import DataError, to_plain
from data.layout import Layout, Pair, VolumeRef
from data.loaders import check_loader_args
from data.pairs import RandomPairSampler, all_pairs
from data.cache import VolumeStore
from data.datasets_checks import DatasetChecks
from data.preprocess import LabelMapping, PreprocessConfig, preprocessed_shape
from data.signature import file_identity
from data.volume_pairs import PairDataset

__all__ = ["PairDataset", "DatasetDataModule"]  # PairDataset re-exported (its home is data.volume_pairs)

class DatasetDataModule(DatasetChecks, RegistrationDataModule):
    """Shared DataModule of the on-disk datasets (subclasses: OASIS, Learn2Reg OASIS, Klein sets).

    Subclasses build ``self.layout`` and the pair lists (``train_volumes``, ``val_pairs``,
    ``test_pairs``) in :meth:`_build`; this class does preprocessing, labels, loaders, checks.

    Common keyword arguments (all plain values, set from ``configs/data/*.yaml``):
        root: the dataset folder (``${paths.data_dir}/<NAME>`` in the configs).
        orientation, spacing, shape, crop_center, normalize: :class:`data.preprocess.PreprocessConfig`.
        cache_dir: on-disk cache of preprocessed volumes (None: no cache).
        labels_subset: original label ids to keep (others -> 0), or None for all.
        remap_labels: renumber the kept ids to 1..K (the mapping is saved with results:
            :meth:`save_label_map`, ``label_map_file``, and in checkpoints via :meth:`state_dict`).
        label_map_file: if set, :meth:`validate` writes the label mapping JSON there.
        augment: None, or keyword arguments of :class:`data.preprocess.VolumeAugmentation`
            (training pairs only; fixed and moving drawn independently).
        pairs_per_epoch: random training pairs per epoch (None: the number of training subjects).
        seed: training pairs depend only on it and the epoch.
        batch_size, num_workers: DataLoader settings (``num_workers`` also parallelises
            :meth:`validate`).
        with_labels: put label maps in batches.
    """

    layout_cls: ClassVar[type[Layout]]

    def __init__(
        self,
        root: str,
        orientation: str | None = "RAS",
        spacing: float | Sequence[float] | None = 1.0,
        shape: Sequence[int] | None = None,
        crop_center: str = "volume",
        normalize: str = "percentile",
        cache_dir: str | None = None,
        labels_subset: Sequence[int] | None = None,
        remap_labels: bool = False,
        label_map_file: str | None = None,
        augment: Mapping[str, Any] | None = None,
        pairs_per_epoch: int | None = None,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        with_labels: bool = True,
    ):
        super().__init__()
        owner = type(self).__name__
        if root is None or str(root).strip() == "":
            raise DataError(f"data.root is not set; expected the {self.layout_cls.title} folder")
        self.root = Path(os.path.expanduser(str(root)))
        self.batch_size, self.num_workers = check_loader_args(batch_size, num_workers, owner)
        self.preprocess_config = PreprocessConfig(
            orientation=orientation,
            spacing=to_plain(spacing),
            shape=to_plain(shape),
            crop_center=crop_center,
            normalize=normalize,
        )
        self.store = VolumeStore(self.preprocess_config, cache_dir)
        subset = to_plain(labels_subset)
        self.labels_subset = None if subset is None else sorted({int(v) for v in subset})
        if self.labels_subset is not None and any(v < 0 for v in self.labels_subset):
            raise ValueError(f"{owner}() 'labels_subset' must hold non-negative label ids, got {labels_subset!r}")
        self.remap_labels = bool(remap_labels)
        self.label_map_file = label_map_file
        self.augment = VolumeAugmentation.from_config(to_plain(augment))
        if pairs_per_epoch is not None and int(pairs_per_epoch) < 1:
            raise ValueError(f"{owner}() 'pairs_per_epoch' must be >= 1 or None, got {pairs_per_epoch!r}")
        self.pairs_per_epoch = None if pairs_per_epoch is None else int(pairs_per_epoch)
        self.seed = int(seed)
        self.with_labels = bool(with_labels)
        self._mapping: LabelMapping | None = None
        self._mapping_ready = False
        self._label_values: list[int] | None = None
        self._grids: set[tuple] | None = None
        self._kept: dict[str, tuple] = {}
        self._unplaced: tuple | None = None
        self._header_grids: dict[str, Any] | None = None
        self._axes: str | None = None  # "": the volumes differ
        self._validated = False
        self.train_volumes: list[VolumeRef] = []
        self.val_pairs: list[Pair] = []
        self.test_pairs: list[Pair] = []
        self._build()
        self.layout.require_files(self.used_volumes())

    # ------------------------------------------------------------------ subclass API
    def _build(self) -> None:
        """Set ``self.layout``, ``self.train_volumes``, ``self.val_pairs``, ``self.test_pairs``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pairs and sets
    @property
    def train_pairs(self) -> list[tuple[int, int]]:
        """All ordered pairs of training volume indices (random ones are drawn per epoch)."""
        return all_pairs(range(len(self.train_volumes)))

    def used_volumes(self) -> list[VolumeRef]:
        """Distinct volumes of the train, val and test sets, in first-use order."""
        seen: dict[tuple, VolumeRef] = {}
        refs = list(self.train_volumes) + [v for pairs in (self.val_pairs, self.test_pairs) for p in pairs for v in p]
        for v in refs:
            seen.setdefault((v.id, v.image, v.label), v)
        return list(seen.values())

    def test_pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of the test pairs, in order (what a results folder must hold)."""
        return [(f.id, m.id) for f, m in self.test_pairs]

    def input_files(self) -> list[Path]:
        """Every image and label file of the train, val and test sets (an output folder must not hold one)."""
        files = []
        for ref in self.used_volumes():
            files.append(ref.image)
            if ref.label is not None:
                files.append(ref.label)
        return list(dict.fromkeys(files))

    def training_inputs(self) -> list[list]:
        """Each training volume's ``["train", id, image name, size, label name, size]`` and each
        validation pair's ``["val", <the fixed volume's five>, <the moving volume's five>]``
        (:meth:`data.base.RegistrationDataModule.training_inputs`)."""
        def volume(v: VolumeRef) -> list:
            return [v.id, *file_identity(v.image), *file_identity(v.label)]

        return ([["train", *volume(v)] for v in self.train_volumes]
                + [["val", *volume(f), *volume(m)] for f, m in self.val_pairs])

    def _dataset(self, pairs: Sequence[Pair], augment: bool = False) -> PairDataset:
        return PairDataset(pairs, self.store, mapping=self.label_mapping_or_none(),
                           augment=self.augment if augment else None, with_labels=self.with_labels,
                           same_window=self.layout.pairs_share_grid)

    def dataset(self, split: str) -> PairDataset:
        """The :class:`PairDataset` of ``"train"`` (all ordered training pairs), ``"val"`` or ``"test"``."""
        if split == "train":
            if len(self.train_volumes) < 2:
                raise DataError(self._no_train_message())
            vols = self.train_volumes
            return self._dataset([(vols[a], vols[b]) for a, b in self.train_pairs], augment=True)
        if split == "val":
            if not self.val_pairs:
                raise DataError(f"{self.layout_cls.title}: no validation pairs configured")
            return self._dataset(self.val_pairs)
        if split == "test":
            if not self.test_pairs:
                raise DataError(f"{self.layout_cls.title}: no test pairs configured")
            return self._dataset(self.test_pairs)
        raise ValueError(f"{type(self).__name__}.dataset() 'split' must be train, val or test, got {split!r}")

    def _no_train_message(self) -> str:
        return f"{self.layout_cls.title}: fewer than 2 training subjects; nothing to train on"

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        n = self.pairs_per_epoch or len(self.train_volumes)
        sampler = RandomPairSampler(len(ds), n, seed=self.seed)
        return self._loader(ds, sampler=sampler)

    def val_dataloader(self):
        if not self.val_pairs:
            return []  # Lightning runs no validation loop for an empty list
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    # ------------------------------------------------------------------ labels
    @property
    def label_values(self) -> list[int]:
        """Sorted original label ids found in the label files of every used volume (scans once)."""
        if self._label_values is None:
            self._scan()
        return list(self._label_values or [])

    def label_mapping_or_none(self) -> LabelMapping | None:
        """The label mapping, or None when labels are used as stored (no subset, no remap)."""
        if not self._mapping_ready:
            if self.labels_subset is None and not self.remap_labels:
                self._mapping = None
            else:
                values = self.labels_subset if self.labels_subset is not None else self.label_values
                self._mapping = LabelMapping(values, remap=self.remap_labels)
            self._mapping_ready = True
        return self._mapping

    @property
    def label_mapping(self) -> LabelMapping | None:
        """:class:`~data.preprocess.LabelMapping` in use (None without labels); identity if no subset/remap."""
        if not self.with_labels:
            return None
        mapping = self.label_mapping_or_none()
        return mapping if mapping is not None else LabelMapping(self.label_values, remap=False)

    @property
    def num_labels(self) -> int | None:
        """Largest label id in batches + 1 (None without labels)."""
        mapping = self.label_mapping
        return None if mapping is None else mapping.num_labels

    def save_label_map(self, out_dir: str | os.PathLike) -> Path | None:
        """Write ``out_dir/label_map.json`` (the mapping from batch ids to original ids)."""
        mapping = self.label_mapping
        if mapping is None:
            return None
        return mapping.save(Path(out_dir) / "label_map.json")

    def state_dict(self) -> dict[str, Any]:
        """Stored in checkpoints by Lightning: the label mapping, when it is known."""
        if self.with_labels and self._mapping_ready and self._mapping is not None:
            return {"label_map": self._mapping.to_dict()}
        return {}

    # ------------------------------------------------------------------ grid
    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Voxel size (mm) of the batches (the preprocessed grid the metrics use); None if it varies."""
        if self.preprocess_config.spacing is not None:  # Resample's output spacing, array-axis order
            return self.preprocess_config.spacing
        grids = self._grid_values()
        spacings = {g[1] for g in grids}
        return next(iter(spacings)) if len(spacings) == 1 else None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """Spatial shape of the batches; None if it varies (``shape: null`` and volumes differ)."""
        if self.preprocess_config.shape is not None:
            return self.preprocess_config.shape
        shapes = {g[0] for g in self._grid_values()}
        return next(iter(shapes)) if len(shapes) == 1 else None

    def volume_shapes(self, stage: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """``(image file, preprocessed spatial shape)`` of every volume ``stage`` reads (``"fit"``:
        train and val; ``"validate"``: val; ``"test"``/``"predict"``: test; None: all), for the
        model's input-size check. The shape is ``data.shape`` when set, else predicted from the
        file's header (:func:`data.preprocess.preprocessed_shape`; no voxel is read)."""
        refs = self._stage_volumes(stage)
        if self.preprocess_config.shape is not None:
            return [(str(ref.image), tuple(self.preprocess_config.shape)) for ref in refs]
        headers = self._headers()
        return [(str(ref.image), preprocessed_shape(headers[ref.key].shape, headers[ref.key].affine,
                                                    self.preprocess_config)) for ref in refs]

    def _stage_volumes(self, stage: str | None) -> list[VolumeRef]:
        wanted = stage_splits(stage)
        refs = list(self.train_volumes) if "train" in wanted else []
        for name, pairs in (("val", self.val_pairs), ("test", self.test_pairs)):
            if name in wanted:
                refs.extend(v for p in pairs for v in p)
        seen: dict[tuple, VolumeRef] = {}
        for v in refs:
            seen.setdefault((v.id, v.image), v)
        return list(seen.values())

    @property
    def intensity_normalisation(self) -> str | None:
        """``data.normalize`` (every image is normalised so)."""
        return self.preprocess_config.normalize

    @property
    def voxel_axes(self) -> str | None:
        """``data.orientation`` when set (every volume is reoriented to it), else the axis codes the
        headers of the used volumes share (None if they differ): read once, no voxel data."""
        if self.unplaced_volume() is not None:
            return None  # a reader's guess, whatever it was reoriented to: unknown
        if self.preprocess_config.orientation is not None:
            return self.preprocess_config.orientation
        if self._axes is None:
            codes = {axcodes(g.affine) for g in self._headers().values()}
            self._axes = next(iter(codes)) if len(codes) == 1 else ""
        return self._axes or None

    @property
    def validated(self) -> bool:
        return self._validated

    def summary(self) -> dict[str, Any]:
        """Counts and settings, for logs."""
        return {
            "dataset": self.layout_cls.name,
            "root": str(self.root),
            "train_subjects": len(self.train_volumes),
            "val_pairs": len(self.val_pairs),
            "test_pairs": len(self.test_pairs),
            "preprocess": self.preprocess_config.to_dict(),
            "cache": None if self.store.cache_folder is None else str(self.store.cache_folder),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.summary())})"
