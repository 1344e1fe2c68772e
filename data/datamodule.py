"""Lightning DataModules, built by Hydra from ``_target_`` with plain keyword arguments: the MNI
subjects, pairs CSVs and SynthMorph. Each derives from :class:`data.base.RegistrationDataModule`,
whose docstring is the interface they share (``validate()``, ``test_pair_ids()``,
``input_files()``, ``volume_shapes()``, ``spacing``, ``shape``, ``num_labels``, ...).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import DataLoader

from data.base import RegistrationDataModule, stage_splits
from data.generated import AxialSlices, GeneratedDataModule, takes_knobs
from data.loaders import check_loader_args
from data.geometry import axcodes
from data.io import DataError
from data.mni import MNIKnobs, MNISubjects
from data.pairs import RandomPairSampler
from data.pairs_csv import RESAMPLE, PairsCSVDataset
from data.signature import file_identity
from data.synthmorph import EpochPairSampler, SynthMorphPairs

__all__ = ["MNIDataModule", "PairsCSVDataModule", "SynthMorphDataModule"]


@takes_knobs(MNIKnobs)
class MNIDataModule(GeneratedDataModule):
    """Pairs of deformed MNI152 "subjects" (:mod:`data.mni`): real anatomy, no download.

    Subjects ``0 .. n_train-1`` train, the next ``n_val`` validate, the next ``n_test`` test
    (disjoint by construction). Training draws ``pairs_per_epoch`` ordered pairs of distinct
    training subjects per epoch (:class:`data.pairs.RandomPairSampler`, seeded by ``(seed, epoch)``);
    validation and test use a fixed list: ``"consecutive"`` ``(k, k+1)`` (fixed k, moving k+1)
    or ``"all"`` ordered pairs.

    Args:
        n_train, n_val, n_test: subject counts (n_train >= 2; n_val/n_test 0 or >= 2).
        pairs_per_epoch: training pairs per epoch.
        seed: subjects and training pairs depend only on it.
        batch_size, num_workers: DataLoader settings.
        slice_index: None (3-D), or 2-D subjects: the slice at this index along the last (axial)
            axis of every deformed 3-D subject (:class:`data.generated.AxialSlices`), e.g. 48 at
            2 mm; 2-D networks (``model.net.ndim=2``) train thousands of steps in minutes on a CPU.
        with_labels: put ``fixed_label``/``moving_label`` in batches.
        val_pairs, test_pairs: ``"consecutive"`` or ``"all"``.
        **knobs: how subjects are drawn, the fields of :class:`data.mni.MNIKnobs` (``resolution``,
            ``shape``, ``deformation_scale``, ``deformation_smoothness``, ``bias``, ``gamma``,
            ``noise``, ``contrast``, ``labels``, ``slice_thickness``; declared and checked there,
            and listed in this signature); an unknown one is an error naming it.
    """

    def __init__(
        self,
        n_train: int = 16,
        n_val: int = 4,
        n_test: int = 4,
        pairs_per_epoch: int = 32,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        slice_index: int | None = None,
        with_labels: bool = True,
        val_pairs: str = "consecutive",
        test_pairs: str = "consecutive",
        **knobs: Any,
    ):
        super().__init__()
        self.knobs = MNIKnobs.from_settings(knobs, "MNIDataModule()")
        # every knob, given or default, is a hyper-parameter, so the pairs' signature covers them all.
        # Set directly: save_hyperparameters() reads __init__'s frame, which has no local per knob.
        self.hparams.update({
            "n_train": n_train, "n_val": n_val, "n_test": n_test, "pairs_per_epoch": pairs_per_epoch, "seed": seed,
            "batch_size": batch_size, "num_workers": num_workers, "slice_index": slice_index,
            "with_labels": with_labels, "val_pairs": val_pairs, "test_pairs": test_pairs, **self.knobs.to_dict(),
        })
        subjects = MNISubjects(self.knobs, seed=seed, cache=slice_index is None)
        codes = axcodes(subjects.affine)  # the template's voxel order
        self._voxel_axes = codes if slice_index is None else codes[:2]  # an axial slice keeps the first two
        if slice_index is not None:  # 2-D: one axial slice of every 3-D subject (slices cached)
            subjects = AxialSlices(subjects, slice_index)
        self._setup_splits(subjects, n_train, n_val, n_test, pairs_per_epoch, seed, batch_size, num_workers,
                           with_labels, val_pairs, test_pairs)


    @property
    def voxel_axes(self) -> str | None:
        """The MNI152 template's voxel order (its first two codes for axial slices)."""
        return self._voxel_axes

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


def _plain_tuple(value: Any, kind: type) -> Any:
    """``tuple(kind(v) for v in value)``, or ``value`` unchanged when that fails (checked later, by name)."""
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        return value


