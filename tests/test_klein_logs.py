"""Klein et al. 2009's overlap measures (metrics.klein_overlaps, the results files) and the logs a
person follows: a line per validation epoch, a line per registered pair, per-level lines of a
verbose classical run, no library advertising or known deprecation noise, where outputs went."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from fractions import Fraction as Fr
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from metrics import KLEIN_MEASURES, LABEL_METRICS, TOTAL_METRICS, dice, evaluate_pair, klein_overlaps  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- hand-made label maps
# The first 20 voxels of a 6x6x6 grid (flattened; the others are background 0 in every map).
# Fixed (target T): label 1 at 0-3, 2 at 4-6, 3 at 7-8.
# Warped moving (source S): label 1 at 1-3 (on T_1) and 10-11 (outside), 2 at 6 (on T_2) and 12,
# label 3 nowhere (erased by the warp), label 4 at 0, 4, 5, 7, 8 (not in the fixed map: not scored).
# The un-warped moving map holds labels 1-4, so labels 1, 2, 3 are scored and 4 is skipped.
FIXED = [1, 1, 1, 1, 2, 2, 2, 3, 3] + [0] * 11
MOVED = [4, 1, 1, 1, 4, 4, 2, 4, 4, 0, 1, 1, 2] + [0] * 7
MOVING = [1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0, 0, 0, 0, 0, 4, 4, 0, 0, 0]


SHAPE = (6, 6, 6)


def _map(values):
    return torch.tensor(values + [0] * (216 - len(values)), dtype=torch.int64).reshape(SHAPE)


def _measures(inter, target, source, fp_if_empty=Fr(0)):
    """Klein 2009's definitions, as fractions: |S∩T|, |T|, |S|."""
    union = target + source - inter
    return {
        "target_overlap": Fr(inter, target),
        "mean_overlap": Fr(2 * inter, target + source),
        "union_overlap": Fr(inter, union),
        "volume_similarity": Fr(2 * (source - target), source + target),
        "fn_error": Fr(target - inter, target),
        "fp_error": Fr(source - inter, source) if source else fp_if_empty,
    }


# per label (|S∩T|, |T|, |S|), counted by hand from the maps above
COUNTS = {1: (3, 4, 5), 2: (1, 3, 2), 3: (0, 2, 0)}
HAND = {
    1: {"target_overlap": Fr(3, 4), "mean_overlap": Fr(2, 3), "union_overlap": Fr(1, 2), "volume_similarity": Fr(2, 9),
        "fn_error": Fr(1, 4), "fp_error": Fr(2, 5)},
    2: {"target_overlap": Fr(1, 3), "mean_overlap": Fr(2, 5), "union_overlap": Fr(1, 4),
        "volume_similarity": Fr(-2, 5), "fn_error": Fr(2, 3), "fp_error": Fr(1, 2)},
    3: {"target_overlap": Fr(0), "mean_overlap": Fr(0), "union_overlap": Fr(0), "volume_similarity": Fr(-2),
        "fn_error": Fr(1), "fp_error": Fr(0)},  # erased: FP is 0/0, defined as 0
}
# pooled: sums over labels 1-3, |S∩T| = 4, |T| = 9, |S| = 7
HAND_TOTAL = {"target_overlap": Fr(4, 9), "mean_overlap": Fr(1, 2), "union_overlap": Fr(1, 3),
              "volume_similarity": Fr(-1, 4), "fn_error": Fr(5, 9), "fp_error": Fr(3, 7)}


def _as_float(d):
    return {k: float(v) for k, v in d.items()}


def test_hand_counts_are_what_the_maps_hold():
    f, m = _map(FIXED), _map(MOVED)
    for lab, (inter, target, source) in COUNTS.items():
        assert (int(((f == lab) & (m == lab)).sum()), int((f == lab).sum()), int((m == lab).sum())) == (inter, target,
                                                                                                          source)
        assert _measures(inter, target, source) == HAND[lab]


