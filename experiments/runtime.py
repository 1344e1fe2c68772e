"""Shared plumbing of the entry points (``train.py``, ``eval.py``, experiment scripts).

* building objects from config with errors that name the config key at fault;
* loading self-describing checkpoints as data (``torch.load(weights_only=True)``, :func:`read_checkpoint`;
  Lightning's own loads go through the same function: :class:`SafeCheckpointIO`);
* running the test phase into the results contract (:mod:`metrics.results`);
* :func:`guarded`: bad input ends with ONE line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "ConfigError",
    "guarded",
    "build",
    "build_datamodule",
    "build_model",
    "load_model_from_checkpoint",
    "read_checkpoint",
    "CHECKPOINT_SAFE_GLOBALS",
    "build_trainer",
    "run_test",
    "run_eval",
    "check_output_dir",
    "log_analysis",
    "check_entry",
    "save_figure",
    "finish_loggers",
]

# which script runs a config: experiment files for the analysis scripts set `entry`
ENTRY_SCRIPTS = {
    "train": "train.py",
    "eval": "eval.py",
    "compare": "experiments/compare.py",
    "mi_analysis": "experiments/mi_analysis.py",
    "mi_sweep": "experiments/mi_sweep.py",
    "domain_shift": "experiments/domain_shift.py",
}


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__`` chain, outermost first."""
    out: list[BaseException] = []
    while exc is not None and all(e is not exc for e in out):
        out.append(exc)
        exc = exc.__cause__
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_path_error(exc: BaseException) -> bool:
    """An ``OSError`` about a named path (permission denied, disk full, read-only file system...)."""
    return isinstance(exc, OSError) and getattr(exc, "filename", None) is not None


def _path_error_line(exc: OSError) -> str:
    if not exc.strerror:
        return _one_line(exc)
    where = str(exc.filename) + (f" -> {exc.filename2}" if getattr(exc, "filename2", None) else "")
    return _one_line(f"{where}: {exc.strerror}")


