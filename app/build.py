"""Building the run's objects from its config, with errors that name the config key at fault:
the DataModule (validated before anything is written), the model, the trainer (loggers, callbacks,
checkpoints read as data)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from app.errors import ConfigError, one_line, root_cause

__all__ = ["SCRIPTS", "check_entry", "experiment_choice", "script_of_experiment", "build", "build_datamodule", "build_model",
           "build_trainer", "apply_reg_code"]

# How each entry point is started. An analysis script's experiment files live in its own folder
# of configs/experiment/ (experiment=compare/mni_fig4_sup); the others are train.py's and eval.py's.
SCRIPTS = {
    "train": "train.py",
    "eval": "eval.py",
    "compare": "-m experiments.compare",
    "domain_shift": "-m experiments.domain_shift",
    "mi_analysis": "-m experiments.mi_analysis",
    "mi_sweep": "-m experiments.mi_sweep",
}
_OWN_FOLDER = ("compare", "domain_shift", "mi_analysis", "mi_sweep")


def experiment_choice(cfg: DictConfig) -> str | None:
    """The ``experiment=`` option this run was composed with (Hydra's record of the choice: the
    running app's, or the ``hydra`` node of a config composed with ``return_hydra_config``)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("experiment")
    else:
        choice = OmegaConf.select(cfg, "hydra.runtime.choices.experiment", default=None)
    return None if choice in (None, "null") else str(choice)


def script_of_experiment(choice: str) -> str:
    """The entry point that runs experiment ``choice``: its folder's script (``compare/...``), else
    ``train`` (train.py; eval.py accepts those too)."""
    folder = choice.split("/", 1)[0] if "/" in choice else ""
    return folder if folder in _OWN_FOLDER else "train"


def check_entry(cfg: DictConfig, *accepted: str) -> None:
    """ConfigError unless the chosen experiment belongs to one of the ``accepted`` entry points (an
    experiment file of configs/experiment/compare/ is run by ``python -m experiments.compare``:
    the error says so). Then the config's values are checked for type
    (:func:`app.config_check.check_config`: ``seed``, ``train``/``test``/``save_outputs`` strict
    booleans, every ``_target_`` node against what it builds, the optimiser built once)."""
    choice = experiment_choice(cfg)
    if choice is not None and script_of_experiment(choice) not in accepted:
        script = SCRIPTS[script_of_experiment(choice)]
        raise ConfigError(f"experiment={choice} is run by python {script}: python {script} experiment={choice}")
    from app.config_check import check_config

    check_config(cfg)  # values of the wrong type: one error naming the key, before any work


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node)``; a failure is re-raised naming ``key``.

    Values of the wrong type are refused first (:func:`app.config_check.check_node`). A
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
        from app.config_check import check_node

        check_node(node, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = root_cause(exc)
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        if cause is exc:
            raise ConfigError(f"{key}: {one_line(exc)}") from exc
        raise ConfigError(f"{key}: {one_line(cause)}") from exc
    except DataError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {one_line(exc)}") from exc


def build_datamodule(cfg: DictConfig):
    """Instantiate ``cfg.data`` and validate every file the run will read (before any output)."""
    from data.base import RegistrationDataModule

    dm = build(cfg.data, "data")
    if not isinstance(dm, RegistrationDataModule):
        raise ConfigError(f"data: {type(dm).__name__} is not a data.RegistrationDataModule (the interface every "
                          "entry point uses: validate, test pairs, input files, volume shapes)")
    dm.validate()
    return dm


def build_model(cfg: DictConfig, datamodule=None):
    """Instantiate ``cfg.model`` (the model builds its net and optimiser from their specs and keeps
    them as hyper-parameters). ``model.init_from`` (a classical method refining a learned one): the
    checkpoint is read here (:func:`app.checkpoints.load_model_from_checkpoint`) and its model
    passed as ``init_model``; given the ``datamodule`` it will run on, the network's voxel order is
    and intensity normalisation are checked against the data's (:func:`app.checkpoints.check_trained_data`)."""
    kwargs = {}
    if cfg.model is not None and cfg.model.get("init_from"):
        from app.checkpoints import check_trained_data, load_model_from_checkpoint, model_trained_data

        kwargs["init_model"] = load_model_from_checkpoint(cfg.model.init_from, "model.init_from")
        if datamodule is not None:
            check_trained_data(model_trained_data(kwargs["init_model"]), datamodule, cfg.model.init_from,
                               "model.init_from")
    return build(cfg.model, "model", **kwargs)


def apply_reg_code(model: Any, cfg: DictConfig) -> None:
    """``reg_code=`` of eval.py and register.py: the code a conditional network (cLapIRN) is tested
    with, whatever its checkpoint or model config says (``None``: theirs). One ConfigError naming
    the key for a method that is not conditional or a code outside [0, 1]."""
    value = cfg.get("reg_code")
    if value is None:
        return
    method = getattr(model, "method", type(model).__name__)
    if not getattr(model, "conditional", False):
        raise ConfigError(f"reg_code={value}: {method} is not a conditional network (model=clapirn); drop reg_code")
    try:
        model.set_reg_code(value)
    except ValueError as exc:
        raise ConfigError(f"reg_code={value}: {exc}") from exc


def build_trainer(cfg: DictConfig, with_callbacks: bool = True, extra_callbacks: list | tuple = ()):
    """Instantiate ``cfg.trainer`` with the configured loggers and callbacks (+ ``extra_callbacks``).

    Every trainer also gets :class:`app.callbacks.StopCheck` (a SIGTERM during a loop's last
    batch still stops the run) and :class:`app.progress.EpochLog` (one log line per validation
    epoch), and reads checkpoints only as data (:func:`_safe_checkpoint_io`)."""
    from app.entry import quiet_third_party
    from app.progress import EpochLog
    from app.callbacks import StopCheck

    quiet_third_party()  # also in processes that do not start at an entry point (submitit jobs)

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(build(node, f"logger.{name}"))
    callbacks = []
    if with_callbacks:
        for name, node in (cfg.get("callbacks") or {}).items():
            if node is not None and "_target_" in node:
                callbacks.append(build(node, f"callbacks.{name}"))
    callbacks += [*extra_callbacks, StopCheck(), EpochLog()]
    node = cfg.trainer
    from app.checkpoints import safe_checkpoint_io

    from lightning.pytorch.callbacks import ModelCheckpoint

    # the run's one checkpoint folder: a resume from another folder brings its best record along
    folders = {str(cb.dirpath) for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath}
    plugins = [safe_checkpoint_io(target=next(iter(folders)) if len(folders) == 1 else None)]
    if node is not None and node.get("plugins"):
        configured = build(node.plugins, "trainer.plugins")
        plugins = [*(configured if isinstance(configured, (list, tuple)) else [configured]), *plugins]
        node = OmegaConf.masked_copy(node, [k for k in node if k != "plugins"])
    return build(node, "trainer", logger=loggers if loggers else False, callbacks=callbacks, plugins=plugins)