def test_klein_measures_per_label_and_pooled_by_hand():
    out = klein_overlaps(_map(FIXED), _map(MOVING), _map(MOVED))
    assert out.skipped == (4,) and out.erased == (3,)
    assert set(out.per_label) == {1, 2, 3}
    for lab in (1, 2, 3):
        assert out.per_label[lab] == _as_float(HAND[lab]), lab
        assert list(out.per_label[lab]) == list(KLEIN_MEASURES)
    assert out.total == _as_float(HAND_TOTAL)
    # the pooled value is not the mean over labels (volume-weighted)
    assert out.total["target_overlap"] != pytest.approx(float(sum(HAND[k]["target_overlap"] for k in HAND) / 3))
    # mean overlap per label is Dice, on the same labels
    d = dice(_map(FIXED), _map(MOVING), _map(MOVED))
    assert {k: v["mean_overlap"] for k, v in out.per_label.items()} == d.per_label


def test_klein_measures_within_a_label_subset_and_all_erased():
    sub = klein_overlaps(_map(FIXED), _map(MOVING), _map(MOVED), labels=[1, 2])
    assert set(sub.per_label) == {1, 2} and sub.erased == ()
    assert sub.total == _as_float(_measures(4, 7, 7))  # labels 1 and 2 only: |S| = |T| = 7
    assert sub.total["volume_similarity"] == 0.0
    gone = klein_overlaps(_map(FIXED), _map(MOVING), torch.zeros(SHAPE, dtype=torch.int64))
    assert gone.erased == (1, 2, 3)
    assert gone.total == {"target_overlap": 0.0, "mean_overlap": 0.0, "union_overlap": 0.0,
                          "volume_similarity": -2.0, "fn_error": 1.0, "fp_error": 0.0}


def test_evaluate_pair_returns_them_with_dice():
    out = evaluate_pair(_map(FIXED), _map(MOVING), _map(MOVED), None, 1.0, hd95_enabled=False)
    assert {m: out[f"total_{m}"] for m in KLEIN_MEASURES} == _as_float(HAND_TOTAL)
    assert out["dice"] == pytest.approx(float((HAND[1]["mean_overlap"] + HAND[2]["mean_overlap"]) / 3))
    for lab in (1, 2, 3):
        want = _as_float(HAND[lab])
        assert out["label_metrics"][lab] == {"dice": want["mean_overlap"], **{m: want[m] for m in LABEL_METRICS[1:]}}
    assert out["erased_labels"] == (3,)
    free = evaluate_pair(None, None, None, torch.zeros(1, 3, *SHAPE), None)
    assert all(free[name] != free[name] for name in TOTAL_METRICS) and free["label_metrics"] == {}  # NaN


def _test_step_into_files(tmp_path, monkeypatch):
    """The hand-made pair through RegistrationModule.test_step (the warped label map replaced by
    MOVED), the results writer and its files."""
    import models.evaluation
    from app.parts import ResultsWriter, method_signature
    from models import IdentityRegistration

    monkeypatch.setattr(models.evaluation, "warp_label", lambda label, u, interp="nearest": _map(MOVED)[None, None])
    batch = {"fixed": torch.rand(1, 1, *SHAPE), "moving": torch.rand(1, 1, *SHAPE),
             "fixed_label": _map(FIXED)[None, None], "moving_label": _map(MOVING)[None, None],
             "spacing": torch.ones(1, 3), "fixed_id": ["f"], "moving_id": ["m"], "pair_signature": ["sig"]}
    model = IdentityRegistration()
    (result,) = model.test_step(batch, 0)
    writer = ResultsWriter(tmp_path, "identity", method_hash=method_signature(model))
    writer.add(result)
    return writer.finalize([("f", "m")])


