"""The DataModule of your own pairs, listed in CSV files (``data=pairs_csv``): one CSV per stage
(:class:`data.pairs_csv.PairsCSVDataset` reads and checks each)."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import DataLoader

from data.base import RegistrationDataModule, stage_splits
from data.io import DataError
from data.loaders import check_loader_args
from data.pairs import RandomPairSampler
from data.pairs_csv import RESAMPLE, PairsCSVDataset
from data.signature import file_identity

__all__ = ["PairsCSVDataModule"]


class PairsCSVDataModule(RegistrationDataModule):
    """Your own pairs, listed in CSV files (:class:`data.PairsCSVDataset`).

    ``csv`` alone is a test-only module (evaluation); ``train_csv``/``val_csv``/``test_csv``
    give each stage its own list (``csv`` and ``test_csv`` together are ambiguous). Asking
    for a stage whose CSV is missing raises DataError naming the config key, e.g.
    ``data.train_csv is not set``. Without ``val_csv`` fitting runs with no validation.

    Construction checks headers only (cheap); :meth:`validate` loads every file of the
    test, train and val sets once. ``batch_size > 1`` needs every pair of a set to share
    one shape. ``resample="fixed"`` resamples each moving image (and label map) onto its fixed
    image's grid in world space instead of refusing pairs on two grids (:mod:`data.pairs_csv`).
    """

    def __init__(
        self,
        csv: str | None = None,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        normalize: bool = True,
        resample: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.seed = int(seed)
        if csv is not None and test_csv is not None:
            raise DataError("data.csv and data.test_csv are both set; give the test pairs once")
        self.batch_size, self.num_workers = check_loader_args(batch_size, num_workers, "PairsCSVDataModule")
        self.normalize = bool(normalize)
        if resample not in RESAMPLE:
            raise DataError(f"data.resample must be null or 'fixed', got {resample!r}")
        self.resample = resample
        self._paths = {
            "train": (train_csv, "data.train_csv"),
            "val": (val_csv, "data.val_csv"),
            "test": (csv if csv is not None else test_csv, "data.csv (or data.test_csv)"),
        }
        if all(p is None for p, _ in self._paths.values()):
            raise DataError("data.csv is not set: give data.csv (test only) or data.train_csv/val_csv/test_csv")
        self._sets: dict[str, PairsCSVDataset] = {}

    def has(self, split: str) -> bool:
        """Whether a CSV is configured for ``split`` (``"train"``, ``"val"``, ``"test"``)."""
        return self._paths[split][0] is not None

    def dataset(self, split: str) -> PairsCSVDataset:
        """The (header-checked) dataset of ``split``; DataError naming the key if not configured."""
        if split not in self._paths:
            raise ValueError(f"PairsCSVDataModule.dataset() 'split' must be train, val or test, got {split!r}")
        if split not in self._sets:
            path, key = self._paths[split]
            if path is None:
                raise DataError(f"{key} is not set; the {split} stage needs a pairs CSV")
            ds = PairsCSVDataset(os.path.expanduser(str(path)), normalize=self.normalize, check="header",
                                 resample=self.resample)
            if self.batch_size > 1 and len(set(ds.shapes)) > 1:
                raise DataError(
                    f"{ds.csv_path}: batch_size={self.batch_size} needs one shape for all pairs, "
                    f"found {sorted(set(ds.shapes))}; use data.batch_size=1"
                )
            self._sets[split] = ds
        return self._sets[split]

    def test_pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of the test pairs, in CSV order (what a results folder must hold)."""
        return self.dataset("test").pair_ids()

    def input_files(self) -> list[Path]:
        """The configured CSVs and every file they list (an output folder must not hold one)."""
        files = [f for split in ("test", "train", "val") if self.has(split) for f in self.dataset(split).input_files()]
        return list(dict.fromkeys(files))

    def training_inputs(self) -> list[list]:
        """Each train and val CSV row's ``[split, fixed_id, moving_id, column, file name, size, ...]``
        (:meth:`data.base.RegistrationDataModule.training_inputs`): the rows, not the CSV's path."""
        out = []
        for split in ("train", "val"):
            if self.has(split):
                ds = self.dataset(split)
                for (fixed_id, moving_id), row in zip(ds.pair_ids(), ds.rows):
                    files = [x for k in sorted(row) if not k.startswith("_") for x in (k, *file_identity(row[k]))]
                    out.append([split, fixed_id, moving_id, *files])
        return out

    def _first(self) -> PairsCSVDataset:
        for split in ("test", "train", "val"):
            if self.has(split):
                return self.dataset(split)
        raise AssertionError("unreachable: at least one CSV is set")

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Spacing (mm) shared by every pair of the configured sets, or None if they differ."""
        values = {sp for split in self._paths if self.has(split) for sp in self.dataset(split).spacings}
        return next(iter(values)) if len(values) == 1 else None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """Shape shared by every pair of the configured sets, or None if they differ."""
        values = {s for split in self._paths if self.has(split) for s in self.dataset(split).shapes}
        return next(iter(values)) if len(values) == 1 else None

    @property
    def intensity_normalisation(self) -> str | None:
        """``normalize: true``: the 0.5/99.5 percentiles of the nonzero voxels (``"percentile"``, as the
        on-disk datasets' default); false: the values as stored, clipped to [0, 1] (``"none"``)."""
        return "percentile" if self.normalize else "none"

    @property
    def voxel_axes(self) -> str | None:
        """Voxel axis codes shared by the fixed images of every configured set, or None if they differ
        (a moving image is on its fixed image's grid, or resampled onto it)."""
        values = {a for split in self._paths if self.has(split) for a in self.dataset(split).axes}
        return next(iter(values)) if len(values) == 1 else None

    @property
    def num_labels(self) -> int | None:
        """Largest label + 1 over the configured sets (None if a set has no labels); reads labels once."""
        counts = [self.dataset(split).num_labels for split in self._paths if self.has(split)]
        if any(c is None for c in counts):
            return None
        return max(counts)

    def volume_shapes(self, stage: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """``(image file, spatial shape from its header)`` of every fixed and moving image ``stage``
        reads (``"fit"``: train and val; ``"validate"``: val; ``"test"``/``"predict"``: test; None:
        all configured), for the model's input-size check (label maps share their image's shape)."""
        out: dict[str, tuple[int, ...]] = {}
        for split in stage_splits(stage):
            if self.has(split):
                ds = self.dataset(split)
                for i, shape in enumerate(ds.shapes):
                    for path in (ds.rows[i]["fixed"], ds.rows[i]["moving"]):
                        out.setdefault(str(path), tuple(shape))
        return list(out.items())

    def setup(self, stage: str | None = None) -> None:
        """Header-check the sets ``stage`` reads (fitting without ``val_csv`` runs no validation)."""
        for split in stage_splits(stage) if stage else ():
            if stage != "fit" or split == "train" or self.has(split):
                self.dataset(split)

    def validate(self) -> None:
        """Full check (every file loaded once) of the test, train and val sets that are configured."""
        for split in ("test", "train", "val"):
            if self.has(split):
                ds = self.dataset(split)
                if not ds.validated:
                    ds.validate()

    def train_dataloader(self) -> DataLoader:
        """Every training pair once per epoch, in an order drawn from ``(seed, epoch)``
        (:class:`data.pairs.RandomPairSampler`): a resumed run replays it exactly (:mod:`data.loaders`)."""
        ds = self.dataset("train")
        return self._loader(ds, sampler=RandomPairSampler(len(ds), len(ds), seed=self.seed))

    def val_dataloader(self):
        if not self.has("val"):
            return []  # Lightning runs no validation loop for an empty list
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))
