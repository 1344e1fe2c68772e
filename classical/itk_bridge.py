"""Optional imports of ANTs / SimpleITK and the converters between their physical-space
fields and this project's voxel-unit displacement (used by :mod:`classical.external`). The grid
geometry (:class:`ItkGeometry`, :func:`itk_geometry`) and the two field converters live in
:mod:`data.geometry` (also used by the transform files of :mod:`data.transforms`) and are
re-exported here.

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
import tempfile
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

# the grid geometry and the physical <-> voxel converters live in data.geometry (one converter)
from data.geometry import (
    ItkGeometry,
    itk_geometry,
    physical_to_voxel_displacement,
    voxel_to_physical_displacement,
)

__all__ = [
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
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install -r requirements-baselines.txt"
_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


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


def _ants_threads_check() -> None:
    if _ANTS_THREADS and _ANTS_THREADS[0] != torch.get_num_threads():
        warnings.warn(
            f"AntsSyNRegistration: ANTs was started with {_ANTS_THREADS[0]} thread(s) in this process but "
            f"torch.get_num_threads() is now {torch.get_num_threads()}; ANTs keeps its first thread count",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- geometry
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


def ants_transforms_to_voxel_displacement(transforms: Sequence[str], fixed,
                                         whichtoinvert: Sequence[bool] | None = None) -> torch.Tensor:
    """An ANTs transform list (as ``ants.registration``'s ``fwdtransforms``: warps and affines,
    applied to fixed-space points; or its ``invtransforms`` with ``whichtoinvert``) -> one
    voxel-unit displacement ``(1, D, *S)`` on ``fixed``'s grid, by composing them with
    antsApplyTransforms into a displacement field."""
    ants = import_ants()
    invert = [False] * len(transforms) if whichtoinvert is None else list(whichtoinvert)
    with tempfile.TemporaryDirectory(prefix="ants_compose_") as tmp:
        path = ants.apply_transforms(fixed, fixed, list(transforms), whichtoinvert=invert,
                                     compose=os.path.join(tmp, "fwd_"))
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


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()
