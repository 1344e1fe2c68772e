"""External classical baselines run through the project's own evaluation path.

* :class:`AntsSyNRegistration` — ANTs SyN through antspyx (``ants.registration``).
* :class:`DemonsRegistration` — SimpleITK histogram matching + fast symmetric forces demons.

Both are :class:`models.RegistrationModule` subclasses that override ``register(batch) -> u``,
so ``python eval.py model=ants_syn`` / ``model=demons`` scores them with exactly the warps,
metrics and result files of every other method. Both packages are optional extras
(``pip install -r requirements-baselines.txt``); they are imported only when a model is built.

The optional imports and the geometry converters live in :mod:`classical.itk_bridge`.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from classical.itk_bridge import (
    ItkGeometry,
    _ants_threads_check,
    _batch_geometry,
    _np,
    ants_transforms_to_voxel_displacement,
    import_ants,
    import_sitk,
    itk_displacement_to_voxel,
    to_ants_image,
    to_sitk_image,
)
from models.module import RegistrationModule

__all__ = ["AntsSyNRegistration", "DemonsRegistration", "ANTS_PRESETS"]


def _fast_dev_run(module: RegistrationModule) -> bool:
    """True under ``trainer.fast_dev_run``: the optimisers then run a smoke schedule (ANTs: one
    iteration at the coarsest level, none after; demons: 2 iterations) — the code path is
    exercised in seconds, the numbers mean nothing."""
    trainer = getattr(module, "_trainer", None)
    return bool(trainer is not None and getattr(trainer, "fast_dev_run", False))



# --------------------------------------------------------------------------- ANTs SyN
# ``paper``: the antsRegistration call of ``antsRegistrationSyN.sh -t so`` as the script stood
# when the paper ran it (2024; ANTs PR #1817 (Dec 2024) switched 'so' to an identity start and
# PR #1829 (Jan 2025) the defaults to CC radius 2 and gradient step 0.2):
#   --float 0 --collapse-output-transforms 1 --interpolation Linear --use-histogram-matching 0
#   --winsorize-image-intensities [0.005,0.995] --initial-moving-transform [fixed,moving,1]
#   --transform SyN[0.1,3,0] --metric CC[fixed,moving,1,4] --convergence [100x70x50x20,1e-6,10]
#   --shrink-factors 8x4x2x1 --smoothing-sigmas 3x2x1x0vox
# (the script's "large image" schedule, used when an axis exceeds 256 voxels, is not mirrored).
# With L levels of ``reg_iterations`` both presets shrink by 2^(L-1-k) and smooth by L-1-k at
# level k (antspyx's rule; voxels for ``paper``: for L = 4 exactly the script's 8x4x2x1 /
# 3x2x1x0vox; antspyx passes no unit for ``fast``, which antsRegistration reads as mm).
# ``fast``: antspyx's own defaults for type_of_transform="SyNOnly" (antspyx 0.6.3): identity
# start, Mattes MI (32 bins), SyN[0.2,3,0], iterations 40x20x0 at shrink 4x2x1, smoothing
# 2x1x0 (mm: no unit given), float32, convergence [.,1e-7,8].
ANTS_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "iterations": (100, 70, 50, 20),
        "grad_step": 0.1,
        "cc_radius": 4,
        "initial": "center_of_mass",
    },
    "fast": {
        "iterations": (40, 20, 0),
    },
}
_INITIAL = ("center_of_mass", "identity")


class _ExternalRegistration(RegistrationModule):
    """A tool that registers one pair of numpy arrays at a time (:meth:`register_arrays`);
    :meth:`register` runs it over the batch on the fixed image's physical grid. A tool that also
    gives the inverse sets ``has_inverse`` and returns it from :meth:`register_arrays` when asked."""

    has_inverse = False

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self._run(batch, inverse=False)[0]

    def register_with_inverse(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._run(batch, inverse=self.has_inverse)

    def _run(self, batch: Mapping[str, Any], inverse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        fixed, moving = batch["fixed"], batch["moving"]
        ndim = fixed.dim() - 2
        fields, inverses = [], []
        for i in range(fixed.shape[0]):
            geom = _batch_geometry(batch, i, ndim)
            args = (_np(fixed[i, 0]), _np(moving[i, 0]), geom)
            if inverse:
                u, inv = self.register_arrays(*args, inverse=True)
                inverses.append(inv)
            else:
                u = self.register_arrays(*args)
            fields.append(u)
        like = {"device": fixed.device, "dtype": fixed.dtype}
        return torch.cat(fields).to(**like), torch.cat(inverses).to(**like) if inverse else None

    def register_arrays(self, fixed: np.ndarray, moving: np.ndarray, geometry: ItkGeometry,
                        inverse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One pair of arrays on one grid -> voxel-unit displacement ``(1, D, *S)`` fixed -> moving;
        with ``inverse`` (where ``has_inverse``) also the moving -> fixed one, as a pair."""
        raise NotImplementedError

    @property
    def paradigm(self) -> str:
        return "classical"