def test_labels_csv_pairs_csv_and_summary_carry_them(tmp_path, monkeypatch):
    from app.results import LABEL_COLUMNS, PAIR_COLUMNS, read_results

    summary = _test_step_into_files(tmp_path, monkeypatch)
    with open(tmp_path / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == LABEL_COLUMNS
    assert [int(r["label"]) for r in rows] == [1, 2, 3] and [r["erased"] for r in rows] == ["0", "0", "1"]
    for r in rows:
        want = _as_float(HAND[int(r["label"])])
        assert float(r["dice"]) == want["mean_overlap"]
        for m in LABEL_METRICS[1:]:
            assert float(r[m]) == want[m], (r["label"], m)
    with open(tmp_path / "pairs.csv", newline="") as fh:
        (pair,) = list(csv.DictReader(fh))
    assert list(pair) == PAIR_COLUMNS
    for m, value in _as_float(HAND_TOTAL).items():
        assert float(pair[f"total_{m}"]) == value
        assert summary[f"total_{m}_mean"] == value
    assert json.loads((tmp_path / "summary.json").read_text())["total_union_overlap_mean"] == 1 / 3
    assert read_results(tmp_path).rows[("f", "m")]["total_fp_error"] == 3 / 7


def test_an_older_results_folder_is_named_with_its_missing_columns(tmp_path):
    from app.parts import METRICS_VERSION
    from app.results import PAIR_COLUMNS, read_results
    from data.io import DataError
    from experiments.comparison import load_results

    old = [c for c in PAIR_COLUMNS if not c.startswith("total_")]
    (tmp_path / "pairs.csv").write_text(",".join(old) + "\nf,m,x," + ",".join(["0.5"] * (len(old) - 3)) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"metrics_version": 2}))
    for reader in (read_results, load_results):
        with pytest.raises(DataError) as err:
            reader(tmp_path)
        text = str(err.value)
        assert "missing column(s) " + ",".join(TOTAL_METRICS) in text
        assert f"metrics_version 2; this code writes metrics_version {METRICS_VERSION}" in text


def test_writer_refuses_labels_without_every_metric(tmp_path):
    from app.parts import ResultsWriter

    row = {"fixed_id": "f", "moving_id": "m", "dice": 0.5, "hd95": 1.0, "sdlogj": 0.1, "sdlogj_l2r": 0.1,
           "folding_pct": 0.0, "n_erased": 0, "seconds": 0.1, "dice_identity": 0.4, "mae_identity": 0.1, **{m: 0.5 for m in TOTAL_METRICS}}
    with pytest.raises(ValueError, match=r"f <- m: label 1 lacks metric\(s\) \['dice', 'target_overlap'"):
        ResultsWriter(tmp_path, "m", method_hash="h").add({"pair": row, "labels": {1: 0.5}, "signature": "s"})


def test_comparison_knows_which_way_each_klein_measure_is_better():
    from experiments.comparison import METRICS

    assert all(METRICS[f"total_{m}"] for m in ("target_overlap", "mean_overlap", "union_overlap"))
    assert not METRICS["total_fn_error"] and not METRICS["total_fp_error"]
    assert "total_volume_similarity" not in METRICS  # signed, best at 0: neither way is better


# --------------------------------------------------------------------------- classical per-level lines
def _blobs(shape=(16, 16, 16)):
    from conftest import make_blob_pair

    fi, _, mi, _ = make_blob_pair(shape=shape, shift=1, seed=0)
    return torch.as_tensor(fi)[None, None], torch.as_tensor(mi)[None, None]


def test_register_reports_one_line_per_level_and_stage():
    from classical import register

    fixed, moving = _blobs()
    lines: list[str] = []
    res = register(fixed, moving, {"algorithm": "greedy", "scales": [2, 1], "iterations": [3, 2], "tolerance": 0,
                                   "affine": {"scales": [2], "iterations": [4], "tolerance": 0}}, report=lines.append)
    assert len(lines) == 3
    assert lines[0].startswith("affine level 1/1 (scale 2, grid 8x8x8): 4/4 iterations, loss ")
    assert lines[1].startswith("greedy level 1/2 (scale 2, grid 8x8x8): 3/3 iterations, loss ")
    assert lines[2].startswith("greedy level 2/2 (scale 1, grid 16x16x16): 2/2 iterations, loss ")
    assert f"loss {res.losses['greedy'][1][-1]:.6g}, " in lines[2] and lines[2].endswith(" s")
    stopped: list[str] = []  # a level that converges says so
    register(fixed, moving, {"algorithm": "syn", "scales": [1], "iterations": [50], "tolerance": 1.0, "patience": 1},
             report=stopped.append)
    assert stopped[0].startswith("syn level 1/1 (scale 1, grid 16x16x16): 2/50 iterations (converged), loss ")


