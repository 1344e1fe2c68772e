"""Results know where they came from, and no run destroys its input.

* provenance: a part is reused only when the pair's input files (path, size, mtime), the method
  (config and weights) and the metric settings all match; otherwise it is recomputed, and the
  run says how many pairs it reused / recomputed;
* the CSVs and the summary hold exactly the run's test pairs (parts of other inputs in the same
  folder are ignored; a test pair without a result is an error naming it);
* a summary mean covers every pair or none (a metric finite for some pairs only is an error);
* pair ids and result file names are unique (colliding stems, names that differ only in
  characters a file name cannot keep, a CSV listing a pair twice);
* an empty output folder, or one holding an input file, is refused before anything is written;
  result files get the mode an ordinary new file gets (0o666 & ~umask);
* experiments/mi_analysis.py with results_dir joins exactly the dataset's test pairs.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose, make_blob_pair, write_nifti

sys.path.insert(0, str(ROOT))
import eval as eval_entry  # noqa: E402
import train as train_entry  # noqa: E402
from data.io import DataError  # noqa: E402
from data.pairs_csv import PairsCSVDataset  # noqa: E402


def _eval(out_dir, *overrides):
    cfg = compose("eval", [f"paths.output_dir={out_dir}", "trainer.accelerator=cpu",
                           "trainer.enable_progress_bar=false"] + list(overrides))
    return eval_entry.evaluate(cfg)


def _csv_eval(out_dir, csv_path, *overrides):
    return _eval(out_dir, "model=identity", "data=pairs_csv", f"data.csv={csv_path}", *overrides)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _pairs(out: Path) -> list[tuple[str, str]]:
    return [(r["fixed_id"], r["moving_id"]) for r in _rows(out / "pairs.csv")]


def _write_case(folder: Path, name: str, seed: int, shift: int) -> tuple[str, str, str, str]:
    """Fixed/moving image and label files ``<name>_{f,fs,m,ms}.nii.gz``; relative names."""
    fi, fl, mi, ml = make_blob_pair(shape=(24, 24, 24), shift=shift, seed=seed)
    names = tuple(f"{name}_{k}.nii.gz" for k in ("f", "fs", "m", "ms"))
    for n, arr in zip(names, (fi, fl, mi, ml)):
        write_nifti(folder / n, arr)
    return names  # type: ignore[return-value]


def _csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    lines = ["fixed,moving,fixed_label,moving_label"] + [",".join(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _two_pair_csv(folder: Path) -> Path:
    a = _write_case(folder, "a", 0, 2)
    b = _write_case(folder, "b", 1, 3)
    return _csv(folder / "pairs.csv", [(a[0], a[2], a[1], a[3]), (b[0], b[2], b[1], b[3])])


def _part_files(out: Path) -> list[Path]:
    return sorted((out / ".parts").rglob("*.json"))


# ============================================================================ 1. provenance
def test_unchanged_rerun_reuses_every_pair_and_says_so(tmp_path, capsys):
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    first = _csv_eval(out, csv_path)
    mtimes = [p.stat().st_mtime_ns for p in _part_files(out)]
    capsys.readouterr()
    again = _csv_eval(out, csv_path)
    assert [p.stat().st_mtime_ns for p in _part_files(out)] == mtimes  # nothing recomputed
    assert "reused 2 of 2 pairs" in capsys.readouterr().out
    assert again["dice_mean"] == first["dice_mean"]
    part = json.loads(_part_files(out)[0].read_text())
    assert set(part["provenance"]) == {"inputs", "method", "metrics", "code"}
    assert part["provenance"]["metrics"]["label_interp"] == "nearest"


def test_changed_input_file_recomputes_that_pair(tmp_path, capsys):
    """The moving label of one pair is replaced by another map (the tester's stale-part case):
    the rerun's Dice is the new file's, equal to a fresh run's, not the old part's."""
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path)
    before = {(r["fixed_id"], r["moving_id"]): float(r["dice"]) for r in _rows(out / "pairs.csv")}
    _, fl, _, ml = make_blob_pair(shape=(24, 24, 24), shift=7, seed=0)
    write_nifti(tmp_path / "data" / "a_ms.nii.gz", ml)  # other content, same path
    capsys.readouterr()
    _csv_eval(out, csv_path)
    printed = capsys.readouterr().out
    assert "reused 1 of 2 pairs" in printed and "recomputed 1 pairs" in printed
    after = {(r["fixed_id"], r["moving_id"]): float(r["dice"]) for r in _rows(out / "pairs.csv")}
    fresh_out = tmp_path / "fresh"
    _csv_eval(fresh_out, csv_path)
    fresh = {(r["fixed_id"], r["moving_id"]): float(r["dice"]) for r in _rows(fresh_out / "pairs.csv")}
    assert after == fresh
    assert after[("a_f", "a_m")] != before[("a_f", "a_m")]  # the case really changed the result
    assert after[("b_f", "b_m")] == before[("b_f", "b_m")]


def test_parts_of_another_version_of_the_code_are_recomputed(tmp_path, capsys, monkeypatch):
    """A fixed bug in a method changes its results under the same hyper-parameters: parts written
    by other sources of data/ spatial/ classical/ models/ metrics/ losses/ app/ are not reused."""
    import app.parts

    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(app.parts, "code_signature", lambda: "an older version")
        _csv_eval(out, csv_path)
    capsys.readouterr()
    _csv_eval(out, csv_path)
    printed = capsys.readouterr().out
    assert "reused" not in printed and "recomputed 2 pairs" in printed
    from data.signature import code_signature

    assert {json.loads(p.read_text())["provenance"]["code"] for p in _part_files(out)} == {code_signature()}


def test_code_signature_follows_the_sources_that_make_results(tmp_path):
    """An edit of a .py file in a result-making package changes the signature; a file elsewhere
    (experiments/, docs) does not."""
    from data.signature import CODE_PACKAGES, code_signature

    for package in CODE_PACKAGES + ("experiments",):
        (tmp_path / package).mkdir()
        (tmp_path / package / "m.py").write_text("x = 1\n")
    first = code_signature(tmp_path)
    (tmp_path / "experiments" / "m.py").write_text("x = 2\n")
    (tmp_path / "README.md").write_text("changed\n")
    from data.signature import _code_digest

    _code_digest.cache_clear()
    assert code_signature(tmp_path) == first
    (tmp_path / "classical" / "m.py").write_text("x = 2\n")
    _code_digest.cache_clear()
    assert code_signature(tmp_path) != first
    assert code_signature() == code_signature(ROOT) and len(code_signature()) == 64


def test_a_limited_rerun_never_reports_a_stale_pair_it_did_not_recompute(tmp_path, capsys):
    """Both pairs' inputs change, then a rerun limited to one test batch: that pair is recomputed
    and reported alone; the other's stale part is neither reused nor reported (it was, as reused)."""
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path)
    for name in ("a_ms", "b_ms"):
        _, _, _, ml = make_blob_pair(shape=(24, 24, 24), shift=7, seed=0)
        write_nifti(tmp_path / "data" / f"{name}.nii.gz", ml)
    capsys.readouterr()
    summary = _csv_eval(out, csv_path, "trainer.limit_test_batches=1")
    printed = capsys.readouterr().out
    assert "1 of 2 test pairs evaluated" in printed and "reused" not in printed
    assert _pairs(out) == [("a_f", "a_m")] and summary["n_pairs"] == 1
    fresh = _csv_eval(tmp_path / "fresh", csv_path)
    assert float(_rows(out / "pairs.csv")[0]["dice"]) == float(_rows(tmp_path / "fresh" / "pairs.csv")[0]["dice"])
    assert fresh["n_pairs"] == 2


