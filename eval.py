"""Evaluate any method on any dataset into the results contract.

    python eval.py model=identity data=mni paths.output_dir=results/identity
    python eval.py ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt data=mni paths.output_dir=DIR
    python eval.py model=identity data=pairs_csv data.csv=my_pairs.csv paths.output_dir=DIR save_outputs=true

``DIR`` receives ``pairs.csv``, ``labels.csv``, ``summary.json`` (and ``moved/`` with
``save_outputs=true``). Rerunning with the same ``DIR`` reuses the pairs whose inputs, method and
metric settings are unchanged and recomputes the others; the files list exactly this run's test pairs.

SIGTERM (``kill``, ``scancel``, a SLURM time limit) stops it after the current pair: finished
pairs stay in ``DIR/.parts/``, no summary is written, the exit status is 143 and the line printed
is the command that resumes. A ``ckpt_path`` is read as data (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from app import guarded
from app.entry import hydra_main


@guarded
def evaluate(cfg: DictConfig) -> dict:
    from app import check_entry, run_eval  # here, not at the top: see app's docstring

    check_entry(cfg, "train", "eval")
    return run_eval(cfg)


@hydra_main("eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
