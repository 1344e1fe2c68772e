"""Bad-input corpus over every entry point: ``train.py``, ``eval.py``, ``python -m data.check``
and ``experiments/recipe.py``.

Each case asserts the same contract: a non-zero exit (in process: ``SystemExit(1)`` from
:func:`app.build.guarded`, or ``data.check``'s return value 1), ONE clear line that
names the file / config key at fault (``error: ...`` on stderr; ``data.check`` lists it as the
single line under ``problems:``) and no result files left in the output folder (no
``pairs.csv``, ``labels.csv``, ``summary.json``, ``recipe.json``, no ``*.tmp``).

Cases:

* bad files listed in a pairs CSV (``data=pairs_csv``; train.py with ``data.train_csv/val_csv/
  test_csv``, the recipe with ``--test CSV`` and ``--train CSV``) or in a dataset tree
  (``data.check ibsr18``): missing, corrupt ``.nii.gz``, 4-D image, NaN voxels, float
  (non-integer) label map, empty label map.

  Empty label map (every voxel 0): a DataError naming the file, raised when the file is
  validated (:func:`data.io.load_volume` with ``kind="label"``), so before any result. Every
  label map of this project is used for Dice (evaluation, validation, supervision), which is
  undefined without foreground: before this rule eval.py quietly wrote a ``pairs.csv`` with
  empty Dice and ``summary.json`` with ``dice_mean: null``, and the recipe failed with an error
  that named no file. Data without labels leaves the label columns out instead.
* unknown dataset root (``paths.data_dir=/nonexistent``) for OASIS and a Klein set.
* unknown config key: a key the config lacks (Hydra's own composition error, through the
  command line: one line too, see :func:`app.build._one_line_hydra_errors`) and an
  added key the class refuses (``+data.nope=1``, ``+model.loss.nope=1``).
* a checkpoint of another model (``eval.py ckpt_path=...``): not a checkpoint at all, a
  Lightning checkpoint without this project's ``registration`` metadata, stored model config
  that does not match the weights (another VoxelMorph variant; another method), and a stored
  config whose class does not exist here. Checkpoints are built by hand with ``torch.save`` of
  what ``on_save_checkpoint`` writes (a positive control checks the hand-built one loads).
* a write failure while saving results (monkeypatched ``os.replace`` / ``tempfile.mkstemp``
  raising ``OSError``, as chmod does not stop root): the summary set (all three files are
  renamed into place together, :func:`app.results.atomic_write_files`), a per-pair part,
  a moved NIfTI (image, label and displacement of a pair are one set) and ``recipe.json``. Finished per-pair parts in ``DIR/.parts/`` may stay: they
  are the resume state (a rerun rebuilds the CSVs and summary from them), not results.
"""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, compose, write_nifti

sys.path.insert(0, str(ROOT))
import eval as eval_entry  # noqa: E402
import train as train_entry  # noqa: E402
from data.check import main as check_main  # noqa: E402
from experiments import recipe  # noqa: E402

SHAPE = (16, 16, 16)
RESULT_FILES = ("pairs.csv", "labels.csv", "summary.json", "recipe.json")
BAD_FILES = ["missing", "corrupt", "4d", "nan", "float_label", "empty_label"]
FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------ helpers
def _volumes(seed: int = 0):
    """A 16^3 image in (0, 1] and its label map (ids 0..3, every id present)."""
    img = np.random.default_rng(seed).random(SHAPE).astype(np.float32) * 0.9 + 0.05
    lab = np.minimum((img * 4).astype(np.int16), 3)
    return img, lab


def _write_bad(image: Path, label: Path, kind: str) -> Path:
    """Write an image and its label map, one of them bad in the way ``kind`` says; returns the culprit."""
    img, lab = _volumes()
    if kind not in ("missing", "corrupt", "4d", "nan"):
        write_nifti(image, img)
    if kind not in ("float_label", "empty_label"):
        write_nifti(label, lab)
    if kind == "missing":
        return image  # never written
    if kind == "corrupt":
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(gzip.compress(b"this is not a nifti file")[:20])
        return image
    if kind == "4d":
        write_nifti(image, np.stack([img, img], axis=-1))
        return image
    if kind == "nan":
        bad = img.copy()
        bad[3, 3, 3] = np.nan
        write_nifti(image, bad)
        return image
    if kind == "float_label":
        write_nifti(label, img * 2.5)  # an intensity image given as labels
        return label
    if kind == "empty_label":
        write_nifti(label, np.zeros(SHAPE, np.int16))
        return label
    raise AssertionError(kind)


