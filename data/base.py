"""The one DataModule interface: what train.py, eval.py, the models and the results writer may ask
of any DataModule of this package, written once with its defaults.

Every DataModule here derives from :class:`RegistrationDataModule` (generated subjects, the
MNI subjects, pairs CSVs, SynthMorph, the on-disk datasets). Callers call these methods
directly; a DataModule without something to say inherits the default:

=============================  ==================================================  ==============
member                         what it is                                          default
=============================  ==================================================  ==============
``validate()``                 the full data check, run before any result is       nothing to
                               written; raises :class:`~data.io.DataError`          check
``test_pair_ids()``            ``(fixed_id, moving_id)`` of the test pairs, in     (required)
                               order: what a results folder must hold
``input_files()``              every file the data reads (no output may hold one)  ``[]``
``training_inputs()``          what training reads, as plain data a moved dataset  ``None``
                               keeps (file names and sizes, not folders); a
                               checkpoint records it and a resume compares it.
                               None: the data config says it all (generated data)
``volume_shapes(stage)``       ``(name, spatial shape)`` of every volume a stage   ``[]``
                               reads, for the model's minimum-size check
``spacing``, ``shape``         voxel size (mm) and spatial shape of the batches,   ``None``
                               None when they vary
``voxel_axes``                 axis codes of the batches' voxel order (``"RAS"``:   ``None``
                               axis 0 runs to the Right, ...), None when unknown
                               or mixed: a network sees voxels, not world space,
                               so checkpoints record it and eval.py compares
``intensity_normalisation``    how images were brought to [0, 1] (``percentile``,  ``None``
                               ``minmax``, ``none``), None when unknown: recorded
                               in checkpoints and compared as ``voxel_axes`` is
``num_labels``                 largest label id in batches + 1 (None: no labels)   ``None``
``label_names``                ``{label id: name}`` when known                     ``{}``
``save_label_map(out_dir)``    write how batch label ids map to the original ids   ``None``
                               (``out_dir/label_map.json``); returns the file
``train/val/test_dataloader``  Lightning's loaders of batch-contract items         (Lightning's)
                               (:mod:`data.batch`)
=============================  ==================================================  ==============

``stage`` is Lightning's (``"fit"``: train and val; ``"validate"``: val; ``"test"`` and
``"predict"``: test; None: every split), as :func:`stage_splits` maps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from data.loaders import make_loader

__all__ = ["RegistrationDataModule", "SPLITS", "stage_splits"]

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def stage_splits(stage: str | None) -> tuple[str, ...]:
    """The splits a Lightning ``stage`` reads (None or an unknown stage: all of :data:`SPLITS`)."""
    return _STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS


class RegistrationDataModule(L.LightningDataModule):
    """Base of every DataModule of :mod:`data` (the interface in the module docstring).

    Subclasses set ``batch_size`` and ``num_workers`` (:func:`data.loaders.check_loader_args`)
    and implement :meth:`test_pair_ids` and the dataloaders; the rest is optional.
    """

    batch_size: int = 1
    num_workers: int = 0

    def validate(self) -> None:
        """The full data check, before any result is written (default: nothing to check)."""

    def test_pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of the test pairs, in order (what a results folder must hold)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its test pairs (test_pair_ids)")

    def input_files(self) -> list[Path]:
        """Every file the data reads (an output folder must not hold one); default: none."""
        return []

    def training_inputs(self) -> list[list] | None:
        """What training reads (the train and validation sets), as plain data that survives moving
        the dataset to another folder: one ``[id, file name, size, ...]`` entry per volume or pair.
        A checkpoint records it; resuming the training under data whose entries differ is refused
        (:func:`app.checkpoints.check_same_settings`). Default None: the data config (compared as
        hyper-parameters) determines the data, as for generated subjects."""
        return None

    def volume_shapes(self, stage: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, spatial shape)`` of every volume ``stage`` reads, for the model's input-size
        check (:meth:`models.module.RegistrationModule.setup`); default: none listed."""
        return []

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """Voxel size (mm) of the batches; None when it varies or is unknown."""
        return None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Spatial shape of the batches; None when it varies or is unknown."""
        return None

    @property
    def voxel_axes(self) -> str | None:
        """Axis codes of the batches' voxel order (e.g. ``"RAS"``, :func:`data.geometry.axcodes`);
        None when unknown or when volumes differ (default: unknown)."""
        return None

    @property
    def intensity_normalisation(self) -> str | None:
        """How each image's intensities were brought to [0, 1] (a :data:`data.preprocess.NORMALIZATIONS`
        name: ``"percentile"``, ``"minmax"``, ``"none"``); None when unknown (default). A network
        sees intensities, so checkpoints record it and eval.py compares, as for :attr:`voxel_axes`."""
        return None

    @property
    def num_labels(self) -> int | None:
        """Largest label id in batches + 1; None without labels."""
        return None

    @property
    def label_names(self) -> dict[int, str]:
        """``{label id: name}`` of the batch label ids, when known (default: none)."""
        return {}

    def save_label_map(self, out_dir: str | os.PathLike) -> Path | None:
        """Write ``out_dir/label_map.json`` when batch label ids are not the original ones
        (returns the file); default: ids are the stored ones, nothing to write."""
        return None

    def _loader(self, dataset, sampler=None) -> DataLoader:
        """A loader of ``dataset`` with this module's ``batch_size`` and ``num_workers``."""
        return make_loader(dataset, self.batch_size, self.num_workers, sampler=sampler)
