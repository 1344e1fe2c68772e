"""``register.py``: one pair of a person's own images registered in world space, into a folder.

    python register.py fixed=F.nii.gz moving=M.nii.gz out=DIR [model=NAME | ckpt_path=CKPT]
                       [moving_label=ML.nii.gz [fixed_label=FL.nii.gz]]

Fixed and moving may differ in shape, spacing and orientation: the moving image (and its label map)
is resampled onto the fixed image's grid in world space (:func:`data.pair_inputs.moving_on_fixed_grid`),
and the method registers that pair (a classical method's own affine stage, ``model.affine=...``,
pre-aligns it; ``model.affine="{scales:[1],iterations:[0]}"`` is the moments translation alone).
The result is one transform, fixed -> moving in world space (:mod:`data.transforms`: the
displacement ``u`` on the fixed grid read through both images' affines), and every output that
reads an image through it does so once, from the image's own grid and intensities
(:func:`data.transforms.transform_volume`), exactly as ``apply.py`` does.

``DIR`` receives (:data:`OUTPUTS`; written all or none, after everything was computed; an earlier
run's output that this run does not write, e.g. an inverse, is then removed):

==========================  ====================================================================
``moved.nii.gz``            the moving image on the fixed grid, in its own (original) intensities
``moved_label.nii.gz``      with ``moving_label``: the label map on the fixed grid (``model.label_interp``)
``disp.nii.gz``             ``u`` fixed -> moving, voxel units of the fixed grid, ``(X, Y, Z, 1, 3)``
``disp_itk.nii.gz``         the same transform for ANTs / ITK: LPS millimetres (antsApplyTransforms -t);
                            not for a sheared fixed grid (``transform.json`` ``itk_fields`` says why)
``inverse_disp*.nii.gz``    moving -> fixed, when the method has an inverse (SyN, ants_syn, a velocity field)
``jacobian_det.nii.gz``     determinant of the Jacobian of ``x -> x + u(x)`` on the fixed grid
``affine_itk.txt``          a classical affine stage alone (ITK text; ``disp`` already includes it)
``metrics.json``            with both label maps: the metrics of ``eval.py`` (one code path)
``transform.json``          what was done: inputs, grids, method, resampling, files, convention
==========================  ====================================================================
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from app.register_inputs import (check_grids, check_size, check_voxel_order, device_of, model_of, pair_batch,
                                 read_inputs)

__all__ = ["OUTPUTS", "RECORD", "run_register", "grid_record"]

OUTPUTS = {
    "moved": "moved.nii.gz",
    "moved_label": "moved_label.nii.gz",
    "disp": "disp.nii.gz",
    "disp_itk": "disp_itk.nii.gz",
    "inverse": "inverse_disp.nii.gz",
    "inverse_itk": "inverse_disp_itk.nii.gz",
    "jacobian": "jacobian_det.nii.gz",
    "affine": "affine_itk.txt",
    "metrics": "metrics.json",
    "record": "transform.json",
}
RECORD = OUTPUTS["record"]
TOOL = "register.py"


def grid_record(grid, path: Path | None = None) -> dict[str, Any]:
    """A grid as ``transform.json`` records it (shape, spacing, voxel-to-world affine, orientation)."""
    from data.geometry import axcodes

    out = {"shape": [int(s) for s in grid.shape], "spacing": [float(s) for s in grid.spacing],
           "affine": np.asarray(grid.affine, dtype=np.float64).tolist(), "orientation": axcodes(grid.affine)}
    return {"path": str(path.resolve()), **out} if path is not None else out


def _register(model, batch: dict[str, Any], device: torch.device, files: dict[str, Path]):
    """``(u, inverse or None, seconds)`` on the CPU; a non-finite field stops with one error."""
    from models.health import NonFiniteError

    model.eval().to(device)
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    start = time.perf_counter()
    with torch.no_grad():
        u, inverse = model.register_with_inverse(on_device)
    seconds = time.perf_counter() - start
    for name, field in (("displacement", u), ("inverse", inverse)):
        if field is not None and not bool(torch.isfinite(field).all()):
            bad = int((~torch.isfinite(field)).sum())
            raise NonFiniteError(f"{model.method}: the {name} of {files['fixed']} <- {files['moving']} holds {bad} "
                                 "non-finite values; nothing was written")
    return u.detach().float().cpu(), None if inverse is None else inverse.detach().float().cpu(), seconds


# largest |compose(inverse, u)| (voxels) accepted where x + u(x) lies inside the grid: the fixed-point
# inverses of smooth fields stay near 0.1; a field too large or folded to invert does not
INVERSE_TOLERANCE = 0.5


def _checked_inverse(u: torch.Tensor, inverse: torch.Tensor | None):
    """``(inverse or None, its residual record or None)``: an inverse that does not undo ``u``
    within :data:`INVERSE_TOLERANCE` voxels (:func:`spatial.inverse_residual`) is not written."""
    from spatial import inverse_residual

    if inverse is None:
        return None, None
    mean, largest, n = inverse_residual(u, inverse)
    check = {"mean_voxels": mean, "max_voxels": largest, "voxels": n, "tolerance_voxels": INVERSE_TOLERANCE}
    if largest > INVERSE_TOLERANCE:
        check["note"] = (f"inverse not written: it leaves up to {largest:.2f} voxels where the method's field is "
                         f"undone (tolerance {INVERSE_TOLERANCE}); the field is too large or folded to invert")
        return None, check
    return inverse, check


def _affine_stage(model, fixed_affine: np.ndarray) -> np.ndarray | None:
    """The world matrix of a classical method's affine stage (fixed -> moving), or None."""
    from data.transforms import voxel_matrix_to_world

    results = getattr(model, "last_results", None)
    if not results or results[0].affine is None:
        return None
    return voxel_matrix_to_world(results[0].affine[0].detach().double().cpu().numpy(), fixed_affine)


