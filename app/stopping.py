"""Stopping a run on a signal, keeping what is finished, and saying how to resume.

SIGTERM is what ``kill``, ``scancel`` and SLURM at a time limit or on preemption send. Every entry
point decorated with :func:`app.build.guarded` (``train.py``, ``eval.py``, the experiment
scripts) installs :func:`handler` for it while it runs:

* inside a Lightning run (``trainer.fit`` / ``trainer.test``), Lightning's own SIGTERM handler is
  in front (``lightning.pytorch.trainer.connectors.signal_connector``; it calls the handler it
  found, this one, too): Lightning finishes the current batch and raises ``SIGTERMException`` at
  the next batch boundary. A signal during the last batch of a loop, which Lightning lets pass,
  is caught by :class:`app.callbacks.StopCheck` at the end of the loop. ``train.py`` saves ``last.ckpt``
  at that point (:class:`app.callbacks.StopCheckpoint`); evaluation has written every finished pair to ``.parts/``;
* outside a Lightning run (building data, an analysis script's own work, waiting for a method
  run as a subprocess), the handler raises :class:`Stopped` at once, like Ctrl-C does.

Ctrl-C (SIGINT) is handled the same way, so that a run interrupted at the keyboard also stops
at a batch boundary and saves ``last.ckpt``: Python's own ``KeyboardInterrupt`` is raised wherever
the main thread happens to be, and one raised inside a ``__del__`` or a weakref callback (the
garbage collector runs them at any allocation) is printed and swallowed, so a run could go on
training after a Ctrl-C. A second Ctrl-C while stopping raises ``KeyboardInterrupt`` at once.

Either way :func:`app.build.guarded` prints ONE ``error:`` line with the command that
resumes (the same command with ``paths.output_dir`` pinned; ``ckpt_path=last`` for ``train.py``)
and exits with ``128 + signal`` (143 for SIGTERM). A second SIGTERM while stopping is ignored.

SLURM requeueing. Lightning's own (``SLURMEnvironment(auto_requeue=True)``: SIGUSR1 saves an
``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever it interrupts the step, and calls
``scontrol requeue``) is not used: nobody sends SIGUSR1 unless ``#SBATCH --signal=USR1@...`` asks.
The submitit launcher (``hydra/launcher=slurm``) asks SLURM for SIGUSR2 90 s before the time
limit and requeues the job on it. When such a launcher's handler is installed, SIGUSR2 is
handled like SIGTERM first (``last.ckpt`` saved at the next batch boundary), then handed to the
launcher (:func:`hand_over`), which requeues. The requeued job runs the same config: give sweeps
``ckpt_path=last`` so that it resumes from that ``last.ckpt`` (README "Training").

This module imports no Lightning (its callbacks are in :mod:`app.callbacks`), so that every
guarded entry point can install the handler before Lightning is loaded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Stopped", "handler", "installed", "requested", "as_stop", "hand_over", "resume_command"]

_state: dict[str, Any] = {"signum": None, "depth": 0, "previous": None, "requeue": None, "interrupt": False}
# a job launcher's "time is nearly up" signal: submitit (hydra/launcher=slurm) requeues on SIGUSR2
REQUEUE_SIGNAL = getattr(signal, "SIGUSR2", None)


class Stopped(BaseException):
    """The run was stopped by signal ``signum``; ``str()`` is the line to print (may be empty: then
    :func:`app.build.guarded` writes the generic one). A ``BaseException`` like
    ``KeyboardInterrupt``: ``except Exception`` clauses let it pass."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl-C (SIGINT)"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def handler(signum: int, frame: Any) -> None:
    """Record the stop; raise :class:`Stopped` unless a Lightning run handles it at its next batch."""
    first = _state["signum"] is None
    if first:
        _state["signum"] = signum
    if not first:
        if signum == signal.SIGINT and _state["signum"] == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C again while stopping: stop at once
        return  # already stopping: let the first stop finish its work (saving, cleaning up)
    term = signal.getsignal(signal.SIGTERM)
    if term is not handler:  # a trainer's handler is in front: Lightning stops at its next batch boundary
        if signum == signal.SIGINT:
            _say("\nCtrl-C: stopping at the next batch boundary (press Ctrl-C again to stop at once)\n")
        if signum != signal.SIGTERM and callable(term):
            term(signal.SIGTERM, frame)  # (Ctrl-C, the requeue signal: ask Lightning as SIGTERM would)
        return
    raise Stopped(signum)


