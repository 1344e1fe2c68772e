"""The one way an entry point starts: ``@hydra_main("train")`` in place of ``@hydra.main(...)``.

* the project's configs (``configs/`` beside this package) are found from any working folder;
* processes the run starts (DDP ranks, submitit jobs) import the project: its root is put on
  their ``PYTHONPATH`` (this process's own ``sys.path`` is left alone);
* a config that does not compose (a key the config lacks, a bad override, an unknown group option)
  ends with ONE ``error: ...`` line and exit status 1: the overrides are composed once with Hydra's
  public compose API before Hydra runs (Hydra's own report spans several lines). Command lines with
  Hydra's own flags (``-m``, ``--help``, ``--cfg`` ...) go to Hydra unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["ROOT", "CONFIGS", "hydra_main", "composition_error"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _child_pythonpath() -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *parts])


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


def hydra_main(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``hydra.main`` for ``configs/<config_name>.yaml`` with the behaviour of the module docstring."""
    import hydra

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        run = hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)(task)

        def main() -> Any:
            _child_pythonpath()
            args = sys.argv[1:]
            if os.environ.get("HYDRA_FULL_ERROR") != "1" and not any(a.startswith("-") for a in args):
                line = composition_error(config_name, args)
                if line is not None:
                    print(f"error: {line}", file=sys.stderr)
                    sys.exit(1)
            return run()

        main.__doc__ = task.__doc__
        return main

    return decorate