def test_save_outputs_reuses_a_pair_only_with_its_own_moved_volumes(tmp_path, capsys):
    """save_outputs: a pair recomputed without it loses its old moved volumes (they showed the old
    result), and a later save_outputs run recomputes it rather than reusing a part without them."""
    import nibabel as nib
    import numpy as np

    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path, "save_outputs=true")
    moved_label = out / "moved" / "a_f__a_m_label.nii.gz"
    assert moved_label.exists()
    _, _, _, ml = make_blob_pair(shape=(24, 24, 24), shift=7, seed=0)
    write_nifti(tmp_path / "data" / "a_ms.nii.gz", ml)  # the moving label of pair a changes
    _csv_eval(out, csv_path)  # recomputed, no outputs asked
    assert not moved_label.exists() and (out / "moved" / "b_f__b_m_label.nii.gz").exists()
    capsys.readouterr()
    _csv_eval(out, csv_path, "save_outputs=true")
    assert "reused 1 of 2" in capsys.readouterr().out  # pair b only
    saved = np.asarray(nib.load(str(moved_label)).dataobj)
    assert np.array_equal(saved, np.asarray(nib.load(str(tmp_path / "data" / "a_ms.nii.gz")).dataobj))  # identity
    assert json.loads((out / ".parts" / "identity" / "a_f__a_m.json").read_text())["moved"]