class AntsSyNRegistration(_ExternalRegistration):
    """ANTs SyN (antspyx) as a registration method: ``model=ants_syn model.preset=paper|fast``.

    Args:
        preset: ``"paper"`` (``antsRegistrationSyN.sh -t so`` as in the paper, see
            :data:`ANTS_PRESETS`; minutes per 2 mm brain on 2 threads) or ``"fast"`` (antspyx
            ``SyNOnly`` defaults; seconds).
        reg_iterations: per-level SyN iterations, coarse to fine, replacing the preset's
            (antspyx's name; its length sets the number of levels). ``None`` keeps the preset.
            Under ``trainer.fast_dev_run`` a smoke schedule (1, 0, ...) is used instead.
        initial: ``paper`` only: ``"center_of_mass"`` (the 2024 script) or ``"identity"``
            (the script since ANTs PR #1817); ``None`` keeps the preset.
        method: name in result files.
        **kwargs: :class:`models.RegistrationModule` options (``label_interp``, ``hd95``).

    ``register(batch)`` runs one registration per pair on the CPU and returns the composed
    forward transform as a voxel-unit displacement ``(B, D, *S)`` (fixed -> moving).
    """

    def __init__(
        self,
        preset: str = "paper",
        reg_iterations: Sequence[int] | None = None,
        initial: str | None = None,
        method: str = "ants_syn",
        **kwargs: Any,
    ) -> None:
        if preset not in ANTS_PRESETS:
            raise ValueError(f"model.preset must be one of {sorted(ANTS_PRESETS)}, got {preset!r}")
        cfg = dict(ANTS_PRESETS[preset])
        if reg_iterations is not None:
            try:
                its = tuple(int(i) for i in reg_iterations)
            except (TypeError, ValueError):
                its = ()
            if not its or any(i < 0 for i in its):
                raise ValueError(f"model.reg_iterations must be a non-empty list of ints >= 0 (coarse to fine), "
                                 f"got {reg_iterations!r}")
            cfg["iterations"] = its
        if initial is not None:
            if preset != "paper" or initial not in _INITIAL:
                raise ValueError(f"model.initial must be null or, with preset 'paper', one of {list(_INITIAL)}; "
                                 f"got {initial!r} with preset {preset!r}")
            cfg["initial"] = initial
        import_ants()  # fail now, at build time, with the install hint
        super().__init__(net=None, method=method, **kwargs)
        self.preset = preset
        self.ants_config = cfg

    has_inverse = True  # SyN's inverse warp (and the initial affine, inverted)

    def register_arrays(self, fixed: np.ndarray, moving: np.ndarray, geometry: ItkGeometry,
                        inverse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One pair of arrays on one grid -> voxel-unit displacement ``(1, D, *S)`` fixed -> moving;
        with ``inverse``, also ANTs' own inverse (moving -> fixed, on the same grid) as a pair."""
        ants = import_ants()
        _ants_threads_check()
        f = to_ants_image(fixed.astype(np.float32), geometry)
        m = to_ants_image(moving.astype(np.float32), geometry)
        iterations = self.ants_config["iterations"]
        if _fast_dev_run(self):
            iterations = (1,) + (0,) * (len(iterations) - 1)
        with tempfile.TemporaryDirectory(prefix="ants_syn_") as tmp:
            prefix = os.path.join(tmp, "reg_")
            if self.preset == "paper":
                transforms = self._run_paper(ants, f, m, tmp, prefix, iterations)
            else:
                res = ants.registration(f, m, type_of_transform="SyNOnly", reg_iterations=iterations, outprefix=prefix)
                transforms = res["fwdtransforms"]
            u = ants_transforms_to_voxel_displacement(transforms, f)
            if not inverse:
                return u
            # the inverse, antsApplyTransforms order: the affines (inverted) first, then the
            # inverse warps, reversed from the forward list (antspyx's "invtransforms" rule)
            backward = [p.replace("Warp.nii.gz", "InverseWarp.nii.gz") for p in reversed(transforms)]
            missing = [p for p in backward if not os.path.isfile(p)]
            if missing:
                raise RuntimeError(f"AntsSyNRegistration: antsRegistration wrote no {missing[0]}")
            invert = [p.endswith(".mat") for p in backward]
            return u, ants_transforms_to_voxel_displacement(backward, m, whichtoinvert=invert)

    def _run_paper(self, ants, f, m, tmp: str, prefix: str, iterations: Sequence[int]) -> list[str]:
        c = self.ants_config
        fpath, mpath = os.path.join(tmp, "fixed.nii"), os.path.join(tmp, "moving.nii")
        ants.image_write(f, fpath)
        ants.image_write(m, mpath)
        x = "x".join
        initial = f"[{fpath},{mpath},1]" if c["initial"] == "center_of_mass" else "Identity"
        args = [
            "--dimensionality", str(f.dimension), "--float", "0", "--collapse-output-transforms", "1",
            "--output", prefix, "--interpolation", "Linear", "--use-histogram-matching", "0",
            "--winsorize-image-intensities", "[0.005,0.995]",
            "--initial-moving-transform", initial,
            "--transform", f"SyN[{c['grad_step']},3,0]",
            "--metric", f"CC[{fpath},{mpath},1,{c['cc_radius']}]",
            "--convergence", f"[{x(str(i) for i in iterations)},1e-6,10]",
            "--shrink-factors", x(str(2 ** (len(iterations) - 1 - k)) for k in range(len(iterations))),
            "--smoothing-sigmas", x(str(len(iterations) - 1 - k) for k in range(len(iterations))) + "vox",
        ]
        ants.registration(args, None)  # antspyx's raw antsRegistration interface
        # outputs <prefix><stage><kind>: 0GenericAffine.mat (the initial transform), 1Warp.nii.gz,
        # 1InverseWarp.nii.gz. Forward list, antsApplyTransforms order (as antspyx's
        # "fwdtransforms"): highest stage first, i.e. p -> affine(warp(p)).
        stages = [p for p in os.listdir(tmp) if re.fullmatch(r"reg_\d+(GenericAffine\.mat|Warp\.nii\.gz)", p)]
        if not any(p.endswith("Warp.nii.gz") for p in stages):
            raise RuntimeError(f"AntsSyNRegistration: antsRegistration wrote no warp in {tmp}: {os.listdir(tmp)}")
        stages.sort(key=lambda p: int(re.match(r"reg_(\d+)", p).group(1)), reverse=True)
        return [os.path.join(tmp, p) for p in stages]


# --------------------------------------------------------------------------- demons
class DemonsRegistration(_ExternalRegistration):
    """SimpleITK demons as the paper's script runs it: ``model=demons``.

    Moving intensities are histogram-matched to the fixed image (1024 levels, 7 match points,
    threshold at mean intensity), then ``FastSymmetricForcesDemonsRegistrationFilter`` runs
    ``num_iterations`` iterations with Gaussian smoothing of the displacement field of standard
    deviation ``smoothing_sigma`` (SimpleITK's ``StandardDeviations``; ITK's default stopping
    rules: max RMS error 0.02, intensity difference threshold 0.001). No multi-resolution.

    Args:
        num_iterations: demons iterations (paper: 200; a scalar, hence not ``iterations``,
            which the project's configs use for per-level lists). 2 under ``trainer.fast_dev_run``.
        smoothing_sigma: field smoothing standard deviation (paper: 1.0).
        histogram_matching: match the moving histogram to the fixed one first (paper: true).
        method: name in result files.
        **kwargs: :class:`models.RegistrationModule` options.
    """

    def __init__(
        self,
        num_iterations: int = 200,
        smoothing_sigma: float = 1.0,
        histogram_matching: bool = True,
        method: str = "demons",
        **kwargs: Any,
    ) -> None:
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"model.num_iterations must be an int >= 1, got {num_iterations!r}")
        if not float(smoothing_sigma) >= 0:
            raise ValueError(f"model.smoothing_sigma must be >= 0, got {smoothing_sigma!r}")
        import_sitk()
        super().__init__(net=None, method=method, **kwargs)
        self.num_iterations = num_iterations
        self.smoothing_sigma = float(smoothing_sigma)
        self.histogram_matching = bool(histogram_matching)

    def register_arrays(self, fixed: np.ndarray, moving: np.ndarray, geometry: ItkGeometry) -> torch.Tensor:
        """One pair of arrays on one grid -> voxel-unit displacement ``(1, D, *S)``."""
        sitk = import_sitk()
        threads = torch.get_num_threads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        f = to_sitk_image(fixed.astype(np.float32), geometry)
        m = to_sitk_image(moving.astype(np.float32), geometry)
        if self.histogram_matching:
            matcher = sitk.HistogramMatchingImageFilter()
            matcher.SetNumberOfHistogramLevels(1024)
            matcher.SetNumberOfMatchPoints(7)
            matcher.ThresholdAtMeanIntensityOn()
            matcher.SetNumberOfThreads(threads)
            m = matcher.Execute(m, f)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(min(self.num_iterations, 2) if _fast_dev_run(self) else self.num_iterations)
        demons.SetStandardDeviations(self.smoothing_sigma)
        demons.SetNumberOfThreads(threads)
        field = demons.Execute(f, m)
        return itk_displacement_to_voxel(field)

