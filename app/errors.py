"""The application's error type and how errors reach a person: ONE ``error: ...`` line.

:class:`ConfigError` (a config value or key is wrong) joins the library's own error types
(:class:`data.io.DataError`, :class:`metrics.MetricError`, :class:`models.health.NonFiniteError`);
:func:`guarded` wraps an entry point so that any of them, an ``OSError`` naming a path, or a stop by
a signal (:mod:`app.stopping`) ends with one line on stderr and a non-zero exit status, while a
bug keeps its traceback (``HYDRA_FULL_ERROR=1`` shows every traceback).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

__all__ = ["ConfigError", "guarded", "user_error_line", "one_line", "root_cause"]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


def root_cause(exc: BaseException) -> BaseException:
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


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_path_error(exc: BaseException) -> bool:
    """An ``OSError`` about a named path (permission denied, disk full, read-only file system...)."""
    return isinstance(exc, OSError) and getattr(exc, "filename", None) is not None


def _path_error_line(exc: OSError) -> str:
    if not exc.strerror:
        return one_line(exc)
    where = str(exc.filename) + (f" -> {exc.filename2}" if getattr(exc, "filename2", None) else "")
    return one_line(f"{where}: {exc.strerror}")


def user_error_line(exc: BaseException) -> str | None:
    """The one line that reports an expected user error, or None for a bug (keeps its traceback).

    The outermost :class:`data.io.DataError` / :class:`ConfigError` / :class:`metrics.MetricError`
    / :class:`models.health.NonFiniteError` (a training that diverged) of the cause chain is reported
    (it names the file, CSV row or config key; inner causes are quoted inside it); else the
    outermost ``OSError`` naming a path (``PATH: strerror``); else the root cause of a Hydra /
    OmegaConf / ``ValueError``.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from data.io import DataError
    from metrics import MetricError
    from models.health import NonFiniteError

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, (DataError, ConfigError, MetricError, NonFiniteError)):
            return one_line(e)
    for e in chain:
        if _is_path_error(e):
            return _path_error_line(e)  # type: ignore[arg-type]
    expected = (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException)
    if isinstance(exc, expected) or isinstance(chain[-1], expected):
        return one_line(chain[-1])
    return None


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected user errors into one ``error: ...`` line and exit status 1, and a stop by
    SIGTERM into one line saying how to resume and exit status 143.

    Expected errors: :class:`data.io.DataError` and :class:`ConfigError` (both ValueErrors; the
    outermost one in the cause chain is printed, as it carries the most context),
    :class:`models.health.NonFiniteError` (training diverged), ``FileNotFoundError`` and other
    ``OSError``\ s naming a path (an unwritable output folder, a full disk: ``PATH: reason``), and
    Hydra / OmegaConf errors (unknown keys, bad overrides; the command line's own composition
    errors are made one line by :func:`app.entry.hydra_main`). Anything else is a bug and
    keeps its traceback. Set ``HYDRA_FULL_ERROR=1`` to see the traceback instead.

    Signals (:mod:`app.stopping`): while ``main`` runs, SIGTERM stops it at the next safe
    point (a batch boundary inside Lightning, at once elsewhere); the line printed is the
    :class:`app.stopping.Stopped` message ``main`` raised, or else "finished pairs are kept
    in <paths.output_dir>; resume with: python <script> ... paths.output_dir=<dir>" (the same
    command: results folders skip finished pairs). Exit status ``128 + signal``.
    """
    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from app import stopping

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
            line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else user_error_line(exc)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def _script_of(main: Callable[..., Any]) -> str | None:
    """How the entry point that defines ``main`` is started: ``eval.py`` for a script at the project
    root, ``-m experiments.mi_sweep`` for a module of a package, or None."""
    import inspect

    try:
        path = Path(inspect.getsourcefile(inspect.unwrap(main)) or "").resolve()
        relative = path.relative_to(Path(__file__).resolve().parents[1])
    except (TypeError, ValueError):
        return None
    if len(relative.parts) == 1:
        return relative.as_posix()
    return "-m " + ".".join(relative.with_suffix("").parts)


def _output_dir_of(args: tuple) -> str | None:
    cfg = args[0] if args else None
    if isinstance(cfg, DictConfig):
        try:
            return str(cfg.paths.output_dir)
        except Exception:  # noqa: BLE001 - no paths.output_dir here
            return None
    return None