def _build_evaluation(evaluation: Any, overrides: dict[str, int]) -> RegistrationDataModule:
    """The evaluation DataModule: built from a config mapping (Hydra ``_target_``), given, or
    the default :class:`data.MNIDataModule`; ``overrides`` (split sizes) go to its constructor."""
    if evaluation is None:
        return MNIDataModule(**overrides)
    if isinstance(evaluation, RegistrationDataModule):
        if overrides:
            key = sorted(overrides)[0]
            raise ValueError(f"SynthMorphDataModule() '{key}' is forwarded to an evaluation config; "
                             f"set it on the evaluation DataModule that was passed built")
        return evaluation
    if isinstance(evaluation, Mapping):
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        node = OmegaConf.create(dict(evaluation) if not OmegaConf.is_config(evaluation) else evaluation)
        if "_target_" not in node:
            raise ValueError("SynthMorphDataModule() 'evaluation' config needs a '_target_' (e.g. data.MNIDataModule)")
        built = instantiate(node, **overrides)
        if not isinstance(built, RegistrationDataModule):
            raise ValueError(f"SynthMorphDataModule() 'evaluation' must build a data DataModule "
                             f"(data.base.RegistrationDataModule), got {type(built).__name__}")
        return built
    raise ValueError(f"SynthMorphDataModule() 'evaluation' must be a DataModule config, a data DataModule "
                     f"(data.base.RegistrationDataModule) or null, got {type(evaluation).__name__}")


class SynthMorphDataModule(RegistrationDataModule):
    """Train on :class:`SynthMorphPairs`, validate and test on real images (``data=synthmorph``).

    Training: ``pairs_per_epoch`` new synthetic pairs per epoch (:class:`EpochPairSampler`;
    deterministic per ``(seed, epoch, idx)``, replayed exactly on resume). Validation and test
    are the wrapped ``evaluation`` DataModule's (default: :class:`data.MNIDataModule` with its
    defaults), as SynthMorph is trained on synthetic data and evaluated on real scans. The
    number of labels need not match: the network sees only images; Dice metrics use the
    evaluation labels (``num_labels``, ``label_names``, ``spacing``, ``shape`` are the
    evaluation module's; the synthetic grid is ``train_set.shape``).

    Args:
        batch_size, num_workers: training loader (the evaluation module has its own).
        evaluation: a DataModule config (mapping with ``_target_``), a built DataModule, or
            None for ``data.MNIDataModule()``.
        n_train, n_val, n_test: split sizes given to the evaluation DataModule's constructor
            when not None (None: its own defaults). Only its val/test pairs are used; ``n_train``
            fixes which subjects those are (with ``data=mni`` subjects ``n_train ..`` validate), so
            the same values as an ``mni_*`` experiment give the same test pairs.
        **generator: the settings of :class:`SynthMorphPairs` (``shape``, ``n_labels``, ``noise``,
            ``pairs_per_epoch``, ``seed``, ...); an unknown one is an error naming it.
    """

    def __init__(
        self,
        batch_size: int = 1,
        num_workers: int = 0,
        evaluation: Any = None,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        **generator: Any,
    ):
        super().__init__()
        valid = [p for p in inspect.signature(SynthMorphPairs).parameters]
        unknown = sorted(set(generator) - set(valid))
        if unknown:
            raise ValueError(f"SynthMorphDataModule(): unknown setting(s) {unknown}; valid: {sorted(valid)}")
        generator = {k: _plain_tuple(v, int if k == "shape" else float) if k in ("shape", "intensity_range") else v
                     for k, v in generator.items()}  # ListConfig -> tuple
        self.save_hyperparameters(ignore=["evaluation"])
        self.batch_size, self.num_workers = check_loader_args(batch_size, num_workers, type(self).__name__)
        self.train_set = SynthMorphPairs(**generator)
        overrides = {k: v for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)) if v is not None}
        self.evaluation = _build_evaluation(evaluation, overrides)

    # ------------------------------------------------------------------ the evaluation module's
    @property
    def spacing(self) -> tuple[float, ...] | None:
        return self.evaluation.spacing

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.evaluation.shape

    @property
    def num_labels(self) -> int | None:
        return self.evaluation.num_labels

    @property
    def label_names(self) -> dict[int, str]:
        return self.evaluation.label_names

    def validate(self) -> None:
        """The synthetic knobs were checked at construction; checks the evaluation data."""
        self.evaluation.validate()

    def test_pair_ids(self) -> list[tuple[str, str]]:
        """The evaluation module's test pairs (the synthetic training pairs are never tested)."""
        return self.evaluation.test_pair_ids()

    def input_files(self) -> list[Path]:
        """The evaluation module's input files (synthetic training pairs read none)."""
        return self.evaluation.input_files()

    def volume_shapes(self, stage: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """The synthetic training grid (``"fit"`` and None), then the evaluation module's volumes
        (its validation ones when fitting)."""
        shapes = self.evaluation.volume_shapes("validate" if stage == "fit" else stage)
        if stage in (None, "fit"):
            shapes = [("SynthMorph training pairs (data.shape)", tuple(self.train_set.shape)), *shapes]
        return shapes

    def save_label_map(self, out_dir: str | os.PathLike) -> Path | None:
        """Results of remapped evaluation labels name the original ids (when the evaluation module does)."""
        return self.evaluation.save_label_map(out_dir)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.evaluation.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.evaluation.trainer = self.trainer
        self.evaluation.setup(stage)

    def teardown(self, stage: str | None = None) -> None:
        self.evaluation.teardown(stage)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochPairSampler(len(self.train_set))
        return self._loader(self.train_set, sampler=sampler)

    def val_dataloader(self):
        return self.evaluation.val_dataloader()

    def test_dataloader(self):
        return self.evaluation.test_dataloader()
