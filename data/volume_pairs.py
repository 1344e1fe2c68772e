"""Pairs of dataset volumes through the preprocessing store: :class:`PairDataset` (items of the
batch contract, :mod:`data.batch`) and the per-volume work of the full data check.

Items of a :class:`PairDataset` hold the *preprocessed* grid: ``spacing`` is the voxel size
the network and the metrics see, ``fixed_affine`` the voxel-to-world matrix of the
preprocessed fixed volume, label ids are mapped (:class:`~data.label_mapping.LabelMapping`),
and ``pair_signature`` records the files, the preprocessing, the mapping and the augmentation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import VolumeAugmentation
from data.batch import PairItem, pair_item
from data.geometry import SPACING_TOLERANCE, axcodes, grid_mismatch
from data.io import DataError
from data.layout import Pair, VolumeRef
from data.cache import VolumeStore
from data.preprocess import LabelMapping, Prepared
from data.signature import file_signature, signature

__all__ = ["PairDataset", "VolumeCheck", "check_labels_kept", "check_pair_grids"]


class PairDataset(Dataset):
    """``(fixed, moving)`` volume pairs as batch-contract items (see the module docstring).

    Args:
        pairs: list of ``(fixed VolumeRef, moving VolumeRef)``.
        store: the :class:`~data.cache.VolumeStore` that loads/preprocesses/caches volumes.
        mapping: the :class:`~data.preprocess.LabelMapping` applied to label maps, or None to
            keep the stored label ids.
        augment: a :class:`~data.preprocess.VolumeAugmentation`, applied to the fixed and to
            the moving volume in two separate calls (independent random draws), or None.
        with_labels: put label maps in items.
        same_window: the pairs' files lie on one grid by construction (``Layout.pairs_share_grid``):
            their preprocessed grids must agree in world space too (:func:`check_same_window`).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        store: VolumeStore,
        mapping: LabelMapping | None = None,
        augment: VolumeAugmentation | None = None,
        with_labels: bool = True,
        same_window: bool = False,
    ):
        if not pairs:
            raise DataError("PairDataset: 'pairs' is empty, expected at least one (fixed, moving) pair")
        self.pairs = list(pairs)
        self.store = store
        self.mapping = mapping
        self.augment = augment
        self.with_labels = bool(with_labels)
        self.same_window = bool(same_window)

    def __len__(self) -> int:
        return len(self.pairs)

    def volume(self, ref: VolumeRef) -> Prepared:
        return self.store.get(ref.key, ref.image, ref.label if self.with_labels else None)

    def __getitem__(self, index: int) -> PairItem:
        """The pair ``index`` on its common preprocessed grid (:meth:`_check_grids`)."""
        fref, mref = self.pairs[index]
        fixed, moving = self.volume(fref), self.volume(mref)
        _check_grids(fref, fixed, mref, moving)
        if self.same_window:
            check_same_window(fref, fixed, mref, moving, self.store.config)
        if self.with_labels:
            for ref, prep in ((fref, fixed), (mref, moving)):
                check_labels_kept(ref, prep.source_labels, prep.labels, self.mapping, self.store.config)
        volumes = {}
        for key, prep in (("fixed", fixed), ("moving", moving)):
            img = torch.from_numpy(np.ascontiguousarray(prep.image)).unsqueeze(0)
            lab = None
            if self.with_labels and prep.label is not None:
                arr = self.mapping.apply(prep.label) if self.mapping is not None else prep.label
                lab = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)).unsqueeze(0)
            if self.augment is not None:
                img, lab = self.augment(img, lab)  # one call per volume: independent draws
            volumes[key], volumes[f"{key}_label"] = img, lab
        return pair_item(**volumes, spacing=fixed.spacing, fixed_affine=fixed.affine, fixed_id=fref.id,
                         moving_id=mref.id, pair_signature=self.pair_signature(index))

    def pair_signature(self, index: int) -> str:
        """Signature of pair ``index``'s inputs (:mod:`data.signature`): each volume's id and
        files (path, size, mtime, ctime), the preprocessing config (with its code version), the label
        mapping and the augmentation."""
        fref, mref = self.pairs[index]
        mapping = self.mapping if self.with_labels else None
        volumes = {}
        for side, ref in (("fixed", fref), ("moving", mref)):
            volumes[side] = {"id": ref.id, "image": file_signature(ref.image),
                             "label": file_signature(ref.label if self.with_labels else None)}
        return signature({
            "dataset": "layout",
            **volumes,
            "preprocess": {"key": self.store.config.key(), **self.store.config.to_dict()},
            "label_mapping": None if mapping is None else mapping.to_dict(),
            "augment": None if self.augment is None else repr(self.augment),
        })