def _good_csv(folder: Path) -> Path:
    """A valid pairs CSV (one pair of 16^3 volumes)."""
    for name, seed in (("a", 0), ("b", 1)):
        img, lab = _volumes(seed)
        write_nifti(folder / f"{name}.nii.gz", img)
        write_nifti(folder / f"{name}_seg.nii.gz", lab)
    csv = folder / "pairs.csv"
    csv.write_text("fixed,moving,fixed_label,moving_label\na.nii.gz,b.nii.gz,a_seg.nii.gz,b_seg.nii.gz\n")
    return csv


def _bad_csv(folder: Path, kind: str) -> tuple[Path, Path]:
    """A pairs CSV whose moving image (or label map) is bad; returns (csv, culprit file)."""
    _good_csv(folder)
    culprit = _write_bad(folder / "c.nii.gz", folder / "c_seg.nii.gz", kind)
    csv = folder / "bad_pairs.csv"
    csv.write_text("fixed,moving,fixed_label,moving_label\na.nii.gz,c.nii.gz,a_seg.nii.gz,c_seg.nii.gz\n")
    return csv, culprit


def _ibsr_tree(root: Path, kind: str | None = None) -> Path | None:
    """An IBSR18 tree of two subjects (16^3); subject 2 bad in the way ``kind`` says."""
    culprit = None
    for i in (1, 2):
        name = f"IBSR_{i:02d}"
        image = root / name / f"{name}_ana_strip.nii.gz"
        label = root / name / f"{name}_seg_ana.nii.gz"
        if i == 2 and kind is not None:
            culprit = _write_bad(image, label, kind)
        else:
            img, lab = _volumes(i)
            write_nifti(image, img)
            write_nifti(label, lab)
    return culprit


def _eval(out: Path, overrides: list[str]):
    return eval_entry.evaluate(compose("eval", [f"paths.output_dir={out}", *FAST, *overrides]))


def _train(out: Path, overrides: list[str]):
    return train_entry.train(compose("train", [f"paths.output_dir={out}", "logger=csv", *FAST, *overrides]))


def _exit_code(fn, *args) -> int:
    """Run a guarded entry point in process; its exit status (0 when it returned)."""
    try:
        fn(*args)
    except SystemExit as exc:
        return int(exc.code)
    return 0


