"""Evaluating a method into the results contract (:mod:`app.results`): the test phase of ``train.py``
and all of ``eval.py``. The output folder is checked before anything is written."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from app.build import apply_reg_code, build_datamodule, build_model, build_trainer
from app.checkpoints import check_trained_data, load_model_from_checkpoint, model_trained_data
from app.errors import ConfigError
from app.loggers import finish_loggers, log_results_table
from app.progress import output_locations, print_outputs

__all__ = ["check_output_dir", "check_input_sizes", "load_weights", "run_test", "run_eval"]

# sub-folders a run writes into its output folder (an input file there could be overwritten)
_WRITTEN_SUBFOLDERS = ("moved", ".parts", "test")


def check_output_dir(out_dir: Any, datamodule=None, key: str = "paths.output_dir") -> Path:
    """Refuse an output folder before anything is written: ConfigError naming ``key`` when it is
    empty, or when it holds an input file of the run (``datamodule.input_files()``: pairs CSVs,
    images, label maps) directly or under a sub-folder the run writes (``moved/``, ``.parts/``,
    ``test/``), where a result file could replace it. Returns the folder as a Path."""
    if out_dir is None or not str(out_dir).strip():
        raise ConfigError(f"{key} is empty; give the folder to write results to ({key}=DIR)")
    given = Path(os.path.expanduser(str(out_dir)))
    folder = given.resolve()
    if datamodule is None:
        return folder
    folders = {folder, Path(os.path.abspath(given))}  # as given and with links resolved
    risky = [f / sub for f in folders for sub in _WRITTEN_SUBFOLDERS]
    for file in datamodule.input_files():
        for path in (Path(os.path.abspath(file)), Path(file).resolve()):  # a link there, or its target
            if path.parent in folders or any(path.is_relative_to(sub) for sub in risky):
                raise ConfigError(f"{key}={out_dir} holds the input file {path}, which the run's result files "
                                  f"could overwrite; write results to another folder")
    return folder


def _limits_test_batches(trainer) -> bool:
    """Whether the trainer runs only some test batches (``fast_dev_run``, ``limit_test_batches``)."""
    limit = getattr(trainer, "limit_test_batches", 1.0)
    return bool(getattr(trainer, "fast_dev_run", False)) or not (isinstance(limit, float) and limit >= 1.0)


def check_input_sizes(model, datamodule, stage: str) -> None:
    """Before any registration runs: every input volume (``datamodule.volume_shapes(stage)``:
    ``(file, shape)``) has at least ``model.min_input_size()`` voxels on each axis; a
    :class:`data.io.DataError` names the file, its shape, the axis, the minimum and the config
    keys that set it. Generated data list no volumes."""
    from data.io import DataError

    minimum = model.min_input_size()
    for name, shape in datamodule.volume_shapes(stage):
        for axis, n in enumerate(shape):
            if n < minimum:
                raise DataError(
                    f"{name}: shape {tuple(shape)} has {n} voxel(s) on axis {axis}, fewer than the {minimum} "
                    f"that model {model.method} needs ({model.min_input_size_reason()}); give larger volumes "
                    f"(data.shape for datasets) or change those settings")


def _test_loader(datamodule, indices: list[int]):
    """The datamodule's test loader over the pairs ``indices`` only (the others are reused)."""
    from torch.utils.data import DataLoader, Subset

    loader = datamodule.test_dataloader()
    if len(indices) == len(loader.dataset):
        return loader
    return DataLoader(Subset(loader.dataset, indices), batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def load_weights(model, ckpt_path: str | os.PathLike, key: str = "ckpt_path") -> None:
    """Load the weights of a ``train.py`` checkpoint (read as data) into ``model``."""
    from app.checkpoints import read_checkpoint

    model.load_state_dict(read_checkpoint(ckpt_path, key)["state_dict"])


def run_test(trainer, model, datamodule, out_dir: str | os.PathLike, save_outputs: bool = False,
             ckpt_path: str | None = None, checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (with the weights of ``ckpt_path`` when given) on the datamodule's test
    pairs into ``out_dir`` (the results contract); returns the summary (rank 0; ``{}`` elsewhere).
    ``summary.json``'s ``checkpoint`` names the file whose weights were tested: ``ckpt_path``, or
    ``checkpoint`` for a model already built from one (``eval.py ckpt_path=``); null for none.

    The output folder and the input sizes are checked first. A pair whose part in ``out_dir`` has
    the same inputs, method (hyper-parameters and weights) and metric settings is reused (resume)
    and not loaded; the others go through ``trainer.test`` (under DDP split across processes) and
    :class:`app.callbacks.ResultsCallback`. The CSVs and the summary hold exactly the test pairs
    (:meth:`app.parts.ResultsWriter.finalize`).
    """
    from app.callbacks import ResultsCallback
    from app.parts import ResultsWriter, method_signature, timing_of

    check_output_dir(out_dir, datamodule)
    check_input_sizes(model, datamodule, "test")
    if ckpt_path:
        load_weights(model, ckpt_path)
    model.check_finite_weights("before testing:")
    expected = [(str(f), str(m)) for f, m in datamodule.test_pair_ids()]
    precision = str(getattr(trainer, "precision", "32-true"))
    writer = ResultsWriter(out_dir, method=model.method, label_interp=model.label_interp,
                           method_hash=method_signature(model, precision), save_outputs=save_outputs,
                           timing=timing_of(trainer.strategy.root_device))
    datamodule.setup("test")
    dataset = datamodule.test_dataloader().dataset
    todo = [i for i, (f, m) in enumerate(expected) if not writer.reusable(f, m, dataset.pair_signature(i))]
    if todo:
        if trainer.is_global_zero:  # no earlier complete-looking results over the parts being replaced
            writer.retract()
        callback = ResultsCallback(writer, save_outputs)
        trainer.callbacks.append(callback)
        model.log_test_means = False  # the loggers get the summary of every test pair instead (log_results_table)
        try:
            trainer.test(model, dataloaders=_test_loader(datamodule, todo), verbose=False)
        finally:
            trainer.callbacks.remove(callback)
            model.log_test_means = True
    trainer.strategy.barrier("results")  # DDP: every rank's pairs are written before rank 0 gathers
    from models.evaluation import gather_objects

    gathered = gather_objects(trainer, (writer.run_id, sorted(writer.seen)))
    if not trainer.is_global_zero:
        return {}
    seen = {tuple(p) for _, pairs in gathered for p in pairs}
    tested = expected
    if todo and _limits_test_batches(trainer):
        tested = [p for p in expected if p in seen]
        print(f"[{model.method}] the trainer limits test batches (fast_dev_run / limit_test_batches): "
              f"{len(tested)} of {len(expected)} test pairs evaluated")
    datamodule.save_label_map(out_dir)  # remapped label ids: the results name which original label each is
    source = ckpt_path or checkpoint
    extra = {"paradigm": model.paradigm, "checkpoint": str(Path(source).resolve()) if source else None,
             "precision": precision, **(model.test_settings() if hasattr(model, "test_settings") else {})}
    summary = writer.finalize(tested, extra=extra, seen=seen,
                              run_ids={run_id for run_id, _ in gathered}, n_test_pairs=len(expected))
    _print_reuse(writer)
    log_results_table(trainer, writer, summary)
    _print_summary(summary, out_dir)
    return summary


def _print_reuse(writer) -> None:
    """Say how many pairs came from earlier runs, were recomputed as stale, or were left out."""
    c = writer.counts
    notes = []
    if c.get("reused"):
        notes.append(f"reused {c['reused']} of {c['expected']} pairs from {writer.parts_dir} (same inputs, "
                     "method, metric settings and code)")
    if c.get("stale"):
        notes.append(f"recomputed {c['stale']} pairs whose earlier results had other inputs, method, metric settings "
                     "or code")
    if c.get("ignored"):
        notes.append(f"ignored {c['ignored']} parts of pairs outside this run's test set")
    if notes:
        print(f"[{writer.method}] " + "; ".join(notes))


def run_eval(cfg: DictConfig, out_dir: str | os.PathLike | None = None, datamodule=None) -> dict[str, Any]:
    """``eval.py``'s work: evaluate ``cfg.model`` (or ``cfg.ckpt_path``) on ``cfg.data`` into ``out_dir``
    (default ``cfg.paths.output_dir``); a ready ``datamodule`` may be passed. Returns the summary.
    The output folder is checked (:func:`check_output_dir`) before anything is written."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg) if datamodule is None else datamodule
    out_dir = cfg.paths.output_dir if out_dir is None else out_dir
    check_output_dir(out_dir, datamodule)
    if cfg.get("ckpt_path"):
        model = load_model_from_checkpoint(cfg.ckpt_path)
        check_trained_data(model_trained_data(model), datamodule, cfg.ckpt_path)
    else:
        model = build_model(cfg, datamodule)
    apply_reg_code(model, cfg)
    trainer = build_trainer(cfg, with_callbacks=False)
    save_outputs = bool(cfg.get("save_outputs", False))
    try:
        summary = run_test(trainer, model, datamodule, out_dir, save_outputs=save_outputs,
                           checkpoint=cfg.get("ckpt_path"))
        where = output_locations(trainer, out_dir, model.method, save_outputs) if trainer.is_global_zero else []
    finally:
        finish_loggers(trainer)
    print_outputs(where)
    return summary


def _fmt(x: Any) -> str:
    return "nan" if x is None else f"{x:.4f}"


def _print_summary(summary: dict[str, Any], out_dir: str | os.PathLike) -> None:
    before, after = summary.get("dice_identity_mean"), summary.get("dice_mean")
    gain = (after - before) if isinstance(before, float) and isinstance(after, float) else None
    print(
        f"[{summary['method']}] {summary['n_pairs']} pairs: Dice before {_fmt(before)} -> after {_fmt(after)}"
        + (f" ({gain:+.4f})" if gain is not None else "")
        + f", HD95 {_fmt(summary.get('hd95_mean'))} mm, SDlogJ {_fmt(summary.get('sdlogj_mean'))}, "
        f"folding {_fmt(summary.get('folding_pct_mean'))} %, {_fmt(summary.get('seconds_mean'))} s/pair"
    )
    sys.stdout.flush()