def _user_error_line(exc: BaseException) -> str | None:
    """The one line that reports an expected user error, or None for a bug (keeps its traceback).

    The outermost :class:`data.io.DataError` / :class:`ConfigError` / :class:`metrics.MetricError`
    / :class:`models.module.NonFiniteError` (a training that diverged) of the cause chain is reported
    (it names the file, CSV row or config key; inner causes are quoted inside it); else the
    outermost ``OSError`` naming a path (``PATH: strerror``); else the root cause of a Hydra /
    OmegaConf / ``ValueError``.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from data.io import DataError
    from metrics import MetricError
    from models.module import NonFiniteError

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, (DataError, ConfigError, MetricError, NonFiniteError)):
            return _one_line(e)
    for e in chain:
        if _is_path_error(e):
            return _path_error_line(e)  # type: ignore[arg-type]
    expected = (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException)
    if isinstance(exc, expected) or isinstance(chain[-1], expected):
        return _one_line(chain[-1])
    return None


def _one_line_hydra_errors() -> None:
    """Make ``@hydra.main`` report its own errors (before the task runs: an unknown key, a bad
    override, a missing config group option) as one ``error: ...`` line with exit status 1 too.

    Hydra prints those over several lines plus a hint; it reports them in
    ``hydra._internal.utils.run_and_report``, which this wraps (once; a no-op if a Hydra version
    lacks it). Other exceptions, and everything under ``HYDRA_FULL_ERROR=1``, go to Hydra as before.
    """
    try:
        import hydra._internal.utils as hydra_utils
    except ImportError:  # pragma: no cover
        return
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or getattr(original, "_one_line_errors", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        def reported() -> Any:
            try:
                return func()
            except (HydraException, OmegaConfBaseException) as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                line = _one_line(str(exc).strip()).split(" Config search path:")[0]
                cause = exc.__cause__
                if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
                    line += f" ({str(cause).strip().splitlines()[0].strip()})"
                print(f"error: {line}", file=sys.stderr)
                sys.exit(1)

        return original(reported)

    run_and_report._one_line_errors = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected user errors into one ``error: ...`` line and exit status 1, and a stop by
    SIGTERM into one line saying how to resume and exit status 143.

    Expected errors: :class:`data.io.DataError` and :class:`ConfigError` (both ValueErrors; the
    outermost one in the cause chain is printed, as it carries the most context),
    :class:`models.module.NonFiniteError` (training diverged), ``FileNotFoundError`` and other
    ``OSError``\ s naming a path (an unwritable output folder, a full disk: ``PATH: reason``), and
    Hydra / OmegaConf errors (unknown keys, bad overrides; decorating also makes ``@hydra.main``'s
    own composition errors one line: :func:`_one_line_hydra_errors`). Anything else is a bug and
    keeps its traceback. Set ``HYDRA_FULL_ERROR=1`` to see the traceback instead.

    Signals (:mod:`experiments.stopping`): while ``main`` runs, SIGTERM stops it at the next safe
    point (a batch boundary inside Lightning, at once elsewhere); the line printed is the
    :class:`experiments.stopping.Stopped` message ``main`` raised, or else "finished pairs are kept
    in <paths.output_dir>; resume with: python <script> ... paths.output_dir=<dir>" (the same
    command: results folders skip finished pairs). Exit status ``128 + signal``.
    """
    _one_line_hydra_errors()

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from experiments import stopping

        try:
            with stopping.installed():
                return main(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - filtered below
            stop = stopping.as_stop(exc)
            if stop is not None:
                line = str(stop) or stopping.generic_message(stop, _script_of(main), _output_dir_of(args))
                print(f"error: {line}", file=sys.stderr)
                sys.stdout.flush()
                sys.stderr.flush()
                stopping.hand_over(stop)  # a launcher's requeue signal: it requeues the job now
                sys.exit(stop.exit_code)
            if not isinstance(exc, Exception):
                raise
            line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else _user_error_line(exc)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def _script_of(main: Callable[..., Any]) -> str | None:
    """The entry script that defines ``main``, relative to the project root (``eval.py``,
    ``experiments/mi_sweep.py``), or None."""
    import inspect

    try:
        path = Path(inspect.getsourcefile(inspect.unwrap(main)) or "").resolve()
        return path.relative_to(Path(__file__).resolve().parents[1]).as_posix()
    except (TypeError, ValueError):
        return None


def _output_dir_of(args: tuple) -> str | None:
    cfg = args[0] if args else None
    if isinstance(cfg, DictConfig):
        try:
            return str(cfg.paths.output_dir)
        except Exception:  # noqa: BLE001 - no paths.output_dir here
            return None
    return None


def check_entry(cfg: DictConfig, *accepted: str) -> None:
    """ConfigError unless ``cfg.entry`` (absent: ``"train"``) is one of ``accepted``: an experiment
    file written for another script (``entry: compare``) names the script to run it with. Then the
    config's values are checked for type (:func:`experiments.config_check.check_config`: ``seed``,
    ``train``/``test``/``save_outputs`` strict booleans, every ``_target_`` node against what it
    builds, the optimiser built once)."""
    entry = str(cfg.get("entry") or "train")
    if entry not in accepted:
        script = ENTRY_SCRIPTS.get(entry, entry)
        name = cfg.get("experiment_name") or "this experiment"
        raise ConfigError(f"experiment: {name} is run by {script} (entry: {entry}): "
                          f"python {script} experiment={name}")
    from experiments.config_check import check_config

    check_config(cfg)  # values of the wrong type: one error naming the key, before any work


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node)``; a failure is re-raised naming ``key``.

    Values of the wrong type are refused first (:func:`experiments.config_check.check_node`). A
    :class:`data.io.DataError` or :class:`ConfigError` raised inside a constructor is re-raised as
    is (it already names the file / key at fault); other errors become :class:`ConfigError`
    ``"<key>: <cause>"``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from data.io import DataError

    if node is None:
        raise ConfigError(f"config key '{key}' is not set")
    if isinstance(node, DictConfig) and "_target_" in node:
        from experiments.config_check import check_node

        check_node(node, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = _root_cause(exc)
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        if cause is exc:
            raise ConfigError(f"{key}: {_one_line(exc)}") from exc
        raise ConfigError(f"{key}: {_one_line(cause)}") from exc
    except DataError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {_one_line(exc)}") from exc


def build_datamodule(cfg: DictConfig):
    """Instantiate ``cfg.data`` and validate every file the run will read (before any output)."""
    dm = build(cfg.data, "data")
    validate = getattr(dm, "validate", None)
    if callable(validate):
        validate()
    return dm


def build_model(cfg: DictConfig):
    """Instantiate ``cfg.model``; records the resolved model and data configs for checkpoints."""
    model = build(cfg.model, "model")
    model.model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model.data_config = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    return model


# Types our checkpoints hold beyond what ``torch.load(weights_only=True)`` accepts by default
# (tensors, numbers, strings, None, dtypes, lists, tuples, dicts, OrderedDicts): none. Inspected:
# a train.py checkpoint holds the weights, Adam states, Lightning's loop counters and callback
# states, the datamodule's hyper-parameters, the loader's RNG states (data/loaders.py stores
# numpy's state as a tensor for this reason) and the `registration` dict of plain values;
# RegistrationModule.on_save_checkpoint keeps it so. A type added here must be plain data.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def _load_error(exc: BaseException) -> str:
    """A short reason for a refused / unreadable checkpoint (torch's weights-only message is long)."""
    text = _one_line(exc)
    if "Weights only load failed" in text or "nsupported" in text:
        import re

        m = re.search(r"unsupported (?:global:? )?(GLOBAL \S+?)\.?(?:\s|$)|unsupported (operand \S+)", text, re.I)
        what = next((g for g in m.groups() if g), "") if m else ""
        return ("it holds objects that are not plain data (a pickle that would run code on loading), so it "
                "is refused unread" + (f" ({what})" if what else ""))
    return text if len(text) <= 300 else text[:300] + " ..."


def read_checkpoint(path: str | os.PathLike, key: str = "ckpt_path") -> dict[str, Any]:
    """A checkpoint written by ``train.py``, read as data: ``torch.load(weights_only=True)`` with
    :data:`CHECKPOINT_SAFE_GLOBALS` (a pickle that would execute code is refused without running
    it), then checked: this project's ``registration`` metadata, the displacement convention, a
    ``state_dict`` of finite weights. Any failure is ONE :class:`ConfigError` naming ``key`` (the
    config key that gave the path: ``ckpt_path``, ``model.init_from``) and the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or refused file
        raise ConfigError(f"{key}: cannot read checkpoint {path}: {_load_error(exc)}") from None
    _check_checkpoint(ckpt, path, key)
    return ckpt


def _check_checkpoint(ckpt: Any, path: Path, key: str) -> None:
    import torch

    from metrics.results import DISPLACEMENT_CONVENTION

    meta = ckpt.get("registration") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not meta.get("model_config"):
        raise ConfigError(f"{key}: {path} is not a checkpoint written by this project's train.py "
                          "(no 'registration' model config inside)")
    if meta.get("displacement_convention") != DISPLACEMENT_CONVENTION:
        raise ConfigError(f"{key}: {path} uses another displacement convention "
                          f"({meta.get('displacement_convention')!r}); expected {DISPLACEMENT_CONVENTION!r}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path} holds no 'state_dict' (weights) beside its model config")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"{key}: {path} holds non-finite weights ({', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}); it is not used")


def load_model_from_checkpoint(path: str | os.PathLike, key: str = "ckpt_path"):
    """Rebuild a model from a checkpoint written by ``train.py`` without being told its config.

    Read as data (:func:`read_checkpoint`); errors name ``key`` (``ckpt_path`` for eval.py,
    ``model.init_from`` for a refined classical method) and the file."""
    from hydra.utils import instantiate

    path = Path(path)
    ckpt = read_checkpoint(path, key)
    meta = ckpt["registration"]
    try:
        model = instantiate(OmegaConf.create(meta["model_config"]))
    except Exception as exc:  # noqa: BLE001 - a config of another version of the code
        raise ConfigError(f"{key}: {path}: its stored model config cannot be built here "
                          f"({_one_line(_root_cause(exc))})") from exc
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        detail = _one_line(exc)
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise ConfigError(f"{key}: {path} does not match its stored model config: {detail}") from exc
    model.model_config = meta["model_config"]
    model.data_config = meta.get("data_config")
    return model


def _safe_checkpoint_io(key: str = "ckpt_path"):
    """A Lightning ``CheckpointIO`` whose every load is :func:`read_checkpoint` (weights only, the
    allow-list, the checks; ``weights_only=False`` is never honoured): resuming ``train.py
    ckpt_path=...`` and testing the best checkpoint read checkpoints as data, with one error."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        def load_checkpoint(self, path, map_location=None, weights_only=None):  # noqa: ARG002
            return read_checkpoint(path, key)

    return SafeCheckpointIO()


def build_trainer(cfg: DictConfig, with_callbacks: bool = True, extra_callbacks: list | tuple = ()):
    """Instantiate ``cfg.trainer`` with the configured loggers and callbacks (+ ``extra_callbacks``).

    Every trainer also gets :class:`experiments.stopping.StopCheck` (a SIGTERM during a loop's last
    batch still stops the run) and reads checkpoints only as data (:func:`_safe_checkpoint_io`)."""
    from experiments.stopping import StopCheck

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(build(node, f"logger.{name}"))
    callbacks = []
    if with_callbacks:
        for name, node in (cfg.get("callbacks") or {}).items():
            if node is not None and "_target_" in node:
                callbacks.append(build(node, f"callbacks.{name}"))
    callbacks += [*extra_callbacks, StopCheck()]
    node = cfg.trainer
    plugins = [_safe_checkpoint_io()]
    if node is not None and node.get("plugins"):
        configured = build(node.plugins, "trainer.plugins")
        plugins = [*(configured if isinstance(configured, (list, tuple)) else [configured]), *plugins]
        node = OmegaConf.masked_copy(node, [k for k in node if k != "plugins"])
    return build(node, "trainer", logger=loggers if loggers else False, callbacks=callbacks, plugins=plugins)


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
    input_files = getattr(datamodule, "input_files", None)
    if not callable(input_files):
        return folder
    folders = {folder, Path(os.path.abspath(given))}  # as given and with links resolved
    risky = [f / sub for f in folders for sub in _WRITTEN_SUBFOLDERS]
    for file in input_files():
        for path in (Path(os.path.abspath(file)), Path(file).resolve()):  # a link there, or its target
            if path.parent in folders or any(path.is_relative_to(sub) for sub in risky):
                raise ConfigError(f"{key}={out_dir} holds the input file {path}, which the run's result files "
                                  f"could overwrite; write results to another folder")
    return folder


def _gather(trainer, obj: Any) -> list[Any]:
    """``obj`` of every process (DDP: ``all_gather_object``; one process: ``[obj]``)."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _limits_test_batches(trainer) -> bool:
    """Whether the trainer runs only some test batches (``fast_dev_run``, ``limit_test_batches``)."""
    limit = getattr(trainer, "limit_test_batches", 1.0)
    return bool(getattr(trainer, "fast_dev_run", False)) or not (isinstance(limit, float) and limit >= 1.0)


def _test_pair_ids(datamodule) -> list[tuple[str, str]]:
    """The datamodule's test pairs ``(fixed_id, moving_id)`` in order (``test_pair_ids()``)."""
    ids = getattr(datamodule, "test_pair_ids", None)
    if not callable(ids):
        raise ConfigError(f"data: {type(datamodule).__name__} has no test_pair_ids(); the results writer "
                          "needs the list of test pairs to know which results belong to the run")
    return [(str(f), str(m)) for f, m in ids()]


def run_test(trainer, model, datamodule, out_dir: str | os.PathLike, save_outputs: bool = False,
             ckpt_path: str | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on the datamodule's test pairs into ``out_dir`` (results contract).

    The output folder is checked first (:func:`check_output_dir`). A pair whose part in
    ``out_dir`` has the same inputs, method (config and weights) and metric settings is reused
    (resume); every other pair is computed. The CSVs and the summary hold exactly the test
    pairs (:meth:`metrics.results.ResultsWriter.finalize`). Returns the summary dict.
    """
    from metrics.results import ResultsWriter, method_signature

    check_output_dir(out_dir, datamodule)
    expected = _test_pair_ids(datamodule)
    writer = ResultsWriter(out_dir, method=model.method, save_outputs=save_outputs,
                           label_interp=getattr(model, "label_interp", "nearest"))
    model.results = writer
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        trainer.strategy.barrier("results")  # DDP: every rank's pairs are written before rank 0 gathers
        gathered = _gather(trainer, (writer.run_id, sorted(writer.seen)))
    finally:
        model.results = None
    if trainer.is_global_zero:
        if writer.method_hash is None:  # no test step ran here: the weights are those tested
            writer.method_hash = method_signature(model)
        seen = {tuple(p) for _, pairs in gathered for p in pairs}
        run_ids = {run_id for run_id, _ in gathered}
        tested = expected
        if _limits_test_batches(trainer):
            tested = [p for p in expected if p in seen]
            print(f"[{model.method}] the trainer limits test batches (fast_dev_run / limit_test_batches): "
                  f"{len(tested)} of {len(expected)} test pairs evaluated")
        save_label_map = getattr(datamodule, "save_label_map", None)
        if save_label_map is not None:  # remapped label ids: results name which original label each is
            save_label_map(out_dir)
        summary = writer.finalize(tested, extra={"paradigm": getattr(model, "paradigm", None)}, seen=seen,
                                  run_ids=run_ids, n_test_pairs=len(expected))
        _print_reuse(writer)
        _log_results_table(trainer, writer, summary)
        _print_summary(summary, out_dir)
        return summary
    return {}


def _print_reuse(writer) -> None:
    """Say how many pairs came from earlier runs, were recomputed as stale, or were left out."""
    c = writer.counts
    notes = []
    if c.get("reused"):
        notes.append(f"reused {c['reused']} of {c['expected']} pairs from {writer.parts_dir} (same inputs, "
                     "method and metric settings)")
    if c.get("stale"):
        notes.append(f"recomputed {c['stale']} pairs whose earlier results had other inputs, method or metric settings")
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
    model = load_model_from_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else build_model(cfg)
    trainer = build_trainer(cfg, with_callbacks=False)
    try:
        return run_test(trainer, model, datamodule, out_dir, save_outputs=bool(cfg.get("save_outputs", False)))
    finally:
        finish_loggers(trainer)


def finish_loggers(trainer) -> None:
    """Close W&B runs, so that every job of a multirun (and every eval) gets its own run."""
    for logger in trainer.loggers:
        finish = getattr(getattr(logger, "experiment", None), "finish", None)
        if type(logger).__name__ == "WandbLogger" and callable(finish):
            finish()


def log_analysis(cfg: DictConfig, scalars: dict[str, float], images: dict[str, str | os.PathLike] | None = None,
                 tables: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """Send an analysis script's results to the configured loggers (``cfg.logger``; none: nothing).

    W&B gets the scalars in the run summary, the images (PNG paths) and the tables (rows of
    dicts); other loggers get the scalars. Every run is finished before returning.
    """
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        logger = build(node, f"logger.{name}")
        if type(logger).__name__ == "WandbLogger":
            import wandb

            run = logger.experiment
            run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
            payload: dict[str, Any] = dict(scalars)
            for key, path in (images or {}).items():
                payload[key] = wandb.Image(str(path))
            for key, rows in (tables or {}).items():
                if rows:
                    columns = list(rows[0])
                    payload[key] = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            run.log(payload)
            run.summary.update(scalars)
            run.finish()
        else:
            logger.log_metrics(dict(scalars))
            logger.save()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Render a matplotlib figure to PNG, write it atomically to ``path`` and close the figure."""
    import io

    import matplotlib.pyplot as plt

    from metrics.results import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _log_results_table(trainer, writer, summary: dict[str, Any]) -> None:
    """W&B loggers get the per-pair results as a table (``test/pairs``) and the summary in the run summary."""
    from metrics.results import PAIR_COLUMNS

    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            rows = writer.pairs
            logger.log_table(key="test/pairs", columns=PAIR_COLUMNS,
                             data=[[r.get(c) for c in PAIR_COLUMNS] for r in rows])
            logger.experiment.summary.update({f"test/{k}": v for k, v in summary.items()
                                              if isinstance(v, (int, float, str)) or v is None})


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
    print(f"results: {Path(out_dir).resolve()} (pairs.csv, labels.csv, summary.json)")
    sys.stdout.flush()
