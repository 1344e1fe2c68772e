"""Running a method as its own process: ``eval.py`` / ``train.py`` with Hydra overrides, into a folder.

Shared by :mod:`experiments.compare` and :mod:`experiments.domain_shift`: a method given as
``{eval: [overrides]}`` or ``{train: [overrides]}`` runs into ``<out>/runs/<name>``. A rerun
(resume) launches the script again, which keeps what is still valid: ``eval.py`` reuses each pair
whose inputs, method (hyper-parameters and weights), metric settings and code are unchanged, and
``train.py`` resumes from its ``last.ckpt`` (a finished training is not trained again; a checkpoint
trained under other settings is refused) and tests the same way. (A folder is never skipped on
the strength of its ``summary.json``: a changed checkpoint file, config or data set behind the same
overrides would be missed, and a rerun stopped part-way would leave the old summary behind.)
``<out>/runs/<name>.command.json`` records the script and overrides that made the folder: a rerun
with other overrides under the same name stops with one error instead of mixing two commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from app import ConfigError

__all__ = ["parse_overrides", "method_overrides", "run_method"]

ROOT = Path(__file__).resolve().parents[1]


def parse_overrides(spec: Any, key: str) -> list[str]:
    if isinstance(spec, str):
        items = shlex.split(spec)
    elif isinstance(spec, (list, tuple, ListConfig)):
        items = list(spec)
    else:
        raise ConfigError(f"{key}: expected a list of overrides, got {spec!r}")
    if not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{key}: every override must be a string (quote overrides containing '=')")
    for s in items:
        if re.match(r"^[+~]*paths\.output_dir=", s):
            raise ConfigError(f"{key}: do not set paths.output_dir; methods run into <output_dir>/runs/<name>")
    return items


def method_overrides(kind: str, spec: Any, key: str, cfg: Any) -> list[str]:
    """A ``{train: [...]}`` / ``{eval: [...]}`` method's overrides (``spec`` at config key ``key``),
    followed, for a train method, by the config's ``train_common`` (compare.py and domain_shift.py
    alike): appended, so a ``train_common`` override wins over the method's own for the same key."""
    overrides = parse_overrides(spec, key)
    if kind == "train":
        overrides += parse_overrides(cfg.get("train_common") or [], "train_common")
    return overrides


def run_method(name: str, kind: str, overrides: list[str], out_dir: str | os.PathLike) -> Path:
    """Run ``eval.py`` / ``train.py`` for one method into ``out_dir/runs/<name>``; its results folder.

    Always launched (module docstring): on a rerun the script itself reuses what is unchanged (a
    training resumes from its ``last.ckpt``: ``ckpt_path=last`` unless the overrides set one). If
    this script is stopped (SIGTERM), the run gets SIGTERM too and up to 2 minutes to save its
    state. Output is echoed and kept in ``out_dir/runs/<name>.log``; a non-zero exit raises
    :class:`ConfigError` naming the method.
    """
    from data.files import atomic_write_text

    run_dir = (Path(out_dir) / "runs" / name).resolve()
    results_dir = run_dir / "test" if kind == "train" else run_dir
    script = "train.py" if kind == "train" else "eval.py"
    record = {"script": script, "overrides": [str(o) for o in overrides]}
    marker = run_dir.parent / f"{name}.command.json"
    _earlier_command(name, marker, run_dir, record)
    if (results_dir / "summary.json").is_file():
        print(f"[{name}] earlier results in {results_dir}: {script} keeps what is unchanged ("
              + ("a finished training is not trained again; " if kind == "train" else "")
              + "pairs of the same inputs, method, settings and code are reused)", flush=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
    cmd = [sys.executable, str(ROOT / script), *overrides, f"paths.output_dir={run_dir}"]
    if kind == "train" and not any(re.match(r"^[+~]*ckpt_path=", s) for s in overrides):
        cmd.append("ckpt_path=last")  # a rerun after a stop resumes the training (none yet: starts afresh)
    if not any(re.match(r"^[+~]*hydra\.run\.dir=", s) for s in overrides):
        cmd.append(f"hydra.run.dir={run_dir}")  # keep Hydra's .hydra/ with the run, not in logs/
    log_path = run_dir.parent / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] running: {shlex.join(cmd[1:])}", flush=True)
    last, last_error = "", ""
    with open(log_path, "w") as log:
        # in this script's working directory: the run reads relative paths (data.csv=..., ckpt_path=...,
        # paths.root_dir's default ".") as this script, which checked them, does
        proc = subprocess.Popen(cmd, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                if line.strip():
                    last = line.strip()
                    if last.startswith("error:"):
                        last_error = last
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # this script is stopping: let the run save its state, then end it
                proc.terminate()
                try:
                    rest, _ = proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rest, _ = proc.communicate()
                if rest:  # the run's last words (its resume line) go to the log too
                    sys.stdout.write(rest)
                    log.write(rest)
    sys.stdout.flush()
    if rc != 0:
        raise ConfigError(f"methods.{name}: {script} failed (exit status {rc}): {last_error or last or 'no output'} "
                          f"(full output: {log_path})")
    return results_dir


def _earlier_command(name: str, marker: Path, run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The command recorded for ``run_dir`` ({} when none ran yet); ConfigError when the folder was
    made by another script or other overrides, or holds a run whose command is unknown."""
    if not marker.is_file():
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ConfigError(f"methods.{name}: {run_dir} holds a run whose command was not recorded ({marker.name} "
                              "is missing; made by an older version?): remove it, or give another paths.output_dir")
        return {}
    try:
        earlier = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"methods.{name}: {marker}: unreadable ({exc})") from None
    if not isinstance(earlier, dict):
        raise ConfigError(f"methods.{name}: {marker}: not a command record")
    was = [earlier.get("script"), *(earlier.get("overrides") or [])]
    now = [record["script"], *record["overrides"]]
    if was != now:
        raise ConfigError(f"methods.{name}: {run_dir} was made by another command ({shlex.join(map(str, was))}; "
                          f"now {shlex.join(now)}): give another paths.output_dir or another method name, or remove "
                          "it to run again")
    return earlier
