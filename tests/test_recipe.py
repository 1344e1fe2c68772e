"""experiments/recipe.py: the paper's recipe (rule on constructed evidence, shift statistic, CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.recipe import (
    CLASSICAL,
    JS_THRESHOLD,
    SUPERVISED,
    UNSUPERVISED,
    Evidence,
    expected_classical_dice,
    is_shifted,
    main,
    recommend,
)
from experiments.recipe_data import intensity_histogram, js_divergence
from conftest import make_blob_pair

ROOT = Path(__file__).resolve().parents[1]
SMALL_SYNTHETIC = ["--set", "train.shape=[32,32,32]", "--set", "test.shape=[32,32,32]",
                   "--set", "train.n_train=4", "--set", "train.n_val=0",
                   "--set", "test.n_train=4", "--set", "test.n_val=0", "--set", "test.n_test=2"]


def _evidence(n_labelled=100, js=0.01, mi_train=0.9, mi_test=0.9, n_train_images=100, test_labelled=True):
    return Evidence(n_train_images=n_train_images, n_labelled=n_labelled, test_labelled=test_labelled,
                    mi_train=mi_train, mi_test=mi_test, js=js, histogram_mask="label>0")


# ------------------------------------------------------------------------------ the rule
def test_recommend_large_labelled_no_shift_is_supervised():
    rec = recommend(_evidence())
    assert (rec.method, rec.rule, rec.shifted) == (SUPERVISED, "R3", False)
    assert any("0.0100" in r for r in rec.reasons)  # reasons cite the measured numbers


def test_recommend_no_labels_is_classical():
    for e in (_evidence(n_labelled=0, mi_train=None), Evidence(test_labelled=False),
              _evidence(n_labelled=19, n_train_images=19)):
        rec = recommend(e)
        assert rec.method == CLASSICAL and rec.rule == "R1"
        assert any("finding 2" in r for r in rec.reasons)
    assert any("cannot be measured" in r for r in recommend(Evidence(test_labelled=False)).reasons)
    partly = recommend(Evidence(test_labelled=False, mi_test=0.8)).reasons  # some test images labelled
    assert any("only some sampled test images" in r for r in partly)
    assert not any("cannot be measured" in r for r in partly)


def test_recommend_labels_but_shift_is_classical():
    for e in (_evidence(js=0.2), _evidence(mi_test=0.5)):  # intensity shift; MI shift
        rec = recommend(e)
        assert (rec.method, rec.rule, rec.shifted) == (CLASSICAL, "R2", True)
        assert any("finding 4" in r for r in rec.reasons)
    assert recommend(_evidence(js=0.2), need_fast=True).method == CLASSICAL


def test_recommend_need_fast():
    unlabelled = _evidence(n_labelled=0, mi_train=None)
    assert recommend(unlabelled).method == CLASSICAL
    rec = recommend(unlabelled, need_fast=True)
    assert (rec.method, rec.rule) == (UNSUPERVISED, "R4")
    assert recommend(_evidence(n_labelled=0, mi_train=None, js=0.3), need_fast=True).method == CLASSICAL
    assert recommend(Evidence(), need_fast=True).method == CLASSICAL  # no training set at all
    assert recommend(_evidence(), need_fast=True).method == SUPERVISED  # supervised is fast too
    assert recommend(_evidence(n_labelled=5), min_labelled=5).method == SUPERVISED


def test_is_shifted_thresholds():
    assert is_shifted(_evidence(js=0.03)) is False
    assert is_shifted(_evidence(js=0.03), js_threshold=0.02) is True
    assert is_shifted(_evidence(mi_train=None, js=0.01)) is False  # MI difference not measured: JS alone
    assert is_shifted(Evidence()) is None


# ------------------------------------------------------------------------ shift statistic
def test_shift_statistic_identical_zero_inverted_large():
    img, lab, _, _ = make_blob_pair(shape=(24, 24, 24))
    a = intensity_histogram([img])
    assert js_divergence(a, a) == 0.0
    assert js_divergence(a, 3 * a) == pytest.approx(0.0, abs=1e-12)  # counts are normalised
    inverted = np.where(lab > 0, 1.0 - img, 0.0)
    masks = [lab > 0]
    js = js_divergence(intensity_histogram([img], masks), intensity_histogram([inverted], masks))
    assert js > 5 * JS_THRESHOLD
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # bits: disjoint supports
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 0])


def test_expected_classical_dice_and_range_warning():
    fit = {"n": 10, "log": {"slope": 0.1, "intercept": 0.8, "r": 0.9, "p": 0.01}, "mi_range": [0.5, 2.0]}
    dice, warning = expected_classical_dice(fit, 1.0)
    assert dice == pytest.approx(0.8) and warning is None
    dice, warning = expected_classical_dice(fit, 3.0)
    assert "outside" in warning and dice == pytest.approx(0.8 + 0.1 * np.log(3.0))
    assert expected_classical_dice({**fit, "log": {"slope": float("nan"), "intercept": 0.8}}, 1.0)[0] is None


# ------------------------------------------------------------------------------------ CLI
def test_cli_synthetic_end_to_end(tmp_path):
    fit = {"n": 5, "linear": {}, "log": {"slope": 0.1, "intercept": 0.7, "r": 0.9, "p": 0.01},
           "mi_range": [0.1, 1.0], "options": {"bins": 64, "mask": "foreground"}}
    (tmp_path / "mi_fit.json").write_text(json.dumps(fit))
    r = subprocess.run([sys.executable, "-m", "experiments.recipe", "--train", "synthetic", "--test", "synthetic",
                        *SMALL_SYNTHETIC, "--curve", str(tmp_path / "mi_fit.json"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "recommendation: classical" in r.stdout  # 4 labelled training images < 20
    assert "expected classical Dice" in r.stdout and "outside the curve's MI range" in r.stdout
    report = json.loads((tmp_path / "o" / "recipe.json").read_text())
    ev = report["evidence"]
    assert (ev["n_train_images"], ev["n_labelled"], ev["n_test_images"]) == (4, 4, 2)
    assert ev["mi_train"] > 1.0 and ev["mi_test"] > 1.0 and ev["histogram_mask"] == "label>0"
    assert report["recommendation"] == CLASSICAL and report["expected_classical_dice"] is not None


def test_cli_missing_csv_exits_1_naming_path(tmp_path):
    missing = tmp_path / "no_such_pairs.csv"
    r = subprocess.run([sys.executable, "-m", "experiments.recipe", "--train", "synthetic", "--test", str(missing)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert str(missing) in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("argv, needle", [
    (["--train", "no_such_set", "--test", "mni"], "no_such_set"),
    (["--train", "mni", "--test", "mni", "--set", "test.gamma"], "test.gamma"),
    (["--train", "mni", "--test", "mni", "--set", "other.gamma=1"], "other.gamma=1"),
    (["--train", "mni", "--test", "mni", "--curve", "/no/such/mi_fit.json"], "/no/such/mi_fit.json"),
])
def test_cli_bad_input_one_line_exit_1(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


def test_cli_pairs_csv_sides_and_no_training_set(pairs_csv, tmp_path, capsys):
    d = pairs_csv.parent
    unlabelled = d / "unlabelled.csv"
    unlabelled.write_text("fixed,moving\nf0.nii.gz,m0.nii.gz\n")
    report = main(["--train", str(pairs_csv), "--test", str(unlabelled)])
    ev = report["evidence"]
    assert (ev["n_train_images"], ev["n_labelled"], ev["test_labelled"]) == (4, 4, False)
    assert ev["mi_test"] is None and ev["histogram_mask"] == "intensity>0"
    assert report["recommendation"] == CLASSICAL
    assert any("also in the training set" in w for w in report["warnings"])  # f0/m0 on both sides
    report = main(["--train", "none", "--test", str(pairs_csv), "--need-fast"])
    assert report["recommendation"] == CLASSICAL and report["evidence"]["js"] is None
    assert report["test"]["n_labelled"] == 4 and report["test"]["mi_mean"] > 0.5
    assert "recommendation: classical" in capsys.readouterr().out


def test_the_overlap_warning_covers_the_whole_sets_not_only_the_samples():
    """--set train.n_train=8 while the test side keeps n_train=4 (as docs/paper.md's mni example): the test subjects
    (4, 5) are training subjects too, though the 2 sampled training images (0, 1) are not."""
    report = main(["--train", "synthetic", "--test", "synthetic", "--max-images", "2",
                   "--set", "train.shape=[32,32,32]", "--set", "test.shape=[32,32,32]", "--set", "train.n_train=8",
                   "--set", "train.n_val=0", "--set", "test.n_train=4", "--set", "test.n_val=0",
                   "--set", "test.n_test=2"])
    assert any(w.startswith("2 test images also in the training set: 4, 5") for w in report["warnings"]), \
        report["warnings"]


@pytest.mark.slow
def test_mni_calibration_same_is_no_shift_bias_gamma_are_shift():
    """The calibration of the default thresholds (module docstring) on the MNI subjects."""
    same = main(["--train", "mni", "--test", "mni"])
    assert same["shifted"] is False
    for change in ("test.bias=0.5", "test.gamma=1.0"):
        assert main(["--train", "mni", "--test", "mni", "--set", change])["shifted"] is True