def test_moved_volumes_of_another_method_in_the_folder_are_not_reused(tmp_path, capsys):
    """moved/ is shared by the methods written into one folder: identity, then affine, then identity
    again with save_outputs. The last run must not reuse its parts with affine's displacements (a
    part records a digest of each moved volume it wrote)."""
    import nibabel as nib
    import numpy as np

    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path, "save_outputs=true")
    _eval(out, "model=affine", "model.scales=[1]", "model.iterations=[5]", "data=pairs_csv", f"data.csv={csv_path}",
          "save_outputs=true")
    capsys.readouterr()
    _csv_eval(out, csv_path, "save_outputs=true")
    assert "reused" not in capsys.readouterr().out
    for name in ("a_f__a_m_disp.nii.gz", "b_f__b_m_disp.nii.gz"):
        assert not np.asarray(nib.load(str(out / "moved" / name)).dataobj).any(), name  # identity's zero field


def test_a_rerun_stopped_part_way_leaves_no_earlier_summary(tmp_path, monkeypatch):
    """A rerun that computes pairs first removes the folder's summary.json, pairs.csv and labels.csv:
    stopped or failed part-way, it must not leave an earlier run's complete-looking results over
    parts it has begun to replace."""
    import app.callbacks

    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path)
    assert (out / "summary.json").exists()
    _, _, _, ml = make_blob_pair(shape=(24, 24, 24), shift=7, seed=0)
    write_nifti(tmp_path / "data" / "a_ms.nii.gz", ml)  # pair a must be recomputed

    def fail(*args, **kwargs):
        raise RuntimeError("stopped part-way")

    monkeypatch.setattr(app.callbacks.ResultsCallback, "on_test_batch_end", fail)
    with pytest.raises(BaseException):
        _csv_eval(out, csv_path)
    assert not any((out / name).exists() for name in ("summary.json", "pairs.csv", "labels.csv"))


def test_changed_metric_settings_recompute_every_pair(tmp_path, capsys):
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path)
    runs = {json.loads(p.read_text())["run"] for p in _part_files(out)}
    capsys.readouterr()
    summary = _csv_eval(out, csv_path, "+model.label_interp=linear")
    assert "reused" not in capsys.readouterr().out
    parts = [json.loads(p.read_text()) for p in _part_files(out)]
    assert len(parts) == 2 and not runs & {d["run"] for d in parts}
    assert {d["provenance"]["metrics"]["label_interp"] for d in parts} == {"linear"}
    assert summary["label_interp"] == "linear"


def test_changed_method_config_recomputes_every_pair(tmp_path):
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    _csv_eval(out, csv_path)
    runs = {json.loads(p.read_text())["run"] for p in _part_files(out)}
    _csv_eval(out, csv_path, "+model.hd95=false")  # another model config, same method name
    assert not runs & {json.loads(p.read_text())["run"] for p in _part_files(out)}


def test_method_signature_follows_config_and_every_weight():
    from app.parts import method_signature

    from models.networks import VoxelMorphUNet

    from models.module import RegistrationModule

    def model():
        torch.manual_seed(0)
        return RegistrationModule(net=VoxelMorphUNet(ndim=2, enc=(4, 4), dec=(4, 4)), method="vm")

    a, b = model(), model()
    assert method_signature(a) == method_signature(b)
    with torch.no_grad():
        next(b.net.parameters()).view(-1)[0] += 1e-6  # one weight, slightly: "trained further"
    assert method_signature(a) != method_signature(b)
    torch.manual_seed(0)
    c = RegistrationModule(net=VoxelMorphUNet(ndim=2, enc=(4, 4), dec=(4, 4)), method="vm", label_interp="linear")
    assert method_signature(a) != method_signature(c)  # another hyper-parameter


def test_network_with_other_weights_never_reuses_results(tmp_path):
    """eval.py of an untrained VoxelMorph with seed 0, then seed 1 (same config, other initial
    weights) into the same folder: the second summary equals a fresh seed-1 run's."""
    csv_path = _two_pair_csv(tmp_path / "data")
    net = ["model=voxelmorph", "data=pairs_csv", f"data.csv={csv_path}"]
    _eval(tmp_path / "out", *net, "seed=0")
    again = _eval(tmp_path / "out", *net, "seed=1")
    fresh = _eval(tmp_path / "fresh", *net, "seed=1")
    seed0 = _eval(tmp_path / "seed0", *net, "seed=0")
    assert again["sdlogj_mean"] == fresh["sdlogj_mean"]
    assert seed0["sdlogj_mean"] != fresh["sdlogj_mean"]  # the weights really change the result


