"""Loggers: the factories of ``configs/logger/*.yaml``, results and analyses sent to them, figures.

W&B is the dashboard. With no credentials (no ``WANDB_API_KEY`` and no wandb login) or
``WANDB_MODE=offline`` the run is written offline under ``save_dir/wandb`` and can be
uploaded later with ``wandb sync <run dir>``.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf


def wandb_has_credentials() -> bool:
    """True when wandb finds an API key (environment or ``~/.netrc``) and is not forced offline."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return auth is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(project: str = "registration", offline: str | bool = "auto", **kwargs: Any):
    """A Lightning ``WandbLogger``; ``offline="auto"`` goes offline without credentials."""
    from lightning.pytorch.loggers import WandbLogger

    if offline == "auto":
        offline = not wandb_has_credentials()
    save_dir = kwargs.get("save_dir")
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
    logger = WandbLogger(project=project, offline=bool(offline), **kwargs)
    # Lightning passes anonymous=None to wandb.init, which recent wandb versions take as set and answers with
    # "The anonymous setting has no effect ..." on every run: not passing it changes nothing else
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None and "anonymous" not in kwargs:
        del init["anonymous"]
    return logger


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
        from app.build import build

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

    from data.files import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def log_results_table(trainer, writer, summary: dict[str, Any]) -> None:
    """The summary of the whole test set (``summary.json``'s values, pairs reused from an earlier run
    included) as ``test/<key>``: W&B loggers get it in the run summary, with the per-pair results as
    a table (``test/pairs``); the others as metrics (e.g. ``test/dice_mean`` in the CSV logger's
    ``metrics.csv``)."""
    from app.results import PAIR_COLUMNS

    numbers = {f"test/{k}": float(v) for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in trainer.loggers:
        if type(logger).__name__ != "WandbLogger":
            logger.log_metrics(numbers, step=trainer.global_step)
            logger.save()
        else:
            rows = writer.pairs
            logger.log_table(key="test/pairs", columns=PAIR_COLUMNS,
                             data=[[r.get(c) for c in PAIR_COLUMNS] for r in rows])
            logger.experiment.summary.update({f"test/{k}": v for k, v in summary.items()
                                              if isinstance(v, (int, float, str)) or v is None})
