"""The one way an entry point starts: ``@hydra_main("train")`` in place of ``@hydra.main(...)``.

* the project's configs (``configs/`` beside this package) are found from any working folder;
* processes the run starts (DDP ranks, submitit jobs) import the project: its root is put on
  their ``PYTHONPATH`` (this process's own ``sys.path`` is left alone);
* a config that does not compose (a key the config lacks, a bad override, an unknown group option)
  ends with ONE ``error: ...`` line and exit status 1: the overrides are composed once with Hydra's
  public compose API before Hydra runs (Hydra's own report spans several lines). Command lines with
  Hydra's own flags (``-m``, ``--help``, ``--cfg`` ...) go to Hydra unchanged;
* messages of the libraries that say nothing about the run are silenced, each by its text and
  origin (:func:`quiet_third_party`; nothing else is filtered).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["ROOT", "CONFIGS", "hydra_main", "composition_error", "quiet_third_party", "close_process_group"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _child_pythonpath() -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *parts])


# Lightning's advertisements ("💡 Tip: ... try installing [litlogger] / [litmodels] ..."), logged at
# INFO by its rank-zero loggers while a Trainer is built
_TIP_PREFIX = "💡 Tip:"
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropLightningTips:
    """A logging filter that drops Lightning's advertising tips and passes every other record."""

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(_TIP_PREFIX)


def quiet_third_party() -> None:
    """Silence what the libraries print that says nothing about the run, each message by its text and
    where it comes from (idempotent; called by every entry point and every trainer build):

    * Lightning's advertising tips (litlogger, litmodels): a logging filter on its rank-zero loggers;
    * torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated", raised by
      Lightning's own ``lightning.pytorch.utilities._pytree`` (Lightning's to fix, not the user's).

    W&B's "The anonymous setting has no effect" warning is not filtered: its cause (Lightning passing
    ``anonymous=None``) is removed where the logger is built (:func:`app.loggers.wandb_logger`).
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())


def composition_error(config_name: str, overrides: list[str]) -> str | None:
    """The one-line reason ``overrides`` do not compose with ``configs/<config_name>.yaml``, or None."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from app.errors import one_line

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3", job_name=config_name):
            compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        line = one_line(str(exc).strip()).split(" Config search path:")[0]
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
            line += f" ({str(cause).strip().splitlines()[0].strip()})"
        return line
    return None


def close_process_group() -> None:
    """Close a DDP process group the run opened (Lightning leaves it open): left to the interpreter's
    exit, a rank could abort there ("terminate called without an active exception", exit status -6,
    seen once in a gloo run after every result was written). Nothing when there is none."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def hydra_main(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``hydra.main`` for ``configs/<config_name>.yaml`` with the behaviour of the module docstring."""
    import hydra

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        run = hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)(task)

        def main() -> Any:
            _child_pythonpath()
            quiet_third_party()
            args = sys.argv[1:]
            if os.environ.get("HYDRA_FULL_ERROR") != "1" and not any(a.startswith("-") for a in args):
                line = composition_error(config_name, args)
                if line is not None:
                    print(f"error: {line}", file=sys.stderr)
                    sys.exit(1)
            try:
                return run()
            finally:
                close_process_group()

        main.__doc__ = task.__doc__
        return main

    return decorate
