"""Train a learned registration method, then test it into the results contract.

    python train.py                                  # CPU quickstart: VoxelMorph on offline MNI data
    python train.py experiment=mni_sup_voxelmorph    # an experiment file from configs/experiment/
    python train.py model.loss.dice_weight=1 logger=csv trainer.max_epochs=5

Outputs (``paths.output_dir``, by default ``logs/train/runs/<time>``): ``checkpoints/``,
logger files, and ``test/`` with ``pairs.csv``, ``labels.csv``, ``summary.json``.

Stopping and resuming: SIGTERM (``kill``, ``scancel``, a SLURM time limit) saves
``checkpoints/last.ckpt`` at the next batch boundary and exits 143 printing the command that
resumes (``... paths.output_dir=<dir> ckpt_path=last``); Ctrl-C exits 130 printing it too. Neither
tests a half-trained network. Checkpoints are read as data (``weights_only``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from app import guarded
from app.entry import hydra_main


@guarded
def train(cfg: DictConfig) -> dict:
    """Build the data, the model and the trainer from ``cfg``; fit; test the best checkpoint."""
    from app.training import run_train  # here, not at the top: see app's docstring

    return run_train(cfg)


@hydra_main("train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
