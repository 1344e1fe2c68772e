"""Synthetic anatomy with a dial for how much intensity tells about labels (intensity–label MI).

The paper's central finding (Jena et al. 2024, Fig. 1) is that classical registration does
as well as the image lets it: where intensity says little about the labels (low
intensity–label mutual information), no intensity-driven method can align them. This
generator makes that testable on a laptop.

A *template* label map is drawn once per ``seed``, SynthMorph-style: a foreground blob
(an ellipsoid with a smooth random boundary) split into ``n_labels`` regions by the argmax of
``n_labels`` smooth Gaussian noise fields (Gaussian ``label_smoothness`` voxels). Subject
``k`` is that template under a random smooth diffeomorphism (:func:`data.generated.random_displacement`),
so every subject has the same regions in different places, like brains.

**The dial: ``intensity_classes``** (1 .. ``n_labels``). Labels are put in a fixed random
order (from ``seed``) and label number ``p`` in that order gets intensity class
``floor(p * intensity_classes / n_labels)``: with as many classes as labels every region has
its own intensity; with fewer, groups of neighbouring-in-order labels share one and the
boundaries between them are invisible. Levels are nested (with 4 classes, each class is
the union of two of the 8-class ones), so MI(i; s) falls monotonically as the dial goes
down (≈ log2(classes) bits before noise). ``class_noise`` (std of intensity within a
class, relative to the gap between class means) blurs the classes into each other: the
second way to lower MI.

Image of a subject: class means evenly spaced in [0.2, 1.0] (one class: 0.6), jittered per
subject by ``intensity_jitter``; the warped one-hot labels (partial volumes) times their
means, Gaussian blur of ``blur`` voxels, a bias field (``bias``), Gaussian noise of std
``class_noise * gap`` inside the foreground, clip to [0, 1]; background exactly 0.

``subjects[k]`` returns ``{"image": float32 (1, *S), "label": int64 (1, *S) with 0 background
and 1 .. n_labels, "id": "syn_{k:04d}"}``; everything is drawn from
``numpy.random.default_rng([seed, k])`` and is the same in every process.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from data.generated import GeneratedDataModule, diagonal_affine, random_bias_field, random_displacement, smooth_noise
from spatial.functional import warp

__all__ = ["SyntheticSubjects", "SyntheticDataModule", "class_of_labels"]

_TEMPLATE_STREAM = 2**31 - 1  # rng stream of the template (subject streams are 0, 1, ...)


def class_of_labels(n_labels: int, intensity_classes: int, seed: int) -> np.ndarray:
    """``(n_labels + 1,)`` int: intensity class of each label (index 0, background, gets -1).

    Labels in a seeded random order; label at position ``p`` gets ``floor(p * C / n_labels)``.
    """
    order = np.random.default_rng([int(seed), _TEMPLATE_STREAM, 1]).permutation(int(n_labels))
    classes = np.full(int(n_labels) + 1, -1, dtype=np.int64)
    classes[order + 1] = np.arange(int(n_labels)) * int(intensity_classes) // int(n_labels)
    return classes


class SyntheticSubjects:
    """Deterministic synthetic subjects with an intensity–label information dial (module docstring).

    Args:
        shape: grid (2 or 3 sizes; default 64^3).
        spacing: mm per voxel (metrics only).
        n_labels: foreground labels (>= 1).
        intensity_classes: distinct intensity classes among the labels, 1 .. n_labels (the dial;
            None: n_labels).
        class_noise: within-class noise std as a fraction of the gap between class means (>= 0).
        label_smoothness: Gaussian sigma (voxels) of the fields whose argmax makes the regions.
        deformation_scale: RMS (mm) of each velocity component of a subject's deformation.
        deformation_smoothness: Gaussian sigma (mm) of that velocity.
        blur: partial-volume Gaussian sigma in voxels (0: none).
        bias: std of the log bias field (0: none).
        intensity_jitter: std of a per-subject shift of every class mean (0: none).
        seed: template and subjects depend only on it.
        cache: keep generated subjects in memory.
    """

    def __init__(
        self,
        shape: Sequence[int] = (64, 64, 64),
        spacing: float = 1.0,
        n_labels: int = 16,
        intensity_classes: int | None = None,
        class_noise: float = 0.1,
        label_smoothness: float = 6.0,
        deformation_scale: float = 2.0,
        deformation_smoothness: float = 10.0,
        blur: float = 0.5,
        bias: float = 0.05,
        intensity_jitter: float = 0.02,
        seed: int = 0,
        cache: bool = True,
    ):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or any(s < 8 for s in self.shape):
            raise ValueError(f"SyntheticSubjects() 'shape' must be 2 or 3 sizes >= 8, got {tuple(shape)}")
        if not float(spacing) > 0:
            raise ValueError(f"SyntheticSubjects() 'spacing' must be > 0, got {spacing!r}")
        if int(n_labels) < 1:
            raise ValueError(f"SyntheticSubjects() 'n_labels' must be >= 1, got {n_labels!r}")
        intensity_classes = int(n_labels) if intensity_classes is None else intensity_classes
        if not 1 <= int(intensity_classes) <= int(n_labels):
            raise ValueError(
                f"SyntheticSubjects() 'intensity_classes' must be in 1 .. n_labels={n_labels}, got {intensity_classes!r}"
            )
        for name, value in (
            ("class_noise", class_noise),
            ("deformation_scale", deformation_scale),
            ("blur", blur),
            ("bias", bias),
            ("intensity_jitter", intensity_jitter),
        ):
            if not float(value) >= 0:
                raise ValueError(f"SyntheticSubjects() '{name}' must be >= 0, got {value!r}")
        for name, value in (("label_smoothness", label_smoothness), ("deformation_smoothness", deformation_smoothness)):
            if not float(value) > 0:
                raise ValueError(f"SyntheticSubjects() '{name}' must be > 0, got {value!r}")
        self.spacing = (float(spacing),) * len(self.shape)
        self.n_labels = int(n_labels)
        self.intensity_classes = int(intensity_classes)
        self.class_noise = float(class_noise)
        self.label_smoothness = float(label_smoothness)
        self.deformation_scale = float(deformation_scale)
        self.deformation_smoothness = float(deformation_smoothness)
        self.blur = float(blur)
        self.bias = float(bias)
        self.intensity_jitter = float(intensity_jitter)
        self.seed = int(seed)
        self.cache = bool(cache)
        self._cache: dict[int, dict] = {}
        self._template: np.ndarray | None = None
        self.label_classes = class_of_labels(self.n_labels, self.intensity_classes, self.seed)
        c = self.intensity_classes
        self.class_means = np.linspace(0.2, 1.0, c) if c > 1 else np.array([0.6])
        self.class_gap = 0.8 / (c - 1) if c > 1 else 0.8

    # ------------------------------------------------------------------ the generator protocol
    @property
    def affine(self) -> np.ndarray:
        return diagonal_affine(self.spacing)

    @property
    def label_names(self) -> dict[int, str]:
        return {0: "background", **{k: f"region_{k}" for k in range(1, self.n_labels + 1)}}

    def prepare(self) -> None:
        self.template

    @staticmethod
    def subject_id(k: int) -> str:
        return f"syn_{int(k):04d}"

    # ------------------------------------------------------------------ template and subjects
    @property
    def template(self) -> np.ndarray:
        """``(*S)`` int64 template label map (0 background, 1 .. n_labels), built once."""
        if self._template is None:
            rng = np.random.default_rng([self.seed, _TEMPLATE_STREAM])
            ndim = len(self.shape)
            grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in self.shape], indexing="ij")
            radius = np.sqrt(sum((g / 0.8) ** 2 for g in grid))
            wobble = smooth_noise(rng, self.shape, [n / 6.0 for n in self.shape], 1)[0]
            foreground = radius + 0.08 * wobble < 1.0
            fields = smooth_noise(rng, self.shape, self.label_smoothness, self.n_labels)
            labels = fields.argmax(0).astype(np.int64) + 1
            labels[~foreground] = 0
            # every label present: a label that lost the argmax everywhere gets its strongest voxel's blob
            for k in range(1, self.n_labels + 1):
                if not (labels == k).any():
                    centre = np.unravel_index(np.argmax(np.where(foreground, fields[k - 1], -np.inf)), self.shape)
                    ball = np.zeros(self.shape, bool)
                    ball[centre] = True
                    ball = ndimage.binary_dilation(ball, iterations=2) & foreground
                    labels[ball] = k
            assert labels.ndim == ndim
            self._template = labels
        return self._template

    def __getitem__(self, k: int) -> dict:
        k = int(k)
        if k < 0:
            raise IndexError(f"SyntheticSubjects: subject index must be >= 0, got {k}")
        subject = self._cache.get(k)
        if subject is None:
            subject = self.generate(k)
            if self.cache:
                self._cache[k] = subject
        return {**subject}

    def generate(self, k: int) -> dict:
        """Generate subject ``k`` (no caching)."""
        rng = np.random.default_rng([self.seed, int(k)])
        tpl = torch.from_numpy(self.template)
        onehot = F.one_hot(tpl, self.n_labels + 1).movedim(-1, 0).unsqueeze(0).float()  # (1, L+1, *S)
        with torch.no_grad():
            if self.deformation_scale > 0:
                u = random_displacement(rng, self.shape, self.spacing, self.deformation_scale, self.deformation_smoothness)
                onehot = warp(onehot, u, mode="bilinear", padding_mode="border")
            label = onehot[0].argmax(0, keepdim=True)
            means = self.class_means + self.intensity_jitter * rng.standard_normal(len(self.class_means))
            label_means = np.zeros(self.n_labels + 1, dtype=np.float32)
            label_means[1:] = means[self.label_classes[1:]]
            image = torch.einsum("blx,l->bx", onehot.flatten(2), torch.from_numpy(label_means)).reshape(1, 1, *self.shape)
            image = image.numpy()[0, 0]
            if self.blur > 0:
                image = ndimage.gaussian_filter(image, self.blur, mode="constant", truncate=3.0)
            image = torch.from_numpy(image.astype(np.float32))[None, None]
            if self.bias > 0:
                image = image * random_bias_field(rng, self.shape, self.spacing, self.bias)
            foreground = (label > 0).unsqueeze(0)
            if self.class_noise > 0:
                noise = rng.standard_normal(image.shape, dtype=np.float32)
                image = image + self.class_noise * self.class_gap * torch.from_numpy(noise) * foreground
            image = torch.where(foreground, image, image * 0).clamp(0.0, 1.0)[0]
        return {"image": image.contiguous(), "label": label.to(torch.int64).contiguous(), "id": self.subject_id(k)}

    def __repr__(self) -> str:
        return (
            f"SyntheticSubjects(shape={self.shape}, n_labels={self.n_labels}, "
            f"intensity_classes={self.intensity_classes}, class_noise={self.class_noise}, seed={self.seed})"
        )


class SyntheticDataModule(GeneratedDataModule):
    """Pairs of :class:`SyntheticSubjects` (``data=synthetic``); splits as :class:`data.MNIDataModule`.

    ``**generator``: every :class:`SyntheticSubjects` argument except ``seed`` and ``cache``
    (``data.intensity_classes=4``, ``data.shape=[32,32,32]``, ...); an unknown one raises TypeError.
    """

    def __init__(
        self,
        n_train: int = 16,
        n_val: int = 4,
        n_test: int = 4,
        pairs_per_epoch: int = 100,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        with_labels: bool = True,
        val_pairs: str = "consecutive",
        test_pairs: str = "consecutive",
        **generator,
    ):
        super().__init__()
        if "shape" in generator:
            generator["shape"] = tuple(int(s) for s in generator["shape"])
        self.save_hyperparameters()
        subjects = SyntheticSubjects(seed=seed, **generator)
        self._setup_splits(subjects, n_train, n_val, n_test, pairs_per_epoch, seed, batch_size, num_workers,
                           with_labels, val_pairs, test_pairs)
