"""Evaluate any method on any dataset into the results contract.

    python eval.py model=identity data=mni paths.output_dir=results/identity
    python eval.py ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt data=mni paths.output_dir=DIR
    python eval.py model=identity data=pairs_csv data.csv=my_pairs.csv paths.output_dir=DIR save_outputs=true

``DIR`` receives ``pairs.csv``, ``labels.csv``, ``summary.json`` (and ``moved/`` with
``save_outputs=true``). Rerunning with the same ``DIR`` skips pairs already evaluated.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments.runtime import (  # noqa: E402
    build_datamodule,
    build_model,
    build_trainer,
    guarded,
    load_model_from_checkpoint,
    run_test,
)


@guarded
def evaluate(cfg: DictConfig) -> dict:
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = load_model_from_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else build_model(cfg)
    trainer = build_trainer(cfg, with_callbacks=False)
    return run_test(trainer, model, datamodule, cfg.paths.output_dir, save_outputs=cfg.save_outputs)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