def _metrics(model, batch: dict[str, Any], u: torch.Tensor, moved_label: np.ndarray, moving_label: np.ndarray,
             seconds: float) -> dict[str, Any]:
    """``eval.py``'s metrics of the pair (:func:`models.evaluation.evaluate_batch`, one code path)
    with the moved label map this tool wrote. The labels scored are those of the fixed map and of
    ``moving_label`` as stored (on its own grid): a label too small for the fixed grid that vanishes
    when the map is resampled onto it is still scored (erased if the moved map lacks it)."""
    from metrics import PAIR_METRICS
    from models.evaluation import evaluate_batch

    moved = torch.from_numpy(moved_label)[None, None]
    present = {int(v) for v in np.unique(moving_label) if v != 0}
    res = evaluate_batch(batch, u, True, model.label_interp, moved_label=moved, moving_present=[present])[0]
    row = {k: float(res[k]) for k in PAIR_METRICS}
    return {"fixed_id": batch["fixed_id"][0], "moving_id": batch["moving_id"][0], "method": model.method, **row,
            "dice_identity": float(res["dice_identity"]), "mae_identity": float(res["mae_identity"]), "n_erased": int(res["n_erased"]), "seconds": seconds,
            "label_interp": model.label_interp,
            "dice_per_label": {str(k): float(v) for k, v in sorted(res["dice_per_label"].items())},
            "hd95_per_label": {str(k): float(v) for k, v in sorted(res["hd95_per_label"].items())},
            "erased_labels": [int(v) for v in res["erased_labels"]],
            "note": "dice_identity: before registration, the moving label map resampled onto the fixed grid"}


def run_register(cfg: DictConfig) -> dict[str, Any]:
    """``register.py``'s work (module docstring); returns the record written to ``transform.json``."""
    import lightning as L

    from data.files import atomic_write_files
    from data.io import load_volume
    from data.save import nifti_bytes
    from data.transforms import FieldStage, displacement_bytes, itk_affine_text, transform_volume
    from spatial import jacobian_determinant

    from app.config_check import check_config

    check_config(cfg)  # values of the wrong type, named by key, before any work
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    files, out = read_inputs(cfg, OUTPUTS.values())
    grids = check_grids(files)
    volumes = {key: load_volume(path, kind="label" if key.endswith("_label") else "image") for key, path in files.items()}
    model, model_record = model_of(cfg)
    fixed, moving = grids["fixed"], grids["moving"]
    check_size(model, files, fixed.shape)
    check_voxel_order(cfg, model, files, fixed)
    batch = pair_batch(files, grids, volumes, bool(cfg.get("normalize", True)))
    u, inverse, seconds = _register(model, batch, device_of(cfg), files)
    inverse, inverse_check = _checked_inverse(u, inverse)

    stages = [FieldStage(u, fixed.affine, OUTPUTS["disp"])]
    moved = transform_volume(stages, volumes["moving"].array, moving.affine, fixed.shape, fixed.affine, "image",
                             path=files["moving"])
    written: dict[Path, bytes | str] = {}

    def nifti(key: str, array: np.ndarray, description: str) -> None:
        written[out / OUTPUTS[key]] = nifti_bytes(array, fixed.affine, OUTPUTS[key], description)

    nifti("moved", moved, f"{files['moving'].name} on the fixed grid, own intensities"[:80])
    metrics = None
    if "moving_label" in files:
        moved_label = transform_volume(stages, volumes["moving_label"].array, grids["moving_label"].affine,
                                       fixed.shape, fixed.affine, "label", interp=model.label_interp,
                                       path=files["moving_label"])
        nifti("moved_label", moved_label, f"{files['moving_label'].name} on the fixed grid ({model.label_interp})")
        if "fixed_label" in files:
            metrics = _metrics(model, batch, u, moved_label, volumes["moving_label"].array, seconds)
            written[out / OUTPUTS["metrics"]] = json.dumps(metrics, indent=2) + "\n"
    no_itk = _no_itk_reason(files["fixed"], fixed.affine)
    for key, field in (("disp", u), ("inverse", inverse)):
        if field is not None:
            written[out / OUTPUTS[key]] = displacement_bytes(field, fixed.affine, OUTPUTS[key], "voxel")
            if no_itk is None:
                written[out / OUTPUTS[f"{key}_itk"]] = displacement_bytes(field, fixed.affine, OUTPUTS[f"{key}_itk"],
                                                                          "itk")
    nifti("jacobian", jacobian_determinant(u)[0].numpy(), "det Jacobian of x -> x + u(x), fixed grid")
    affine = _affine_stage(model, fixed.affine)
    if affine is not None:
        written[out / OUTPUTS["affine"]] = itk_affine_text(affine)

    record = _record(cfg, files, grids, model, model_record, inverse, affine, written, seconds)
    record["itk_fields"] = no_itk or "written"
    if inverse_check is not None:
        record["inverse_residual"] = inverse_check
    written[out / RECORD] = json.dumps(record, indent=2) + "\n"
    atomic_write_files(written)
    for name in OUTPUTS.values():  # an earlier run's output this run has not (an inverse, metrics) goes
        if out / name not in written:
            (out / name).unlink(missing_ok=True)
    _report(record, metrics, out, inverse is not None)
    return record


