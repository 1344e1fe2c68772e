"""Apply a saved transform to any image (another modality, a label map), in world space.

    python apply.py transform=DIR image=X.nii.gz out=Y.nii.gz               # DIR: a register.py output folder
    python apply.py transform=DIR image=seg.nii.gz label=true out=Y.nii.gz  # nearest neighbour, ids kept
    python apply.py transform=DIR inverse=true image=F_seg.nii.gz label=true out=Y.nii.gz  # fixed -> moving space
    python apply.py transform=[warp.nii.gz,affine.txt] image=X.nii.gz reference=F.nii.gz out=Y.nii.gz

A list composes like ``antsApplyTransforms -t T1 -t T2``; see ``app/apply.py``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from app import guarded
from app.entry import hydra_main


@guarded
def apply(cfg: DictConfig) -> Path:
    from app.apply import run_apply  # here, not at the top: see app's docstring

    return run_apply(cfg)


@hydra_main("apply")
def main(cfg: DictConfig) -> None:
    apply(cfg)


if __name__ == "__main__":
    main()
