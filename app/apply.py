"""``apply.py``: a saved transform applied to any image, in world space.

    python apply.py transform=DIR image=X.nii.gz out=Y.nii.gz [label=true] [inverse=true] [reference=R.nii.gz]
    python apply.py transform=[DIR/disp_itk.nii.gz,affine.txt] image=X.nii.gz reference=F.nii.gz out=Y.nii.gz
    python apply.py transform=[0GenericAffine.mat,1InverseWarp.nii.gz] invert=[true,false] image=F.nii.gz reference=M.nii.gz out=Y.nii.gz

``transform``: a ``register.py`` output folder (its forward transform ``disp.nii.gz``; with
``inverse=true`` its inverse, when the method had one), one transform file, or a list of them
composed like ``antsApplyTransforms -t T1 -t T2 ...`` (a point of the output grid goes through
``T1`` first, then ``T2``: ``T2(T1(p))``; ANTs' own output ``[1Warp.nii.gz, 0GenericAffine.mat]``
reads as it does in ANTs). ``invert``: one ``true``/``false`` per entry, as antspyx's
``whichtoinvert`` (``antsApplyTransforms -t [T,1]``): an affine file is inverted exactly, a
``register.py`` folder gives its inverse (``inverse.nii.gz``, on its moving grid); a displacement
file is refused by name (its inverse is a field of its own, e.g. ANTs' ``1InverseWarp.nii.gz``).
Files: the project's displacement NIfTI, its ITK/ANTs form or any ITK displacement field, an ITK
affine (``.txt``/``.tfm``/``.mat``) (:mod:`data.transforms`).

``image`` may lie in any space and on any grid: it is read in world space through the transform
(one interpolation, :func:`data.transforms.transform_volume`): trilinear, or nearest neighbour with
``label=true`` (the ids are kept exactly, the file's integer type as small as holds them). The
output lies on ``reference``'s grid; by default the transform's own: a folder's fixed grid (its
moving grid with ``inverse=true``), the first displacement file's lattice. Applying a folder's
transform to the moving label map gives exactly its ``moved_label.nii.gz``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig

from app.errors import ConfigError
from app.register import OUTPUTS, RECORD, TOOL
from app.register_inputs import required_path

__all__ = ["read_transform_folder", "read_transforms", "run_apply"]

LABEL_INTERPS = ("nearest", "linear")
_USAGE = "python apply.py transform=DIR_OR_FILE image=X.nii.gz out=Y.nii.gz [label=true]"


def read_transform_folder(folder: Path, inverse: bool = False):
    """``(stages, reference grid, label_interp)`` of a ``register.py`` output folder: its forward
    transform on the fixed grid, or with ``inverse`` its inverse on the moving grid, and the label
    interpolation its ``moved_label`` was made with. DataErrors name the folder and the file it lacks."""
    from data.geometry import Grid
    from data.io import DataError
    from data.transforms import read_displacement

    record_path = folder / RECORD
    if not record_path.is_file():
        raise DataError(f"{folder}: not a {TOOL} output folder ({RECORD} is missing)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        grid = record["moving" if inverse else "fixed"]
        reference = Grid(tuple(grid["shape"]), tuple(grid["spacing"]), np.asarray(grid["affine"], dtype=np.float64))
        label_interp = record.get("label_interp", "nearest")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{record_path}: unreadable {TOOL} record ({type(exc).__name__}: {exc})") from None
    if label_interp not in LABEL_INTERPS:
        raise DataError(f"{record_path}: label_interp must be one of {LABEL_INTERPS}, got {label_interp!r}")
    if inverse and not record.get("inverse"):
        raise DataError(f"{folder}: method {record.get('method')} computed no inverse ({OUTPUTS['inverse']} "
                        "exists for SyN and velocity-field methods); apply the forward transform or register the "
                        "other way round")
    name = OUTPUTS["inverse" if inverse else "disp"]
    if not (folder / name).is_file():
        raise DataError(f"{folder}: the transform folder is missing {name} (listed in {RECORD})")
    return [read_displacement(folder / name)], reference, label_interp


def _invert_flags(value: Any, paths: list[Path], inverse: bool) -> list[bool]:
    """``invert=`` as one bool per transform entry (all false when unset); ConfigError naming the key."""
    if value is None:
        return [inverse] * len(paths)
    if inverse:
        raise ConfigError("give either inverse=true (a folder's inverse) or invert=[...] (one true/false per "
                          "transform entry), not both")
    flags = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if len(flags) != len(paths) or not all(isinstance(f, bool) for f in flags):
        raise ConfigError(f"invert must be a list of true/false, one per transform entry ({len(paths)}: "
                          f"{[str(p) for p in paths]}), as antspyx's whichtoinvert; got {value!r}")
    return flags


def read_transforms(spec: Any, inverse: bool = False, invert: Any = None):
    """``(stages, default reference grid or None, default label interpolation)`` of ``transform=``:
    a folder, a file or a list (the label interpolation: a lone folder's, else nearest);
    ``invert``: one bool per entry (module docstring), ``inverse``: a lone folder's inverse."""
    from data.geometry import Grid
    from data.io import DataError
    from data.transforms import AffineStage, FieldStage, read_stage

    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not items or any(item is None or not str(item).strip() for item in items):
        raise ConfigError(f"transform is not set (or holds an empty entry): {_USAGE}")
    paths = [Path(os.path.expanduser(str(item))) for item in items]
    if inverse and (len(paths) != 1 or not paths[0].is_dir()):
        raise ConfigError(f"inverse=true applies to one {TOOL} output folder, got transform={[str(p) for p in paths]}")
    flags = _invert_flags(invert, paths, inverse)
    stages, reference, label_interp = [], None, "nearest"
    for i, (path, flip) in enumerate(zip(paths, flags)):
        if path.is_dir():
            got, grid, interp = read_transform_folder(path, flip)
            if len(paths) == 1:
                label_interp = interp
        elif not path.exists():
            raise DataError(f"{path}: transform not found (transform=...)")
        else:
            got, grid = [read_stage(path)], None
            if flip and isinstance(got[0], FieldStage):
                raise DataError(f"{path}: invert=true on a displacement field: a field is not inverted here; give "
                                "its inverse field instead (ANTs' 1InverseWarp.nii.gz, register.py's inverse.nii.gz)")
            if flip:
                got = [AffineStage(np.linalg.inv(got[0].matrix), source=got[0].source)]
            if isinstance(got[0], FieldStage):
                lattice = got[0]
                spacing = tuple(float(s) for s in np.linalg.norm(lattice.affine[:3, :3], axis=0))
                grid = Grid(lattice.shape, spacing, lattice.affine)
        if i == 0:
            reference = grid
        stages += got
    return stages, reference, label_interp


def _label_interp(cfg: DictConfig, default: str) -> str:
    """``label_interp``, or when unset ``default`` (:func:`read_transforms`: the one ``register.py``
    warped the moving label map with, so that applying its folder reproduces ``moved_label``)."""
    value = cfg.get("label_interp")
    if value is None:
        return default
    if value not in LABEL_INTERPS:
        raise ConfigError(f"label_interp must be one of {LABEL_INTERPS} (or null), got {value!r}")
    return str(value)


def run_apply(cfg: DictConfig) -> Path:
    """``apply.py``'s work (module docstring); returns the written file."""
    from app.config_check import check_config
    from data.io import check_itk_header, load_volume, read_grid, save_nifti_atomic
    from data.transforms import check_affine, require_overlap, transform_volume

    check_config(cfg)
    image = required_path(cfg, "image", _USAGE)
    out = required_path(cfg, "out", _USAGE)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise ConfigError(f"out={out} must name a NIfTI file (.nii.gz or .nii)")
    label, inverse = bool(cfg.get("label", False)), bool(cfg.get("inverse", False))  # checked strict booleans
    stages, reference, folder_interp = read_transforms(cfg.get("transform"), inverse, cfg.get("invert"))
    if cfg.get("reference"):
        reference_path = os.path.expanduser(str(cfg.reference))
        reference = read_grid(reference_path)
        check_affine(reference_path, reference.affine)  # one line naming the file, not the resampler's
        check_itk_header(reference_path)
    interp = _label_interp(cfg, folder_interp) if label else "nearest"
    if reference is None:
        raise ConfigError("reference is not set and the first transform (an affine) has no grid: give "
                          "reference=FILE.nii.gz, the image whose grid the output takes")
    sources = [image] + [Path(s.source) for s in stages if s.source]
    if cfg.get("reference"):
        sources.append(Path(reference_path))
    if any(out.resolve() == p.resolve() for p in sources):
        raise ConfigError(f"out={out} would overwrite an input; write to another file")
    check_itk_header(image)
    volume = load_volume(image, kind="label" if label else "image")
    array = transform_volume(stages, volume.array, volume.affine, reference.shape, reference.affine,
                             "label" if label else "image", interp=interp, path=image)
    require_overlap(volume.array, array, image, "the output grid through the transform"
                    + (f" (reference={reference_path})" if cfg.get("reference") else ""))
    how = f"label {interp}" if label else "linear"
    save_nifti_atomic(array, reference.affine, out, description=f"{image.name} through {len(stages)} transform(s), {how}"[:80])
    what = {"nearest": "label, nearest neighbour", "linear": "label, linear (each label's indicator)"}[interp]
    print(f"{image} -> {out.resolve()} ({what if label else 'image, trilinear'}; "
          f"grid {tuple(reference.shape)}; {len(stages)} transform stage(s))")
    sys.stdout.flush()
    return out
