"""Offline real anatomy: "subjects" made from the MNI152 template that ships with nilearn.

The template, its labels and its grid are :mod:`data.mni_template`'s (re-exported here).

Subject ``k`` (:class:`MNISubjects`) is the template pulled back through a random
diffeomorphism plus intensity changes, all drawn from ``numpy.random.default_rng([seed, k])``,
so it is the same for the same ``(seed, k)`` in every process:

* deformation: Gaussian noise on a coarse grid (8 mm spacing), smoothed with a Gaussian of
  ``deformation_smoothness`` mm, rescaled so that each velocity component has RMS
  ``deformation_scale`` mm, integrated on the coarse grid with scaling and squaring
  (:func:`spatial.integrate`, 7 steps) and upsampled with :func:`spatial.resize_field`.
* image = warp(T1); labels = argmax of the warped class probabilities (equivalent to
  one-hot linear interpolation, but with the template's partial volumes).
* intensity: smooth multiplicative bias field ``exp(bias * n)`` (n: unit-RMS smooth noise,
  50 mm Gaussian), divide by the max, gamma ``x ** exp(gamma * N(0, 1))``, additive Gaussian
  noise of std ``noise`` inside the brain (the background stays exactly 0, as in skull-stripped
  scans), clip to [0, 1].

The knobs, their defaults and checks are declared once, in :class:`MNIKnobs`. Defaults: two
different subjects at 2 mm have a mean Dice over CSF/GM/WM of about 0.63 before registration
(``deformation_scale`` = 2 mm; 1 mm gives about 0.77, which left too little to learn: the CPU
quickstart gained +0.037 there and +0.075 at 2 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.generated import random_bias_field, random_displacement
from data.mni_template import (  # re-exported: the template's home is data.mni_template
    DEFAULT_SHAPES,
    LABEL_NAMES,
    PARCEL_NAMES,
    MNITemplate,
    check_resolution,
    load_mni_template,
    template_source,
)
from spatial.filters import gaussian_blur
from spatial.functional import warp

__all__ = [
    "LABEL_NAMES",
    "PARCEL_NAMES",
    "LABEL_PROTOCOLS",
    "CONTRASTS",
    "DEFAULT_SHAPES",
    "MNIKnobs",
    "MNITemplate",
    "load_mni_template",
    "MNISubjects",
]

LABEL_PROTOCOLS = ("tissue", "parcels")
CONTRASTS = ("t1", "inverted")
_OWNER = "MNISubjects()"


def _number(name: str, value: Any, strict: bool = False) -> float:
    """``float(value)``, or ValueError naming ``name`` unless a finite number ``>= 0`` (``> 0`` if strict)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x < 0 or (strict and x == 0):
        raise ValueError(f"{_OWNER} '{name}' must be a number {'>' if strict else '>='} 0, got {value!r}")
    return x