def test_verbose_classical_module_prints_the_pair_and_changes_no_result(capsys):
    from app.parts import method_signature
    from classical import InstanceOptimisationModule

    fixed, moving = _blobs()
    batch = {"fixed": fixed, "moving": moving, "fixed_id": ["a"], "moving_id": ["b"]}
    settings = {"scales": [2, 1], "iterations": [2, 2]}
    quiet = InstanceOptimisationModule(**settings)
    loud = InstanceOptimisationModule(verbose=True, **settings)
    u_quiet = quiet.register(batch)
    assert capsys.readouterr().out == ""
    u_loud = loud.register(batch)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == ["[greedy] a <- b: greedy level 1/2", "[greedy] a <- b: greedy level 2/2"]
    assert torch.equal(u_quiet, u_loud)
    assert method_signature(quiet) == method_signature(loud)  # a rerun with verbose reuses the pairs
    with pytest.raises(ValueError, match="model.verbose must be a bool"):
        InstanceOptimisationModule(verbose="yes")


# --------------------------------------------------------------------------- epoch and pair lines
def _trainer(**metrics):
    from types import SimpleNamespace

    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, global_step=40,
                           current_epoch=3, sanity_checking=False, is_global_zero=True, progress_bar_callback=None)


def test_epoch_line_says_what_the_epoch_has(capsys):
    from app.progress import EpochLog

    log = EpochLog()
    trainer = _trainer(**{"val/dice": 0.71234, "val/dice_best": 0.75, "val/loss": -0.3127, "val/hd95": float("nan")})
    log.on_train_epoch_start(trainer, None)
    for loss in (1.0, 2.0):
        log.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
    log.on_validation_end(trainer, None)
    log.on_train_epoch_end(trainer, None)  # validated: no second line
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("epoch 3: val/dice 0.7123 (best 0.75), val/loss -0.3127, train/loss 1.5, step 40, ")
    assert "hd95" not in line  # not a number this epoch: left out
    log.on_train_epoch_start(trainer, None)  # an epoch without validation: its line at its end
    log.on_train_batch_end(trainer, None, torch.tensor(0.5), None, 0)
    log.on_train_epoch_end(trainer, None)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("epoch 3: train/loss 0.5, step 40, ")
    trainer.sanity_checking = True  # the sanity check is not an epoch
    log.on_validation_end(trainer, None)
    assert capsys.readouterr().out == ""


def test_pair_lines_count_pairs_and_estimate_the_rest():
    from app.progress import PairProgress, clock

    progress = PairProgress("greedy", n_batches=3, n_pairs=3)
    (first,) = progress.batch_done([{"fixed_id": "a", "moving_id": "b", "dice": 0.71234, "dice_identity": 0.5,
                                     "seconds": 1.234}])
    assert first.startswith("[greedy] pair 1/3 a <- b: Dice 0.7123 (before 0.5000), 1.23 s, ETA ")
    progress.batch_done([{"fixed_id": "c", "moving_id": "d", "dice": 0.7, "dice_identity": 0.5, "seconds": 1}])
    (last,) = progress.batch_done([{"fixed_id": "e", "moving_id": "f", "dice": float("nan"),
                                    "dice_identity": float("nan"), "seconds": 2.0}])
    assert last == "[greedy] pair 3/3 e <- f: 2.00 s, ETA 0:00:00"  # no labels: no Dice
    assert clock(3725.4) == "1:02:05"
    assert PairProgress("m", n_batches=2, rank=1).batch_done([{"fixed_id": "a", "moving_id": "b"}]) == [
        "[m rank 1] pair 1 a <- b: ETA 0:00:00"]  # DDP: each process its own pairs; pair count unknown


