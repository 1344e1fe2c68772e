"""Lightning callbacks of the application layer.

:class:`ResultsCallback` receives what ``RegistrationModule.test_step`` returns (one result per
pair: the row, the per-label Dice, the displacement, the moved label; the module writes nothing)
and stores it in the results folder (:class:`app.parts.ResultsWriter`), with the moved image,
moved label and displacement as NIfTI when ``save_outputs`` is set: the displacement in the
project's convention (``_disp``) and in ITK/ANTs form (``_disp_itk``, LPS mm), both vector NIfTIs
(:func:`data.transforms.displacement_bytes`); each stored pair is one line of the log
(:class:`app.progress.PairProgress`: Dice, seconds, ETA).

:class:`StopCheck` and :class:`StopCheckpoint` are the Lightning side of :mod:`app.stopping`: a
signal during a loop's last batch stops the run, and ``train.py`` saves ``last.ckpt`` on a stop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from app.parts import MOVED_KINDS, ResultsWriter
from app.progress import PairProgress, say
from app.stopping import Stopped, as_stop, requested
from data.files import atomic_write_files
from data.transforms import VOXEL_DESCRIPTION

__all__ = ["ResultsCallback", "moved_volumes", "StopCheck", "StopCheckpoint"]

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


class StopCheck(pl.Callback):
    """Raise :class:`Stopped` at the end of fit / test when a SIGTERM came during the last batch
    (Lightning lets a signal during a loop's last batch pass, and resets its flag on the next run)."""

    def _check(self) -> None:
        signum = requested()
        if signum is not None:
            raise Stopped(signum)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check()

    def on_test_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check()


class StopCheckpoint(pl.Callback):
    """``train.py``: when fit stops on a signal (at a batch boundary), save the full training state
    to ``path`` (``last.ckpt``) so that ``ckpt_path=last`` resumes from that very step.

    Also remembers the exception that ended fit (``exception``: Lightning turns Ctrl-C into
    ``sys.exit(1)``), the step saved (``saved_step``) or why nothing was saved (``not_saved``: the
    weights are not finite; such weights are never written; ``kept``: a stop during validation
    keeps ``last.ckpt`` as last saved, since a state saved part-way through validation would
    resume past it and its epoch could never be picked as the best).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.exception: BaseException | None = None
        self.saved_step: int | None = None
        self.not_saved: str | None = None
        self.kept: str | None = None  # why nothing was saved on purpose (a stop during validation)

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self.exception = exception
        from lightning.pytorch.trainer.states import TrainerFn

        if as_stop(exception) is None or self.path is None or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.validating or trainer.sanity_checking:
            # a state saved part-way through validation resumes past it: that epoch would never be
            # validated, so never chosen as the best checkpoint (and the run would test another one)
            self.kept = (f"stopped during validation, so {self.path} is kept as last saved (a state saved part-way "
                         "through validation would resume past it, and its epoch could never be picked as the best)")
            return
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        except Exception as exc:  # noqa: BLE001 - reported in the stop line; never half a stop
            self.not_saved = " ".join(str(exc).split())
            return
        self.saved_step = int(trainer.global_step)
