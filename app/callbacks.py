"""Lightning callbacks of the application layer.

:class:`ResultsCallback` receives what ``RegistrationModule.test_step`` returns (one result per
pair: the row, the per-label Dice, the displacement, the moved label; the module writes nothing)
and stores it in the results folder (:class:`app.parts.ResultsWriter`), with the moved image,
moved label and displacement as NIfTI when ``save_outputs`` is set: the displacement in the
project's convention (``_disp``) and in ITK/ANTs form (``_disp_itk``, LPS mm), both vector NIfTIs
(:func:`data.transforms.displacement_bytes`); each stored pair is one line of the log
(:class:`app.progress.PairProgress`: Dice, seconds, ETA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from app.parts import MOVED_KINDS, ResultsWriter
from app.progress import PairProgress, say
from data.files import atomic_write_files
from data.transforms import VOXEL_DESCRIPTION

__all__ = ["ResultsCallback", "moved_volumes"]

class ResultsCallback(Callback):
    """Store every tested pair through ``writer`` (and its moved volumes with ``save_outputs``),
    then print its line (:class:`app.progress.PairProgress`)."""

    def __init__(self, writer: ResultsWriter, save_outputs: bool = False) -> None:
        self.writer = writer
        self.save_outputs = bool(save_outputs)
        self.progress: PairProgress | None = None

    def on_test_start(self, trainer, pl_module) -> None:
        self.progress = PairProgress.of_trainer(trainer, self.writer.method)

    def on_test_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        rows = []
        for i, result in enumerate(outputs or ()):
            moved = self._save(batch, i, result) if self.save_outputs else []
            self.writer.add(result, moved=moved)
            rows.append(result["pair"])
        if self.progress is not None:
            for line in self.progress.batch_done(rows):
                say(trainer, line)

    def _save(self, batch: Mapping[str, Any], i: int, result: Mapping[str, Any]) -> list[Path]:
        """The pair's moved image, moved label and displacement (ours and, unless the grid is sheared,
        which ITK images cannot be, ITK's) as NIfTI, written all or none; the files written."""
        from data.geometry import SHEAR_TOLERANCE, shear
        from data.io import nifti_bytes
        from data.transforms import displacement_bytes

        pair = result["pair"]
        u = result["displacement"]
        affine = _affine(batch, i, u.shape[1])
        files = {}
        for kind, (array, description) in moved_volumes(batch, i, result).items():
            path = self.writer.moved_path(pair["fixed_id"], pair["moving_id"], kind)
            files[path] = nifti_bytes(array, affine, path, description)
        if u.shape[1] == 3:  # NIfTI vector fields: 3-D only
            forms = (("disp", "voxel"), ("disp_itk", "itk")) if shear(affine) <= SHEAR_TOLERANCE else (("disp", "voxel"),)
            for kind, form in forms:
                path = self.writer.moved_path(pair["fixed_id"], pair["moving_id"], kind)
                files[path] = displacement_bytes(u.detach().cpu(), affine, path, form)
        else:
            disp = u[0].detach().cpu().numpy().astype(np.float32)  # (D, *S) -> (*S, D)
            path = self.writer.moved_path(pair["fixed_id"], pair["moving_id"], "disp")
            files[path] = nifti_bytes(np.moveaxis(disp, 0, -1), affine, path, VOXEL_DESCRIPTION)
        for kind in MOVED_KINDS:  # a volume this pair has not now (a label, ITK's field) is not left from before
            path = self.writer.moved_path(pair["fixed_id"], pair["moving_id"], kind)
            if path not in files:
                path.unlink(missing_ok=True)
        atomic_write_files(files)
        return list(files)


def moved_volumes(batch: Mapping[str, Any], i: int, result: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, str | None]]:
    """``{"image": moved image, "label": moved label (when the pair has labels)}`` of pair ``i`` as
    numpy arrays with their NIfTI descriptions. The label keeps every id (int64; :mod:`data.io`
    stores it in the smallest integer type that holds them)."""
    from spatial import warp

    u = result["displacement"]
    moving = batch["moving"][i : i + 1]
    moved = warp(moving, u.to(device=moving.device, dtype=moving.dtype))
    out = {"image": (moved[0, 0].detach().cpu().numpy().astype(np.float32), None)}
    if result.get("moved_label") is not None:
        out["label"] = (result["moved_label"][0].detach().cpu().numpy().astype(np.int64), None)
    return out


def _affine(batch: Mapping[str, Any], i: int, ndim: int) -> np.ndarray:
    """The fixed grid's voxel-to-world matrix of pair ``i`` (``fixed_affine``; else the spacing)."""
    aff = batch.get("fixed_affine")
    if aff is not None:
        aff = torch.as_tensor(aff)
        return (aff[i] if aff.dim() == 3 else aff).cpu().numpy().astype(np.float64)
    out = np.eye(4)
    sp = batch.get("spacing")
    if sp is not None:
        sp = torch.as_tensor(sp)
        for k, s in enumerate((sp[i] if sp.dim() == 2 else sp)[:ndim].tolist()):
            out[k, k] = s
    return out
