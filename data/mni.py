"""Offline real anatomy: "subjects" made from the MNI152 template that ships with nilearn.

Nothing is downloaded: nilearn ships the 1 mm ICBM152 2009 T1, GM and WM maps inside its
package (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``; that is
what ``nilearn.datasets.load_mni152_template`` and its GM/WM siblings read). They are read
directly with nibabel (importing ``nilearn.datasets`` takes seconds), falling back to those
nilearn loaders if the files move. The 2 mm grid is nilearn's (99 x 117 x 95, same origin;
2 mm voxel ``i`` sits on 1 mm voxel ``2i``), computed here with a [1/4, 1/2, 1/4] anti-alias
filter per axis and stride 2 (a fraction of a second, vs nilearn's spline resampling).

Labels (:func:`load_mni_template`): 0 background, 1 CSF, 2 GM, 3 WM.
    brain = fill_holes(T1 > 0.1) (the template is skull-stripped; filling the holes keeps the
    dark ventricles), p_GM, p_WM = nilearn's probability maps, p_CSF = brain * clip(1 - p_GM -
    p_WM, 0, 1), p_background = 1 - brain; label = argmax(p_bg, p_CSF, p_GM, p_WM).

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

Defaults were tuned so that two different subjects at 2 mm have a mean Dice over CSF/GM/WM
of about 0.77 before registration (see ``DEFAULT_DEFORMATION_SCALE``).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from data.io import DataError
from data.pairs import RandomPairSampler, all_pairs, consecutive_pairs  # noqa: F401 (re-exported)
from spatial.functional import integrate, resize_field, warp

__all__ = [
    "LABEL_NAMES",
    "DEFAULT_SHAPES",
    "DEFAULT_DEFORMATION_SCALE",
    "DEFAULT_DEFORMATION_SMOOTHNESS",
    "MNITemplate",
    "load_mni_template",
    "MNISubjects",
    "MNIPairDataset",
    "RandomPairSampler",
    "consecutive_pairs",
    "all_pairs",
]

LABEL_NAMES = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
DEFAULT_SHAPES = {1: (192, 224, 192), 2: (96, 112, 96)}
DEFAULT_DEFORMATION_SCALE = 1.0  # mm, RMS of each velocity component (Dice ~0.77 at 2 mm)
DEFAULT_DEFORMATION_SMOOTHNESS = 12.0  # mm, Gaussian sigma of the velocity noise
DEFAULT_BIAS = 0.1
DEFAULT_GAMMA = 0.1
DEFAULT_NOISE = 0.01
_COARSE_SPACING_MM = 8.0
_BIAS_SMOOTHNESS_MM = 50.0
_BRAIN_THRESHOLD = 0.1
_INTEGRATION_STEPS = 7


@dataclass(frozen=True)
class MNITemplate:
    """The template on the cropped/padded grid.

    Attributes:
        image: ``(X, Y, Z)`` float32 T1 in [0, 1].
        probs: ``(4, X, Y, Z)`` float32 class probabilities (background, CSF, GM, WM).
        labels: ``(X, Y, Z)`` int64 argmax of ``probs``.
        spacing: ``(r, r, r)`` mm.
        affine: ``(4, 4)`` voxel-to-MNI-mm matrix of the cropped grid.
    """

    image: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


def _check_resolution(resolution) -> int:
    if resolution not in (1, 2) or isinstance(resolution, bool):
        raise ValueError(f"MNI 'resolution' must be 1 or 2 (mm), got {resolution!r}")
    return int(resolution)


def _crop_or_pad(array: np.ndarray, shape: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """Place ``array``'s window starting at ``offsets`` (negative: pad) into ``shape``, zero fill."""
    out = np.zeros(tuple(array.shape[: array.ndim - 3]) + tuple(shape), dtype=array.dtype)
    src, dst = [], []
    for n_in, n_out, off in zip(array.shape[-3:], shape, offsets):
        s0, s1 = max(off, 0), min(off + n_out, n_in)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - off, s1 - off))
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@functools.lru_cache(maxsize=1)
def _load_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm T1, GM, WM maps (each scaled to max 1, float32) and their affine."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed; the MNI152 template ships with it (pip install nilearn)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {key: folder / name for key, name in _NILEARN_FILES.items()}
    if all(p.is_file() for p in paths.values()):
        imgs = {key: nib.load(str(p)) for key, p in paths.items()}
    else:  # files moved in another nilearn version: use its loaders (no download either)
        from nilearn import datasets

        imgs = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    arrays = []
    for key in ("t1", "gm", "wm"):
        arr = np.asarray(imgs[key].get_fdata(), dtype=np.float32)
        arrays.append(arr / max(float(arr.max()), 1e-12))
    return arrays[0], arrays[1], arrays[2], np.asarray(imgs["t1"].affine, dtype=np.float64)


