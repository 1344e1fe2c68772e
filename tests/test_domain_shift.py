"""experiments/domain_shift.py: train once, evaluate every method on every test set, tables."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.domain_shift import find_checkpoint
from app import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data=mni", "data.shape=[64,64,64]", "data.n_train=2", "data.n_val=2", "data.n_test=3",
         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


def _list(overrides: list[str]) -> str:
    """A Hydra command-line list of overrides (each quoted: they contain '=')."""
    return "[" + ", ".join(repr(o) for o in overrides) + "]"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "experiments.domain_shift", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def test_find_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    assert find_checkpoint(tmp_path).name == "last.ckpt"
    (tmp_path / "checkpoints" / "epoch_003.ckpt").write_text("x")
    assert find_checkpoint(tmp_path).name == "epoch_003.ckpt"
    # two epoch checkpoints (save_top_k > 1): the one train.py tested, as its summary records, or an error
    (tmp_path / "checkpoints" / "epoch_007.ckpt").write_text("x")
    with pytest.raises(ConfigError, match="2 epoch checkpoints.*no record"):
        find_checkpoint(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "summary.json").write_text('{"checkpoint": "/elsewhere/checkpoints/epoch_003.ckpt"}')
    assert find_checkpoint(tmp_path).name == "epoch_003.ckpt"
    (tmp_path / "test" / "summary.json").write_text('{"checkpoint": "/elsewhere/checkpoints/epoch_009.ckpt"}')
    with pytest.raises(ConfigError, match="epoch_009.ckpt is not in"):
        find_checkpoint(tmp_path)


@pytest.mark.slow  # ~70 s: trains and evaluates every method of the experiment; its parts are tested one by one above
def test_domain_shift_end_to_end(tmp_path):
    out = tmp_path / "ds"
    args = [
        "methods={identity: {eval: " + _list(["model=identity"]) + "}, vxm: {train: "
        + _list(["model=voxelmorph", "trainer.max_epochs=1", "data.pairs_per_epoch=2", "logger=csv"]) + "}}",
        "train_common=" + _list(SMALL),
        "eval_common=" + _list(SMALL),
        "test_sets={in_domain: [], inverted: " + _list(["data.contrast=inverted"]) + "}",
        f"paths.output_dir={out}",
    ]
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for name in ("domain_shift.csv", "domain_shift.md", "tests.csv", "domain_shift.png",
                 "runs/vxm/inverted/pairs.csv", "runs/identity/in_domain/pairs.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "domain_shift.csv")))
    assert {(r["method"], r["test_set"]) for r in rows} == {
        (m, s) for m in ("identity", "vxm") for s in ("in_domain", "inverted")}
    assert all(int(r["n"]) == 2 for r in rows)
    vxm = {r["test_set"]: r for r in rows if r["method"] == "vxm"}
    assert vxm["in_domain"]["paradigm"] == "unsupervised" and float(vxm["in_domain"]["drop_from_reference"]) == 0.0
    # identity does not depend on intensities: the same Dice on both test sets
    ident = {r["test_set"]: float(r["mean"]) for r in rows if r["method"] == "identity"}
    assert ident["in_domain"] == pytest.approx(ident["inverted"])
    again = _run(*args, "logger=wandb")  # resume: nothing is trained or evaluated again
    assert again.returncode == 0 and again.stdout.count("earlier results in") == 5, again.stderr[-3000:]
    assert again.stdout.count("reused 2 of 2 pairs") == 5 and "epoch 0:" not in again.stdout, again.stdout[-3000:]
    # logger=wandb (offline here): the tables, the boxplots and every mean, in one run
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    table = json.loads(next(runs[0].rglob("media/table/domain_shift/summary_*.table.json")).read_text())
    assert len(table["data"]) == 4 and "drop_from_reference" in table["columns"]
    assert not list(runs[0].rglob("media/table/domain_shift/tests_*.table.json"))  # no classical method: no tests
    assert list(runs[0].rglob("media/images/domain_shift/boxplots_*.png"))
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert all(f"domain_shift/{s}/{m}/dice_mean".encode() in record
               for m in ("identity", "vxm") for s in ("in_domain", "inverted"))


def test_domain_shift_bad_config(tmp_path):
    ident = "{eval: " + _list(["model=identity"]) + "}"
    proc = _run("methods={a: " + ident + ", b: {ckpt: /nowhere.ckpt}}",
                "test_sets={x: [], y: []}", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 1 and "methods.b.ckpt: no checkpoint file at '/nowhere.ckpt'" in proc.stderr
    proc = _run("methods={a: " + ident + ", b: " + ident + "}", "test_sets={x: []}",
                f"paths.output_dir={tmp_path}")
    assert proc.returncode == 1 and "test_sets: give at least two" in proc.stderr


def test_the_drop_from_the_reference_is_positive_when_worse_for_every_metric():
    """Dice falling and HD95 rising are both a positive drop (the table's Δ reads the same way)."""
    from experiments.domain_shift import _drop

    assert _drop(0.80, 0.70, "dice") == pytest.approx(0.10)
    assert _drop(2.0, 3.5, "hd95") == pytest.approx(1.5)
    assert _drop(0.10, 0.05, "sdlogj") == pytest.approx(-0.05)  # smoother than in domain: negative


def test_a_test_set_in_another_voxel_order_is_refused_before_any_training(tmp_path, pairs_csv):
    """A network trained on MNI (RAS) and a test set stored in LIA: eval.py would refuse the checkpoint,
    but only after the trainings; the check before them names the method, the set and both orders."""
    from test_entrypoints import _reordered_csv

    from experiments.domain_shift import check_voxel_orders

    lia = _reordered_csv(pairs_csv, tmp_path / "lia")
    specs = [("greedy", "eval", ["model=greedy_fast"]), ("vxm", "train", ["experiment=mni_unsup_voxelmorph"])]
    check_voxel_orders(specs, [("in", ["data=mni"]), ("csv", ["data=pairs_csv", f"data.csv={pairs_csv}"])], [])
    with pytest.raises(ConfigError) as exc:
        check_voxel_orders(specs, [("in", ["data=mni"]), ("lia", ["data=pairs_csv", f"data.csv={lia}"])], [])
    msg = str(exc.value)
    assert "methods.vxm: trained on data in voxel order RAS" in msg and "test_sets.lia gives LIA" in msg, msg


def test_a_test_set_normalised_otherwise_is_refused_before_any_training(pairs_csv):
    """A network trained on percentile-normalised images and a test set of raw [0, 1] ones
    (normalize=false): refused before the trainings, naming the method, the set and both."""
    from experiments.domain_shift import check_voxel_orders

    train = ["experiment=mni_unsup_voxelmorph", "data=pairs_csv", f"data.train_csv={pairs_csv}",
             f"data.val_csv={pairs_csv}"]
    specs = [("greedy", "eval", ["model=greedy_fast"]), ("vxm", "train", train)]
    csv = ["data=pairs_csv", f"data.csv={pairs_csv}"]
    check_voxel_orders(specs, [("a", csv), ("b", csv)], [])
    with pytest.raises(ConfigError, match=r"methods.vxm: trained on images normalised 'percentile', but "
                                          r"test_sets.raw normalises 'none'"):
        check_voxel_orders(specs, [("a", csv), ("raw", [*csv, "data.normalize=false"])], [])


def test_paper_fig5_trains_and_tests_every_set_in_one_voxel_order():
    """The paper's Fig. 5 config (OASIS -> the Klein sets, which are read in RAS): its networks train,
    and every test set is read, with data.orientation=RAS and one intensity normalisation (percentile:
    OASIS's own default is minmax); its networks use the oasis_* recipes."""
    from conftest import compose

    from experiments.domain_shift import _specs, _test_sets

    cfg = compose("domain_shift", ["experiment=domain_shift/paper_fig5_domain_shift"])
    specs = _specs(cfg)
    trained = [(name, value) for name, kind, value in specs if kind == "train"]
    assert len(trained) == 4
    for name, overrides in trained:
        train_cfg = compose("train", overrides)
        assert train_cfg.data.orientation == "RAS" and train_cfg.model.optimizer.lr == 1e-4, name
        assert train_cfg.trainer.max_epochs == 300 and train_cfg.data._target_ == "data.OASISDataModule", name
        assert train_cfg.data.normalize == "percentile", name
    for name, overrides in _test_sets(cfg):
        eval_cfg = compose("eval", overrides)
        assert eval_cfg.data.orientation == "RAS" and eval_cfg.data.normalize == "percentile", name