# the Klein overlap columns of a pair row and the per-label metrics of one label (made-up values)
_TOTALS = {"total_target_overlap": 0.5, "total_mean_overlap": 0.5, "total_union_overlap": 0.4,
           "total_volume_similarity": 0.0, "total_fn_error": 0.5, "total_fp_error": 0.5}
_LABEL = {"dice": 0.5, "target_overlap": 0.5, "union_overlap": 0.4, "volume_similarity": 0.0, "fn_error": 0.5,
          "fp_error": 0.5}


def test_writer_reuses_only_matching_parts(tmp_path):
    from app.parts import ResultsWriter

    w = ResultsWriter(tmp_path, "m", method_hash="h1")
    row = {"fixed_id": "f", "moving_id": "g", "dice": 0.5, "hd95": 1.0, "sdlogj": 0.1, "sdlogj_l2r": 0.1,
           "folding_pct": 0.0, "n_erased": 0, "seconds": 0.1, "dice_identity": 0.4, "mae_identity": 0.1, **_TOTALS}
    w.add({"pair": row, "labels": {1: _LABEL}, "signature": "sig-a"})
    assert w.reusable("f", "g", "sig-a")
    assert not w.reusable("f", "g", "sig-b")  # other inputs
    assert not w.reusable("f", "g", None)  # a dataset without signatures never reuses
    assert not ResultsWriter(tmp_path, "m", method_hash="h2").reusable("f", "g", "sig-a")  # other method
    assert not ResultsWriter(tmp_path, "m", label_interp="linear", method_hash="h1").reusable("f", "g", "sig-a")


def test_seconds_of_pairs_timed_on_two_machines_have_no_common_mean(tmp_path):
    """A run stopped on a CPU and resumed on a GPU reuses the CPU's pairs (their metrics do not
    depend on the device): each pair keeps its own seconds, but the summary gives no mean of seconds
    over both machines and says which timed how many pairs."""
    from app.parts import ResultsWriter, timing_of

    assert timing_of("cpu").startswith("cpu (")
    row = {"moving_id": "g", "dice": 0.5, "hd95": 1.0, "sdlogj": 0.1, "sdlogj_l2r": 0.1, "folding_pct": 0.0,
           "n_erased": 0, "dice_identity": 0.4, "mae_identity": 0.1, **_TOTALS}
    cpu = ResultsWriter(tmp_path, "m", method_hash="h", timing="cpu (2 threads)")
    for f, sec in (("f1", 30.0), ("f2", 30.0)):
        cpu.add({"pair": {**row, "fixed_id": f, "seconds": sec}, "labels": {1: _LABEL}, "signature": f"s-{f}"})
    assert cpu.finalize([("f1", "g"), ("f2", "g")])["timing"] == "cpu (2 threads)"
    gpu = ResultsWriter(tmp_path, "m", method_hash="h", timing="cuda (NVIDIA H200)")
    assert gpu.reusable("f1", "g", "s-f1") and gpu.reusable("f2", "g", "s-f2")
    for f in ("f3", "f4"):
        assert not gpu.reusable(f, "g", f"s-{f}")
        gpu.add({"pair": {**row, "fixed_id": f, "seconds": 0.5}, "labels": {1: _LABEL}, "signature": f"s-{f}"})
    summary = gpu.finalize([(f, "g") for f in ("f1", "f2", "f3", "f4")])
    assert summary["seconds_mean"] is None and summary["dice_mean"] == 0.5
    assert summary["timing"] == "cpu (2 threads): 2 pairs; cuda (NVIDIA H200): 2 pairs (no common mean of seconds)"
    assert [r["seconds"] for r in gpu.pairs] == [30.0, 30.0, 0.5, 0.5]


def test_every_dataset_item_carries_a_pair_signature(tmp_path):
    from data import MNIDataModule
    from data.synthetic import SyntheticDataModule

    csv_path = _two_pair_csv(tmp_path / "data")
    ds = PairsCSVDataset(csv_path)
    sig = ds[0]["pair_signature"]
    assert isinstance(sig, str) and sig != ds[1]["pair_signature"]
    assert PairsCSVDataset(csv_path, normalize=False)[0]["pair_signature"] != sig  # preprocessing counts
    os.utime(tmp_path / "data" / "a_fs.nii.gz", ns=(1, 1))  # same bytes, other mtime
    assert ds[0]["pair_signature"] != sig
    mni = MNIDataModule(shape=(16, 16, 16), n_train=2, n_val=0, n_test=3)
    other = MNIDataModule(shape=(16, 16, 16), n_train=2, n_val=0, n_test=3, noise=0.02)
    same = MNIDataModule(shape=(16, 16, 16), n_train=2, n_val=0, n_test=3, batch_size=2)
    sigs = [mni.test_set.pair_signature(i) for i in range(2)]
    assert sigs[0] != sigs[1]  # subject indices
    assert other.test_set.pair_signature(0) != sigs[0]  # generator settings
    assert same.test_set.pair_signature(0) == sigs[0]  # a loader setting does not change a subject
    syn = SyntheticDataModule(n_train=2, n_val=0, n_test=2, shape=(16, 16, 16))
    item = syn.test_set[0]
    assert isinstance(item["pair_signature"], str)
    assert SyntheticDataModule(n_train=2, n_val=0, n_test=2, shape=(16, 16, 16), seed=1).test_set.pair_signature(0) \
        != item["pair_signature"]


