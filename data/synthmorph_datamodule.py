"""The SynthMorph DataModule (``data=synthmorph``): training on synthetic label maps
(:mod:`data.synthmorph`), validation and testing on a real DataModule's pairs."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import DataLoader

from data.base import RegistrationDataModule
from data.mni_datamodule import MNIDataModule
from data.loaders import check_loader_args
from data.synthmorph import EpochPairSampler, SynthMorphPairs

__all__ = ["SynthMorphDataModule"]


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

    def training_inputs(self) -> list[list] | None:
        """The evaluation module's validation entries (they pick the best checkpoint; the synthetic
        training pairs are set by the hyper-parameters); None when it records none."""
        rows = self.evaluation.training_inputs()
        return None if rows is None else [r for r in rows if r and r[0] == "val"]

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
