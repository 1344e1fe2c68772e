"""experiments/mi_pool.py: one Dice-vs-MI fit over the pairs of several mi_analysis folders (Fig. 1)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from data.io import DataError
from experiments.mi_analysis import fit_dice_vs_mi, write_outputs
from experiments.mi_pool import pool


def _analysis(folder, data, mi, dice, method="ants_syn", bins=64, ids=None):
    """An mi_analysis output folder, written by mi_analysis's own writer (pair ids ``<ids>_<k>``,
    ``ids`` defaulting to ``data``)."""
    ids = ids or data
    rows = [{"fixed_id": f"{ids}_{k}", "moving_id": f"{ids}_{k + 1}", "method": method, "dice": d,
             "dice_identity": 0.5, "mi_fixed": m, "mi_moving": m, "mi": m, "h_labels": 2.0}
            for k, (m, d) in enumerate(zip(mi, dice))]
    fit = fit_dice_vs_mi(dice, mi)
    write_outputs(folder, rows, fit, {"bins": bins, "mask": "foreground", "pair": "mean", "results_dir": "x",
                                      "data": data, "method": method})
    return folder


def test_the_pooled_fit_is_the_fit_over_every_dataset_s_pairs(tmp_path):
    """Within each set MI barely varies (no correlation to see); across the sets it does: the pooled
    r is the fit over the concatenated pairs, and every pair keeps its dataset."""
    a = _analysis(tmp_path / "a", "oasis", [1.0, 1.05, 0.98], [0.80, 0.79, 0.81])
    b = _analysis(tmp_path / "b", "lpba40", [0.4, 0.42, 0.38], [0.70, 0.71, 0.69])
    c = _analysis(tmp_path / "c", "ibsr18", [0.1, 0.12, 0.09], [0.55, 0.57, 0.54])
    fit, rows, options = pool([a, b, c])
    mi = [1.0, 1.05, 0.98, 0.4, 0.42, 0.38, 0.1, 0.12, 0.09]
    dice = [0.80, 0.79, 0.81, 0.70, 0.71, 0.69, 0.55, 0.57, 0.54]
    expected = fit_dice_vs_mi(dice, mi)
    assert fit["n"] == 9 and fit["log"]["r"] == pytest.approx(expected["log"]["r"]) and fit["log"]["r"] > 0.95
    assert options["pairs_per_dataset"] == {"oasis": 3, "lpba40": 3, "ibsr18": 3} and options["method"] == "ants_syn"
    # 9 pairs of 12 subjects (4 per set, chained): not independent, and the fit says so
    assert fit["n_subjects"] == 12 and "9 pairs share 12 subjects" in fit["note"]
    assert [r["dataset"] for r in rows] == ["oasis"] * 3 + ["lpba40"] * 3 + ["ibsr18"] * 3
    out = tmp_path / "pooled"
    proc = subprocess.run([sys.executable, "-m", "experiments.mi_pool", str(a), str(b), str(c), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((out / "mi_fit.json").read_text())
    assert written["log"]["r"] == pytest.approx(expected["log"]["r"]) and written["options"]["folders"][0] == str(a)
    table = list(csv.DictReader(open(out / "mi_pairs.csv")))
    assert len(table) == 9 and {r["dataset"] for r in table} == {"oasis", "lpba40", "ibsr18"}
    assert (out / "mi_scatter.png").stat().st_size > 0
    np.testing.assert_allclose([float(r["mi"]) for r in table], mi)


def test_folders_that_cannot_share_one_fit_are_refused(tmp_path):
    a = _analysis(tmp_path / "a", "oasis", [1.0, 1.1, 0.9], [0.8, 0.82, 0.78])
    cases = [
        (_analysis(tmp_path / "bins", "lpba40", [0.4, 0.5, 0.3], [0.7, 0.72, 0.68], bins=32), "bins"),
        (_analysis(tmp_path / "method", "lpba40", [0.4, 0.5, 0.3], [0.7, 0.72, 0.68], method="greedy"), "method"),
        (_analysis(tmp_path / "again", "oasis", [0.4, 0.5, 0.3], [0.7, 0.72, 0.68]), "already pooled"),
        # the same OASIS pairs under another label protocol: another description, the same pairs
        (_analysis(tmp_path / "seg4", "oasis, labels=seg4", [0.4, 0.5, 0.3], [0.7, 0.72, 0.68], ids="oasis"),
         "pair oasis_0 <- oasis_1 is already pooled from"),
        (a, "given twice"),
    ]
    for other, words in cases:
        with pytest.raises(DataError) as exc:
            pool([a, other])
        assert str(other) in str(exc.value) and words in str(exc.value), str(exc.value)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mi_fit.json").write_text(json.dumps({"n": 3, "options": {"bins": 64, "mask": "foreground",
                                                                                  "pair": "mean"}}))
    with pytest.raises(DataError, match="older mi_analysis"):
        pool([a, tmp_path / "old"])
    proc = subprocess.run([sys.executable, "-m", "experiments.mi_pool", str(a), str(tmp_path / "none"), "--out", str(a)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "--out" in proc.stderr, proc.stderr