def _downsample2(volumes: np.ndarray) -> np.ndarray:
    """``(C, X, Y, Z)`` 1 mm -> ``(C, ceil(X/2), ...)`` 2 mm: [1/4, 1/2, 1/4] filter, stride 2, zero pad."""
    x = np.asarray(volumes, dtype=np.float32)
    for axis in (1, 2, 3):
        n = (x.shape[axis] + 1) // 2
        pad = [(0, 0)] * 4
        pad[axis] = (1, 2)
        xp = np.pad(x, pad)

        def take(start: int) -> np.ndarray:
            index = [slice(None)] * 4
            index[axis] = slice(start, start + 2 * n, 2)
            return xp[tuple(index)]

        x = 0.25 * take(0) + 0.5 * take(1) + 0.25 * take(2)
    return x


def load_mni_template(resolution: int = 2, shape: Sequence[int] | None = None) -> MNITemplate:
    """Load the nilearn MNI152 template with tissue labels on a centred crop/pad of ``shape``.

    ``shape`` defaults to ``DEFAULT_SHAPES[resolution]`` ((96, 112, 96) at 2 mm from the
    99 x 117 x 95 template, (192, 224, 192) at 1 mm from 197 x 233 x 189), sizes divisible by 16.
    The crop is centred on the volume (the brain fits inside both defaults). Cached per process;
    the returned arrays are read-only.
    """
    resolution = _check_resolution(resolution)
    shape = DEFAULT_SHAPES[resolution] if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"load_mni_template() 'shape' must be 3 sizes >= 8, got {shape}")
    return _load_template(resolution, shape)


@functools.lru_cache(maxsize=4)
def _load_template(resolution: int, shape: tuple[int, int, int]) -> MNITemplate:
    t1, gm, wm, affine = _load_1mm()
    if resolution == 2:
        t1, gm, wm = _downsample2(np.stack([t1, gm, wm]))
        affine = affine.copy()
        affine[:3, :3] *= 2.0
    t1 = np.clip(t1, 0.0, None)
    t1 /= t1.max()
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    brain = ndimage.binary_fill_holes(t1 > _BRAIN_THRESHOLD).astype(np.float32)
    csf = brain * np.clip(1.0 - gm - wm, 0.0, 1.0)
    probs = np.stack([1.0 - brain, csf, gm * brain, wm * brain]).astype(np.float32)
    t1 = t1 * brain  # drop resampling ringing outside the brain

    offsets = [(n_in - n_out) // 2 for n_in, n_out in zip(t1.shape, shape)]
    t1 = _crop_or_pad(t1, shape, offsets)
    probs = _crop_or_pad(probs, shape, offsets)
    probs[0][probs[1:].sum(0) == 0] = 1.0  # padded voxels are background
    labels = probs.argmax(0).astype(np.int64)
    affine = np.array(affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, :3] @ np.asarray(offsets, dtype=np.float64)
    for arr in (t1, probs, labels, affine):
        arr.setflags(write=False)
    return MNITemplate(
        image=t1, probs=probs, labels=labels, spacing=(float(resolution),) * 3, affine=affine
    )


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float, channels: int) -> np.ndarray:
    """``(channels, *shape)`` Gaussian noise smoothed by ``sigma_vox``, each channel unit RMS."""
    noise = rng.standard_normal((channels, *shape), dtype=np.float32)
    out = np.empty_like(noise)
    for c in range(channels):
        ndimage.gaussian_filter(noise[c], sigma=sigma_vox, output=out[c], mode="reflect", truncate=3.0)
        out[c] /= max(float(np.sqrt(np.mean(out[c] ** 2))), 1e-12)
    return out


