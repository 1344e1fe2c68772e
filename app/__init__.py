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
| :mod:`app.apply` | ``apply.py``: a saved transform (folder, ITK/ANTs files) applied to any image |
| :mod:`app.progress` | the log's lines: one per validation epoch, one per registered pair (Dice, seconds, ETA), where the outputs went |
"""

from app.build import build, build_datamodule, build_model, build_trainer, check_entry
from app.checkpoints import load_model_from_checkpoint, read_checkpoint
from app.errors import ConfigError, guarded
from app.evaluation import check_output_dir, run_eval, run_test
from app.loggers import finish_loggers, log_analysis, save_figure

__all__ = ["ConfigError", "guarded", "build", "build_datamodule", "build_model", "build_trainer", "check_entry",
           "load_model_from_checkpoint", "read_checkpoint", "check_output_dir", "run_test", "run_eval",
           "finish_loggers", "log_analysis", "save_figure"]
