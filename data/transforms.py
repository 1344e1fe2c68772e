"""Transforms as files, and applying them to any volume in world space.

A transform maps points of a reference (fixed) space to the space an image is read from
(fixed -> moving, as the project's displacement and as ITK/ANTs transforms). It is a chain of
stages, read like ``antsApplyTransforms -t T1 -t T2 ... -t Tn``: a reference point goes through
``T1`` first, then ``T2``..., ``Tn(...T2(T1(p)))`` (checked against antspyx and SimpleITK's
``CompositeTransform``). ANTs' registration lists its output ``[1Warp.nii.gz, 0GenericAffine.mat]``:
the warp (defined in fixed space) first, then the affine into moving space. Two kinds of stage:

* :class:`FieldStage`: a displacement field on its own lattice (shape, voxel-to-world affine) in
  the project's convention (voxel units of that lattice, channel ``i`` along array axis ``i``):
  ``p -> p + A[:3, :3] u(A^-1 p)`` (:func:`spatial.world.displace_points`);
* :class:`AffineStage`: a world (RAS mm) matrix ``p -> M p``.

Files (one writer and one reader per kind; every reader error is a :class:`data.io.DataError`
naming the file):

* the project's displacement (``disp.nii.gz``): NIfTI ``(X, Y, Z, 1, 3)`` float32, intent
  vector (1007) named :data:`VOXEL_INTENT`, description :data:`VOXEL_DESCRIPTION`; voxel units of
  the file's own grid (an earlier ``(X, Y, Z, 3)`` file described so is read too);
* its ITK/ANTs form (``disp_itk.nii.gz``): the same shape and intent (named :data:`ITK_INTENT`),
  the physical displacement in LPS millimetres (:func:`data.geometry.voxel_to_physical_displacement`):
  what ``antsApplyTransforms`` and SimpleITK's ``DisplacementFieldTransform`` read. Any other
  vector NIfTI (an ANTs ``1Warp.nii.gz``) is read as ITK's; one with NIfTI's displacement intent
  (``NIFTI_INTENT_DISPVECT``, 1006) holds RAS millimetres, as ITK 5.4 reads it;
* an ITK affine (``.txt``/``.tfm`` text ``#Insight Transform File V1.0``, written and read; ANTs'
  binary ``.mat``, read): ``p -> M (p - c) + c + t`` on LPS points.

:func:`transform_volume` reads a volume through a chain onto a reference grid with one
interpolation (linear for images, nearest neighbour or one-hot linear for label maps), in slabs so
memory stays bounded; :func:`resample_to_grid` is the empty chain (world-space resampling).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

from data.geometry import (SHEAR_TOLERANCE, itk_geometry, physical_to_voxel_displacement, shear,
                           voxel_to_physical_displacement)
from data.io import DataError, nifti_bytes
from spatial.world import affine_points, as_affine, displace_points, grid_points, sample, voxel_coordinates

__all__ = [
    "VOXEL_INTENT", "ITK_INTENT", "VOXEL_DESCRIPTION", "ITK_DESCRIPTION", "FieldStage", "AffineStage", "Stage",
    "check_affine", "map_points", "transform_volume", "resample_to_grid", "require_overlap", "displacement_bytes",
    "read_displacement", "itk_affine_text", "read_affine", "read_stage", "voxel_matrix_to_world",
]

VOXEL_INTENT = "voxel disp"  # NIfTI intent_name (16 bytes at most) of the project's displacement files
# NIFTI_INTENT_DISPVECT: a displacement in the NIfTI world (RAS mm); ANTs / ITK write theirs as
# NIFTI_INTENT_VECTOR (1007) in LPS mm
NIFTI_INTENT_DISPVECT = 1006
ITK_INTENT = "ITK disp LPS mm"  # ... and of their ITK / ANTs form
VOXEL_DESCRIPTION = "disp vox fixed->moving; moved(x)=moving(x+u(x)); ch i = array axis i"
ITK_DESCRIPTION = "ITK/ANTs displacement, LPS mm, fixed->moving: moved(p)=moving(p+d(p))"
_LEGACY_DESCRIPTION = "disp vox"  # (X, Y, Z, 3) files of eval.py's save_outputs before the vector intent
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS for 4x4 world matrices
_SLAB_POINTS = 1 << 21  # points per slab of transform_volume (bounds its memory)
_LABEL_INTERPS = ("nearest", "linear")


@dataclass
class FieldStage:
    """A displacement ``u`` ``(1, 3, *S)`` (voxel units of its lattice) on the lattice ``affine``."""

    u: torch.Tensor
    affine: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        self.u = torch.as_tensor(self.u).detach().to("cpu", torch.float64)
        self.affine = np.asarray(self.affine, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.u.shape[2:])

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        return displace_points(points, self.u, self.affine)


@dataclass
class AffineStage:
    """A world (RAS mm) affine ``(4, 4)``: fixed point -> moving point."""

    matrix: np.ndarray
    source: str = ""
    _m: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        self._m = as_affine(self.matrix, 3, "matrix", "AffineStage")

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        return affine_points(points, self._m)


Stage = FieldStage | AffineStage


def check_affine(path: str | os.PathLike, affine) -> np.ndarray:
    """The voxel-to-world matrix of file ``path`` as float64, or a DataError naming the file when an
    image cannot be resampled through it (not finite, singular)."""
    try:
        return as_affine(affine, 3, "affine", "resample").numpy()
    except ValueError as exc:
        raise DataError(f"{path}: its voxel-to-world affine cannot be resampled in world space ({exc})") from None


def map_points(points: torch.Tensor, stages: Sequence[Stage]) -> torch.Tensor:
    """World points ``(3, *S)`` of the reference grid through the chain: ``Tn(...T2(T1(p)))``."""
    for stage in stages:
        points = stage.apply(points)
    return points


def _slabs(shape: Sequence[int], affine: np.ndarray):
    """``(rows, affine of the sub-grid)`` of slabs of whole axis-0 slices covering the grid."""
    step = max(1, _SLAB_POINTS // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        shift = np.eye(4)
        shift[0, 3] = start
        yield slice(start, stop), (stop - start, *shape[1:]), affine @ shift


def transform_volume(stages: Sequence[Stage], array: np.ndarray, affine, shape: Sequence[int], reference_affine,
                     kind: str = "image", interp: str = "nearest", path: str | os.PathLike = "volume") -> np.ndarray:
    """The volume ``array`` (its grid: ``affine``) read on the reference grid (``shape``,
    ``reference_affine``) through the chain ``stages``: ``out(x) = array(A^-1 T(R x))``.

    ``kind="image"``: trilinear, float32 out. ``kind="label"``: int64 out, ``interp="nearest"`` or
    ``"linear"`` (each id's indicator read linearly, the largest wins; ties go to the smaller
    id). Outside the volume (beyond half a voxel): 0. One interpolation whatever the chain.
    """
    if kind not in ("image", "label"):
        raise ValueError(f"transform_volume() 'kind' must be 'image' or 'label', got {kind!r}")
    if interp not in _LABEL_INTERPS:
        raise ValueError(f"transform_volume() 'interp' must be one of {_LABEL_INTERPS}, got {interp!r}")
    src_affine = check_affine(path, affine)
    shape = tuple(int(s) for s in shape)
    ref = np.asarray(reference_affine, dtype=np.float64)
    data = torch.from_numpy(np.asarray(array, dtype=np.float64)).reshape(1, 1, *np.shape(array))
    # with 0 (what lies outside the map) among the candidates: a map without background voxels
    # would otherwise give its smallest id to every voxel outside it
    ids = np.union1d(np.unique(array), [0]) if kind == "label" and interp == "linear" else None
    out = np.zeros(shape, dtype=np.float32 if kind == "image" else np.int64)
    for rows, sub_shape, sub_affine in _slabs(shape, ref):
        coords = voxel_coordinates(map_points(grid_points(sub_shape, sub_affine), stages), src_affine)
        if kind == "image":
            out[rows] = sample(data, coords)[0, 0].numpy()
        elif ids is None:
            out[rows] = sample(data, coords, "nearest")[0, 0].round().numpy().astype(np.int64)
        else:
            out[rows] = _labels_linear(data, ids, coords)
    return out


def _labels_linear(data: torch.Tensor, ids: np.ndarray, coords: torch.Tensor) -> np.ndarray:
    """Each id's indicator read linearly at ``coords``; the id with the largest value (the smaller
    id on ties, as an argmax over channels in id order)."""
    best = torch.full(coords.shape[1:], -1.0, dtype=torch.float64)
    label = torch.zeros(coords.shape[1:], dtype=torch.int64)
    for value in ids:
        score = sample((data == float(value)).to(torch.float64), coords)[0, 0]
        win = score > best
        best = torch.where(win, score, best)
        label[win] = int(value)
    return label.numpy()


def resample_to_grid(array: np.ndarray, affine, shape: Sequence[int], target_affine, kind: str = "image",
                     path: str | os.PathLike = "volume") -> np.ndarray:
    """``array`` (grid ``affine``) resampled onto the grid (``shape``, ``target_affine``) in world
    space: trilinear for images, nearest neighbour for labels; 0 outside it (:func:`transform_volume`
    with no stage)."""
    return transform_volume((), array, affine, shape, target_affine, kind=kind, path=path)


def require_overlap(source: np.ndarray, resampled: np.ndarray, path: str | os.PathLike, onto: str) -> np.ndarray:
    """``resampled`` (``source`` read onto another grid); DataError naming ``path`` when ``source``
    has a nonzero voxel and ``resampled`` none: no voxel of it lies on that grid (``onto`` names it)
    in world space, which a result must not pass off as an empty image or segmentation."""
    if np.any(source != 0) and not np.any(resampled != 0):
        raise DataError(f"{path}: no voxel of it lies on {onto} in world space (all zeros once resampled onto it); "
                        "do the image and the grid (and any transform) share one world space (scanner or template "
                        "coordinates)?")
    return resampled


def voxel_matrix_to_world(matrix, grid_affine) -> np.ndarray:
    """A voxel-coordinate affine ``[M | b]`` ``(3, 4)`` on a grid (``x -> M x + b``, the classical
    optimiser's) as the world matrix ``A [M | b] A^-1`` ``(4, 4)`` of that grid's ``affine`` ``A``."""
    m = np.eye(4)
    m[:3] = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    a = np.asarray(grid_affine, dtype=np.float64)
    return a @ m @ np.linalg.inv(a)


# --------------------------------------------------------------------------- displacement files
def displacement_bytes(u: torch.Tensor, affine, name: str | os.PathLike, kind: str = "voxel") -> bytes:
    """The NIfTI bytes of displacement ``u`` ``(1, 3, *S)`` (voxel units, on the grid ``affine``):
    ``kind="voxel"`` the project's file, ``"itk"`` its ITK/ANTs form in LPS mm (module docstring)."""
    u = torch.as_tensor(u).detach().cpu()
    if u.dim() != 5 or u.shape[:2] != (1, 3):
        raise ValueError(f"displacement_bytes() 'u' must be (1, 3, X, Y, Z), got {tuple(u.shape)}")
    if kind == "voxel":
        vectors, intent, description = np.moveaxis(u[0].double().numpy(), 0, -1), VOXEL_INTENT, VOXEL_DESCRIPTION
    elif kind == "itk":
        if shear(affine) > SHEAR_TOLERANCE:
            raise ValueError(f"displacement_bytes() {name}: the grid is sheared ({shear(affine):.4f}), which an "
                             "ITK/ANTs image cannot be")
        vectors = voxel_to_physical_displacement(u, itk_geometry(3, affine=affine))
        intent, description = ITK_INTENT, ITK_DESCRIPTION
    else:
        raise ValueError(f"displacement_bytes() 'kind' must be 'voxel' or 'itk', got {kind!r}")
    vectors = vectors.astype(np.float32)[:, :, :, None, :]  # (X, Y, Z, 1, 3): NIfTI's vector layout
    return nifti_bytes(vectors, affine, name, description, intent=("vector", intent))


def _load_nifti(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: transform file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel's many read errors
        raise DataError(f"{path}: unreadable transform file ({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def read_displacement(path: str | os.PathLike) -> FieldStage:
    """A displacement NIfTI (the project's or ITK/ANTs', module docstring) as a :class:`FieldStage`."""
    path = Path(path)
    img = _load_nifti(path)
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    try:
        name = str(header.get_intent()[2])
    except Exception:  # noqa: BLE001 - an unknown intent code: not one of ours
        name = ""
    descrip = header["descrip"].item().decode("ascii", "replace") if "descrip" in header else ""
    ours = name == VOXEL_INTENT or (descrip.startswith(_LEGACY_DESCRIPTION) and name != ITK_INTENT)
    if len(shape) == 5 and shape[3] == 1 and shape[4] == 3:
        data = np.asarray(img.dataobj, dtype=np.float64)[:, :, :, 0, :]
    elif len(shape) == 4 and shape[3] == 3 and ours:
        data = np.asarray(img.dataobj, dtype=np.float64)
    else:
        raise DataError(f"{path}: not a 3-D displacement field: expected a vector NIfTI of shape (X, Y, Z, 1, 3), "
                        f"got {shape}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: displacement field holds {int((~np.isfinite(data)).sum())} non-finite values")
    affine = check_affine(path, img.affine)
    if not ours and shear(affine) > SHEAR_TOLERANCE:
        raise DataError(f"{path}: an ITK/ANTs displacement field on a sheared grid (axes {shear(affine):.4f} from "
                        "orthogonal): ITK cannot represent shear, so where its vectors sit is ambiguous")
    if ours:
        u = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0))).unsqueeze(0)
    else:
        if int(header["intent_code"]) == NIFTI_INTENT_DISPVECT:
            data = data * np.array([-1.0, -1.0, 1.0])  # NIfTI's own displacement intent is in RAS mm (ITK >= 5.4 agrees)
        u = physical_to_voxel_displacement(data, itk_geometry(3, affine=affine)).double()
    return FieldStage(u, affine, str(path))


