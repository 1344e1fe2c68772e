"""Intensity–label mutual information, the synthetic MI dial, and the MI analysis / sweep scripts."""

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

from data.synthetic import SyntheticDataModule, SyntheticSubjects, class_of_labels
from experiments.mi_analysis import fit_dice_vs_mi, image_information, join_pairs, predict_dice
from metrics.information import intensity_label_information, pair_information

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the estimator
def _entropy_bits(labels: torch.Tensor) -> float:
    p = torch.bincount(labels.flatten()).double()
    p = p[p > 0] / p.sum()
    return float(-(p * torch.log2(p)).sum())


def test_mi_of_a_label_map_with_itself_is_its_entropy():
    labels = torch.randint(0, 6, (20, 24, 16))
    info = intensity_label_information(labels.float(), labels, mask="all")
    assert info.mi == pytest.approx(_entropy_bits(labels), abs=1e-9)
    assert info.h_labels_given_intensity == pytest.approx(0.0, abs=1e-9)
    assert info.normalized == pytest.approx(1.0)
    fg = intensity_label_information(labels.float(), labels)  # foreground: labels 1..5 only
    assert fg.mi == pytest.approx(_entropy_bits(labels[labels > 0]), abs=1e-9)
    assert fg.n_voxels == int((labels > 0).sum())


def test_mi_of_independent_intensity_and_labels_is_about_zero():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 5, (64, 64, 32), generator=g)
    info = intensity_label_information(torch.rand(labels.shape, generator=g), labels, bins=32)
    bias = 31 * 3 / (2 * labels.numel() * math.log(2))  # Miller-Madow bias of the plug-in estimate
    assert 0.0 <= info.mi < 3 * bias
    assert info.h_labels == pytest.approx(2.0, abs=1e-3)


def test_mi_in_nats_and_any_label_values():
    labels = torch.tensor([3, 3, 7, 7, 9, 9]).reshape(1, 1, 6)
    info = intensity_label_information(labels.float(), labels, base=math.e)
    assert info.mi == pytest.approx(math.log(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bins": 1}, "bins"),
        ({"mask": "brain"}, "mask"),
        ({"base": 1}, "base"),
    ],
)
def test_mi_bad_arguments(kwargs, match):
    labels = torch.randint(0, 3, (8, 8, 8))
    with pytest.raises(ValueError, match=match):
        intensity_label_information(labels.float(), labels, **kwargs)


