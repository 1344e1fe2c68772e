"""Shared fixtures: composing the Hydra configs in-process and tiny NIfTI pairs on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The devices the analytic and quality tests run on (the `device` fixture): the CPU always, CUDA
# where there is one, so the same suite checks a GPU; without CUDA its parameter is simply absent.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device of :data:`DEVICES` as a ``torch.device`` (test ids ``[cpu]``, ``[cuda]``). On
    CUDA, TF32 matrix products and convolutions are off for the test, so tolerances written for
    float32 on the CPU hold (users keep PyTorch's defaults)."""
    dev = torch.device(request.param)
    if dev.type != "cuda":
        yield dev
        return
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield dev
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


# Small, fast MNI data for entry-point tests (2 mm template cropped to 64^3).
FAST_MNI = [
    "data.shape=[64,64,64]",
    "data.n_train=2",
    "data.n_val=2",
    "data.n_test=2",
    "data.pairs_per_epoch=2",
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def experiment_names() -> list[str]:
    """Every experiment file as its ``experiment=`` option (``mni_sup_voxelmorph``,
    ``compare/mni_fig4_sup``); the shared recipes under ``base/`` are not experiments."""
    root = CONFIGS / "experiment"
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")
                  if p.relative_to(root).parts[0] != "base")


def experiment_script(name: str) -> str:
    """The config (and entry point) that runs experiment ``name``: its folder for an analysis
    script's experiment (``compare/...``), else ``train``."""
    from app.build import script_of_experiment

    return script_of_experiment(name)


def compose(config_name: str, overrides: list[str], hydra: bool = False):
    """Compose ``configs/<config_name>.yaml`` with overrides, as the entry point would (``hydra``:
    keep Hydra's own node, which records e.g. the ``experiment=`` choice)."""
    pytest.importorskip("hydra", reason="hydra-core is not installed (the device check's machine)")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)


@pytest.fixture
def compose_cfg():
    return compose


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib  # here: the device check runs the device tests where nibabel is absent

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_blob_pair(shape=(32, 32, 32), shift=2, seed=0):
    """Two images of the same smooth blobs, the moving one shifted by ``shift`` voxels on axis 0."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.zeros(shape, np.int16)
    label[r < shape[0] * 0.35] = 1
    label[r < shape[0] * 0.22] = 2
    label[r < shape[0] * 0.1] = 3
    img = label.astype(np.float32) / 3 + 0.02 * rng.standard_normal(shape).astype(np.float32)
    img = np.clip(img, 0, 1).astype(np.float32)
    mov_img = np.roll(img, shift, axis=0)
    mov_lab = np.roll(label, shift, axis=0)
    return img, label, mov_img, mov_lab


@pytest.fixture
def pairs_csv(tmp_path):
    """A pairs CSV with two pairs of small labelled volumes (relative paths)."""
    d = tmp_path / "pairs"
    rows = ["fixed,moving,fixed_label,moving_label"]
    for k in range(2):
        fi, fl, mi, ml = make_blob_pair(seed=k, shift=2 + k)
        write_nifti(d / f"f{k}.nii.gz", fi)
        write_nifti(d / f"f{k}_seg.nii.gz", fl)
        write_nifti(d / f"m{k}.nii.gz", mi)
        write_nifti(d / f"m{k}_seg.nii.gz", ml)
        rows.append(f"f{k}.nii.gz,m{k}.nii.gz,f{k}_seg.nii.gz,m{k}_seg.nii.gz")
    csv = d / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a CPU shared with other jobs, a second OpenMP thread that is descheduled stalls every
    parallel region of small-tensor code (steps 10x slower, not faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
