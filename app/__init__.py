"""The application layer: what runs the library (``spatial losses metrics data models classical``).

The library never imports this package (``tests/test_layers.py`` checks it); the entry points
(``train.py``, ``eval.py``, the one-pair tools ``register.py`` and ``apply.py``) and the paper's
experiment scripts (``experiments/``) sit on it.

| module | holds |
| --- | --- |
| :mod:`app.errors` | :class:`ConfigError`, :func:`guarded` (one ``error:`` line, exit status) |
| :mod:`app.config_check` | config values of the wrong type or range, named by key, before any work |
| :mod:`app.build` | DataModule, model and trainer from config (errors name the key) |
| :mod:`app.checkpoints` | checkpoints read as data; rebuilding the model a checkpoint describes |
| :mod:`app.results` | the results contract: per-pair parts, ``pairs.csv``, ``labels.csv``, ``summary.json`` |
| :mod:`app.evaluation` | the test phase and ``eval.py``: a method evaluated into the results contract |
| :mod:`app.training` | ``train.py``: fit, then test; stops and resumes |
| :mod:`app.stopping` | SIGTERM / Ctrl-C / SLURM requeue: keep what is finished, say how to resume |
| :mod:`app.loggers` | W&B and CSV loggers, analysis results to the dashboard, figures to PNG |
| :mod:`app.register` | ``register.py``: one pair of own images in world space into a transform folder |
| :mod:`app.register_inputs` | ``register.py``'s inputs: files, headers, device, model, the pair batch |
| :mod:`app.apply` | ``apply.py``: a saved transform (folder, ITK/ANTs files) applied to any image |
| :mod:`app.progress` | the log's lines: one per validation epoch, one per registered pair (Dice, seconds, ETA), where the outputs went |

The names below load their module on first use (PEP 562), as ``data``'s do: ``from app import
guarded`` imports neither Lightning nor the models, so an entry point whose command line is wrong
(an unknown key, a bad value) says so in about two seconds instead of the eight that importing
Lightning takes; the entry points import the heavy parts inside their guarded function.
``app.build`` is the module (a submodule's name wins over a lazy name once it is imported): the
function is ``from app.build import build``; a test checks no lazy name shadows a submodule.
"""

from __future__ import annotations

from data.lazy import lazy_names

# name -> the module that defines it
_HOMES = {
    "ConfigError": "app.errors",
    "guarded": "app.errors",
    "build_datamodule": "app.build",
    "build_model": "app.build",
    "build_trainer": "app.build",
    "check_entry": "app.build",
    "load_model_from_checkpoint": "app.checkpoints",
    "read_checkpoint": "app.checkpoints",
    "check_output_dir": "app.evaluation",
    "run_test": "app.evaluation",
    "run_eval": "app.evaluation",
    "finish_loggers": "app.loggers",
    "log_analysis": "app.loggers",
    "save_figure": "app.loggers",
}

__all__ = list(_HOMES)

__getattr__, __dir__ = lazy_names("app", _HOMES, globals())