class MNISubjects:
    """Deterministic random "subjects" made from the MNI152 template (see module docstring).

    Args:
        resolution: 1 or 2 (mm).
        shape: grid shape; None for ``DEFAULT_SHAPES[resolution]``.
        seed: subject ``k`` depends only on ``(seed, k)`` (and the other arguments).
        deformation_scale: RMS of each velocity component in mm (0 disables warping).
        deformation_smoothness: Gaussian sigma of the velocity noise in mm.
        bias: std of the log bias field (0 disables).
        gamma: std of the log gamma exponent (0 disables).
        noise: std of additive Gaussian noise on [0, 1] intensities (0 disables).
        cache: keep generated subjects in memory (lazily, per process; ~5 MB per subject
            at 2 mm, ~40 MB at 1 mm).

    ``subjects[k]`` returns ``{"image": float32 (1, *S) in [0, 1], "label": int64 (1, *S),
    "id": "mni_{k:04d}"}`` (tensors, CPU).
    """

    def __init__(
        self,
        resolution: int = 2,
        shape: Sequence[int] | None = None,
        seed: int = 0,
        deformation_scale: float = DEFAULT_DEFORMATION_SCALE,
        deformation_smoothness: float = DEFAULT_DEFORMATION_SMOOTHNESS,
        bias: float = DEFAULT_BIAS,
        gamma: float = DEFAULT_GAMMA,
        noise: float = DEFAULT_NOISE,
        cache: bool = True,
    ):
        self.resolution = _check_resolution(resolution)
        self.shape = DEFAULT_SHAPES[self.resolution] if shape is None else tuple(int(s) for s in shape)
        self.seed = int(seed)
        for name, value in (
            ("deformation_scale", deformation_scale),
            ("bias", bias),
            ("gamma", gamma),
            ("noise", noise),
        ):
            if not float(value) >= 0:
                raise ValueError(f"MNISubjects() '{name}' must be >= 0, got {value!r}")
        if not float(deformation_smoothness) > 0:
            raise ValueError(f"MNISubjects() 'deformation_smoothness' must be > 0, got {deformation_smoothness!r}")
        self.deformation_scale = float(deformation_scale)
        self.deformation_smoothness = float(deformation_smoothness)
        self.bias = float(bias)
        self.gamma = float(gamma)
        self.noise = float(noise)
        self.cache = bool(cache)
        self._cache: dict[int, dict] = {}
        self._stack_cache: torch.Tensor | None = None

    @property
    def template(self) -> MNITemplate:
        return load_mni_template(self.resolution, self.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (float(self.resolution),) * 3

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

    def _coarse_shape(self) -> tuple[int, ...]:
        return tuple(
            max(int(round((n - 1) * self.resolution / _COARSE_SPACING_MM)) + 1, 4) for n in self.shape
        )

    def displacement(self, rng: np.random.Generator) -> torch.Tensor:
        """Draw one random diffeomorphic displacement ``(1, 3, *S)`` in voxel units."""
        coarse = self._coarse_shape()
        coarse_mm = [(n - 1) * self.resolution / (c - 1) for n, c in zip(self.shape, coarse)]
        sigma = [self.deformation_smoothness / s for s in coarse_mm]
        v = _smooth_noise(rng, coarse, sigma, 3) * self.deformation_scale  # mm
        # mm -> voxels of the coarse grid (both grids span the same extent)
        v = v / np.asarray(coarse_mm, dtype=np.float32).reshape(3, 1, 1, 1)
        u = integrate(torch.from_numpy(v).unsqueeze(0), _INTEGRATION_STEPS)
        return resize_field(u, self.shape)

    def _bias_field(self, rng: np.random.Generator) -> torch.Tensor:
        coarse = self._coarse_shape()
        coarse_mm = [(n - 1) * self.resolution / (c - 1) for n, c in zip(self.shape, coarse)]
        sigma = [_BIAS_SMOOTHNESS_MM / s for s in coarse_mm]
        b = torch.from_numpy(_smooth_noise(rng, coarse, sigma, 1)).unsqueeze(0)
        b = F.interpolate(b, size=self.shape, mode="trilinear", align_corners=True)
        return torch.exp(self.bias * b)

    def _stack(self) -> torch.Tensor:
        """``(1, 5, *S)``: template image and the four class probabilities, built once."""
        if getattr(self, "_stack_cache", None) is None:
            tpl = self.template
            self._stack_cache = torch.from_numpy(np.concatenate([tpl.image[None], tpl.probs])).unsqueeze(0)
        return self._stack_cache

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
            label = torch.from_numpy(stack[0, 1:].numpy().argmax(0)[None].astype(np.int64))
            if self.bias > 0:
                image = image * self._bias_field(rng)
            image = image / image.max().clamp_min(1e-6)
            if self.gamma > 0:
                image = image.clamp_min(0.0) ** float(np.exp(self.gamma * rng.standard_normal()))
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

    def __repr__(self) -> str:
        return (
            f"MNISubjects(resolution={self.resolution}, shape={self.shape}, seed={self.seed}, "
            f"deformation_scale={self.deformation_scale}, deformation_smoothness={self.deformation_smoothness}, "
            f"bias={self.bias}, gamma={self.gamma}, noise={self.noise})"
        )


class MNIPairDataset(Dataset):
    """Pairs of MNI subjects as batch-contract dicts.

    Args:
        subjects: the :class:`MNISubjects` generator.
        pairs: list of ``(fixed_k, moving_k)``; item ``i`` is ``pairs[i]``. For training use
            ``all_pairs(train_ids)`` with a :class:`RandomPairSampler`; for val/test a fixed
            list such as ``consecutive_pairs(ids)``.
        with_labels: include ``fixed_label``/``moving_label``.
    """

    def __init__(self, subjects: MNISubjects, pairs: Sequence[Sequence[int]], with_labels: bool = True):
        self.subjects = subjects
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        if not self.pairs:
            raise DataError("MNIPairDataset: 'pairs' is empty, expected at least one (fixed, moving) pair")
        self.with_labels = bool(with_labels)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def subject_ids(self) -> list[int]:
        """Sorted distinct subject indices used by the pairs."""
        return sorted({k for pair in self.pairs for k in pair})

    def __getitem__(self, index: int) -> dict:
        a, b = self.pairs[index]
        fixed, moving = self.subjects[a], self.subjects[b]
        item = {"fixed": fixed["image"], "moving": moving["image"]}
        if self.with_labels:
            item["fixed_label"] = fixed["label"]
            item["moving_label"] = moving["label"]
        item["spacing"] = torch.tensor(self.subjects.spacing, dtype=torch.float32)
        item["fixed_affine"] = torch.tensor(np.asarray(self.subjects.template.affine), dtype=torch.float64)
        item["fixed_id"] = fixed["id"]
        item["moving_id"] = moving["id"]
        return item
