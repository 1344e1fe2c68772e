"""Scale and operations: DDP on CPU (gloo), determinism, resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, compose

sys.path.insert(0, str(ROOT))
import train as train_entry  # noqa: E402

SMALL_MNI = ["data=mni", "data.shape=[48,48,48]", "data.n_train=4", "data.n_val=2", "data.n_test=3",
             "data.pairs_per_epoch=4", "logger=csv", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("n_test", [9, 8])
def test_ddp_cpu_evaluation_has_every_pair_exactly_once(n_test, tmp_path):
    """trainer=ddp_cpu (2 gloo processes) splits the test pairs; the gathered pairs.csv lists each
    pair once, also when the sampler pads an odd count (7 pairs) with a repeat."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "trainer=ddp_cpu", "model=identity", "data=mni",
         "data.shape=[48,48,48]", "data.n_train=2", "data.n_val=0", f"data.n_test={n_test}",
         "trainer.enable_progress_bar=false", f"paths.output_dir={out}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Initializing distributed: GLOBAL_RANK") == 2  # really two processes
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    pairs = [(r["fixed_id"], r["moving_id"]) for r in rows]
    expected = [(f"mni_{k:04d}", f"mni_{k + 1:04d}") for k in range(2, 2 + n_test - 1)]
    assert sorted(pairs) == expected  # each exactly once
    assert len(list((out / ".parts").rglob("*.json"))) == n_test - 1


def test_ddp_cpu_training_means_count_each_pair_once(tmp_path):
    """trainer=ddp_cpu with 3 validation and 3 test pairs: the sampler pads each split with a repeat
    (rank 0 gets pairs 0 and 2, rank 1 pairs 1 and 0). val/dice (what picks the best checkpoint) is
    the mean over the 3 pairs, not 0.5 d0 + 0.25 d1 + 0.25 d2; val/dice_best is a value val/dice
    took; the logged test means are summary.json's."""
    from app.checkpoints import load_model_from_checkpoint
    from app.build import build_datamodule
    from models.evaluation import evaluate_batch

    out = tmp_path / "ddp"
    data = ["data=mni", "data.shape=[32,32,32]", "data.n_train=2", "data.n_val=4", "data.n_test=4",
            "data.pairs_per_epoch=2", "data.deformation_scale=3"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "trainer=ddp_cpu", "model=voxelmorph", *data, "trainer.max_epochs=1",
         "logger=csv", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
         f"paths.output_dir={out}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Initializing distributed: GLOBAL_RANK") == 2  # really two processes
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    logged = {k: float(v) for r in rows for k, v in r.items() if v not in ("", None) and k.startswith(("val/", "test/"))}
    # the true validation mean: the checkpoint (the weights validated) on each validation pair, one process
    model = load_model_from_checkpoint(out / "checkpoints" / "last.ckpt").eval()
    dm = build_datamodule(compose("train", data))
    dm.setup("fit")
    dice = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            dice += [r["dice"] for r in evaluate_batch(batch, model.register(batch), False, model.label_interp)]
    assert len(dice) == 3
    padded = 0.5 * dice[0] + 0.25 * dice[1] + 0.25 * dice[2]
    # the test can tell the two apart: 0.0063 here (0.633, 0.684, 0.657), set by the data, not the training
    assert abs(padded - sum(dice) / 3) > 1e-3, dice
    assert logged["val/dice"] == pytest.approx(sum(dice) / 3, abs=2e-4), (logged["val/dice"], dice)
    assert logged["val/dice_best"] == logged["val/dice"]
    summary = json.loads((out / "test" / "summary.json").read_text())
    assert summary["n_pairs"] == 3
    for key in ("dice_mean", "dice_identity_mean", "folding_pct_mean"):
        assert logged[f"test/{key}"] == pytest.approx(summary[key], rel=1e-6), key


def _train(tmp_path, name, extra):
    cfg = compose("train", SMALL_MNI + [f"paths.output_dir={tmp_path / name}", "seed=3"] + extra)
    return train_entry.train(cfg)


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    a = _train(tmp_path, "a", ["trainer.max_epochs=1"])
    b = _train(tmp_path, "b", ["trainer.max_epochs=1"])
    for key in ("dice_mean", "hd95_mean", "sdlogj_mean", "folding_pct_mean"):
        assert a[key] == b[key], key
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_from_last_checkpoint_equals_an_uninterrupted_run(tmp_path):
    """Train 2 epochs in one go, or 1 epoch then resume from its last.ckpt for the 2nd: same weights
    and the same test metrics (CPU, same seed; resume at an epoch boundary)."""
    full = _train(tmp_path, "full", ["trainer.max_epochs=2", "test=false"])
    assert full == {}
    _train(tmp_path, "part", ["trainer.max_epochs=1", "test=false"])
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    _train(tmp_path, "resumed", ["trainer.max_epochs=2", "test=false", f"ckpt_path={last}"])
    wf = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    wr = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (wf["global_step"], wf["epoch"]) == (wr["global_step"], wr["epoch"]) == (8, 1), (wf["global_step"], wr["global_step"], wf["epoch"], wr["epoch"])
    diff = max(float((wf["state_dict"][k] - wr["state_dict"][k]).abs().max()) for k in wf["state_dict"])
    assert diff == 0.0, diff