def _say(text: str) -> None:
    """Write to stderr from a signal handler (``os.write``: ``print`` may be in the middle of a
    write to the same stream, and re-entering it raises)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def hand_over(stop: Stopped) -> None:
    """After a stop by the launcher's requeue signal, call the launcher's own handler (submitit:
    requeue the job, then exit); returns if there is none or it returns."""
    requeue = _state.get("requeue")
    if stop.signum == REQUEUE_SIGNAL and callable(requeue):
        _state["requeue"] = None
        requeue(stop.signum, None)


class installed:
    """Context: :func:`handler` handles SIGTERM inside, and SIGINT where Python's default Ctrl-C
    handler is installed (re-entrant: the outermost one installs it and puts the previous handlers
    back on exit). Clears the recorded stop on entry."""

    def __enter__(self) -> "installed":
        if threading.current_thread() is not threading.main_thread():
            return self
        if _state["depth"] == 0:
            _state["previous"] = signal.getsignal(signal.SIGTERM)
            _state["signum"] = None
            signal.signal(signal.SIGTERM, handler)
            _state["interrupt"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            if _state["interrupt"]:
                signal.signal(signal.SIGINT, handler)
            _state["requeue"] = None
            requeue = signal.getsignal(REQUEUE_SIGNAL) if REQUEUE_SIGNAL is not None else None
            if callable(requeue) and requeue is not handler:  # a launcher requeues on it: save first
                _state["requeue"] = requeue
                signal.signal(REQUEUE_SIGNAL, handler)
        _state["depth"] += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        _state["depth"] -= 1
        if _state["depth"] == 0:
            previous = _state["previous"]
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            _state["previous"] = None
            if _state["interrupt"]:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _state["interrupt"] = False
            if _state["requeue"] is not None:  # kept for hand_over() after the stop is reported
                signal.signal(REQUEUE_SIGNAL, _state["requeue"])


def requested() -> int | None:
    """The signal that asked this run to stop, or None."""
    return _state["signum"]


def as_stop(exc: BaseException) -> Stopped | None:
    """``exc`` as a :class:`Stopped` when it is one (or Lightning's ``SIGTERMException``), else None."""
    if isinstance(exc, Stopped):
        return exc
    if type(exc).__name__ == "SIGTERMException":
        return Stopped(requested() or signal.SIGTERM)
    return None


def task_overrides(script: str) -> list[str] | None:
    """The command-line overrides of this run (Hydra's ``overrides.task``; a multirun job's own
    values), or None when unknown (a config composed in process)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # noqa: BLE001 - no Hydra run: fall back to argv
        pass
    file = script.split()[-1].split(".")[-1] + ".py" if script.startswith("-m ") else os.path.basename(script)
    if sys.argv and os.path.basename(sys.argv[0]) == file:
        return [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    return None


def resume_command(script: str, output_dir: str | os.PathLike, extra: Iterable[str] = ()) -> str:
    """``python SCRIPT <this run's overrides> paths.output_dir=<absolute> <extra>`` (the run's own
    ``paths.output_dir`` / ``ckpt_path`` overrides replaced)."""
    overrides = task_overrides(script)
    extra = list(extra)
    replaced = {"paths.output_dir"} | {e.split("=", 1)[0] for e in extra}
    words = ["python", *script.split()]  # "eval.py" or "-m experiments.mi_sweep"
    if overrides is None:
        words.append("<the same overrides>")
    else:
        words += [o for o in overrides if re.sub(r"^[+~]+", "", o).split("=", 1)[0] not in replaced]
    words += [f"paths.output_dir={Path(output_dir).resolve()}", *extra]
    return " ".join(w if w == "<the same overrides>" else shlex.quote(w) for w in words)


def generic_message(stop: Stopped, script: str | None, output_dir: str | os.PathLike | None) -> str:
    """The line for a stopped ``eval.py`` / experiment script: finished pairs are kept; rerun."""
    name = signal_name(stop.signum)
    if script is None or output_dir is None:
        return f"stopped by {name}; finished work is kept: rerun the same command to resume"
    return (f"stopped by {name}; finished pairs are kept in {Path(output_dir).resolve()} (a rerun skips them); "
            f"resume with: {resume_command(script, output_dir)}")