def test_layout_dataset_items_carry_a_pair_signature(tmp_path):
    from test_datasets import make_oasis

    from data import OASISDataModule

    make_oasis(tmp_path / "OASIS")
    dm = OASISDataModule(str(tmp_path / "OASIS"), n_train=3, n_val=2, shape=(12, 14, 10))
    pairs = dm.test_pairs or dm.val_pairs
    ds = dm._dataset(pairs)
    item = ds[0]
    assert item["pair_signature"] == ds.pair_signature(0) and isinstance(item["pair_signature"], str)
    assert dm.test_pair_ids() == [(f.id, m.id) for f, m in dm.test_pairs]
    files = dm.input_files()
    assert pairs[0][0].image in files and pairs[0][0].label in files


# ============================================================================ 2. exactly the test set
def test_results_of_another_csv_in_the_same_folder_are_not_merged(tmp_path, capsys):
    first = _two_pair_csv(tmp_path / "d1")
    c = _write_case(tmp_path / "d2", "c", 2, 2)
    second = _csv(tmp_path / "d2" / "pairs.csv", [(c[0], c[2], c[1], c[3])])
    out = tmp_path / "out"
    _csv_eval(out, first)
    capsys.readouterr()
    summary = _csv_eval(out, second)
    assert summary["n_pairs"] == 1 and _pairs(out) == [("c_f", "c_m")]
    assert {r["fixed_id"] for r in _rows(out / "labels.csv")} == {"c_f"}
    assert "ignored 2 parts" in capsys.readouterr().out


def test_finalize_names_a_test_pair_without_a_result(tmp_path):
    from app.parts import ResultsWriter
    from app.results import ResultsError

    w = ResultsWriter(tmp_path, "m", method_hash="h")
    row = {"fixed_id": "f", "moving_id": "g", "dice": 0.5, "hd95": 1.0, "sdlogj": 0.1, "sdlogj_l2r": 0.1,
           "folding_pct": 0.0, "n_erased": 0, "seconds": 0.1, "dice_identity": 0.4, "mae_identity": 0.1, **_TOTALS}
    w.add({"pair": row, "labels": {1: _LABEL}, "signature": "s"})
    w.seen.add(("f", "lost"))
    with pytest.raises(ResultsError, match=r"\(f, lost\)"):
        w.finalize([("f", "g"), ("f", "lost")])
    assert not (tmp_path / "pairs.csv").exists()
    with pytest.raises(ResultsError, match=r"\(f, never\).*not evaluated"):
        w.finalize([("f", "g"), ("f", "never")])
    w2 = ResultsWriter(tmp_path, "m", method_hash="other")  # a part of another method version
    w2.seen.add(("f", "g"))
    with pytest.raises(ResultsError, match=r"\(f, g\)"):
        w2.finalize([("f", "g")])
    summary = w.finalize([("f", "g")])
    assert summary["n_pairs"] == 1 and w.counts == {"expected": 1, "reused": 0, "stale": 0, "ignored": 0}


