"""Train a learned registration method, then test it into the results contract.

    python train.py                                  # CPU quickstart: VoxelMorph on offline MNI data
    python train.py experiment=mni_sup_voxelmorph    # an experiment file from configs/experiment/
    python train.py model.loss.dice_weight=1 logger=csv trainer.max_epochs=5

Outputs (``paths.output_dir``, by default ``logs/train/runs/<time>``): ``checkpoints/``,
logger files, and ``test/`` with ``pairs.csv``, ``labels.csv``, ``summary.json``.

Stopping and resuming: SIGTERM (``kill``, ``scancel``, a SLURM time limit) saves
``checkpoints/last.ckpt`` at the next batch boundary and exits 143 printing the command that
resumes (``... paths.output_dir=<dir> ckpt_path=last``); Ctrl-C exits 130 printing it too. Neither
tests a half-trained network. Checkpoints are read as data (``weights_only``).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _ROOT)
# job processes started for this run (submitit launchers, DDP ranks) import the project too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.runtime import (  # noqa: E402
    ConfigError,
    build_datamodule,
    build_model,
    build_trainer,
    check_entry,
    check_output_dir,
    finish_loggers,
    guarded,
    read_checkpoint,
    run_test,
)

# Lightning resolves these ckpt_path values itself (through the same weights-only reader)
_SPECIAL_CKPT = ("last", "hpc", "best")


@guarded
def train(cfg: DictConfig) -> dict:
    """Fit ``cfg.model`` (a network with trainable parameters), then test it into ``test/``.

    A model with nothing to train (identity, classical optimisers) is only tested. A network is
    tested only if it was trained here (at least one optimiser step) or comes from ``ckpt_path``;
    non-finite losses or weights stop training with one error (:class:`models.module.NonFiniteError`).
    SIGTERM saves ``checkpoints/last.ckpt`` at the next batch boundary and exits 143 with the
    resume command; Ctrl-C exits 130 with it (resuming from the last saved checkpoint); neither
    goes on to test.
    """
    import lightning as L

    from experiments.stopping import StopCheckpoint

    check_entry(cfg, "train")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT:
        read_checkpoint(ckpt_path, "ckpt_path")  # a bad file: one error now, before any work
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    check_output_dir(cfg.paths.output_dir, datamodule)  # before any checkpoint or result is written
    model = build_model(cfg)
    trainable = bool(getattr(model, "trainable", True))
    if trainable and cfg.test and not cfg.train and not ckpt_path:
        raise ConfigError(f"train=false: {model.method} is a network with untrained (random) weights; "
                          "give ckpt_path=<a checkpoint> to test a trained one (or use eval.py ckpt_path=...)")
    if cfg.train and not trainable:
        print(f"[{model.method}] nothing to train (no trainable parameters): testing only")
    stop = StopCheckpoint()
    trainer = build_trainer(cfg, extra_callbacks=[stop])
    stop.path, resume_ckpt = _last_checkpoint(trainer, cfg.paths.output_dir)
    test_ckpt = None  # train=false: the checkpoint whose weights are tested (never fresh weights)
    if trainable and not cfg.train and ckpt_path:
        test_ckpt = stop.path if str(ckpt_path) == "last" else str(ckpt_path)
        if str(ckpt_path) in _SPECIAL_CKPT and (str(ckpt_path) != "last" or not os.path.isfile(test_ckpt)):
            raise ConfigError(f"ckpt_path={ckpt_path} with train=false: no such checkpoint"
                              + (f" ({test_ckpt} does not exist)" if str(ckpt_path) == "last" else "")
                              + "; give the path of the checkpoint to test")
    summary: dict = {}
    phase = "training"
    try:
        for logger in trainer.loggers:  # the resolved config: what the dashboard groups and filters by
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.train and trainable:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            if trainer.global_step == 0:
                raise ConfigError(
                    f"train: no optimiser step was taken (trainer.max_epochs={cfg.trainer.get('max_epochs')}, "
                    f"trainer.max_steps={cfg.trainer.get('max_steps')}, trainer.limit_train_batches="
                    f"{cfg.trainer.get('limit_train_batches')}); an untrained {model.method} is not tested as a "
                    "trained method: train at least one step, or test a checkpoint with eval.py ckpt_path=...")
        if cfg.test:
            phase = "testing"
            ckpt = None
            if cfg.train and trainable and trainer.checkpoint_callback is not None:
                ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            elif not cfg.train and trainable:
                ckpt = test_ckpt
            if ckpt is None and hasattr(model, "check_finite_weights"):
                model.check_finite_weights("before testing:")
            out_dir = os.path.join(cfg.paths.output_dir, "test")
            summary = run_test(trainer, model, datamodule, out_dir, save_outputs=cfg.save_outputs, ckpt_path=ckpt)
    except BaseException as exc:  # noqa: BLE001 - stops become the resume line; the rest passes
        stopped = _stopped(exc, stop, trainer, cfg, phase, resume_ckpt)
        if stopped is None:
            raise
        raise stopped from None
    finally:
        finish_loggers(trainer)
    return summary


def _last_checkpoint(trainer, output_dir: str) -> tuple[str, str]:
    """Where a stop saves the training state, and the ``ckpt_path`` value that resumes from it:
    ``last.ckpt`` in the folder of the checkpoint callbacks (``ckpt_path=last`` finds it there),
    else ``<output_dir>/checkpoints/last.ckpt`` named by its path."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dirs = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if dirs:
        return os.path.join(str(dirs[0]), "last.ckpt"), "last"
    path = os.path.join(str(output_dir), "checkpoints", "last.ckpt")
    return path, path


def _stopped(exc: BaseException, stop, trainer, cfg: DictConfig, phase: str, resume_ckpt: str):
    """The :class:`experiments.stopping.Stopped` (with train.py's resume line) for a stop, else None."""
    import signal

    from experiments.stopping import Stopped, as_stop, resume_command, signal_name

    command = resume_command("train.py", cfg.paths.output_dir, [f"ckpt_path={resume_ckpt}"])
    interrupted = isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(stop.exception, KeyboardInterrupt))
    where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})" if phase == "training" else "while testing"
    if interrupted:
        last = stop.path if stop.path and os.path.isfile(stop.path) else None
        saved = (f"the last saved checkpoint is {last}" if last else
                 "no checkpoint was saved yet (the command below starts afresh)")
        return Stopped(signal.SIGINT, f"interrupted (Ctrl-C) {where}; not tested; {saved}; resume with: {command}")
    got = as_stop(exc)
    if got is None:
        return None
    name = signal_name(got.signum)
    if phase == "training":
        if stop.saved_step is not None:
            saved = f"saved {stop.path} (step {stop.saved_step})"
        else:
            saved = f"training state NOT saved ({stop.not_saved or 'no checkpoint callback ran'})"
        return Stopped(got.signum, f"stopped by {name} {where}; {saved}; not tested; resume with: {command}")
    return Stopped(got.signum, f"stopped by {name} while testing; checkpoints and finished test pairs are kept "
                               f"in {os.path.abspath(str(cfg.paths.output_dir))}; resume with: {command}")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