@dataclass(frozen=True)
class MNIKnobs:
    """How MNI subjects are drawn: every knob of :class:`MNISubjects`, with its default and its
    check, declared here once. :class:`data.MNIDataModule` takes the same names (its signature
    is made from these fields) and ``configs/data/mni.yaml`` states them, so adding a knob is a
    field here (used in :meth:`MNISubjects.generate`) plus its line in the yaml; every field is
    in the hyper-parameters, hence in each generated pair's ``pair_signature``.

    Attributes:
        resolution: 1 or 2 (mm).
        shape: grid shape (3 sizes >= 8); None for ``DEFAULT_SHAPES[resolution]``.
        deformation_scale: RMS of each velocity component in mm (0 disables warping). The
            default, 2 mm, gives two subjects at 2 mm a mean Dice over CSF/GM/WM of about 0.63
            before registration (1 mm gave about 0.77, which left too little to learn).
        deformation_smoothness: Gaussian sigma of the velocity noise in mm (> 0).
        bias: std of the log bias field (0 disables).
        gamma: std of the log gamma exponent (0 disables).
        noise: std of additive Gaussian noise on [0, 1] intensities (0 disables).
        contrast: ``"t1"`` (the template's) or ``"inverted"``: ``(1 - x)`` times the brain's
            partial volume (CSF bright, WM dark, background 0: a T2-like domain shift).
        labels: ``"tissue"`` (0 background, 1 CSF, 2 GM, 3 WM) or ``"parcels"`` (17: CSF and GM/WM
            split into octants by the MNI planes through the origin, :data:`PARCEL_NAMES`): finer
            labels whose boundaries intensity does not show (label granularity).
        slice_thickness: mm; > 0 simulates an acquisition with thick slices along the last axis
            (a resolution shift, like CUMC12's 3 mm coronal slices): the deformed image is blurred
            along that axis by a Gaussian of FWHM ``slice_thickness``, sampled every
            ``slice_thickness`` mm and interpolated back to the grid linearly. Labels are untouched.
            0 (default) = off; values up to the voxel size change little.
    """

    resolution: int = 2
    shape: Sequence[int] | None = None
    deformation_scale: float = 2.0
    deformation_smoothness: float = 12.0
    bias: float = 0.1
    gamma: float = 0.1
    noise: float = 0.01
    contrast: str = "t1"
    labels: str = "tissue"
    slice_thickness: float = 0.0

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        put("resolution", check_resolution(self.resolution))
        if self.shape is not None:
            try:
                shape = tuple(int(s) for s in self.shape)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 3 or any(s < 8 for s in shape):
                raise ValueError(f"{_OWNER} 'shape' must be 3 sizes >= 8 or null, got {self.shape!r}")
            put("shape", shape)
        for name in ("deformation_scale", "bias", "gamma", "noise", "slice_thickness"):
            put(name, _number(name, getattr(self, name)))
        put("deformation_smoothness", _number("deformation_smoothness", self.deformation_smoothness, strict=True))
        for name, options in (("contrast", CONTRASTS), ("labels", LABEL_PROTOCOLS)):
            if getattr(self, name) not in options:
                raise ValueError(f"{_OWNER} '{name}' must be one of {options}, got {getattr(self, name)!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], owner: str) -> MNIKnobs:
        """The knobs named in ``settings`` (defaults for the rest); TypeError naming an unknown one."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise TypeError(f"{owner}: unknown setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class MNISubjects:
    """Deterministic random "subjects" made from the MNI152 template (see module docstring).

    Args:
        knobs: the :class:`MNIKnobs` (how subjects are drawn), or None to build them from
            ``**settings`` (``MNISubjects(resolution=2, noise=0.0)``; defaults for the rest).
        seed: subject ``k`` depends only on ``(seed, k)`` (and the knobs).
        cache: keep generated subjects in memory (lazily, per process; ~5 MB per subject
            at 2 mm, ~40 MB at 1 mm).

    The knobs are attributes too (``subjects.noise``); ``shape`` is the resolved grid.
    ``subjects[k]`` returns ``{"image": float32 (1, *S) in [0, 1], "label": int64 (1, *S),
    "id": "mni_{k:04d}"}`` (tensors, CPU).
    """

    def __init__(self, knobs: MNIKnobs | None = None, seed: int = 0, cache: bool = True, **settings: Any):
        if knobs is not None and settings:
            raise TypeError(f"{_OWNER}: give 'knobs' or settings {sorted(settings)}, not both")
        if knobs is not None and not isinstance(knobs, MNIKnobs):
            raise TypeError(f"{_OWNER} 'knobs' must be an MNIKnobs, got {type(knobs).__name__}")
        self.knobs = knobs if knobs is not None else MNIKnobs.from_settings(settings, _OWNER)
        for name, value in self.knobs.to_dict().items():
            setattr(self, name, value)
        self.shape = DEFAULT_SHAPES[self.resolution] if self.knobs.shape is None else self.knobs.shape
        self.seed = int(seed)
        self.cache = bool(cache)
        self._cache: dict[int, dict] = {}
        self._stack_cache: torch.Tensor | None = None

    @property
    def template(self) -> MNITemplate:
        return load_mni_template(self.resolution, self.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (float(self.resolution),) * 3

    @property
    def source_signature(self) -> dict:
        """The template files the subjects are made from (:func:`data.mni_template.template_source`)."""
        return template_source()

    @staticmethod
    def subject_id(k: int) -> str:
        return f"mni_{int(k):04d}"

    def __getitem__(self, k: int) -> dict:
        k = int(k)
        if k < 0:
            raise IndexError(f"MNISubjects: subject index must be >= 0, got {k}")
        subject = self._cache.get(k)
        if subject is None:
            subject = self.generate(k)
            if self.cache:  # labels kept as uint8 (5 MB per 2 mm subject instead of 12 MB)
                self._cache[k] = {**subject, "label": subject["label"].to(torch.uint8)}
            return subject
        return {**subject, "label": subject["label"].to(torch.int64)}

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel-to-MNI-mm matrix of the grid."""
        return self.template.affine

    @property
    def label_names(self) -> dict[int, str]:
        return dict(PARCEL_NAMES if self.labels == "parcels" else LABEL_NAMES)

    def prepare(self) -> None:
        """Load the template (once per process)."""
        self.template

    def displacement(self, rng: np.random.Generator) -> torch.Tensor:
        """Draw one random diffeomorphic displacement ``(1, 3, *S)`` in voxel units."""
        return random_displacement(rng, self.shape, self.spacing, self.deformation_scale, self.deformation_smoothness)

    def _stack(self) -> torch.Tensor:
        """``(1, 5, *S)``: template image and the four class probabilities (+ the MNI mm
        coordinates x, y, z of each voxel for parcels: ``(1, 8, *S)``), built once."""
        if getattr(self, "_stack_cache", None) is None:
            tpl = self.template
            channels = [tpl.image[None], tpl.probs]
            if self.labels == "parcels":
                index = np.stack(np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij")).reshape(3, -1)
                world = tpl.affine[:3, :3] @ index + tpl.affine[:3, 3:]
                channels.append(world.reshape(3, *self.shape).astype(np.float32))
            self._stack_cache = torch.from_numpy(np.concatenate(channels)).unsqueeze(0)
        return self._stack_cache

    def _parcels(self, tissue: np.ndarray, world: np.ndarray) -> np.ndarray:
        """Parcel ids from tissue labels ``(*S)`` and (warped) MNI coordinates ``(3, *S)``."""
        octant = 4 * (world[0] > 0) + 2 * (world[1] > 0) + (world[2] > 0)
        out = np.where(tissue >= 2, 2 + 8 * (tissue - 2) + octant, tissue)
        return out.astype(np.int64)

    def generate(self, k: int) -> dict:
        """Generate subject ``k`` (no caching)."""
        rng = np.random.default_rng([self.seed, int(k)])
        stack = self._stack()
        with torch.no_grad():
            if self.deformation_scale > 0:
                u = self.displacement(rng)
                stack = warp(stack, u, mode="bilinear", padding_mode="border")
            image = stack[:, :1]
            # numpy's argmax is ~10x faster than torch's over the channel axis on CPU
            tissue = stack[0, 1:5].numpy().argmax(0)
            if self.labels == "parcels":
                tissue = self._parcels(tissue, stack[0, 5:8].numpy())
            label = torch.from_numpy(tissue[None].astype(np.int64))
            if self.slice_thickness > 0:
                image = self._thick_slices(image)
            if self.bias > 0:
                image = image * random_bias_field(rng, self.shape, self.spacing, self.bias)
            image = image / image.max().clamp_min(1e-6)
            if self.gamma > 0:
                image = image.clamp_min(0.0) ** float(np.exp(self.gamma * rng.standard_normal()))
            if self.contrast == "inverted":
                image = (1.0 - image) * (1.0 - stack[:, 1:2])  # stack[:, 1] = warped background probability
            if self.noise > 0:  # inside the brain only: skull-stripped scans have an exact-zero background
                image = image + self.noise * torch.from_numpy(
                    rng.standard_normal(image.shape, dtype=np.float32)
                ) * (label > 0).unsqueeze(0)
            image = image.clamp(0.0, 1.0)[0]
        return {
            "image": image.contiguous(),
            "label": label.to(torch.int64).contiguous(),
            "id": self.subject_id(k),
        }

    def _thick_slices(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, 1, *S)`` image as acquired with ``slice_thickness`` mm slices along the last axis."""
        spacing = self.spacing[-1]
        fwhm_vox = self.slice_thickness / spacing
        blurred = gaussian_blur(image, [0.0, 0.0, fwhm_vox / (8 * np.log(2)) ** 0.5])
        n = image.shape[-1]
        n_slices = max(int(round(n / fwhm_vox)), 2)
        coarse = F.interpolate(blurred, size=(*image.shape[2:4], n_slices), mode="trilinear", align_corners=True)
        return F.interpolate(coarse, size=tuple(image.shape[2:]), mode="trilinear", align_corners=True)

    def __repr__(self) -> str:
        knobs = {**self.knobs.to_dict(), "shape": self.shape}
        names = ["resolution", "shape", "seed"] + [n for n in knobs if n not in ("resolution", "shape")]
        values = {**knobs, "seed": self.seed}
        return "MNISubjects(" + ", ".join(f"{n}={values[n]!r}" for n in names) + ")"
