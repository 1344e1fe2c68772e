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

Defaults: two different subjects at 2 mm have a mean Dice over CSF/GM/WM of about 0.63
before registration (``DEFAULT_DEFORMATION_SCALE`` = 2 mm; 1 mm gives about 0.77, which left
too little to learn: the CPU quickstart gained +0.037 there and +0.075 at 2 mm).
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

from data.io import DataError
from data.generated import random_bias_field, random_displacement
from spatial.filters import gaussian_blur
from spatial.functional import warp

__all__ = [
    "LABEL_NAMES",
    "PARCEL_NAMES",
    "LABEL_PROTOCOLS",
    "DEFAULT_SHAPES",
    "DEFAULT_DEFORMATION_SCALE",
    "DEFAULT_DEFORMATION_SMOOTHNESS",
    "MNITemplate",
    "load_mni_template",
    "MNISubjects",
]

LABEL_NAMES = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
LABEL_PROTOCOLS = ("tissue", "parcels")


def _parcel_names() -> dict[int, str]:
    """``labels="parcels"``: CSF, then GM and WM each split into 8 parts by the MNI planes x = 0
    (right R / left L), y = 0 (anterior A / posterior P) and z = 0 (superior S / inferior I)."""
    names = {0: "background", 1: "CSF"}
    for t, tissue in enumerate(("GM", "WM")):
        for o in range(8):
            side = ("L", "R")[(o >> 2) & 1] + ("P", "A")[(o >> 1) & 1] + ("I", "S")[o & 1]
            names[2 + 8 * t + o] = f"{tissue}_{side}"
    return names


PARCEL_NAMES = _parcel_names()
DEFAULT_SHAPES = {1: (192, 224, 192), 2: (96, 112, 96)}
DEFAULT_DEFORMATION_SCALE = 2.0  # mm, RMS of each velocity component (Dice ~0.63 at 2 mm)
DEFAULT_DEFORMATION_SMOOTHNESS = 12.0  # mm, Gaussian sigma of the velocity noise
DEFAULT_BIAS = 0.1
DEFAULT_GAMMA = 0.1
DEFAULT_NOISE = 0.01
CONTRASTS = ("t1", "inverted")
_BRAIN_THRESHOLD = 0.1


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
        labels: ``"tissue"`` (0 background, 1 CSF, 2 GM, 3 WM) or ``"parcels"`` (17: CSF and GM/WM
            split into octants by the MNI planes through the origin, :data:`PARCEL_NAMES`): finer
            labels whose boundaries intensity does not show (label granularity).
        contrast: ``"t1"`` (the template's) or ``"inverted"``: ``(1 - x)`` times the brain's
            partial volume (CSF bright, WM dark, background 0: a T2-like domain shift).
        slice_thickness: mm; > 0 simulates an acquisition with thick slices along the last axis
            (a resolution shift, like CUMC12's 3 mm coronal slices): the deformed image is blurred
            along that axis by a Gaussian of FWHM ``slice_thickness``, sampled every
            ``slice_thickness`` mm and interpolated back to the grid linearly. Labels are untouched.
            0 (default) = off; values up to the voxel size change little.
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
        contrast: str = "t1",
        labels: str = "tissue",
        slice_thickness: float = 0.0,
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
            ("slice_thickness", slice_thickness),
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
        self.slice_thickness = float(slice_thickness)
        if contrast not in CONTRASTS:
            raise ValueError(f"MNISubjects() 'contrast' must be one of {CONTRASTS}, got {contrast!r}")
        self.contrast = contrast
        if labels not in LABEL_PROTOCOLS:
            raise ValueError(f"MNISubjects() 'labels' must be one of {LABEL_PROTOCOLS}, got {labels!r}")
        self.labels = labels
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
        return (
            f"MNISubjects(resolution={self.resolution}, shape={self.shape}, seed={self.seed}, "
            f"deformation_scale={self.deformation_scale}, deformation_smoothness={self.deformation_smoothness}, "
            f"bias={self.bias}, gamma={self.gamma}, noise={self.noise}, contrast={self.contrast!r}, labels={self.labels!r}, "
            f"slice_thickness={self.slice_thickness})"
        )
