"""``train.py``: fit a learned method, then test it into the results contract (:mod:`app.evaluation`).

A model with nothing to train (identity, classical optimisers) is only tested. Stops (SIGTERM,
Ctrl-C, a SLURM requeue signal) save ``last.ckpt`` at a batch boundary and end with the command
that resumes (:mod:`app.stopping`); a network that took no optimiser step is never tested as a
trained method.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from app.build import build_datamodule, build_model, build_trainer, check_entry
from app.checkpoints import check_same_settings, check_trained_data, read_checkpoint
from app.errors import ConfigError
from app.evaluation import check_input_sizes, check_output_dir, run_test
from app.loggers import finish_loggers
from app.progress import output_locations, print_outputs

__all__ = ["run_train"]


# Lightning resolves these ckpt_path values itself (through the same weights-only reader)
_SPECIAL_CKPT = ("last", "hpc", "best")


def run_train(cfg: DictConfig) -> dict:
    """Fit ``cfg.model`` (a network with trainable parameters), then test it into ``test/``.

    A model with nothing to train (identity, classical optimisers) is only tested. A network is
    tested only if it was trained here (at least one optimiser step) or comes from ``ckpt_path``;
    non-finite losses or weights stop training with one error (:class:`models.health.NonFiniteError`).
    SIGTERM saves ``checkpoints/last.ckpt`` at the next batch boundary and exits 143 with the
    resume command; Ctrl-C does the same and exits 130 (a second Ctrl-C stops at once: the resume
    command then starts from the last checkpoint saved); neither goes on to test.
    """
    from app.callbacks import StopCheckpoint

    datamodule, model = _build(cfg)
    _select_by_loss_without_labels(cfg, datamodule, model)
    stop = StopCheckpoint()
    trainer = build_trainer(cfg, extra_callbacks=[stop])
    stop.path, resume_ckpt = _last_checkpoint(trainer, cfg.paths.output_dir)
    test_ckpt = _checkpoint_to_test(cfg, model, stop.path)
    if str(cfg.get("ckpt_path")) == "last" and os.path.isfile(stop.path):  # (a given file: checked in _build)
        _check_checkpoint_settings(cfg, model, datamodule, stop.path)
    summary: dict = {}
    phase = "training"
    where: list = []
    try:
        for logger in trainer.loggers:  # the resolved config: what the dashboard groups and filters by
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.train and model.trainable:
            _fit(cfg, trainer, model, datamodule)
            if trainer.checkpoint_callback is not None:
                test_ckpt = trainer.checkpoint_callback.best_model_path or None
        if cfg.test:
            phase = "testing"
            out_dir = os.path.join(cfg.paths.output_dir, "test")
            summary = run_test(trainer, model, datamodule, out_dir, save_outputs=cfg.save_outputs, ckpt_path=test_ckpt)
        if trainer.is_global_zero:
            where = output_locations(trainer, os.path.join(cfg.paths.output_dir, "test") if cfg.test else None,
                                     model.method, bool(cfg.save_outputs))
    except BaseException as exc:  # noqa: BLE001 - stops become the resume line; the rest passes
        stopped = _stopped(exc, stop, trainer, cfg, phase, resume_ckpt)
        if stopped is None:
            raise
        raise stopped from None
    finally:
        finish_loggers(trainer)
    print_outputs(where)
    return summary


def _select_by_loss_without_labels(cfg: DictConfig, datamodule, model) -> None:
    """Data without labels has no ``val/dice`` (NaN every epoch): a checkpoint callback monitoring it
    keeps its first epoch as "best" for ever, and that epoch would be tested. Such a run picks its
    best checkpoint by ``val/loss`` (lower is better) instead, and says so."""
    from omegaconf import open_dict

    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if (node is None or node.get("monitor") != "val/dice" or not (cfg.train and model.trainable)
            or getattr(datamodule, "num_labels", None) is not None):
        return
    with open_dict(cfg):
        node.monitor, node.mode = "val/loss", "min"
    print(f"[{model.method}] the data have no labels (no val/dice): the best checkpoint is picked by val/loss")


def _build(cfg: DictConfig):
    """The checks before any work, then the DataModule (validated) and the model."""
    import lightning as L

    check_entry(cfg, "train")
    ckpt_path = cfg.get("ckpt_path")
    ckpt = None
    if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT:
        ckpt = read_checkpoint(ckpt_path, "ckpt_path")  # a bad file: one error now, before any work
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    check_output_dir(cfg.paths.output_dir, datamodule)  # before any checkpoint or result is written
    model = build_model(cfg, datamodule)
    if ckpt is not None:  # before the trainer creates any folder
        _check_checkpoint_settings(cfg, model, datamodule, str(ckpt_path), ckpt)
    if model.trainable and cfg.test and not cfg.train and not ckpt_path:
        raise ConfigError(f"train=false: {model.method} is a network with untrained (random) weights; "
                          "give ckpt_path=<a checkpoint> to test a trained one (or use eval.py ckpt_path=...)")
    if cfg.train and not model.trainable:
        print(f"[{model.method}] nothing to train (no trainable parameters): testing only")
    return datamodule, model


def _check_checkpoint_settings(cfg: DictConfig, model, datamodule, path: str, ckpt: dict | None = None) -> None:
    """The checkpoint at ``path`` that a network resumes from (``train=true``) or is tested from
    (``train=false``) was trained on data in this voxel order and intensity normalisation, with this model config and, when
    resuming, this data config (:func:`app.checkpoints.check_same_settings`)."""
    if not model.trainable:
        return
    ckpt = read_checkpoint(path, "ckpt_path") if ckpt is None else ckpt
    check_trained_data(ckpt["registration"], datamodule, path)
    check_same_settings(ckpt, model, datamodule if cfg.train else None, path)


def _checkpoint_to_test(cfg: DictConfig, model, last_path: str) -> str | None:
    """``train=false``: the checkpoint whose weights are tested (``ckpt_path``; ``last`` = the run's
    ``last.ckpt``, which must exist), never fresh weights; None otherwise."""
    ckpt_path = cfg.get("ckpt_path")
    if cfg.train or not model.trainable or not ckpt_path:
        return None
    test_ckpt = last_path if str(ckpt_path) == "last" else str(ckpt_path)
    if str(ckpt_path) in _SPECIAL_CKPT and (str(ckpt_path) != "last" or not os.path.isfile(test_ckpt)):
        raise ConfigError(f"ckpt_path={ckpt_path} with train=false: no such checkpoint"
                          + (f" ({test_ckpt} does not exist)" if str(ckpt_path) == "last" else "")
                          + "; give the path of the checkpoint to test")
    return test_ckpt


def _fit(cfg: DictConfig, trainer, model, datamodule) -> None:
    """``trainer.fit`` (resuming ``ckpt_path``, read as data); a fit that took no optimiser step is
    an error: an untrained network is never tested as a trained method."""
    check_input_sizes(model, datamodule, "fit")
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if trainer.global_step == 0:
        raise ConfigError(
            f"train: no optimiser step was taken (trainer.max_epochs={cfg.trainer.get('max_epochs')}, "
            f"trainer.max_steps={cfg.trainer.get('max_steps')}, trainer.limit_train_batches="
            f"{cfg.trainer.get('limit_train_batches')}); an untrained {model.method} is not tested as a "
            "trained method: train at least one step, or test a checkpoint with eval.py ckpt_path=...")


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
    """The :class:`app.stopping.Stopped` (with train.py's resume line) for a stop, else None."""
    import signal

    from app.stopping import Stopped, as_stop, resume_command, signal_name

    command = resume_command("train.py", cfg.paths.output_dir, [f"ckpt_path={resume_ckpt}"])
    interrupted = isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(stop.exception, KeyboardInterrupt))
    where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})" if phase == "training" else "while testing"
    if interrupted:
        last = stop.path if stop.path and os.path.isfile(stop.path) else None
        saved = (f"the last saved checkpoint is {last}" if last else
                 "no checkpoint was saved yet (the command below starts afresh)")
        return Stopped(signal.SIGINT, f"interrupted (Ctrl-C twice) {where}; not tested; {saved}; resume with: {command}")
    got = as_stop(exc)
    if got is None:
        return None
    name = signal_name(got.signum)
    if phase == "training":
        if stop.saved_step is not None:
            saved = f"saved {stop.path} (step {stop.saved_step})"
        elif stop.kept:
            saved = stop.kept
        else:
            saved = f"training state NOT saved ({stop.not_saved or 'no checkpoint callback ran'})"
        return Stopped(got.signum, f"stopped by {name} {where}; {saved}; not tested; resume with: {command}")
    return Stopped(got.signum, f"stopped by {name} while testing; checkpoints and finished test pairs are kept "
                               f"in {os.path.abspath(str(cfg.paths.output_dir))}; resume with: {command}")