def _one_error(stderr: str, *names: str) -> str:
    """The single ``error:`` line of ``stderr``, checked to name every one of ``names``."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def _assert_no_results(folder: Path) -> None:
    """No result file (at any depth) and no temporary file of an atomic write in ``folder``."""
    if not folder.exists():
        return
    left = [p for p in folder.rglob("*") if p.name in RESULT_FILES or ".tmp" in p.name]
    assert not left, left


# ---------------------------------------------------------------- bad files, pairs CSV
def _run_on_csv(entry: str, csv: Path, out: Path) -> int:
    if entry == "eval":
        return _exit_code(_eval, out, ["model=identity", "data=pairs_csv", f"data.csv={csv}"])
    if entry == "train":
        return _exit_code(_train, out, ["data=pairs_csv", f"data.train_csv={csv}", f"data.val_csv={csv}",
                                        f"data.test_csv={csv}", "trainer.max_epochs=1"])
    if entry == "recipe --test":
        return _exit_code(recipe.main, ["--train", "none", "--test", str(csv), "--out", str(out)])
    if entry == "recipe --train":
        good = _good_csv(csv.parent / "good")
        return _exit_code(recipe.main, ["--train", str(csv), "--test", str(good), "--out", str(out)])
    raise AssertionError(entry)


@pytest.mark.parametrize("entry", ["eval", "train", "recipe --test", "recipe --train"])
@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_in_pairs_csv(entry, kind, tmp_path, capsys):
    csv, culprit = _bad_csv(tmp_path / "data", kind)
    out = tmp_path / "out"
    assert _run_on_csv(entry, csv, out) == 1
    line = _one_error(capsys.readouterr().err, culprit, csv)
    if kind == "empty_label":
        assert "label map is empty" in line
    assert not out.exists()


def test_good_csv_runs_through_every_entry(tmp_path, capsys):
    """Positive control: the same files without the defect pass (the cases fail for their defect)."""
    csv = _good_csv(tmp_path / "data")
    assert _run_on_csv("eval", csv, tmp_path / "eval") == 0
    assert (tmp_path / "eval" / "summary.json").exists()
    assert _run_on_csv("recipe --test", csv, tmp_path / "recipe") == 0
    assert (tmp_path / "recipe" / "recipe.json").exists()
    rows, problems = _check_tree(tmp_path / "IBSR18", None)
    assert problems == []


# ---------------------------------------------------------------- bad files, data.check
def _check_tree(root: Path, kind: str | None):
    from data.check import check_dataset

    _ibsr_tree(root, kind)
    return check_dataset("ibsr18", str(root), expect=2, out=open(os.devnull, "w"))


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_in_dataset_tree_data_check(kind, tmp_path, capsys):
    """data.check reports a file problem as one line under ``problems:`` (its table goes first)."""
    root = tmp_path / "IBSR18"
    culprit = _ibsr_tree(root, kind)
    assert check_main(["ibsr18", str(root), "--expect", "2"]) == 1
    out = capsys.readouterr().out
    problems = out.split("\nproblems:\n", 1)[1].strip().splitlines()
    assert len(problems) == 1 and str(culprit) in problems[0], problems
    if kind == "empty_label":
        assert "label map is empty" in problems[0]


@pytest.mark.parametrize("kind", ["corrupt", "empty_label"])
def test_bad_file_in_dataset_tree_eval(kind, tmp_path, capsys):
    """The same trees through eval.py (data=ibsr18): one error line naming the file."""
    culprit = _ibsr_tree(tmp_path / "IBSR18", kind)
    out = tmp_path / "out"
    code = _exit_code(_eval, out, ["model=identity", "data=ibsr18", f"paths.data_dir={tmp_path}",
                                   "data.strict_count=false", "data.shape=[16,16,16]"])
    assert code == 1
    _one_error(capsys.readouterr().err, culprit)
    assert not out.exists()


# ---------------------------------------------------------------- unknown dataset root
@pytest.mark.parametrize("entry", ["eval", "train", "data.check"])
@pytest.mark.parametrize("dataset,folder", [("oasis", "OASIS"), ("ibsr18", "IBSR18")])
def test_unknown_dataset_root(entry, dataset, folder, tmp_path, capsys):
    root = tmp_path / "nonexistent"
    out = tmp_path / "out"
    overrides = [f"data={dataset}", f"paths.data_dir={root}"]
    if entry == "eval":
        code = _exit_code(_eval, out, ["model=identity", *overrides])
    elif entry == "train":
        code = _exit_code(_train, out, overrides)
    else:
        code = check_main([dataset, str(root / folder)])
    assert code == 1
    line = _one_error(capsys.readouterr().err, root / folder)
    assert "data directory not found" in line
    assert not out.exists()


# ---------------------------------------------------------------- unknown config key
@pytest.mark.parametrize("entry,override,named", [
    ("eval", "+data.nope=1", "nope"),
    ("train", "+data.nope=1", "nope"),
    ("eval", "+model.loss.nope=1", "nope"),  # eval.py with a learned model's config
    ("train", "+model.loss.nope=1", "model.loss"),
])
def test_added_config_key_the_code_refuses(entry, override, named, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = ["data=pairs_csv", f"data.csv={_good_csv(tmp_path / 'data')}", override]
    if entry == "eval":
        code = _exit_code(_eval, out, ["model=voxelmorph", *overrides])
    else:
        code = _exit_code(_train, out, ["data.train_csv=null", *overrides])
    assert code == 1
    _one_error(capsys.readouterr().err, named)
    assert not out.exists()


def _cli(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("script,override", [("eval.py", "data.nope=1"), ("train.py", "model.loss.nope=1")])
def test_cli_unknown_config_key_one_line(script, override, tmp_path):
    """Hydra's own error for a key the config lacks: one ``error:`` line (not Hydra's 6), exit 1."""
    out = tmp_path / "out"
    r = _cli([script, override, f"paths.output_dir={out}"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [_one_error(r.stderr, override.split("=")[0])]
    assert not out.exists()


def test_cli_exit_status_of_data_check_and_recipe(tmp_path):
    """The two non-Hydra entry points through the real command line."""
    r = _cli(["-m", "data.check", "ibsr18", str(tmp_path / "nonexistent")])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [_one_error(r.stderr, tmp_path / "nonexistent")]
    csv, culprit = _bad_csv(tmp_path / "data", "empty_label")
    r = _cli(["-m", "experiments.recipe", "--train", "none", "--test", str(csv), "--out", str(tmp_path / "out")])
    assert r.returncode == 1
    _one_error(r.stderr, culprit)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- checkpoint of another model
def _checkpoint(path: Path, model_name: str = "voxelmorph", weights_of: str | None = None, edit=None,
                registration: bool = True, convention: str | None = None) -> Path:
    """What train.py's checkpoints of format 1 held (Lightning's dict + ``on_save_checkpoint``'s
    metadata: the resolved model config); format 2 is tested in tests/test_app.py."""
    import torch
    from omegaconf import OmegaConf

    from app import build_model
    from spatial import DISPLACEMENT_CONVENTION

    cfg = compose("train", [f"model={model_name}", "data=pairs_csv", "data.csv=x.csv"])
    model = build_model(cfg)
    weights = model if weights_of is None else build_model(compose("train", [f"model={weights_of}"]))
    config = OmegaConf.to_container(cfg.model, resolve=True)
    if edit is not None:
        edit(config)
    ckpt = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.4.0",
            "state_dict": weights.state_dict(), "hyper_parameters": {}}
    if registration:
        ckpt["registration"] = {"method": model.method, "model_config": config, "data_config": None,
                                "field": "displacement", "displacement_convention": convention or DISPLACEMENT_CONVENTION}
    torch.save(ckpt, path)
    return path


def _junk(path: Path) -> Path:
    path.write_bytes(b"this is not a checkpoint\n" * 8)
    return path


def _variant(config):
    config["net"]["variant"] = "vxm2"


def _target(config):
    config["_target_"] = "models.NoSuchRegistrationModule"


CHECKPOINTS = {
    "not_a_checkpoint": (lambda p: _junk(p), "cannot read checkpoint"),
    "lightning_without_registration": (lambda p: _checkpoint(p, registration=False), "not a checkpoint written"),
    "config_variant_mismatch": (lambda p: _checkpoint(p, edit=_variant), "does not match its stored model config"),
    "weights_of_another_method": (lambda p: _checkpoint(p, weights_of="lkunet"), "does not match its stored model"),
    "unknown_model_class": (lambda p: _checkpoint(p, edit=_target), "cannot be built here"),
    # e.g. a field in grid_sample's normalised [-1, 1] units, or one that pushes forward
    "another_displacement_convention": (lambda p: _checkpoint(p, convention="normalised [-1, 1], x - u(x)"),
                                        "uses another displacement convention"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_checkpoint_of_another_model(case, tmp_path, capsys):
    make, expected = CHECKPOINTS[case]
    ckpt = make(tmp_path / f"{case}.ckpt")
    out = tmp_path / "out"
    code = _exit_code(_eval, out, [f"ckpt_path={ckpt}", "data=pairs_csv", f"data.csv={_good_csv(tmp_path / 'd')}"])
    assert code == 1
    line = _one_error(capsys.readouterr().err, ckpt, "ckpt_path")
    assert expected in line and len(line) < 600, line
    assert not out.exists()


def test_hand_built_checkpoint_loads(tmp_path):
    """Positive control for the cases above: the unedited hand-built checkpoint evaluates."""
    ckpt = _checkpoint(tmp_path / "good.ckpt")
    summary = _eval(tmp_path / "out", [f"ckpt_path={ckpt}", "data=pairs_csv", f"data.csv={_good_csv(tmp_path / 'd')}"])
    assert summary["method"] == "voxelmorph" and summary["n_pairs"] == 1


# ---------------------------------------------------------------- write failures
def _fail_replace(monkeypatch, suffix: str):
    """``os.replace`` onto a file whose name ends with ``suffix`` fails: the disk is full."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _fail_mkstemp(monkeypatch, folder_part: str):
    """Creating a temporary file in a folder whose path contains ``folder_part`` is refused."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        folder = str(kwargs.get("dir", ""))
        if folder_part in folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(folder, "tmpXYZ"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("target", ["summary.json", "labels.csv", "pairs.csv"])
def test_write_failure_of_the_summary_set_eval(target, tmp_path, monkeypatch, capsys):
    """A failed rename of any of the three leaves none of them (and no temporary file)."""
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    _fail_replace(monkeypatch, os.sep + target)
    assert _exit_code(_eval, out, ["model=identity", "data=pairs_csv", f"data.csv={csv}"]) == 1
    line = _one_error(capsys.readouterr().err, out / target)
    assert "No space left on device" in line and ".tmp" not in line
    _assert_no_results(out)
    assert list((out / ".parts").rglob("*.json")), "the finished pair stays as resume state"
    monkeypatch.undo()  # the disk has room again: a rerun completes from the parts
    assert _exit_code(_eval, out, ["model=identity", "data=pairs_csv", f"data.csv={csv}"]) == 0
    assert all((out / f).exists() for f in ("pairs.csv", "labels.csv", "summary.json"))


def test_write_failure_keeps_an_earlier_complete_set_or_none(tmp_path, monkeypatch, capsys):
    """Rerun into a folder with results: failing before any rename keeps the old set whole;
    failing after one removes the whole set (never a mix of old and new files)."""
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    args = ["model=identity", "data=pairs_csv", f"data.csv={csv}"]
    assert _exit_code(_eval, out, args) == 0
    before = {f: (out / f).read_bytes() for f in ("pairs.csv", "labels.csv", "summary.json")}
    _fail_mkstemp(monkeypatch, str(out))
    assert _exit_code(_eval, out, args) == 1
    _one_error(capsys.readouterr().err, out / "pairs.csv", "Permission denied")
    assert {f: (out / f).read_bytes() for f in before} == before
    monkeypatch.undo()
    _fail_replace(monkeypatch, os.sep + "summary.json")
    assert _exit_code(_eval, out, args) == 1
    _one_error(capsys.readouterr().err, out / "summary.json")
    _assert_no_results(out)


def test_write_failure_of_a_pair_part_eval(tmp_path, monkeypatch, capsys):
    """The per-pair part cannot be written (during the test loop, inside Lightning)."""
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    _fail_mkstemp(monkeypatch, ".parts")
    assert _exit_code(_eval, out, ["model=identity", "data=pairs_csv", f"data.csv={csv}"]) == 1
    line = _one_error(capsys.readouterr().err, out / ".parts", "a__b.json", "Permission denied")
    assert "tmpXYZ" not in line
    _assert_no_results(out)


def test_write_failure_of_a_moved_volume_eval(tmp_path, monkeypatch, capsys):
    """save_outputs=true: the moved displacement NIfTI cannot be written; the pair's moved image
    and label (renamed into place before it) are removed too: the three are written as a set."""
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    _fail_replace(monkeypatch, "_disp.nii.gz")
    code = _exit_code(_eval, out, ["model=identity", "data=pairs_csv", f"data.csv={csv}", "save_outputs=true"])
    assert code == 1
    _one_error(capsys.readouterr().err, out / "moved" / "a__b_disp.nii.gz", "No space left on device")
    _assert_no_results(out)
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*.tmp"))


def test_write_failure_train_test_phase(tmp_path, monkeypatch, capsys):
    """train.py's test phase writes the same results contract (here model=identity with train=false:
    test only; a network with train=false needs a ckpt_path, test_trust_health.py)."""
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    _fail_replace(monkeypatch, os.sep + "summary.json")
    code = _exit_code(_train, out, ["data=pairs_csv", f"data.test_csv={csv}", "model=identity", "train=false"])
    assert code == 1
    _one_error(capsys.readouterr().err, out / "test" / "summary.json")
    _assert_no_results(out)


def test_write_failure_recipe_json(tmp_path, monkeypatch, capsys):
    csv = _good_csv(tmp_path / "data")
    out = tmp_path / "out"
    _fail_replace(monkeypatch, "recipe.json")
    assert _exit_code(recipe.main, ["--train", "none", "--test", str(csv), "--out", str(out)]) == 1
    _one_error(capsys.readouterr().err, out / "recipe.json", "No space left on device")
    _assert_no_results(out)