def test_mi_bad_inputs():
    labels = torch.randint(0, 3, (8, 8, 8))
    with pytest.raises(ValueError, match="same number of voxels"):
        intensity_label_information(torch.rand(8, 8, 7), labels)
    with pytest.raises(ValueError, match="integer"):
        intensity_label_information(torch.rand(8, 8, 8), labels.float())
    with pytest.raises(ValueError, match="no voxel"):
        intensity_label_information(torch.rand(8, 8, 8), torch.zeros(8, 8, 8, dtype=torch.long))
    image = torch.rand(8, 8, 8)
    image[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        intensity_label_information(image, torch.ones(8, 8, 8, dtype=torch.long))
    assert pair_information(1.0, 3.0) == 2.0 and pair_information(1.0, 3.0, "moving") == 3.0
    with pytest.raises(ValueError, match="reduction"):
        pair_information(1.0, 3.0, "max")


# ------------------------------------------------------------------ the synthetic dial
def test_class_assignment_is_nested_across_levels():
    fine, coarse = class_of_labels(16, 8, seed=3), class_of_labels(16, 4, seed=3)
    assert fine[0] == -1 and sorted(set(fine[1:])) == list(range(8))
    np.testing.assert_array_equal(coarse[1:], fine[1:] // 2)  # 4 classes = unions of the 8
    assert len(set(class_of_labels(16, 16, 3)[1:])) == 16


def test_synthetic_subjects_are_deterministic_and_have_every_label():
    a = SyntheticSubjects(shape=(32, 32, 32), n_labels=8, seed=1, cache=False)
    b = SyntheticSubjects(shape=(32, 32, 32), n_labels=8, seed=1)
    s, t = a[2], b[2]
    assert torch.equal(s["image"], t["image"]) and torch.equal(s["label"], t["label"])
    assert s["image"].shape == (1, 32, 32, 32) and s["image"].dtype == torch.float32
    assert s["label"].dtype == torch.int64 and s["id"] == "syn_0002"
    assert set(np.unique(a.template)) == set(range(9))
    assert float(s["image"].min()) >= 0 and float(s["image"].max()) <= 1
    assert float(s["image"][s["label"] == 0].abs().max()) == 0.0  # background exactly 0
    assert not torch.equal(a[3]["label"], s["label"])  # subjects differ by their deformation
    with pytest.raises(ValueError, match="intensity_classes"):
        SyntheticSubjects(n_labels=4, intensity_classes=5)


def test_dial_moves_mi_monotonically():
    kw = dict(shape=(40, 40, 40), n_labels=12, seed=0, cache=False)
    by_classes = [intensity_label_information(**_pair(SyntheticSubjects(intensity_classes=c, **kw)[0])).mi
                  for c in (1, 2, 4, 12)]
    assert all(x < y for x, y in zip(by_classes, by_classes[1:])), by_classes
    assert by_classes[0] < 0.1 and by_classes[-1] > 1.5
    by_noise = [intensity_label_information(**_pair(SyntheticSubjects(intensity_classes=2, class_noise=n, **kw)[0])).mi
                for n in (0.25, 1.0, 4.0)]
    assert all(x > y for x, y in zip(by_noise, by_noise[1:])), by_noise


def _pair(subject):
    return {"image": subject["image"], "labels": subject["label"]}


def test_synthetic_datamodule_contract():
    dm = SyntheticDataModule(n_train=2, n_val=0, n_test=3, shape=(16, 16, 16), n_labels=4)
    assert dm.num_labels == 5 and dm.shape == (16, 16, 16) and dm.spacing == (1.0, 1.0, 1.0)
    batch = next(iter(dm.test_dataloader()))
    assert batch["fixed"].shape == (1, 1, 16, 16, 16) and batch["fixed_label"].dtype == torch.int64
    assert batch["fixed_id"] == ["syn_0002"] and batch["moving_id"] == ["syn_0003"]
    info = image_information(dm.test_set)
    assert set(info) == {("syn_0002", "syn_0003"), ("syn_0003", "syn_0004")}
    assert info[("syn_0002", "syn_0003")].moving == info[("syn_0003", "syn_0004")].fixed  # one image, one value


# ------------------------------------------------------------------ analysis functions
def test_fit_recovers_a_known_line_and_predicts():
    mi = np.linspace(0.1, 2.0, 12)
    dice = 0.6 + 0.1 * np.log(mi)
    fit = fit_dice_vs_mi(dice, mi)
    assert fit["n"] == 12 and fit["log"]["r"] == pytest.approx(1.0)
    assert fit["log"]["slope"] == pytest.approx(0.1) and fit["log"]["intercept"] == pytest.approx(0.6)
    assert 0.8 < fit["linear"]["r"] < 1.0
    assert predict_dice(fit, 1.0) == pytest.approx(0.6)
    assert math.isnan(fit_dice_vs_mi([0.5, 0.6], [1.0, 2.0])["log"]["r"])  # too few pairs
    from scipy import stats

    assert fit["linear"]["p"] == pytest.approx(stats.pearsonr(mi, dice)[1])


def test_join_names_a_missing_image():
    from data.io import DataError
    from metrics.information import LabelInformation

    from experiments.mi_analysis import PairInformation

    one = LabelInformation(1.0, 2.0, 1.0, 10)
    info = {("a", "c"): PairInformation(one, one, 0.6, 0.125)}
    with pytest.raises(DataError, match=r"pair \('a', 'b'\), which is not in the dataset"):
        join_pairs([{"fixed_id": "a", "moving_id": "b", "dice": 0.5}], info)
    # the same ids, other data: Dice before registration tells them apart
    with pytest.raises(DataError, match=r"pair a <- c: the results give Dice before registration \(dice_identity\) "
                                        r"0.55, this data 0.6"):
        join_pairs([{"fixed_id": "a", "moving_id": "c", "dice": 0.8, "dice_identity": 0.55}], info)
    # the same label maps, other images (another contrast): their difference before registration tells
    with pytest.raises(DataError, match=r"pair a <- c: the results give mean \|fixed - moving\| before registration "
                                        r"\(mae_identity\) 0.25, this data 0.125"):
        join_pairs([{"fixed_id": "a", "moving_id": "c", "dice": 0.8, "dice_identity": 0.6, "mae_identity": 0.25}], info)
    assert join_pairs([{"fixed_id": "a", "moving_id": "c", "dice": 0.8, "dice_identity": 0.6,
                        "mae_identity": 0.125}], info)[0]["mi"] == 1.0
    # a check that cannot be made is refused, not skipped (noise or another contrast keeps dice_identity)
    with pytest.raises(DataError, match=r"pair a <- c: the results give no mean \|fixed - moving\|"):
        join_pairs([{"fixed_id": "a", "moving_id": "c", "dice": 0.8, "dice_identity": 0.6}], info)


def test_mi_analysis_reads_only_folders_with_both_data_checks(tmp_path):
    """A pairs.csv without both data checks (dice_identity, mae_identity), or an older eval.py folder
    (metrics_version 3), cannot show it was computed on this data: refused, named."""
    import json

    from data.io import DataError

    from experiments.mi_analysis import read_pairs_csv

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "pairs.csv").write_text("fixed_id,moving_id,dice,dice_identity\na,b,0.8,0.6\n")
    with pytest.raises(DataError, match="missing column.*mae_identity"):
        read_pairs_csv(folder)
    (folder / "pairs.csv").write_text("fixed_id,moving_id,dice,dice_identity,mae_identity\na,b,0.8,0.6,0.1\n")
    assert read_pairs_csv(folder)[0]["dice"] == 0.8  # hand-made, with both checks: read (and checked)
    (folder / "summary.json").write_text(json.dumps({"metrics_version": 3, "method": "greedy"}))
    with pytest.raises(DataError, match="metrics_version 3 .* recompute it with eval.py"):
        read_pairs_csv(folder)
    (folder / "summary.json").write_text(json.dumps({"metrics_version": 4, "method": "greedy"}))
    assert read_pairs_csv(folder)[0]["method"] == "greedy"


def test_each_pair_gets_the_mi_of_its_own_moving_image(tmp_path):
    """LPBA40: the moving subject is resampled into each target's space (l2_to_l1, l2_to_l3 are
    two files, one id): each pair's MI is that of its own moving file, not the first one read."""
    from data import KleinDataModule
    from metrics.information import intensity_label_information
    from test_datasets import make_lpba

    root = make_lpba(tmp_path / "LPBA40", 3)
    dm = KleinDataModule("lpba40", str(root), strict_count=False, shape=(12, 14, 10))
    ds = dm.dataset("test")
    info = image_information(ds)
    seen_moving = {}
    for i in range(len(ds)):
        item = ds[i]
        own = intensity_label_information(item["moving"], item["moving_label"]).mi
        assert info[(item["fixed_id"], item["moving_id"])].moving.mi == own
        seen_moving.setdefault(item["moving_id"], set()).add(round(own, 6))
    assert any(len(v) > 1 for v in seen_moving.values())  # the case: one id, different images


# ------------------------------------------------------------------ the scripts
def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", f"experiments.{script.removesuffix('.py')}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_mi_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    small = ["data.shape=[24,24,24]", "data.n_labels=6", "data.n_test=3", "model.iterations=[4,2,1]",
             "levels=[{intensity_classes: 6, class_noise: 0.1},{intensity_classes: 1, class_noise: 0.1}]",
             f"paths.output_dir={out}"]
    proc = _run("mi_sweep.py", *small)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("mi_pairs.csv", "mi_fit.json", "mi_scatter.png", "levels.csv", "level_00/pairs.csv", "level_01/pairs.csv"):
        assert (out / name).is_file(), name
    fit = json.loads((out / "mi_fit.json").read_text())
    assert fit["n"] == 4 and fit["options"]["mask"] == "foreground"
    lines = (out / "mi_pairs.csv").read_text().splitlines()
    assert lines[0].startswith("level,data.intensity_classes,data.class_noise,fixed_id") and len(lines) == 5
    assert "Dice vs MI over 4 pairs" in proc.stdout
    bad = _run("mi_sweep.py", *small[:-2], "levels=[{colours: 3}]", f"paths.output_dir={tmp_path / 'bad'}")
    assert bad.returncode == 1 and "levels[0]: unknown data keys ['colours']" in bad.stderr
    assert not (tmp_path / "bad" / "mi_fit.json").exists()


@pytest.mark.slow  # ~27 s: eval.py then the analysis; the join on a results folder is tested in test_trust_provenance
def test_mi_analysis_on_an_eval_folder(tmp_path):
    out = tmp_path / "mia"
    data = ["data=synthetic", "data.shape=[24,24,24]", "data.n_labels=6", "data.n_test=4", "data.n_train=2",
            "data.n_val=0"]
    proc = _run("mi_analysis.py", *data, "model=identity", f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "eval" / "pairs.csv").is_file() and (out / "mi_scatter.png").is_file()
    options = json.loads((out / "mi_fit.json").read_text())["options"]
    assert options["data"] == "synthetic" and options["method"] == "identity"  # what the fit comes from
    again = _run("mi_analysis.py", *data, f"results_dir={out / 'eval'}", f"paths.output_dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "again" / "mi_pairs.csv").read_text() == (out / "mi_pairs.csv").read_text()
    missing = _run("mi_analysis.py", *data, f"results_dir={tmp_path / 'nowhere'}", f"paths.output_dir={tmp_path / 'x'}")
    assert missing.returncode == 1 and "nowhere/pairs.csv: no pairs.csv" in missing.stderr