def _no_itk_reason(path: Path, affine: np.ndarray) -> str | None:
    """Why the ITK/ANTs displacement files are not written (the fixed grid is sheared, which ITK
    images cannot be: an ITK tool would place the field's voxels elsewhere), or None."""
    from data.geometry import SHEAR_TOLERANCE, shear

    amount = shear(affine)
    if amount <= SHEAR_TOLERANCE:
        return None
    return (f"not written: {path}'s affine is sheared (voxel axes {amount:.4f} from orthogonal), which ITK/ANTs "
            f"images cannot represent; {OUTPUTS['disp']} with apply.py is exact")


def _record(cfg: DictConfig, files: dict[str, Path], grids: dict, model, model_record: dict, inverse, affine,
            written: dict[Path, bytes | str], seconds: float) -> dict[str, Any]:
    """The ``transform.json`` record of :func:`run_register`: the transform's convention, both grids,
    how the moving image was resampled, the method and the files written."""
    from data.geometry import grid_mismatch
    from spatial import DISPLACEMENT_CONVENTION

    fixed, moving = grids["fixed"], grids["moving"]
    mismatch = grid_mismatch(fixed.affine, moving.affine, fixed.spacing, moving.spacing)
    if fixed.shape != moving.shape:
        mismatch = f"shape {moving.shape} vs {fixed.shape}" + (f", {mismatch}" if mismatch else "")
    return {
        "tool": TOOL,
        "convention": DISPLACEMENT_CONVENTION,
        "transform": ("fixed -> moving in world space: a fixed-grid point p reads the moving image at p + d(p); "
                      f"{OUTPUTS['disp']}: u in voxel units of the fixed grid, d = A[:3, :3] u (A: the fixed "
                      f"affine, RAS mm); {OUTPUTS['disp_itk']}: d in LPS mm for ANTs/ITK"),
        "fixed": grid_record(fixed, files["fixed"]),
        "moving": grid_record(moving, files["moving"]),
        "fixed_label": str(files["fixed_label"].resolve()) if "fixed_label" in files else None,
        "moving_label": str(files["moving_label"].resolve()) if "moving_label" in files else None,
        "resampling": (f"moving resampled onto the fixed grid in world space ({mismatch}) before registration"
                       if mismatch else "moving already on the fixed grid"),
        "method": model.method,
        "paradigm": model.paradigm,
        "model": model_record,
        "normalize": bool(cfg.get("normalize", True)),
        "label_interp": model.label_interp,
        "affine_stage": None if affine is None else {
            "world_ras": affine.tolist(), "file": OUTPUTS["affine"],
            "note": f"the affine pre-alignment alone; {OUTPUTS['disp']} already includes it"},
        "inverse": None if inverse is None else OUTPUTS["inverse"],
        "files": sorted(p.name for p in written) + [RECORD],
        "seconds": seconds,
    }


def _report(record: dict[str, Any], metrics: dict[str, Any] | None, out: Path, has_inverse: bool) -> None:
    line = f"[{record['method']}] {Path(record['moving']['path']).name} -> {Path(record['fixed']['path']).name}: "
    line += f"{record['seconds']:.1f} s; {record['resampling']}"
    print(line)
    if metrics is not None:
        print(f"[{record['method']}] Dice before {metrics['dice_identity']:.4f} -> after {metrics['dice']:.4f}, "
              f"HD95 {metrics['hd95']:.3f} mm, SDlogJ {metrics['sdlogj']:.4f}, folding {metrics['folding_pct']:.4f} %")
    note = (record.get("inverse_residual") or {}).get("note")
    print(f"results: {out.resolve()} ({', '.join(record['files'])})"
          + ("" if has_inverse else f"; {note or record['method'] + ' has no inverse'}"))
    if record.get("itk_fields", "written") != "written":
        print(f"ITK/ANTs displacement files {record['itk_fields']}")
    sys.stdout.flush()
