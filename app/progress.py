"""What a person follows in a run's log, with or without a progress bar (a terminal, ``nohup``,
a SLURM output file): plain lines on stdout, flushed as they are printed.

* :class:`EpochLog`: one line per validation epoch of ``train.py``
  (``epoch 3: val/dice 0.7120 (best 0.7120), val/loss ..., train/loss ..., step 400, 12.3 s``);
* :class:`PairProgress`: one line per registered pair of ``eval.py`` and the test phase, with its
  Dice, its registration time and an estimate of the time left (``ETA``);
* :func:`output_locations` / :func:`print_outputs`: at the end of a run, where every output went
  (result files, finished pairs, moved volumes, checkpoints, logger folders, the run's config).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.callbacks import Callback

__all__ = ["say", "EpochLog", "PairProgress", "clock", "output_locations", "print_outputs"]


def say(trainer: Any, text: str) -> None:
    """Print ``text`` as one line on stdout and flush it: through the trainer's progress bar when it
    has one (so the bar is not torn), else plainly."""
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if bar is not None and getattr(bar, "is_enabled", False):
        bar.print(text)
    else:
        print(text)
    sys.stdout.flush()


def _num(value: Any) -> str | None:
    """``value`` (a number or a 0-d tensor) with 4 significant digits; None when not a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return f"{v:.4g}" if math.isfinite(v) else None