# --------------------------------------------------------------------------- ITK affine files
def itk_affine_text(matrix) -> str:
    """An ITK text transform file (``#Insight Transform File V1.0``) of the world (RAS) matrix
    ``(4, 4)`` fixed -> moving: ``AffineTransform_double_3_3`` on LPS points, centre 0."""
    m = _FLIP @ np.asarray(matrix, dtype=np.float64) @ _FLIP
    params = [*m[:3, :3].ravel(), *m[:3, 3]]
    fmt = " ".join(repr(float(v)) for v in params)
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {fmt}\nFixedParameters: 0 0 0\n")


def _itk_matrix(path: Path, params: Sequence[float], fixed: Sequence[float]) -> np.ndarray:
    """ITK's ``MatrixOffsetTransformBase`` parameters (LPS) -> the world (RAS) matrix ``(4, 4)``."""
    if len(params) != 12 or len(fixed) != 3:
        raise DataError(f"{path}: expected a 3-D affine (12 parameters, 3 fixed parameters), got {len(params)} and {len(fixed)}")
    m = np.asarray(params[:9], dtype=np.float64).reshape(3, 3)
    t, c = np.asarray(params[9:], dtype=np.float64), np.asarray(fixed, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = m, t + c - m @ c
    return _FLIP @ lps @ _FLIP


_ITK_AFFINE_TYPES = re.compile(r"^(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3$")


def read_affine(path: str | os.PathLike) -> AffineStage:
    """An ITK affine file (``.txt``/``.tfm`` text, or ANTs' ``.mat``) as an :class:`AffineStage`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: transform file not found")
    if path.suffix.lower() == ".mat":
        try:
            from scipy.io import loadmat

            mat = loadmat(str(path))
        except Exception as exc:  # noqa: BLE001 - scipy's read errors
            raise DataError(f"{path}: unreadable ITK .mat transform ({type(exc).__name__}: {exc})") from None
        keys = [k for k in mat if _ITK_AFFINE_TYPES.match(k)]
        if len(keys) != 1 or "fixed" not in mat:
            raise DataError(f"{path}: expected one 3-D ITK affine (AffineTransform_*_3_3 and fixed), found "
                            f"{sorted(k for k in mat if not k.startswith('__'))}")
        params, fixed = np.ravel(mat[keys[0]]), np.ravel(mat["fixed"])
    else:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: unreadable ITK transform file ({exc})") from None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
        kinds = re.findall(r"^Transform:\s*(\S+)", text, flags=re.M)
        if not text.startswith("#Insight Transform File") or len(kinds) != 1 or not _ITK_AFFINE_TYPES.match(kinds[0]):
            raise DataError(f"{path}: expected an ITK transform file with one 3-D affine "
                            f"(AffineTransform_double_3_3), found {kinds or 'no transform'}")
        try:
            params = [float(v) for v in fields["Parameters"].split()]
            fixed = [float(v) for v in fields.get("FixedParameters", "0 0 0").split()]
        except (KeyError, ValueError) as exc:
            raise DataError(f"{path}: unreadable affine parameters ({exc})") from None
    matrix = _itk_matrix(path, list(params), list(fixed))
    try:
        return AffineStage(matrix, str(path))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_stage(path: str | os.PathLike) -> Stage:
    """One transform file: a displacement NIfTI (``.nii``/``.nii.gz``) or an ITK affine."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_displacement(path)
    if name.endswith((".txt", ".tfm", ".mat")):
        return read_affine(path)
    raise DataError(f"{path}: unknown transform file type; expected a displacement NIfTI (.nii.gz), an ITK "
                    "affine (.txt, .tfm, .mat) or a register.py output folder")
