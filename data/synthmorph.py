"""SynthMorph-style training pairs: label maps and images drawn on the fly, never from real scans.

Written from the paper (Hoffmann, Billot, Greve, Iglesias, Fischl, Dalca: "SynthMorph: learning
contrast-invariant registration without acquired images", IEEE TMI 2022). A network trained on
these pairs with a Dice loss on the labels only (``model.loss.sim=none``, ``dice_weight=1``) is
then applied to real images of any contrast; :class:`data.synthmorph_datamodule.SynthMorphDataModule` trains on synthetic
pairs and validates/tests on a wrapped real-image DataModule (default: the offline MNI one).

Pair ``idx`` of epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e, idx])`` alone, so a
draw is reproducible in any process (and DataLoader worker), every epoch brings new pairs, and a
resumed run replays the same pairs. Steps (lengths in mm on the grid of ``spacing`` mm voxels,
except where voxels are said):

1. **Label map**: ``n_labels`` fields of unit-RMS Gaussian noise smoothed by a Gaussian of
   ``label_smoothness`` voxels (:func:`data.generated.smooth_noise`, drawn on a grid about
   ``label_smoothness / 2`` times coarser, which is cheap and as smooth); each field warped by
   its own random diffeomorphism of velocity RMS ``label_deformation_scale`` mm
   (:func:`data.generated.random_displacement`; 0: none), which makes the shapes less blob-like.
2. **Fixed and moving labels**: ``shared_labels=True`` (the paper's): one draw of fields, deformed
   twice by two random diffeomorphisms (velocity RMS ``deformation_scale`` mm, Gaussian
   ``deformation_smoothness`` mm); ``False``: two independent draws, each deformed once. Label
   ``k`` (1 .. ``n_labels``) is where field ``k`` is the largest after upsampling and warping
   (one trilinear ``spatial.warp`` of the coarse fields at the full-resolution deformed grid).
   Labels tile the whole grid; 0 (background) is never drawn, so the Dice loss (which leaves
   channel 0 out) supervises every region, as in the paper.
3. **Images**, each from its own draws, so fixed and moving differ in contrast: per-label mean
   ``mu_k ~ U(intensity_range)`` and noise std ``sigma_k ~ U(0, noise)``; image =
   ``mu_label(x) + sigma_label(x) * N(0, 1)``, Gaussian blur of ``U(0, blur)`` voxels (partial
   volume), multiplicative bias field ``exp(b * n)`` with ``b ~ U(0, bias)`` (n: unit-RMS noise
   smooth over 50 mm, :func:`data.generated.random_bias_field`), min-max normalised to [0, 1],
   gamma ``x ** exp(gamma * N(0, 1))``. ``shared_contrast=True`` (not the paper's; an ablation
   and a warm-up): the moving image reuses the fixed image's per-label means and noise stds
   (blur, bias and gamma are still its own), so the pair can be matched by intensity.

Items follow the batch contract (:mod:`data.batch`), labels in 1 .. ``n_labels``, ids such as
``"synthmorph_e0003_p00012_fixed"``.

Defaults: the paper's generation ranges as recalled here (check its hyperparameter table before
citing them; 1 mm brains, 0..255 intensities: 26 labels, means U(25, 225), noise std U(5, 25),
blur U(0, 1) voxels, log-bias std U(0, 0.3), log-gamma std 0.25), on the 2 mm grid of 96^3
voxels of the mni_* experiments' evaluation, with 16 labels. Cost: about 1 s per 96^3 pair on
a loaded 2-core CPU (0.1 s at 32^3); ``data.num_workers`` draws pairs in parallel.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, Sampler

from data.batch import PairItem, pair_item
from data.signature import signature
from data.generated import diagonal_affine, random_bias_field, random_displacement, smooth_noise
from spatial.functional import warp

__all__ = ["SynthMorphPairs", "EpochPairSampler"]

# lengths are in mm unless the name says voxels
DEFAULTS: dict[str, Any] = {
    "shape": (96, 96, 96),
    "spacing": 2.0,
    "n_labels": 16,
    "label_smoothness": 4.0,  # voxels
    "label_deformation_scale": 4.0,
    "shared_labels": True,
    "shared_contrast": False,
    "deformation_scale": 3.0,
    "deformation_smoothness": 12.0,
    "intensity_range": (0.1, 0.9),
    "noise": 0.1,
    "blur": 1.0,  # voxels
    "bias": 0.3,
    "gamma": 0.25,
}


def _number(owner: str, name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    """``float(value)``, or ValueError naming ``name`` unless finite and ``>= minimum`` (``>`` if strict)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x < minimum or (strict and x == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{owner}() '{name}' must be a number {relation} {minimum:g}, got {value!r}")
    return x


def _interval(owner: str, name: str, value: Any) -> tuple[float, float]:
    """``(lo, hi)`` floats, or ValueError naming ``name`` unless ``0 <= lo <= hi`` (finite)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
        raise ValueError(f"{owner}() '{name}' must be [lo, hi] with 0 <= lo <= hi, got {value!r}")
    return lo, hi


class SynthMorphPairs(Dataset):
    """Synthetic label/image pairs drawn SynthMorph-style (see the module docstring).

    Args:
        shape: grid, 2 or 3 sizes >= 8 (default 96^3).
        spacing: mm per voxel (the ``spacing`` of items; deformation and bias lengths are in mm).
        n_labels: labels per map (>= 2), numbered 1 .. n_labels.
        label_smoothness: Gaussian sigma (voxels, > 0) of the noise fields whose argmax makes
            the labels: larger = fewer, bigger regions.
        label_deformation_scale: velocity RMS (mm) of the random warp of each noise field
            (0: fields not warped).
        shared_labels: fixed and moving are one label draw deformed twice (True, the paper's)
            or two independent draws.
        shared_contrast: the moving image reuses the fixed image's per-label intensities
            (False, the paper's: each image draws its own).
        deformation_scale: velocity RMS (mm) of each of the two deformations of a pair (0: none).
        deformation_smoothness: Gaussian sigma (mm, > 0) of the velocity noise (also used for
            the label-field warps).
        intensity_range: ``(lo, hi)``, 0 <= lo <= hi: per-label means are ``U(lo, hi)``.
        noise: per-label noise std is ``U(0, noise)``.
        blur: Gaussian blur sigma is ``U(0, blur)`` voxels.
        bias: log-bias-field std is ``U(0, bias)``.
        gamma: std of the log of the gamma exponent.
        pairs_per_epoch: ``len(self)``: pairs per epoch.
        seed: every draw depends only on ``(seed, epoch, idx)``.

    ``ds[(epoch, idx)]`` draws pair ``idx`` of ``epoch``; ``ds[idx]`` uses the dataset's
    ``epoch`` (:meth:`set_epoch`). Training loaders use :class:`EpochPairSampler`, whose
    indices carry the epoch, so DataLoader workers need no shared state.
    """

    def __init__(
        self,
        shape: Sequence[int] = DEFAULTS["shape"],
        spacing: float = DEFAULTS["spacing"],
        n_labels: int = DEFAULTS["n_labels"],
        label_smoothness: float = DEFAULTS["label_smoothness"],
        label_deformation_scale: float = DEFAULTS["label_deformation_scale"],
        shared_labels: bool = DEFAULTS["shared_labels"],
        shared_contrast: bool = DEFAULTS["shared_contrast"],
        deformation_scale: float = DEFAULTS["deformation_scale"],
        deformation_smoothness: float = DEFAULTS["deformation_smoothness"],
        intensity_range: Sequence[float] = DEFAULTS["intensity_range"],
        noise: float = DEFAULTS["noise"],
        blur: float = DEFAULTS["blur"],
        bias: float = DEFAULTS["bias"],
        gamma: float = DEFAULTS["gamma"],
        pairs_per_epoch: int = 100,
        seed: int = 0,
    ):
        owner = type(self).__name__
        try:
            self.shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            self.shape = ()
        if len(self.shape) not in (2, 3) or any(s < 8 for s in self.shape):
            raise ValueError(f"{owner}() 'shape' must be 2 or 3 sizes >= 8, got {shape!r}")
        ndim = len(self.shape)
        self.spacing = (_number(owner, "spacing", spacing, strict=True),) * ndim
        if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)) or int(n_labels) < 2:
            raise ValueError(f"{owner}() 'n_labels' must be an int >= 2, got {n_labels!r}")
        self.n_labels = int(n_labels)
        self.label_smoothness = _number(owner, "label_smoothness", label_smoothness, strict=True)
        self.label_deformation_scale = _number(owner, "label_deformation_scale", label_deformation_scale)
        for key, flag in (("shared_labels", shared_labels), ("shared_contrast", shared_contrast)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{owner}() '{key}' must be true or false, got {flag!r}")
        self.shared_labels = bool(shared_labels)
        self.shared_contrast = bool(shared_contrast)
        self.deformation_scale = _number(owner, "deformation_scale", deformation_scale)
        self.deformation_smoothness = _number(owner, "deformation_smoothness", deformation_smoothness, strict=True)
        self.intensity_range = _interval(owner, "intensity_range", intensity_range)
        self.noise = _number(owner, "noise", noise)
        self.blur = _number(owner, "blur", blur)
        self.bias = _number(owner, "bias", bias)
        self.gamma = _number(owner, "gamma", gamma)
        if isinstance(pairs_per_epoch, bool) or int(pairs_per_epoch) < 1:
            raise ValueError(f"{owner}() 'pairs_per_epoch' must be >= 1, got {pairs_per_epoch!r}")
        self.pairs_per_epoch = int(pairs_per_epoch)
        if isinstance(seed, bool) or int(seed) < 0:
            raise ValueError(f"{owner}() 'seed' must be an int >= 0, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        # the grid the label noise is drawn on: ~label_smoothness / 2 times coarser, >= 4 points
        factor = max(1.0, self.label_smoothness / 2.0)
        self._coarse = tuple(max(int(round((n - 1) / factor)) + 1, 4) for n in self.shape)
        self._coarse = tuple(min(c, n) for c, n in zip(self._coarse, self.shape))
        self._ratio = [(c - 1) / (n - 1) for c, n in zip(self._coarse, self.shape)]  # coarse voxels per voxel

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return self.pairs_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """The epoch that plain integer indices draw from."""
        self.epoch = int(epoch)

    @property
    def affine(self) -> np.ndarray:
        return diagonal_affine(self.spacing)

    @staticmethod
    def pair_ids(epoch: int, idx: int) -> tuple[str, str]:
        stem = f"synthmorph_e{int(epoch):04d}_p{int(idx):05d}"
        return f"{stem}_fixed", f"{stem}_moving"

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, (tuple, list)):
            epoch, idx = (int(k) for k in key)
        else:
            epoch, idx = self.epoch, int(key)
            if not 0 <= idx < len(self):
                raise IndexError(f"SynthMorphPairs: index {idx} out of range 0 .. {len(self) - 1}")
        return self.pair(epoch, idx)

    # ------------------------------------------------------------------ generation
    def pair(self, epoch: int, idx: int) -> PairItem:
        """Pair ``idx`` of ``epoch`` as a batch-contract item (:mod:`data.batch`) (drawn from ``default_rng([seed, epoch, idx])``)."""
        if int(epoch) < 0 or int(idx) < 0:
            raise IndexError(f"SynthMorphPairs: epoch and index must be >= 0, got ({epoch}, {idx})")
        rng = np.random.default_rng([self.seed, int(epoch), int(idx)])
        with torch.no_grad():
            fields_fixed = self._label_fields(rng)
            fields_moving = fields_fixed if self.shared_labels else self._label_fields(rng)
            fixed_label = self._labels(rng, fields_fixed)
            moving_label = self._labels(rng, fields_moving)
            fixed, contrast = self._image(rng, fixed_label)
            moving, _ = self._image(rng, moving_label, contrast if self.shared_contrast else None)
        fixed_id, moving_id = self.pair_ids(epoch, idx)
        # the input signature (data.signature): the generator and the draw
        sig = signature({"dataset": "synthmorph", "generator": repr(self), "epoch": int(epoch), "idx": int(idx)})
        return pair_item(fixed, moving, fixed_label=fixed_label[None], moving_label=moving_label[None],
                         spacing=self.spacing, fixed_affine=self.affine, fixed_id=fixed_id, moving_id=moving_id,
                         pair_signature=sig)

    def _label_fields(self, rng: np.random.Generator) -> torch.Tensor:
        """``(n_labels, 1, *coarse)`` smooth noise fields, each warped by its own deformation."""
        sigma = [self.label_smoothness * r for r in self._ratio]
        fields = torch.from_numpy(smooth_noise(rng, self._coarse, sigma, self.n_labels)).unsqueeze(1)
        if self.label_deformation_scale > 0:
            coarse_spacing = [s / r for s, r in zip(self.spacing, self._ratio)]
            u = torch.cat([
                random_displacement(rng, self._coarse, coarse_spacing, self.label_deformation_scale,
                                    self.deformation_smoothness)
                for _ in range(self.n_labels)
            ])
            fields = warp(fields, u, padding_mode="border")
        return fields

    def _labels(self, rng: np.random.Generator, fields: torch.Tensor) -> np.ndarray:
        """``(*S)`` int64 labels 1 .. n_labels: argmax of the coarse ``fields`` sampled at the
        deformed full-resolution grid (upsampling and deformation in one trilinear warp)."""
        ndim = len(self.shape)
        if self.deformation_scale > 0:
            u = random_displacement(rng, self.shape, self.spacing, self.deformation_scale, self.deformation_smoothness)
        else:
            u = torch.zeros(1, ndim, *self.shape)
        # warp samples the coarse image at x * ratio + u_coarse(x): u in coarse voxel units
        u = u * torch.tensor(self._ratio, dtype=u.dtype).view(1, ndim, *([1] * ndim))
        sampled = warp(fields.movedim(0, 1), u, padding_mode="border")[0]  # (n_labels, *S)
        # numpy's argmax over the channel axis is much faster than torch's on CPU
        return sampled.numpy().argmax(0).astype(np.int64) + 1

    def _image(self, rng: np.random.Generator, label: np.ndarray,
               contrast: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, tuple]:
        """``(1, *S)`` float32 in [0, 1]: per-label Gaussian intensities, blur, bias, min-max, gamma;
        and its per-label ``(means, stds)`` (drawn unless ``contrast`` gives them)."""
        if contrast is None:
            lo, hi = self.intensity_range
            contrast = (rng.uniform(lo, hi, self.n_labels + 1).astype(np.float32),
                        rng.uniform(0.0, self.noise, self.n_labels + 1).astype(np.float32))
        means, stds = contrast
        image = means[label] + stds[label] * rng.standard_normal(self.shape, dtype=np.float32)
        sigma = rng.uniform(0.0, self.blur)
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        strength = rng.uniform(0.0, self.bias)
        if strength > 0:
            image = image * random_bias_field(rng, self.shape, self.spacing, strength)[0, 0]
        lo_, hi_ = image.min(), image.max()
        image = (image - lo_) / (hi_ - lo_).clamp_min(1e-6)
        exponent = float(np.exp(self.gamma * rng.standard_normal()))
        image = image.clamp(0.0, 1.0) ** exponent
        return image.clamp(0.0, 1.0).unsqueeze(0).contiguous(), contrast

    def __repr__(self) -> str:
        return (
            f"SynthMorphPairs(shape={self.shape}, n_labels={self.n_labels}, shared_labels={self.shared_labels}, "
            f"pairs_per_epoch={self.pairs_per_epoch}, seed={self.seed})"
        )


class EpochPairSampler(Sampler):
    """Indices ``(epoch, 0) .. (epoch, n - 1)`` for :class:`SynthMorphPairs`: every epoch new pairs.

    The epoch is the one given to :meth:`set_epoch` (Lightning calls it with the trainer's
    epoch before each one; :class:`data.loaders.ResumableLoader` calls it when resuming, so
    the interrupted epoch's pairs are replayed); each ``__iter__`` also advances it by one, so
    plain PyTorch loops get new pairs every pass too (as :class:`data.pairs.RandomPairSampler`).
    """

    def __init__(self, num_samples: int, epoch: int = 0):
        if isinstance(num_samples, bool) or int(num_samples) < 1:
            raise ValueError(f"EpochPairSampler() 'num_samples' must be >= 1, got {num_samples!r}")
        self.num_samples = int(num_samples)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        return iter([(epoch, i) for i in range(self.num_samples)])

    def __len__(self) -> int:
        return self.num_samples