def check_labels_kept(ref: VolumeRef, source_labels: Sequence[int] | None, labels: Sequence[int] | None,
                      mapping: LabelMapping | None, config: Any) -> None:
    """DataError naming the label file when a label id that counts (kept by ``mapping``, not
    background) is in the file (``source_labels``, :attr:`Prepared.source_labels`) but no longer in
    the preprocessed map (``labels``, :attr:`Prepared.labels`): the crop/pad to ``data.shape`` or the
    resampling removed it, and Dice, which scores the labels present, would skip it without a word
    (a partly cut label is still scored, on what is left)."""
    if source_labels is None or labels is None or ref.label is None:
        return

    def counted(ids: Sequence[int]) -> set[int]:
        arr = np.asarray(ids, dtype=np.int64)
        return {int(v) for v in (mapping.apply(arr) if mapping is not None else arr)} - {0}

    lost = sorted(counted(source_labels) - counted(labels))
    if lost:
        shape = getattr(config, "shape", None)
        raise DataError(
            f"{ref.label}: label id(s) {lost} of the file are gone after preprocessing (crop/pad to "
            f"data.shape={list(shape) if shape is not None else None}, resampling to data.spacing): Dice would "
            "skip them silently; give a data.shape that holds the whole brain (data.crop_center=foreground "
            "centres the crop on it) or leave those ids out with data.labels_subset"
        )


def check_same_window(fref: VolumeRef, fixed: Prepared, mref: VolumeRef, moving: Prepared, config: Any) -> None:
    """DataError naming both files when a pair whose files share one grid by construction (LPBA40's
    pre-registered pairs) no longer does after preprocessing: a crop centred on each volume's own
    foreground (``data.crop_center=foreground``) moves them apart, and the pair would be scored
    shifted by the difference."""
    words = grid_mismatch(fixed.affine, moving.affine)
    if words:
        raise DataError(
            f"{mref.image}: after preprocessing its grid differs from its fixed image {fref.image} ({words}), "
            f"though the two share one grid on disk (data.crop_center={getattr(config, 'crop_center', None)}); "
            "use data.crop_center=volume so both keep one window"
        )


def _check_grids(fref: VolumeRef, fixed: Prepared, mref: VolumeRef, moving: Prepared) -> None:
    """:func:`check_pair_grids` of two preprocessed volumes."""
    check_pair_grids(fref, (axcodes(fixed.affine), tuple(fixed.image.shape), tuple(fixed.spacing)),
                     mref, (axcodes(moving.affine), tuple(moving.image.shape), tuple(moving.spacing)))


def check_pair_grids(fref: VolumeRef, fixed: tuple, mref: VolumeRef, moving: tuple) -> None:
    """DataError naming both image files when the preprocessed fixed and moving grids
    ``(axis codes, shape, spacing)`` differ in orientation (:func:`data.geometry.axcodes`), shape or
    spacing: the pair is registered in voxel space, so these must agree. Their origins are NOT
    compared: each subject lies in its own scanner space, and the paper's protocol registers
    inter-subject pairs on the common grid made by reorientation, resampling and crop/pad (the
    residual offset and rotation between subjects are part of what registration recovers). A pairs
    CSV, whose files claim one grid, compares full affines instead. ``validate()`` runs it on the
    grids predicted from the headers (:func:`data.preprocess.preprocessed_grid`), before any result;
    loading a pair, on the volumes themselves."""
    (f_codes, f_shape, f_spacing), (m_codes, m_shape, m_spacing) = fixed, moving
    if f_codes != m_codes:
        raise DataError(
            f"{mref.image}: preprocessed orientation {m_codes} differs from its fixed image {fref.image} "
            f"({f_codes}); set data.orientation (e.g. RAS) to reorient both to one voxel order"
        )
    if tuple(f_shape) != tuple(m_shape):
        raise DataError(
            f"{mref.image}: preprocessed shape {tuple(m_shape)} differs from its fixed image {fref.image} "
            f"{tuple(f_shape)}; set data.shape to crop/pad both to one grid"
        )
    if not np.allclose(f_spacing, m_spacing, rtol=0.0, atol=SPACING_TOLERANCE):
        raise DataError(
            f"{mref.image}: preprocessed spacing {tuple(m_spacing)} mm differs from its fixed image {fref.image} "
            f"{tuple(f_spacing)} mm; set data.spacing to resample both to one grid"
        )


class VolumeCheck(Dataset):
    """Validation work items for DataLoader workers: returns a summary dict or the error line."""

    def __init__(self, volumes: Sequence[VolumeRef], store: VolumeStore, with_labels: bool):
        self.volumes = list(volumes)
        self.store = store
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ref = self.volumes[i]
        label = ref.label if self.with_labels else None
        try:
            # checks and preprocesses (filling the cache when there is one): a volume all zero after
            # the crop, or a label the crop removes, fails here and not at its pair mid-run
            p = self.store.get(ref.key, ref.image, label)
            return {
                "id": ref.id,
                "kept": None if p.labels is None else list(p.labels),
                "labels": None if p.source_labels is None else list(p.source_labels),
                "shape": list(p.image.shape),
                "spacing": list(p.spacing),
            }
        except DataError as err:
            return {"id": ref.id, "error": str(err)}