def clock(seconds: float) -> str:
    """``h:mm:ss`` of a non-negative duration (``0:01:05``)."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochLog(Callback):
    """One line per validation epoch (process 0 only; not the sanity check), printed when Lightning
    has reduced the epoch's validation metrics::

        epoch 3: val/dice 0.7120 (best 0.7120), val/loss -0.3127, train/loss -0.3001, step 400, 12.3 s

    ``val/*`` are the epoch means the module logged (``val/dice_best`` the best ``val/dice`` so far,
    as the checkpoint callback sees it); ``train/loss`` the mean of this process's training losses
    since the epoch began; the seconds count from the epoch's start (training and validation).
    A value the run does not have (no labels: no Dice) is left out. A training epoch without a
    validation (no validation pairs, ``check_val_every_n_epoch > 1``) gets its line when it ends,
    with what it has (``epoch 4: train/loss -0.3001, step 500, 10.2 s``).
    """

    # the validation metrics printed after val/dice, in this order, when logged
    SHOWN = ("val/loss", "val/hd95", "val/folding_pct")

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._loss_sum: Any = None
        self._n = 0
        self._validated = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._loss_sum, self._n = None, 0
        self._validated = False

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if hasattr(loss, "detach"):  # summed on the device: no synchronisation per step
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._n += 1

    def line(self, trainer, validated: bool = True) -> str:
        """The line of the validation that just ended (``validated=False``: of a training epoch
        without one)."""
        metrics = trainer.callback_metrics if validated else {}
        parts = []
        dice = _num(metrics.get("val/dice"))
        if dice is not None:
            best = _num(metrics.get("val/dice_best"))
            parts.append(f"val/dice {dice}" + (f" (best {best})" if best is not None else ""))
        for key in self.SHOWN:
            value = _num(metrics.get(key))
            if value is not None:
                parts.append(f"{key} {value}")
        if self._n:
            loss = _num(self._loss_sum / self._n)
            if loss is not None:
                parts.append(f"train/loss {loss}")
        parts.append(f"step {trainer.global_step}")
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        return f"epoch {trainer.current_epoch}: " + ", ".join(parts)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._validated = True
        say(trainer, self.line(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook: only an epoch without one is left
        if self._validated or not trainer.is_global_zero:
            return
        say(trainer, self.line(trainer, validated=False))


class PairProgress:
    """One line per registered pair of a test run (``eval.py``, ``train.py``'s test phase)::

        [greedy] pair 3/10 OAS1_0001 <- OAS1_0002: Dice 0.7120 (before 0.5531), 12.3 s, ETA 0:01:26

    ``Dice`` and ``before`` are the pair's ``dice`` and ``dice_identity`` (left out for a pair
    without labels), the seconds its registration time (the ``seconds`` column), ``ETA`` the time
    the remaining batches of this process take at the mean wall time of the finished ones. Under
    DDP every process prints its own pairs (``[method rank r]``).
    """

    def __init__(self, method: str, n_batches: float, n_pairs: int | None = None, rank: int | None = None) -> None:
        self.prefix = f"[{method}]" if rank is None else f"[{method} rank {rank}]"
        self.n_batches = n_batches
        self.n_pairs = n_pairs
        self.start = time.perf_counter()
        self.batches = 0
        self.pairs = 0

    @classmethod
    def of_trainer(cls, trainer, method: str) -> "PairProgress":
        """The progress of ``trainer``'s test loop (its batch count, and its pair count when the
        loaders tell it)."""
        n_batches = float(sum(trainer.num_test_batches or [math.inf]))
        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        n_pairs: int | None = 0
        for loader, nb in zip(loaders, trainer.num_test_batches or []):
            size = getattr(loader, "batch_size", None)
            sampler = getattr(loader, "sampler", None)
            if not size or not math.isfinite(nb) or not hasattr(sampler, "__len__"):
                n_pairs = None
                break
            n_pairs += min(int(nb) * int(size), len(sampler))
        return cls(method, n_batches, n_pairs, rank=trainer.global_rank if trainer.world_size > 1 else None)

    def batch_done(self, rows: list[Mapping[str, Any]]) -> list[str]:
        """The lines of a finished batch's pairs (``rows``: their result rows)."""
        self.batches += 1
        elapsed = time.perf_counter() - self.start
        eta = None
        if math.isfinite(self.n_batches):
            eta = elapsed / self.batches * max(self.n_batches - self.batches, 0)
        lines = []
        for row in rows:
            self.pairs += 1
            count = f"{self.pairs}/{self.n_pairs}" if self.n_pairs else f"{self.pairs}"
            parts = []
            dice, before = _finite(row.get("dice")), _finite(row.get("dice_identity"))
            if dice is not None:
                parts.append(f"Dice {dice:.4f}" + (f" (before {before:.4f})" if before is not None else ""))
            seconds = _finite(row.get("seconds"))
            if seconds is not None:
                parts.append(f"{seconds:.2f} s")
            if eta is not None:
                parts.append(f"ETA {clock(eta)}")
            lines.append(f"{self.prefix} pair {count} {row['fixed_id']} <- {row['moving_id']}: " + ", ".join(parts))
        return lines


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------- where outputs went
def _listing(folder: Path, names: list[str]) -> str:
    present = [n for n in names if (folder / n).exists()]
    return f"{folder}" + (f" ({', '.join(present)})" if present else "")


def _logger_location(logger: Any) -> tuple[str, str] | None:
    """``(name, folder and how to use it)`` of one logger, without starting a W&B run that was never
    started."""
    if type(logger).__name__ == "WandbLogger":
        run = getattr(logger, "_experiment", None)
        run_dir = getattr(run, "dir", None) if run is not None else None
        if not run_dir:
            return None
        folder = Path(run_dir).parent  # .../wandb/<offline-run-...>/files -> the run folder
        if getattr(run, "offline", False):
            return "wandb", f"{folder} (offline; upload with: wandb sync {folder})"
        url = getattr(run, "url", None)
        return "wandb", f"{folder}" + (f" ({url})" if url else "")
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if not folder or not os.path.isdir(str(folder)):
        return None
    name = type(logger).__name__.replace("Logger", "").lower() or "logger"
    files = sorted(p.name for p in Path(str(folder)).iterdir() if p.is_file())
    return f"{name} logger", f"{Path(str(folder)).resolve()}" + (f" ({', '.join(files)})" if files else "")


def _checkpoint_locations(trainer) -> list[tuple[str, str]]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    out, seen = [], set()
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or not cb.dirpath or not os.path.isdir(str(cb.dirpath)):
            continue
        folder = Path(str(cb.dirpath)).resolve()
        if folder in seen:
            continue
        seen.add(folder)
        files = sorted(p.name for p in folder.glob("*.ckpt"))
        best = {Path(c.best_model_path).name for c in trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint) and getattr(c, "best_model_path", "")
                and Path(c.best_model_path).resolve().parent == folder and c.monitor}
        shown = [f + (" (best)" if f in best else "") for f in files]
        out.append(("checkpoints", f"{folder}" + (f": {', '.join(shown)}" if shown else " (none saved)")))
    return out


def output_locations(trainer=None, results_dir: str | os.PathLike | None = None, method: str | None = None,
                     save_outputs: bool = False) -> list[tuple[str, str]]:
    """``(what, where)`` of every output of a run that exists now: the results files of
    ``results_dir`` (the results contract), its finished pairs (``.parts/<method>``), its label map,
    its moved volumes (``moved/`` with ``save_outputs``), the checkpoints, each logger's folder and
    Hydra's record of the run's config. Call it before the loggers are finished (a W&B run's
    folder is read from the live run)."""
    out: list[tuple[str, str]] = []
    if results_dir is not None:
        folder = Path(results_dir).resolve()
        if (folder / "pairs.csv").exists():
            out.append(("results", _listing(folder, ["pairs.csv", "labels.csv", "summary.json", "label_map.json"])))
        parts = folder / ".parts"
        if method is not None:
            from app.results import _name

            parts = parts / _name([method])
        if parts.is_dir():
            out.append(("finished pairs", f"{parts} (a rerun into this folder keeps the unchanged ones)"))
        moved = folder / "moved"
        if save_outputs and moved.is_dir():
            n = sum(1 for _ in moved.glob("*.nii.gz"))
            out.append(("moved volumes", f"{moved} ({n} files: <pair>_image, _label, _disp, _disp_itk.nii.gz)"))
    if trainer is not None:
        out += _checkpoint_locations(trainer)
        for logger in getattr(trainer, "loggers", []) or []:
            where = _logger_location(logger)
            if where is not None:
                out.append(where)
    out += _hydra_location()
    return out


def _hydra_location() -> list[tuple[str, str]]:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        cfg = HydraConfig.get()
        sub = cfg.output_subdir
        if not sub:
            return []
        folder = Path(cfg.runtime.output_dir, sub).resolve()
    except Exception:  # noqa: BLE001 - no Hydra run: nothing to say
        return []
    return [("config", _listing(folder, ["config.yaml", "overrides.yaml"]))] if folder.is_dir() else []


def print_outputs(locations: list[tuple[str, str]]) -> None:
    """Print ``locations`` (:func:`output_locations`) as an ``outputs:`` block, flushed."""
    if not locations:
        return
    print("outputs:")
    for what, where in locations:
        print(f"  {what}: {where}")
    sys.stdout.flush()
