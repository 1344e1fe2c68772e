"""Register one pair of your own images (any grids, orientations, spacings) into a folder.

    python register.py fixed=F.nii.gz moving=M.nii.gz out=DIR                  # model=greedy
    python register.py fixed=F.nii.gz moving=M.nii.gz out=DIR model=syn moving_label=ML.nii.gz fixed_label=FL.nii.gz
    python register.py fixed=F.nii.gz moving=M.nii.gz out=DIR ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt
    python register.py ... 'model.affine={scales:[4,2],iterations:[100,50]}'   # affine pre-alignment first

The moving image (and label map) is resampled onto the fixed grid in world space and registered;
``DIR`` receives the moved image in its own intensities, the moved label map, the transform
(``disp.nii.gz``: voxel units; ``disp_itk.nii.gz``: ANTs/ITK, LPS mm), its inverse where the method
has one, the Jacobian determinant, ``metrics.json`` with both label maps and ``transform.json``
(all or none; see ``app/register.py``). ``python apply.py`` applies the transform to other images.
"""

from __future__ import annotations

from omegaconf import DictConfig

from app import guarded
from app.entry import hydra_main


@guarded
def register(cfg: DictConfig) -> dict:
    from app.register import run_register  # here, not at the top: see app's docstring

    return run_register(cfg)


@hydra_main("register")
def main(cfg: DictConfig) -> None:
    register(cfg)


if __name__ == "__main__":
    main()
