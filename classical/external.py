"""External classical baselines run through the project's own evaluation path.

* :class:`AntsSyNRegistration` — ANTs SyN through antspyx (``ants.registration``).
* :class:`DemonsRegistration` — SimpleITK histogram matching + fast symmetric forces demons.

Both are :class:`models.RegistrationModule` subclasses that override ``register(batch) -> u``,
so ``python eval.py model=ants_syn`` / ``model=demons`` scores them with exactly the warps,
metrics and result files of every other method. Both packages are optional extras
(``pip install -r requirements-baselines.txt``); they are imported only when a model is built.

Geometry and the converters (the risky part, kept at the edge and tested analytically):

* The fixed image's grid becomes an ITK image whose index ``i`` is our array axis ``i``
  (antspyx keeps numpy's axis order; for SimpleITK the array is transposed before and after).
  Physical space is ITK's LPS: from the NIfTI voxel->RAS affine ``A`` (``fixed_affine``),
  ``M = diag(-1, -1, 1) A[:3, :3]`` (= direction @ diag(spacing)), ``origin = diag(-1, -1, 1) A[:3, 3]``;
  without an affine, ``M = diag(spacing)`` and origin 0. The moving image gets the fixed grid
  (the batch contract puts both on one grid).
* ANTs and ITK displacement fields ``d`` are vectors in physical space on the fixed grid with
  ``moved(p) = moving(p + d(p))``; since ``p = origin + M x``, our voxel-unit field is
  ``u(x) = M^{-1} d(p(x))`` (:func:`physical_to_voxel_displacement`), channel ``i`` along array
  axis ``i``, ``moved(x) = moving(x + u(x))`` (:func:`spatial.warp`).

Threads: both tools use ``torch.get_num_threads()`` threads, so timings compare with the
torch methods at the same thread count. SimpleITK is set per call; ANTs' ITK reads
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when the process builds its first ANTs image, so
:func:`import_ants` sets it at our first use (a warning says when torch's count changes later;
code that builds ANTs images before this module does keeps ITK's own default).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from models.module import RegistrationModule

__all__ = [
    "AntsSyNRegistration",
    "DemonsRegistration",
    "ANTS_PRESETS",
    "ItkGeometry",
    "itk_geometry",
    "physical_to_voxel_displacement",
    "voxel_to_physical_displacement",
    "to_ants_image",
    "to_sitk_image",
    "ants_to_voxel_displacement",
    "ants_transforms_to_voxel_displacement",
    "itk_displacement_to_voxel",
    "import_ants",
    "import_sitk",
    "missing_requirement",
]

INSTALL_HINT = "pip install -r requirements-baselines.txt"
_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
_LPS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- optional imports
_ANTS_THREADS: list[int] = []  # the thread count ANTs' ITK was told at our first use


def import_ants():
    """``import ants`` (antspyx); one clear error if missing.

    On first use, sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` to ``torch.get_num_threads()``:
    antspyx's ITK reads it once, when the process builds its first ANTs image.
    """
    if not _ANTS_THREADS:
        _ANTS_THREADS.append(torch.get_num_threads())
        os.environ[_THREADS_ENV] = str(_ANTS_THREADS[0])
    try:
        import ants
    except ImportError as exc:
        raise ImportError(
            f"AntsSyNRegistration needs the optional package antspyx ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return ants


def import_sitk():
    """``import SimpleITK``; one clear error if missing."""
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise ImportError(
            f"DemonsRegistration needs the optional package SimpleITK ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return sitk


# model class -> (module to import, pip package)
REQUIREMENTS = {"AntsSyNRegistration": ("ants", "antspyx"), "DemonsRegistration": ("SimpleITK", "simpleitk")}


def missing_requirement(target: str) -> str | None:
    """For a model ``_target_`` (e.g. ``"classical.external.AntsSyNRegistration"``): a one-line
    reason when its optional package is not importable, else ``None`` (tests skip on it)."""
    import importlib.util

    need = REQUIREMENTS.get(str(target).rsplit(".", 1)[-1])
    if need is None or importlib.util.find_spec(need[0]) is not None:
        return None
    return f"{target} needs the optional package {need[1]} (import {need[0]} fails): {INSTALL_HINT}"


def _fast_dev_run(module: RegistrationModule) -> bool:
    """True under ``trainer.fast_dev_run``: the optimisers then run a smoke schedule (ANTs: one
    iteration at the coarsest level, none after; demons: 2 iterations) — the code path is
    exercised in seconds, the numbers mean nothing."""
    trainer = getattr(module, "_trainer", None)
    return bool(trainer is not None and getattr(trainer, "fast_dev_run", False))


def _ants_threads_check() -> None:
    if _ANTS_THREADS and _ANTS_THREADS[0] != torch.get_num_threads():
        warnings.warn(
            f"AntsSyNRegistration: ANTs was started with {_ANTS_THREADS[0]} thread(s) in this process but "
            f"torch.get_num_threads() is now {torch.get_num_threads()}; ANTs keeps its first thread count",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ItkGeometry:
    """ITK image geometry in our array-axis order (index ``i`` = array axis ``i``), LPS mm.

    ``physical(x) = origin + direction @ diag(spacing) @ x``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray  # (D, D), orthonormal columns

    @property
    def matrix(self) -> np.ndarray:
        """``M = direction @ diag(spacing)``: voxel steps -> physical vectors, ``(D, D)``."""
        return self.direction @ np.diag(self.spacing)


def itk_geometry(ndim: int, spacing: Sequence[float] | None = None, affine: Any = None) -> ItkGeometry:
    """Geometry of a grid from a NIfTI voxel->RAS ``affine`` ``(4, 4)`` (3-D) or from ``spacing``.

    The affine wins when given (3-D only): ``M = diag(-1,-1,1) A[:3,:3]`` (RAS -> LPS), spacing
    = column norms of ``M``, direction = normalised columns (replaced by the nearest rotation if
    the affine has shear, which ITK cannot represent; the same geometry converts the result
    back, so the voxel-unit field stays exact). Without one: ``diag(spacing)``, origin 0.
    """
    if affine is not None and ndim == 3:
        a = affine.detach().cpu().double().numpy() if isinstance(affine, torch.Tensor) else np.array(affine, np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ValueError(f"itk_geometry() 'affine' must be a finite (4, 4) matrix, got shape {a.shape}")
        m = _LPS @ a[:3, :3]
        origin = _LPS @ a[:3, 3]
        sp = np.linalg.norm(m, axis=0)
        if np.any(sp <= 0):
            raise ValueError(f"itk_geometry() 'affine' has a zero column: {a[:3, :3].tolist()}")
        direction = m / sp
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            u_, _, vt = np.linalg.svd(direction)
            direction = u_ @ vt
        return ItkGeometry(tuple(float(s) for s in sp), tuple(float(o) for o in origin), direction)
    sp = (1.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)[:ndim]
    if len(sp) != ndim or any(not s > 0 for s in sp):
        raise ValueError(f"itk_geometry() 'spacing' must be {ndim} positive numbers, got {spacing!r}")
    return ItkGeometry(sp, (0.0,) * ndim, np.eye(ndim))


def _batch_geometry(batch: Mapping[str, Any], i: int, ndim: int) -> ItkGeometry:
    spacing = batch.get("spacing")
    if spacing is not None:
        spacing = torch.as_tensor(spacing)
        spacing = (spacing[i] if spacing.dim() == 2 else spacing).tolist()
    affine = batch.get("fixed_affine")
    if affine is not None:
        affine = torch.as_tensor(affine)
        affine = affine[i] if affine.dim() == 3 else affine
    return itk_geometry(ndim, spacing, affine)


def physical_to_voxel_displacement(d: np.ndarray, geometry: ItkGeometry) -> torch.Tensor:
    """Physical (LPS mm) displacement ``(*S, D)`` on a grid -> our voxel-unit field ``(1, D, *S)``.

    ``u(x) = M^{-1} d(x)`` with ``M = direction @ diag(spacing)``; float32.
    """
    d = np.asarray(d, dtype=np.float64)
    ndim = len(geometry.spacing)
    if d.ndim != ndim + 1 or d.shape[-1] != ndim:
        raise ValueError(f"physical_to_voxel_displacement() 'd' must be (*S, {ndim}), got {d.shape}")
    u = d @ np.linalg.inv(geometry.matrix).T  # row-wise M^{-1} d
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, -1, 0), dtype=np.float32)).unsqueeze(0)


def voxel_to_physical_displacement(u: torch.Tensor, geometry: ItkGeometry) -> np.ndarray:
    """Inverse of :func:`physical_to_voxel_displacement`: ``(1, D, *S)`` or ``(D, *S)`` -> ``(*S, D)``."""
    u = torch.as_tensor(u).detach().cpu().double()
    if u.dim() == len(geometry.spacing) + 2:
        u = u[0]
    return np.moveaxis(u.numpy(), 0, -1) @ geometry.matrix.T


def to_ants_image(array: np.ndarray, geometry: ItkGeometry, components: bool = False):
    """numpy ``(*S)`` (or ``(*S, C)`` with ``components``) -> ANTsImage on ``geometry``."""
    ants = import_ants()
    return ants.from_numpy(
        np.ascontiguousarray(array),
        origin=tuple(geometry.origin),
        spacing=tuple(geometry.spacing),
        direction=np.asarray(geometry.direction, dtype=np.float64),
        has_components=components,
    )


def to_sitk_image(array: np.ndarray, geometry: ItkGeometry, vector: bool = False):
    """numpy ``(*S)`` (or ``(*S, C)`` with ``vector``) -> SimpleITK image with ITK index ``i`` = axis ``i``."""
    sitk = import_sitk()
    ndim = len(geometry.spacing)
    perm = tuple(range(ndim))[::-1] + ((ndim,) if vector else ())
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, perm)), isVector=vector)
    img.SetSpacing(tuple(geometry.spacing))
    img.SetOrigin(tuple(geometry.origin))
    img.SetDirection(tuple(float(v) for v in np.asarray(geometry.direction).ravel()))
    return img


def _geometry_of(img, kind: str) -> ItkGeometry:
    if kind == "ants":
        return ItkGeometry(tuple(img.spacing), tuple(img.origin), np.asarray(img.direction, dtype=np.float64))
    ndim = img.GetDimension()
    return ItkGeometry(tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                       np.asarray(img.GetDirection(), dtype=np.float64).reshape(ndim, ndim))


def ants_to_voxel_displacement(field) -> torch.Tensor:
    """ANTs displacement field image (vector ANTsImage on the fixed grid, LPS mm) -> ``(1, D, *S)``."""
    if getattr(field, "components", 1) != field.dimension:
        raise ValueError(
            f"ants_to_voxel_displacement() 'field' must have {field.dimension} components, got {field.components}"
        )
    return physical_to_voxel_displacement(field.numpy(), _geometry_of(field, "ants"))


def ants_transforms_to_voxel_displacement(transforms: Sequence[str], fixed) -> torch.Tensor:
    """An ANTs forward transform list (as ``ants.registration``'s ``fwdtransforms``: warps and
    affines, applied to fixed-space points) -> one voxel-unit displacement ``(1, D, *S)`` on
    ``fixed``'s grid, by composing them with antsApplyTransforms into a displacement field."""
    ants = import_ants()
    with tempfile.TemporaryDirectory(prefix="ants_compose_") as tmp:
        path = ants.apply_transforms(fixed, fixed, list(transforms), compose=os.path.join(tmp, "fwd_"))
        field = ants.image_read(path)
    return ants_to_voxel_displacement(field)


def itk_displacement_to_voxel(field) -> torch.Tensor:
    """SimpleITK displacement field (vector image built by :func:`to_sitk_image`'s axis order,
    LPS mm) -> ``(1, D, *S)``."""
    sitk = import_sitk()
    ndim = field.GetDimension()
    if field.GetNumberOfComponentsPerPixel() != ndim:
        raise ValueError(
            f"itk_displacement_to_voxel() 'field' must have {ndim} components, "
            f"got {field.GetNumberOfComponentsPerPixel()}"
        )
    arr = sitk.GetArrayViewFromImage(field)  # (S_{D-1}, ..., S_0, D)
    arr = np.transpose(arr, tuple(range(ndim))[::-1] + (ndim,))
    return physical_to_voxel_displacement(arr, _geometry_of(field, "sitk"))


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


class AntsSyNRegistration(RegistrationModule):
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

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        fixed, moving = batch["fixed"], batch["moving"]
        ndim = fixed.dim() - 2
        out = []
        for i in range(fixed.shape[0]):
            geom = _batch_geometry(batch, i, ndim)
            out.append(self.register_arrays(_np(fixed[i, 0]), _np(moving[i, 0]), geom))
        return torch.cat(out).to(device=fixed.device, dtype=fixed.dtype)

    def register_arrays(self, fixed: np.ndarray, moving: np.ndarray, geometry: ItkGeometry) -> torch.Tensor:
        """One pair of arrays on one grid -> voxel-unit displacement ``(1, D, *S)``."""
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
            return ants_transforms_to_voxel_displacement(transforms, f)

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
class DemonsRegistration(RegistrationModule):
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

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        fixed, moving = batch["fixed"], batch["moving"]
        ndim = fixed.dim() - 2
        out = []
        for i in range(fixed.shape[0]):
            geom = _batch_geometry(batch, i, ndim)
            out.append(self.register_arrays(_np(fixed[i, 0]), _np(moving[i, 0]), geom))
        return torch.cat(out).to(device=fixed.device, dtype=fixed.dtype)

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


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()