# --------------------------------------------------------------------------- filters
def test_quiet_third_party_silences_only_the_pytree_deprecation():
    from lightning.pytorch.utilities import _pytree

    from app.entry import quiet_third_party

    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        _pytree._tree_flatten({"a": [1, 2]})
    if not any("LeafSpec" in str(w.message) for w in before):
        pytest.skip("this torch does not deprecate LeafSpec")
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        quiet_third_party()
        _pytree._tree_flatten({"a": [1, 2]})
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)  # from elsewhere: kept
    assert [str(w.message) for w in after] == ["`isinstance(treespec, LeafSpec)` is deprecated"]


def test_lightning_tips_are_dropped_and_other_info_kept(caplog):
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from app.entry import quiet_third_party

    quiet_third_party()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging ... try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


# --------------------------------------------------------------------------- entry points, redirected
NOISE = ("💡 Tip", "litlogger", "litmodels", "LeafSpec", "anonymous setting")


def _run(script: str, args: list[str], log: Path, env_extra: dict | None = None) -> str:
    """``python <script> args > log 2>&1`` through a shell (what nohup / SLURM do); returns the log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env_extra or {})}
    quoted = " ".join(f"'{a}'" for a in args)
    r = subprocess.run(f"'{sys.executable}' {script} {quoted} > '{log}' 2>&1", shell=True, cwd=ROOT, env=env,
                       timeout=600)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    return text


def test_redirected_train_log_has_a_line_per_epoch_and_pair_no_noise_and_says_where_outputs_went(tmp_path):
    out = tmp_path / "run"
    text = _run("train.py", ["data=mni", "data.shape=[32,32,32]", "data.n_train=2", "data.n_val=2", "data.n_test=3",
                             "data.pairs_per_epoch=2", "trainer.max_epochs=2", "logger=wandb", "save_outputs=true",
                             "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", f"paths.output_dir={out}",
                             f"hydra.run.dir={tmp_path / 'hydra'}"], tmp_path / "train.log")
    lines = text.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0", "epoch 1"], text
    assert all(": val/dice " in line and "(best " in line and "train/loss " in line for line in epochs), epochs
    pairs = [line for line in lines if line.startswith("[voxelmorph] pair ")]
    assert [line.split(" ")[2] for line in pairs] == ["1/2", "2/2"], text
    assert all(": Dice " in line and " s, ETA " in line for line in pairs), pairs
    for noise in NOISE:  # Lightning's tips, torch's LeafSpec deprecation, W&B's anonymous warning
        assert noise not in text, noise
    block = text[text.index("outputs:"):]
    assert f"results: {out / 'test'} (pairs.csv, labels.csv, summary.json)" in block
    assert f"moved volumes: {out / 'test' / 'moved'} (8 files" in block
    assert f"checkpoints: {out / 'checkpoints'}: " in block and "last.ckpt" in block
    assert f"wandb: {out / 'wandb'}" in block and "wandb sync" in block
    assert f"config: {tmp_path / 'hydra' / '.hydra'}" in block


def test_eval_prints_a_line_per_pair_with_eta_and_where_outputs_went(tmp_path, capsys):
    import eval as eval_entry
    from conftest import compose

    out = tmp_path / "eval"
    cfg = compose("eval", ["model=identity", "data=mni", "data.shape=[32,32,32]", "data.n_test=4", "save_outputs=true",
                           "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"paths.output_dir={out}"])
    eval_entry.evaluate(cfg)
    text = capsys.readouterr().out
    pairs = [line for line in text.splitlines() if line.startswith("[identity] pair ")]
    assert len(pairs) == 3, text
    for k, line in enumerate(pairs, start=1):
        assert line.startswith(f"[identity] pair {k}/3 mni_")
        assert ": Dice " in line and "(before " in line and " s, ETA " in line, line
    assert pairs[-1].endswith("ETA 0:00:00")
    block = text[text.index("outputs:"):]
    assert f"results: {out} (pairs.csv, labels.csv, summary.json)" in block
    assert f"moved volumes: {out / 'moved'} (12 files" in block
