"""The DataModule of the offline MNI subjects, built by Hydra from ``_target_`` with plain keyword
arguments. It derives from :class:`data.base.RegistrationDataModule`, whose docstring is the
interface every DataModule shares (``validate()``, ``test_pair_ids()``, ``input_files()``,
``volume_shapes()``, ``spacing``, ``shape``, ``num_labels``, ...); pairs CSVs:
:mod:`data.pairs_csv_datamodule`; SynthMorph: :mod:`data.synthmorph_datamodule`; the on-disk
datasets: :mod:`data.datasets_module`.
"""

from __future__ import annotations

from typing import Any

from data.generated import AxialSlices, GeneratedDataModule, takes_knobs
from data.geometry import axcodes
from data.mni import MNIKnobs, MNISubjects

__all__ = ["MNIDataModule"]


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