def test_a_checkpoint_is_not_resumed_or_tested_under_other_settings(tmp_path, capsys):
    """Lightning would restore the weights and optimiser state into whatever the new config builds:
    resuming with another loss weight or other training data, or testing (train=false) as another
    field type, is refused with one line naming the setting; more epochs resume."""
    _train(tmp_path, "a", ["trainer.max_epochs=1", "test=false"])
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    for extra, setting in ((["model.loss.reg_weight=5"], "model.loss.reg_weight"),
                           (["data.deformation_scale=4"], "data.deformation_scale"),
                           (["model.label_interp=linear"], "model.label_interp"),  # val/dice picks the best
                           (["train=false", "model.field=velocity"], "model.field")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            _train(tmp_path, "b", ["trainer.max_epochs=2", f"ckpt_path={last}", *extra])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"ckpt_path: {last} was trained with other settings" in err and setting in err, err
    with pytest.raises(SystemExit):  # ckpt_path=last reads the run's own last.ckpt
        _train(tmp_path, "a", ["trainer.max_epochs=2", "ckpt_path=last", "test=false", "model.optimizer.lr=0.1"])
    assert "model.optimizer.lr" in capsys.readouterr().err
    _train(tmp_path, "a", ["trainer.max_epochs=2", "ckpt_path=last", "test=false", "data.num_workers=0"])


def test_a_training_resumes_on_its_moved_data_but_not_on_other_files(tmp_path, pairs_csv, capsys):
    """The checkpoint records the training and validation files by name and size: the same files
    moved to another folder (another CSV path) resume; a training file rewritten since (same name,
    other content) is refused with one line naming it, where the settings alone would have passed."""
    import shutil

    import nibabel as nib
    import numpy as np

    def run(name, csv_path, extra):
        cfg = compose("train", ["data=pairs_csv", f"data.train_csv={csv_path}", f"data.val_csv={csv_path}",
                                f"data.test_csv={csv_path}", "logger=csv", "trainer.accelerator=cpu",
                                "trainer.enable_progress_bar=false", "test=false",
                                f"paths.output_dir={tmp_path / name}", *extra])
        return train_entry.train(cfg)

    run("a", pairs_csv, ["trainer.max_epochs=1"])
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    recorded = torch.load(last, weights_only=False)["registration"]["training_inputs"]
    assert len(recorded) == 4 and recorded[0][:3] == ["train", "f0", "m0"], recorded  # 2 train + 2 val rows
    moved = shutil.copytree(pairs_csv.parent, tmp_path / "moved") / pairs_csv.name
    run("a", moved, ["trainer.max_epochs=2", "ckpt_path=last"])  # the same files elsewhere: resumes
    assert torch.load(last, weights_only=False)["epoch"] == 1
    m1 = moved.parent / "m1.nii.gz"
    img = nib.load(m1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float64), img.affine), m1)  # same grid, rewritten
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run("a", moved, ["trainer.max_epochs=3", "ckpt_path=last"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"ckpt_path: {last} was trained on other data" in err[0] and "m1.nii.gz" in err[0], err


def test_a_moved_run_folder_resumes_with_its_best_checkpoint_record(tmp_path):
    """A run folder copied elsewhere (scratch to project storage) and resumed: its checkpoints'
    records name the old folder, which Lightning drops, so the "best" checkpoint would be picked
    among the epochs after the resume only. They are rewritten to the folder the files now lie in."""
    import shutil
    import warnings

    _train(tmp_path, "a", ["trainer.max_epochs=1", "test=false"])
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _train(tmp_path, "moved", ["trainer.max_epochs=2", "ckpt_path=last", "test=false"])
    assert not [w for w in seen if "dirpath has changed" in str(w.message)]
    state = next(v for k, v in torch.load(tmp_path / "moved" / "checkpoints" / "last.ckpt", weights_only=False)
                 ["callbacks"].items() if "val/dice" in k)
    first = next(v for k, v in torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
                 ["callbacks"].items() if "val/dice" in k)
    assert state["dirpath"] == str((tmp_path / "moved" / "checkpoints").resolve())
    assert float(state["best_model_score"]) >= float(first["best_model_score"])  # epoch 0 still competes
    assert all(str(tmp_path / "moved") in p for p in state["best_k_models"])


def test_a_resumed_run_logs_the_best_validation_dice_of_the_whole_run(tmp_path):
    """val/dice_best (CSV, W&B, the epoch line) continues from the checkpoint: it counted the epochs
    after a resume only."""
    _train(tmp_path, "a", ["trainer.max_epochs=2", "test=false", "model.optimizer.lr=0.01"])
    _train(tmp_path, "a", ["trainer.max_epochs=3", "test=false", "model.optimizer.lr=0.01", "ckpt_path=last"])
    rows = [r for f in sorted((tmp_path / "a").rglob("metrics.csv")) for r in csv.DictReader(open(f))
            if r.get("val/dice")]
    dice = {int(r["epoch"]): float(r["val/dice"]) for r in rows}
    best = {int(r["epoch"]): float(r["val/dice_best"]) for r in rows if r.get("val/dice_best")}
    assert sorted(dice) == [0, 1, 2]
    assert best[2] == pytest.approx(max(dice.values())), (dice, best)


def test_a_run_resumed_into_another_folder_keeps_its_best_checkpoint_record(tmp_path):
    """``python train.py ckpt_path=<run>/checkpoints/last.ckpt`` writes a new output folder: Lightning
    would drop the record naming the old folder and pick "best" among the epochs after the resume.
    The best file is copied into the new folder (the old run's files stay) and keeps competing."""
    import shutil

    _train(tmp_path, "a", ["trainer.max_epochs=1", "test=false"])
    before = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    first = next(v for k, v in torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
                 ["callbacks"].items() if "val/dice" in k)
    _train(tmp_path, "b", ["trainer.max_epochs=2", "test=false",
                           f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"])
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == before  # the old run untouched
    state = next(v for k, v in torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
                 ["callbacks"].items() if "val/dice" in k)
    assert state["dirpath"] == str((tmp_path / "b" / "checkpoints").resolve())
    assert float(state["best_model_score"]) >= float(first["best_model_score"])  # epoch 0 still competes
    assert all(str(tmp_path / "b") in p and os.path.isfile(p) for p in state["best_k_models"])
    # a record whose file is gone is left to Lightning (it starts afresh), not pointed at nothing
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "a" / "checkpoints" / Path(first["best_model_path"]).name).unlink()
    _train(tmp_path, "b", ["trainer.max_epochs=2", "test=false",
                           f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"])
    state = next(v for k, v in torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
                 ["callbacks"].items() if "val/dice" in k)
    assert all(os.path.isfile(p) for p in state["best_k_models"])


class CrashAtStep(L.Callback):
    """Raises at the start of the batch after ``step`` optimisation steps: a job killed mid-epoch
    (the checkpoint of step ``step`` is on disk, nothing after it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    """A run checkpointing every step crashes after step 6 of 8 (epoch 2 of 2, 4 steps each:
    mid-epoch). Resuming (``ckpt_path=last`` in the same output_dir) trains the two remaining
    batches of that epoch, not the whole epoch again and not none: same global step, weights
    and test metrics as an uninterrupted run with the same seed (CPU). Measured difference: 0."""
    steps = ["callbacks.last_checkpoint.every_n_epochs=null", "callbacks.last_checkpoint.every_n_train_steps=1"]
    full = _train(tmp_path, "full", ["trainer.max_epochs=2"] + steps)
    crash = ["+callbacks.crash._target_=test_scale.CrashAtStep", "+callbacks.crash.step=6"]
    with pytest.raises(RuntimeError, match="simulated crash after step 6"):
        _train(tmp_path, "part", ["trainer.max_epochs=2"] + steps + crash)
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert (saved["global_step"], saved["epoch"]) == (6, 1)  # mid-epoch: 2 of the 4 batches of epoch 1 done
    state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == (1, 2)
    # in place, as a requeued job does: same output_dir, ckpt_path=last finds its last.ckpt
    resumed = _train(tmp_path, "part", ["trainer.max_epochs=2", "ckpt_path=last"] + steps)
    wf = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    wr = torch.load(last, weights_only=False)
    assert wf["global_step"] == wr["global_step"] == 8
    diff = max(float((wf["state_dict"][k] - wr["state_dict"][k]).abs().max()) for k in wf["state_dict"])
    assert diff == 0.0, diff
    for key in ("dice_mean", "hd95_mean", "folding_pct_mean"):
        assert full[key] == resumed[key], key


def test_wandb_offline_run_has_example_images_and_the_pairs_table(tmp_path, monkeypatch):
    """logger=wandb without credentials logs offline: the validation example figure and the
    per-pair test table are in the run folder (to sync later with `wandb sync`)."""
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("train", SMALL_MNI[:-3] + ["logger=wandb", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                             "trainer.max_epochs=1", "data.pairs_per_epoch=2",
                                             "model.vis_every_n_epochs=1", f"paths.output_dir={tmp_path}"])
    summary = train_entry.train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list(runs[0].rglob("media/images/val/example_*.png"))
    tables = list(runs[0].rglob("media/table/test/pairs_*.table.json"))
    assert images and len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["fixed_id", "moving_id", "method"] and len(table["data"]) == summary["n_pairs"] == 2
