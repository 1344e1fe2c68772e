"""Generated subjects (no files): the random fields they are drawn with, their pair dataset and
the DataModule every generator shares (:mod:`data.mni`, :mod:`data.synthetic`).

A *subjects* object is any generator with ``subjects[k] -> {"image": float32 (1, *S) in
[0, 1], "label": int64 (1, *S), "id": str}`` (deterministic in ``k``), and the attributes
``spacing`` (mm, 3 floats), ``affine`` ((4, 4) voxel-to-mm), ``shape``, ``label_names``
({label: name}) and ``prepare()`` (load or build what every subject needs, once).

Random fields (numpy ``Generator`` in, so a subject depends only on its seed):

* :func:`smooth_noise` — Gaussian noise smoothed by a Gaussian, unit RMS per channel;
* :func:`random_displacement` — a diffeomorphic displacement: smooth noise on a coarse grid
  as a stationary velocity (RMS ``scale_mm`` per component), integrated by scaling and
  squaring (:func:`spatial.integrate`) and upsampled (:func:`spatial.resize_field`);
* :func:`random_bias_field` — ``exp(strength * n)``, ``n`` unit-RMS noise smoothed over 50 mm.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from data.base import RegistrationDataModule
from data.batch import PairItem, pair_item
from data.errors import DataError
from data.loaders import check_loader_args
from data.pairs import RandomPairSampler, all_pairs, consecutive_pairs
from data.signature import signature
from spatial.functional import integrate, resize_field

__all__ = [
    "smooth_noise",
    "random_displacement",
    "random_bias_field",
    "diagonal_affine",
    "GeneratedPairDataset",
    "GeneratedDataModule",
    "AxialSlices",
    "PAIR_SCHEMES",
    "takes_knobs",
]

PAIR_SCHEMES = {"consecutive": consecutive_pairs, "all": all_pairs}
_COARSE_SPACING_MM = 8.0
_BIAS_SMOOTHNESS_MM = 50.0
_INTEGRATION_STEPS = 7


def diagonal_affine(spacing: Sequence[float]) -> np.ndarray:
    """``(4, 4)`` voxel-to-mm matrix of an axis-aligned grid with ``spacing`` mm and origin 0."""
    a = np.eye(4)
    for i, s in enumerate(spacing):
        a[i, i] = float(s)
    return a


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], sigma_vox: float | Sequence[float], channels: int
) -> np.ndarray:
    """``(channels, *shape)`` float32 Gaussian noise smoothed by ``sigma_vox``, each channel unit RMS."""
    noise = rng.standard_normal((channels, *shape), dtype=np.float32)
    out = np.empty_like(noise)
    for c in range(channels):
        ndimage.gaussian_filter(noise[c], sigma=sigma_vox, output=out[c], mode="reflect", truncate=3.0)
        out[c] /= max(float(np.sqrt(np.mean(out[c] ** 2))), 1e-12)
    return out


def _coarse_grid(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], list[float]]:
    """A grid of about 8 mm spanning the same extent as ``shape``: (coarse shape, its spacing in mm)."""
    coarse = tuple(max(int(round((n - 1) * s / _COARSE_SPACING_MM)) + 1, 4) for n, s in zip(shape, spacing))
    coarse_mm = [(n - 1) * s / (c - 1) for n, s, c in zip(shape, spacing, coarse)]
    return coarse, coarse_mm


def random_displacement(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    scale_mm: float,
    smoothness_mm: float,
) -> torch.Tensor:
    """One random diffeomorphic displacement ``(1, D, *shape)`` float32 in voxel units.

    Velocity: smooth noise (Gaussian ``smoothness_mm``) on an ~8 mm grid, each component with
    RMS ``scale_mm``; integrated with 7 scaling-and-squaring steps on that grid, then upsampled.
    """
    coarse, coarse_mm = _coarse_grid(shape, spacing)
    sigma = [smoothness_mm / s for s in coarse_mm]
    v = smooth_noise(rng, coarse, sigma, len(shape)) * float(scale_mm)  # mm
    v = v / np.asarray(coarse_mm, dtype=np.float32).reshape(-1, *([1] * len(shape)))  # coarse voxels
    u = integrate(torch.from_numpy(v).unsqueeze(0), _INTEGRATION_STEPS)
    return resize_field(u, tuple(shape))


def random_bias_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], strength: float
) -> torch.Tensor:
    """A smooth multiplicative bias ``(1, 1, *shape)``: ``exp(strength * n)``, n unit RMS over ~50 mm."""
    coarse, coarse_mm = _coarse_grid(shape, spacing)
    sigma = [_BIAS_SMOOTHNESS_MM / s for s in coarse_mm]
    b = torch.from_numpy(smooth_noise(rng, coarse, sigma, 1)).unsqueeze(0)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    b = F.interpolate(b, size=tuple(shape), mode=mode, align_corners=True)
    return torch.exp(float(strength) * b)


class AxialSlices:
    """2-D subjects: slice ``index`` along the last axis of every subject of a 3-D generator.

    Each 3-D subject is generated whole (its deformation moves anatomy through the plane too,
    so two subjects' slices differ out of plane as real 2-D acquisitions do) and cut; the slices
    are kept in memory (``cache``), the 3-D subjects are not. ``shape`` and ``spacing`` lose the
    last axis; ``affine`` stays ``(4, 4)``, mapping voxel ``(i, j)`` to the mm of ``(i, j, index)``.
    """

    def __init__(self, subjects, index: int, cache: bool = True):
        n = int(subjects.shape[-1])
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
            raise ValueError(f"AxialSlices() 'slice_index' must be an int in 0 .. {n - 1} (the last axis "
                             f"of the {tuple(subjects.shape)} grid), got {index!r}")
        self.subjects, self.index, self.cache = subjects, int(index), bool(cache)
        self._cache: dict[int, dict] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.subjects.shape[:-1])

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.subjects.spacing[:-1])

    @property
    def affine(self) -> np.ndarray:
        a = np.array(self.subjects.affine, dtype=np.float64)
        a[:, 3] += a[:, 2] * self.index
        return a

    @property
    def label_names(self) -> dict[int, str]:
        return self.subjects.label_names

    @property
    def source_signature(self) -> Any:
        return getattr(self.subjects, "source_signature", None)

    def subject_id(self, k: int) -> str:
        return self.subjects.subject_id(k)

    def prepare(self) -> None:
        self.subjects.prepare()

    def __getitem__(self, k: int) -> dict:
        k = int(k)
        item = self._cache.get(k)
        if item is None:
            subject = self.subjects[k]
            item = {"image": subject["image"][..., self.index].contiguous(),
                    "label": subject["label"][..., self.index].contiguous(), "id": subject["id"]}
            if self.cache:
                self._cache[k] = item
        return dict(item)


class GeneratedPairDataset(Dataset):
    """Pairs of generated subjects as batch-contract items (:mod:`data.batch`).

    Args:
        subjects: the generator (see the module docstring).
        pairs: list of ``(fixed_k, moving_k)``; item ``i`` is ``pairs[i]``. For training use
            ``all_pairs(train_ids)`` with a :class:`RandomPairSampler`; for val/test a fixed
            list such as ``consecutive_pairs(ids)``.
        with_labels: include ``fixed_label``/``moving_label``.
        config: the settings the subjects are generated with (recorded in each item's
            ``pair_signature`` with the subject indices); default: ``repr(subjects)``.
    """

    def __init__(self, subjects, pairs: Sequence[Sequence[int]], with_labels: bool = True,
                 config: Any = None):
        self.subjects = subjects
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        if not self.pairs:
            raise DataError(f"{type(self).__name__}: 'pairs' is empty, expected at least one (fixed, moving) pair")
        self.with_labels = bool(with_labels)
        self.config = repr(subjects) if config is None else config

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def subject_ids(self) -> list[int]:
        """Sorted distinct subject indices used by the pairs."""
        return sorted({k for pair in self.pairs for k in pair})

    def __getitem__(self, index: int) -> PairItem:
        a, b = self.pairs[index]
        fixed, moving = self.subjects[a], self.subjects[b]
        labels = {"fixed_label": fixed["label"], "moving_label": moving["label"]} if self.with_labels else {}
        return pair_item(fixed["image"], moving["image"], **labels, spacing=self.subjects.spacing,
                         fixed_affine=self.subjects.affine, fixed_id=fixed["id"], moving_id=moving["id"],
                         pair_signature=self.pair_signature(index))

    def pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of every pair, in order (from ``subjects.subject_id``)."""
        return [(self.subjects.subject_id(a), self.subjects.subject_id(b)) for a, b in self.pairs]

    def pair_signature(self, index: int) -> str:
        """Signature of pair ``index``'s inputs: the generator (class and settings), the files it
        reads (its ``source_signature``, e.g. the MNI template's, when it has one) and the two
        subject indices (a subject depends only on them)."""
        a, b = self.pairs[index]
        return signature({"dataset": "generated", "generator": type(self.subjects).__name__,
                          "config": self.config, "source": getattr(self.subjects, "source_signature", None),
                          "fixed": a, "moving": b, "with_labels": self.with_labels})


class GeneratedDataModule(RegistrationDataModule):
    """Train/val/test pairs of generated subjects.

    Subjects ``0 .. n_train-1`` train, the next ``n_val`` validate, the next ``n_test`` test
    (disjoint by construction). Training draws ``pairs_per_epoch`` ordered pairs of distinct
    training subjects per epoch (:class:`data.pairs.RandomPairSampler`, seeded by ``(seed, epoch)``);
    validation and test use a fixed list: ``"consecutive"`` ``(k, k+1)`` (fixed k, moving k+1)
    or ``"all"`` ordered pairs. Subclasses build ``subjects`` and call :meth:`_setup_splits`.
    """

    def _setup_splits(
        self,
        subjects,
        n_train: int,
        n_val: int,
        n_test: int,
        pairs_per_epoch: int,
        seed: int,
        batch_size: int,
        num_workers: int,
        with_labels: bool,
        val_pairs: str,
        test_pairs: str,
    ) -> None:
        owner = type(self).__name__
        if int(n_train) < 2:
            raise ValueError(f"{owner}() 'n_train' must be >= 2 to form pairs, got {n_train!r}")
        for name, n in (("n_val", n_val), ("n_test", n_test)):
            if int(n) == 1 or int(n) < 0:
                raise ValueError(f"{owner}() '{name}' must be 0 or >= 2 to form pairs, got {n!r}")
        for name, scheme in (("val_pairs", val_pairs), ("test_pairs", test_pairs)):
            if scheme not in PAIR_SCHEMES:
                raise ValueError(f"{owner}() '{name}' must be one of {sorted(PAIR_SCHEMES)}, got {scheme!r}")
        if int(pairs_per_epoch) < 1:
            raise ValueError(f"{owner}() 'pairs_per_epoch' must be >= 1, got {pairs_per_epoch!r}")
        self.batch_size, self.num_workers = check_loader_args(batch_size, num_workers, owner)
        self.subjects = subjects
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.pairs_per_epoch = int(pairs_per_epoch)
        self.seed = int(seed)
        self.with_labels = bool(with_labels)
        self.train_ids = list(range(self.n_train))
        self.val_ids = list(range(self.n_train, self.n_train + self.n_val))
        self.test_ids = list(range(self.n_train + self.n_val, self.n_train + self.n_val + self.n_test))
        config = self._generator_config()
        self.train_set = GeneratedPairDataset(subjects, all_pairs(self.train_ids), self.with_labels, config)
        self.val_set = (
            GeneratedPairDataset(subjects, PAIR_SCHEMES[val_pairs](self.val_ids), self.with_labels, config)
            if self.val_ids
            else None
        )
        self.test_set = (
            GeneratedPairDataset(subjects, PAIR_SCHEMES[test_pairs](self.test_ids), self.with_labels, config)
            if self.test_ids
            else None
        )

    # settings that choose pairs or load them, not what a subject looks like (indices carry those)
    _NOT_GENERATOR = ("n_train", "n_val", "n_test", "pairs_per_epoch", "batch_size", "num_workers",
                      "val_pairs", "test_pairs")

    def _generator_config(self) -> Any:
        """The settings subjects are drawn with (the module's hyperparameters less split/loader
        ones); ``repr(subjects)`` when the subclass saved none."""
        hparams = getattr(self, "hparams", None)
        if not isinstance(hparams, Mapping) or not hparams:
            return repr(self.subjects)
        return {k: v for k, v in sorted(hparams.items()) if k not in self._NOT_GENERATOR}

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.subjects.spacing)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.subjects.shape)

    @property
    def num_labels(self) -> int | None:
        return max(self.subjects.label_names) + 1 if self.with_labels else None

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.subjects.label_names)

    def test_pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of the test pairs, in order (what a results folder must hold)."""
        if self.test_set is None:
            raise DataError("data.n_test is 0: no test subjects; set data.n_test >= 2")
        return self.test_set.pair_ids()

    def prepare_data(self) -> None:
        self.subjects.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.subjects.prepare()

    def validate(self) -> None:
        """Generated data read no files; prepares the generator so that failures come early."""
        self.subjects.prepare()

    def train_dataloader(self) -> DataLoader:
        sampler = RandomPairSampler(len(self.train_set), self.pairs_per_epoch, seed=self.seed)
        return self._loader(self.train_set, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            raise DataError("data.n_val is 0: no validation subjects; set data.n_val >= 2")
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise DataError("data.n_test is 0: no test subjects; set data.n_test >= 2")
        return self._loader(self.test_set)


def takes_knobs(knobs_cls: type):
    """Class decorator for a DataModule whose ``__init__`` takes its generator's knobs as
    ``**knobs``: the knobs are declared once, as the fields of the dataclass ``knobs_cls``, and
    the ``__init__`` signature is completed with them (keyword-only, with their defaults and
    types), so what reads signatures (the config type check, ``help()``, tests comparing a
    config with the defaults) sees every knob as if it were written out."""

    def decorate(cls):
        init = cls.__init__
        signature = inspect.signature(init)
        kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        hints = typing.get_type_hints(knobs_cls)
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
                 for f in dataclasses.fields(knobs_cls)]
        init.__signature__ = signature.replace(parameters=kept + added)
        init.__annotations__ = {**typing.get_type_hints(init), **{p.name: p.annotation for p in added}}
        return cls

    return decorate