def test_train_test_phase_resume_ignores_other_pairs(tmp_path):
    """train.py test-only into a folder whose test/ holds a part of a pair outside the test set."""
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "run"
    stray = out / "test" / ".parts" / "identity" / "x__y.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"pair": {"fixed_id": "x", "moving_id": "y", "method": "identity", "dice": 0.9,
                                          "hd95": 1, "sdlogj": 0, "sdlogj_l2r": 0, "folding_pct": 0, "seconds": 0,
                                          "dice_identity": 0.9}, "labels": {}}))
    cfg = compose("train", ["data=pairs_csv", f"data.test_csv={csv_path}", "model=identity", "logger=csv",
                            f"paths.output_dir={out}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])
    summary = train_entry.train(cfg)
    assert summary["n_pairs"] == 2 and _pairs(out / "test") == [("a_f", "a_m"), ("b_f", "b_m")]


# ============================================================================ 3. strict means
def _finalize_with(tmp_path, values):
    from app.parts import ResultsWriter

    w = ResultsWriter(tmp_path, "m", method_hash="h")
    for k, (dice, hd95) in enumerate(values):
        w.add({"pair": {"fixed_id": f"f{k}", "moving_id": f"m{k}", "dice": dice, "hd95": hd95, "sdlogj": 0.1,
                        "sdlogj_l2r": 0.1, "folding_pct": 0.0, "n_erased": 0, "seconds": 0.1, "dice_identity": dice, "mae_identity": 0.1,
                        **_TOTALS},
               "labels": {}, "signature": "s"})
    return w.finalize([(f"f{k}", f"m{k}") for k in range(len(values))])


def test_a_metric_finite_for_some_pairs_only_is_an_error_naming_them(tmp_path):
    from app.results import ResultsError

    with pytest.raises(ResultsError, match=r"'hd95' is not finite for pair\(s\) \(f1, m1\)"):
        _finalize_with(tmp_path, [(0.5, 2.0), (0.7, float("nan")), (0.6, 3.0)])
    assert not (tmp_path / "summary.json").exists()


def test_a_metric_absent_for_every_pair_is_null_and_others_are_plain_means(tmp_path):
    s = _finalize_with(tmp_path, [(float("nan"), 2.0), (None, 4.0)])
    assert s["dice_mean"] is None and s["dice_std"] is None and s["dice_identity_mean"] is None
    assert s["hd95_mean"] == 3.0 and s["n_pairs"] == 2
    s = _finalize_with(tmp_path / "b", [(0.25, 2.0), (0.75, 4.0)])
    assert s["dice_mean"] == 0.5 and s["dice_std"] == pytest.approx(0.5 ** 0.5 / 2)  # sample std (ddof 1)


# ============================================================================ 4. unique ids and names
def test_files_sharing_a_stem_stay_two_pairs(tmp_path):
    d = tmp_path / "data"
    rows = []
    for k, sub in enumerate(("sub0", "sub1")):
        names = _write_case(d / sub, "x", k, 2 + k)
        for n, target in zip(names, ("fixed", "fixed_seg", "moving", "moving_seg")):
            (d / sub / n).rename(d / sub / f"{target}.nii.gz")
        rows.append(tuple(f"{sub}/{t}.nii.gz" for t in ("fixed", "moving", "fixed_seg", "moving_seg")))
    csv_path = _csv(d / "pairs.csv", rows)
    out = tmp_path / "out"
    summary = _csv_eval(out, csv_path, "save_outputs=true")
    assert summary["n_pairs"] == 2
    assert _pairs(out) == [("sub0/fixed", "sub0/moving"), ("sub1/fixed", "sub1/moving")]
    assert len(_part_files(out)) == 2 and len(list((out / "moved").glob("*_image.nii.gz"))) == 2


def test_names_differing_in_unsafe_characters_stay_two_pairs(tmp_path):
    d = tmp_path / "data"
    a = _write_case(d, "a b", 0, 2)
    b = _write_case(d, "a_b", 1, 3)
    csv_path = _csv(d / "pairs.csv", [(a[0], a[2], a[1], a[3]), (b[0], b[2], b[1], b[3])])
    out = tmp_path / "out"
    summary = _csv_eval(out, csv_path, "save_outputs=true")
    assert summary["n_pairs"] == 2 and sorted(_pairs(out)) == [("a b_f", "a b_m"), ("a_b_f", "a_b_m")]
    assert len(_part_files(out)) == 2 and len(list((out / "moved").glob("*_disp.nii.gz"))) == 2


def test_pair_names_are_unique_per_exact_pair():
    from app.results import pair_name

    pairs = [("a b", "m"), ("a_b", "m"), ("a__b", "c"), ("a", "b__c"), ("a_", "_b"), ("a", "__b"), ("f0", "m0"),
             ("sub0/t1", "m"), ("sub0_t1", "m"), ("x" * 300, "m"), ("x" * 300 + "y", "m")]
    names = [pair_name(f, m) for f, m in pairs]
    assert len(set(names)) == len(names) and pair_name("f0", "m0") == "f0__m0"
    assert all(len(n) < 200 and "/" not in n for n in names)


def test_a_csv_listing_a_pair_twice_names_both_rows(tmp_path):
    d = tmp_path / "data"
    a = _write_case(d, "a", 0, 2)
    csv_path = _csv(d / "pairs.csv", [(a[0], a[2], a[1], a[3]), (f"./{a[0]}", a[2], a[1], a[3])])
    with pytest.raises(DataError, match=r"row 2 \(line 3\) lists the same fixed and moving files as row 1 \(line 2\)"):
        PairsCSVDataset(csv_path, check="header")


def test_same_stem_with_two_extensions_keeps_them_apart(tmp_path):
    d = tmp_path / "data"
    img, _, mov, _ = make_blob_pair(shape=(16, 16, 16))
    write_nifti(d / "t1.nii.gz", img)
    write_nifti(d / "t1.nii", mov)
    csv_path = d / "pairs.csv"
    csv_path.write_text("fixed,moving\nt1.nii.gz,t1.nii\nt1.nii,t1.nii.gz\n")
    ds = PairsCSVDataset(csv_path)
    assert ds.pair_ids() == [("t1.nii.gz", "t1.nii"), ("t1.nii", "t1.nii.gz")]


# ============================================================================ 5. output safety
def test_output_folder_holding_the_pairs_csv_is_refused(tmp_path, capsys):
    csv_path = _two_pair_csv(tmp_path / "data")  # named pairs.csv: the run would overwrite it
    text = csv_path.read_text()
    with pytest.raises(SystemExit) as exc:
        _csv_eval(csv_path.parent, csv_path)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "paths.output_dir" in err[0] and str(csv_path) in err[0], err
    assert csv_path.read_text() == text
    assert not (csv_path.parent / "summary.json").exists() and not (csv_path.parent / ".parts").exists()


def test_output_folder_holding_an_input_in_a_written_subfolder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    d = out / "moved"  # the images live where moved volumes are written
    a = _write_case(d, "a", 0, 2)
    csv_path = _csv(tmp_path / "list.csv", [(f"out/moved/{a[0]}", f"out/moved/{a[2]}",
                                             f"out/moved/{a[1]}", f"out/moved/{a[3]}")])
    with pytest.raises(SystemExit):
        _csv_eval(out, csv_path)
    err = capsys.readouterr().err
    assert "paths.output_dir" in err and "a_f.nii.gz" in err
    assert not (out / "pairs.csv").exists()


def test_train_refuses_an_output_folder_holding_an_input_before_writing(tmp_path, capsys):
    csv_path = _two_pair_csv(tmp_path / "data")
    cfg = compose("train", ["data=pairs_csv", f"data.train_csv={csv_path}", f"data.test_csv={csv_path}",
                            "logger=csv", f"paths.output_dir={csv_path.parent}", "trainer.accelerator=cpu"])
    with pytest.raises(SystemExit):
        train_entry.train(cfg)
    assert "paths.output_dir" in capsys.readouterr().err
    assert not (csv_path.parent / "checkpoints").exists() and not (csv_path.parent / "test").exists()


@pytest.mark.parametrize("entry", ["eval", "train"])
def test_empty_output_dir_is_refused(entry, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv_path = _two_pair_csv(tmp_path / "data")
    if entry == "eval":
        with pytest.raises(SystemExit):
            _eval("", "model=identity", "data=pairs_csv", f"data.csv={csv_path}")
    else:
        cfg = compose("train", ["data=pairs_csv", f"data.test_csv={csv_path}", "model=identity", "logger=csv",
                                "paths.output_dir=", "trainer.accelerator=cpu"])
        with pytest.raises(SystemExit):
            train_entry.train(cfg)
    err = capsys.readouterr().err
    assert "paths.output_dir is empty" in err
    assert not list(tmp_path.rglob("summary.json")) and not (tmp_path / "test").exists()


def test_result_files_get_the_mode_of_ordinary_files(tmp_path):
    csv_path = _two_pair_csv(tmp_path / "data")
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        _csv_eval(out, csv_path, "save_outputs=true")
    finally:
        os.umask(old)
    files = [out / "pairs.csv", out / "labels.csv", out / "summary.json"] + _part_files(out)
    files += sorted((out / "moved").glob("*.nii.gz"))
    assert len(files) > 5
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(0o644)}


# ============================================================================ 6. mi_analysis
def test_mi_analysis_joins_exactly_the_dataset_pairs(tmp_path, capsys):
    from experiments.mi_analysis import analyse

    from app import build_datamodule
    from experiments.mi_analysis import image_information

    results = tmp_path / "results"
    results.mkdir()
    data = ["data=synthetic", "data.shape=[16,16,16]", "data.n_labels=4", "data.n_train=2", "data.n_val=0",
            "data.n_test=3"]
    info = image_information(build_datamodule(compose("mi_analysis", data)).test_dataloader().dataset)
    head = "fixed_id,moving_id,method,dice,dice_identity,mae_identity\n"  # hand-made, with both data checks

    def row(f, m, dice):
        i = info.get((f, m))
        return f"{f},{m},m,{dice},{i.dice_identity if i else 0.5},{i.mae_identity if i else 0.1}\n"

    # the dataset's test pairs: (syn_0002, syn_0003), (syn_0003, syn_0004); plus a reversed pair of its images
    (results / "pairs.csv").write_text(head + row("syn_0002", "syn_0003", 0.5) + row("syn_0003", "syn_0002", 0.9)
                                       + row("syn_0003", "syn_0004", 0.6))
    fit = analyse(compose("mi_analysis", data + [f"results_dir={results}", f"paths.output_dir={tmp_path / 'a'}"]))
    rows = _rows(tmp_path / "a" / "mi_pairs.csv")
    assert fit["n"] == 2 and [(r["fixed_id"], r["moving_id"]) for r in rows] == [("syn_0002", "syn_0003"),
                                                                                  ("syn_0003", "syn_0004")]
    assert "ignored 1 rows" in capsys.readouterr().out
    (results / "pairs.csv").write_text(head + row("syn_0002", "syn_0003", 0.5))
    with pytest.raises(DataError, match=r"no result for 1 of the dataset's 2 test pairs: \(syn_0003, syn_0004\)"):
        analyse(compose("mi_analysis", data + [f"results_dir={results}", f"paths.output_dir={tmp_path / 'b'}"]))


def test_mi_analysis_refuses_an_eval_folder_older_than_the_dice_label_rule(tmp_path):
    """A results folder whose summary.json records no metrics_version, or one before the scorer's
    label rule, may count erased labels as matched: the analysis stops naming it (a hand-made
    pairs.csv without summary.json is the user's and is read when it carries both data checks)."""
    import json

    from data.io import DataError
    from experiments.mi_analysis import DICE_RULE_VERSION, read_pairs_csv

    results = tmp_path / "results"
    results.mkdir()
    (results / "pairs.csv").write_text("fixed_id,moving_id,method,dice,dice_identity,mae_identity\na,b,m,0.5,0.4,0.1\n")
    assert read_pairs_csv(results)[0]["dice"] == 0.5
    assert read_pairs_csv(results)[0]["method"] == "m"  # the row's method reaches mi_pairs.csv and the title
    for summary in ({"n_pairs": 1}, {"n_pairs": 1, "metrics_version": DICE_RULE_VERSION - 1}):
        (results / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(DataError, match="summary.json: metrics_version .* predates the data checks"):
            read_pairs_csv(results)
    (results / "summary.json").write_text(json.dumps({"n_pairs": 1, "metrics_version": DICE_RULE_VERSION}))
    assert read_pairs_csv(results)[0]["dice"] == 0.5


def test_mni_pair_signature_follows_the_template_files(monkeypatch):
    """The offline MNI pairs are made from nilearn's template files: another template (a nilearn
    update) changes every pair's input signature, 3-D and 2-D alike, so no result is reused."""
    import data.mni as mni
    from data import MNIDataModule

    dm = MNIDataModule(shape=[16, 16, 16], n_train=2, n_val=0, n_test=2)
    dm2 = MNIDataModule(shape=[16, 16, 16], n_train=2, n_val=0, n_test=2, slice_index=8)
    before = [d.test_dataloader().dataset.pair_signature(0) for d in (dm, dm2)]
    source = mni.template_source()
    assert source["files"] and all(f[1] for f in source["files"])  # read from the installed package
    monkeypatch.setattr(mni, "template_source", lambda: {**source, "nilearn": "another"})
    after = [d.test_dataloader().dataset.pair_signature(0) for d in (dm, dm2)]
    assert after[0] != before[0] and after[1] != before[1]


def test_a_row_with_missing_or_extra_cells_is_refused_by_line():
    """A short row (a truncated or hand-edited pairs.csv) would read its missing cells as NaN, and a
    NaN dice_identity skips the same-data check: one error naming the file and line instead."""
    import tempfile

    from app.results import PAIR_COLUMNS, read_results
    from data.io import DataError

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.csv"
        full = ",".join(["a", "b", "greedy"] + ["0.5"] * (len(PAIR_COLUMNS) - 3))
        path.write_text(",".join(PAIR_COLUMNS) + "\n" + full + "\n")
        assert read_results(folder).rows[("a", "b")]["dice"] == 0.5
        for line in ("a,c,greedy,0.8,2.1", full.replace("a,b,", "a,d,", 1) + ",9"):
            path.write_text(",".join(PAIR_COLUMNS) + "\n" + full + "\n" + line + "\n")
            with pytest.raises(DataError, match=r"pairs.csv: line 3: \d+ cells for the header's \d+ columns"):
                read_results(folder)
