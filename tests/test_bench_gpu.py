"""The prepared device check (experiments/bench_gpu.py) on the CPU with tiny sizes, so it cannot rot:
prepare here, then run it in a subprocess where the packages the device lacks cannot be imported."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# what the device machine does not have (KINDS.md): nothing on the run path may import them
ABSENT_ON_DEVICE = ("nibabel", "nilearn", "monai", "hydra", "omegaconf", "wandb", "torchio", "SimpleITK", "fireants")

# runs a module with those imports failing as on a machine without them
BLOCKED_RUN = """
import runpy, sys
BLOCK = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: absent on the device)", name=name)
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _blocked(module: str, *args: str, block=ABSENT_ON_DEVICE, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(block), module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from experiments.bench_gpu import prepare

    folder = tmp_path_factory.mktemp("bench_gpu_data")
    recipes = prepare(folder, quick=True)
    return folder, recipes


def _finite_numbers(value, where="report"):
    """Every number in a nested report, with its path; fails on NaN/inf."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _finite_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _finite_numbers(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value), f"{where} = {value}"
        yield where, value


def test_prepare_writes_the_recipes_and_the_subjects_it_states(prepared):
    from data.mni import MNISubjects
    from experiments.bench_gpu import StoredSubjects

    folder, recipes = prepared
    assert set(recipes["networks"]) == {"voxelmorph", "lkunet", "transmorph", "lapirn", "clapirn", "symnet"}
    assert recipes["mni"]["supervised"]["model"]["loss"]["dice_weight"] > 0
    assert recipes["mni"]["unsupervised"]["model"]["loss"].get("dice_weight", 0) == 0
    data = recipes["mni_data"]
    subjects = StoredSubjects(folder / "subjects.npz")
    test_first = data["n_train"] + data["n_val"]
    # the stored subjects are the MNI recipe's, up to 8-bit quantisation of the image
    reference = MNISubjects(resolution=data["resolution"], shape=data["shape"], seed=data["seed"],
                            **{k: data[k] for k in ("deformation_scale", "deformation_smoothness", "bias", "gamma",
                                                    "noise", "contrast", "labels")})
    for k in (0, test_first):
        got, want = subjects[k], reference[k]
        assert got["id"] == want["id"]
        assert torch.equal(got["label"], want["label"])
        assert (got["image"] - want["image"]).abs().max() <= 0.5 / 255 + 1e-6
    assert subjects.spacing == reference.spacing and np.allclose(subjects.affine, reference.affine)
    with pytest.raises(KeyError, match="subject 999 was not prepared"):
        subjects[999]
    # the data module over them has the recipe's splits
    from experiments.bench_gpu import stored_datamodule

    dm = stored_datamodule(subjects, data)
    assert dm.test_pair_ids() == [(f"mni_{test_first:04d}", f"mni_{test_first + 1:04d}")]


def test_quick_run_without_the_packages_the_device_lacks(prepared, tmp_path):
    """The whole check in quick mode with nibabel, nilearn, monai, hydra, omegaconf, wandb, torchio and
    SimpleITK unimportable: every section gives finite numbers, and the report names the run."""
    folder, _ = prepared
    out = tmp_path / "out"
    proc = _blocked("experiments.bench_gpu", "--data", str(folder), "--out", str(out), "--device", "cpu", "--quick",
                    "--networks", "lapirn", "clapirn", "--test-files", "tests/test_spatial.py",
                    "--test-select", "test_channel_i_moves_along_axis_i")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    assert (out / "bench_gpu.md").read_text().startswith("# Device check")
    assert report["environment"]["device"] == "cpu"
    for name in ABSENT_ON_DEVICE:  # really blocked in that run
        if name in report["environment"]:
            assert report["environment"][name].startswith("missing"), name
    tests = report["tests"]
    assert tests["exit_code"] == 0 and "passed" in tests["summary"], tests
    for method in ("greedy", "greedy_fast", "syn"):
        row = report["classical"][method]
        assert "error" not in row, row
        assert 0 < row["dice"] <= 1 and row["seconds"] > 0 and row["folding_pct"] >= 0
        assert row["dice"] > report["pair"]["dice_before"], (method, row)  # registration helped
    assert "skipped" in report["classical"]["fireants"]
    for net in ("lapirn", "clapirn"):
        steps = report["training_steps"][net]
        for precision in ("fp32", "bf16"):
            assert steps[precision]["finite"] is True and steps[precision]["seconds"] > 0, steps
    mni = report["mni_training"]
    for run in ("supervised_32-true", "supervised_bf16-mixed", "unsupervised_32-true", "greedy"):
        assert "error" not in mni[run] and 0 < mni[run]["dice"] <= 1, (run, mni[run])
    assert mni["setup"]["steps"] == 2
    assert report["cpu_reference"]["seconds"] > 0
    assert set(report["goals"]) == {"greedy_0.5s_1GB_fireants_dice", "voxelmorph_step_20x_2cpu",
                                    "bf16_within_0.005_dice"}
    numbers = dict(_finite_numbers(report))
    assert len(numbers) > 40


def test_run_path_imports_nothing_the_device_lacks():
    """Importing the check and everything its sections use (data over arrays, models, networks,
    classical, metrics, Lightning) works with those packages unimportable, and the blocker does
    block: the NIfTI reader (data.io) needs nibabel."""
    code = ("import experiments.bench_gpu, data.generated, data.batch, models, models.networks, classical, "
            "metrics, losses, spatial, lightning\n"
            "try:\n    import data.io\nexcept ModuleNotFoundError as exc:\n    print('ok', exc.name)")
    script = BLOCKED_RUN.replace('runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)',
                                 f"exec({code!r})")
    proc = subprocess.run([sys.executable, "-c", script, ",".join(ABSENT_ON_DEVICE), "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok nibabel"), proc.stdout


def test_run_refuses_missing_or_mismatched_data(prepared, tmp_path):
    from experiments.bench_gpu import main

    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    folder, _ = prepared
    assert main(["--data", str(folder), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1  # prepared --quick
    assert not (tmp_path / "o" / "bench_gpu.json").exists()
