"""Train a learned registration method, then test it into the results contract.

    python train.py                                  # CPU quickstart: VoxelMorph on offline MNI data
    python train.py experiment=mni_sup_voxelmorph    # an experiment file from configs/experiment/
    python train.py model.loss.dice_weight=1 logger=csv trainer.max_epochs=5

Outputs (``paths.output_dir``, by default ``logs/train/runs/<time>``): ``checkpoints/``,
logger files, and ``test/`` with ``pairs.csv``, ``labels.csv``, ``summary.json``.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _ROOT)
# job processes started for this run (submitit launchers, DDP ranks) import the project too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.runtime import (  # noqa: E402
    build_datamodule,
    build_model,
    build_trainer,
    check_entry,
    check_output_dir,
    finish_loggers,
    guarded,
    run_test,
)


@guarded
def train(cfg: DictConfig) -> dict:
    import lightning as L

    check_entry(cfg, "train")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    check_output_dir(cfg.paths.output_dir, datamodule)  # before any checkpoint or result is written
    model = build_model(cfg)
    trainer = build_trainer(cfg)
    summary: dict = {}
    try:
        for logger in trainer.loggers:  # the resolved config: what the dashboard groups and filters by
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if cfg.test:
            ckpt = None
            if cfg.train and trainer.checkpoint_callback is not None:
                ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            out_dir = os.path.join(cfg.paths.output_dir, "test")
            summary = run_test(trainer, model, datamodule, out_dir, save_outputs=cfg.save_outputs, ckpt_path=ckpt)
    finally:
        finish_loggers(trainer)
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
