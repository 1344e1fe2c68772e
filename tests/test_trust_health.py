"""Training health, config types, signals and checkpoints as data.

* health: a non-finite loss stops training with ONE error naming the global step and the loss
  parts; non-finite weights are never saved nor tested; a network that took no optimiser step
  (``trainer.max_epochs=0``, ``train=false`` without ``ckpt_path``) publishes no results;
  ``train=false ckpt_path=X`` tests X (it tested random weights before); a model with nothing to
  train (identity) only tests.
* config types: a value of the wrong type (or one the optimiser refuses) is ONE error naming the
  key, before any work; every shipped config passes the same check (no false alarms).
* signals: SIGTERM stops train.py at a batch boundary after saving ``last.ckpt`` (exit 143, the
  exact resume command; the resumed run ends with the same weights as an uninterrupted one);
  eval.py and mi_sweep.py stop, keep finished pairs and say how to resume; Ctrl-C during training
  prints the resume command and tests nothing.
* checkpoints as data: a crafted ``.ckpt`` whose pickle would run code is refused without running
  it; truncated / non-checkpoint / non-finite files are one error naming the file and the key
  (``ckpt_path`` of eval.py and train.py, ``model.init_from``).

The subprocess tests use 16^3 pairs-CSV volumes (or 24^3 synthetic data) and poll for the first
checkpoint / pair before signalling (bounded timeouts). Those of train.py, eval.py and mi_sweep.py
take 30-90 s each on 2 busy cores and are marked slow (``pytest -m slow``); the run_method one
(~20 s) and the in-process signal tests run by default.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import ROOT, compose, experiment_names, experiment_script, write_nifti

sys.path.insert(0, str(ROOT))
import eval as eval_entry  # noqa: E402
import train as train_entry  # noqa: E402
from test_bad_inputs import _checkpoint, _exit_code, _one_error, _volumes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
RESULT_FILES = ("pairs.csv", "labels.csv", "summary.json")


# ------------------------------------------------------------------------------ helpers
def _pairs(folder: Path, n_images: int = 3) -> Path:
    """A pairs CSV over ``n_images`` 16^3 images: consecutive pairs both ways (2 (n-1) rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [chr(ord("a") + k) for k in range(n_images)]
    for k, name in enumerate(names):
        img, lab = _volumes(k)
        write_nifti(folder / f"{name}.nii.gz", img)
        write_nifti(folder / f"{name}_seg.nii.gz", lab)
    rows = ["fixed,moving,fixed_label,moving_label"]
    for f, m in zip(names, names[1:]):
        rows += [f"{f}.nii.gz,{m}.nii.gz,{f}_seg.nii.gz,{m}_seg.nii.gz", f"{m}.nii.gz,{f}.nii.gz,{m}_seg.nii.gz,{f}_seg.nii.gz"]
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def _csv_data(csv: Path) -> list[str]:
    return ["data=pairs_csv", f"data.train_csv={csv}", f"data.val_csv={csv}", f"data.test_csv={csv}"]


def _train(out: Path, overrides: list[str]):
    return train_entry.train(compose("train", [f"paths.output_dir={out}", "logger=csv", *FAST, *overrides]))


def _eval(out: Path, overrides: list[str]):
    return eval_entry.evaluate(compose("eval", [f"paths.output_dir={out}", *FAST, *overrides]))


def _results(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name in RESULT_FILES] if folder.exists() else []


def _all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


# ============================================================================== 1. health
def test_nan_loss_stops_with_one_error_naming_the_step_and_the_loss_parts(tmp_path, capsys):
    """lr=1e30: step 0's update blows the weights up, step 1's loss is NaN. One error line with the
    step and every loss part; no test results; every checkpoint on disk holds finite weights."""
    out = tmp_path / "out"
    csv = _pairs(tmp_path / "d", 2)
    code = _exit_code(_train, out, [*_csv_data(csv), "trainer.max_epochs=3", "model.optimizer.lr=1e30"])
    assert code == 1
    line = _one_error(capsys.readouterr().err, "step 1: loss is nan", "sim=", "reg=nan")
    assert "test" not in [p.name for p in out.iterdir()] and not _results(out), line
    ckpts = list(out.rglob("*.ckpt"))
    assert all(_all_finite(p) for p in ckpts), ckpts


class PoisonWeights(L.Callback):
    """Makes one weight NaN after optimiser step ``step`` (before the checkpoint callbacks save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.net.parameters()).view(-1)[0] = float("nan")


def test_non_finite_weights_are_never_saved_nor_tested(tmp_path, capsys):
    """A checkpoint every step; the weights turn NaN after step 3: the save of step 3 is refused
    (one error naming the step), last.ckpt stays the finite state of step 2, nothing is tested."""
    out = tmp_path / "out"
    csv = _pairs(tmp_path / "d", 2)
    every_step = ["callbacks.last_checkpoint.every_n_epochs=null", "callbacks.last_checkpoint.every_n_train_steps=1"]
    poison = ["+callbacks.poison._target_=test_trust_health.PoisonWeights", "+callbacks.poison.step=3"]
    code = _exit_code(_train, out, [*_csv_data(csv), "trainer.max_epochs=4", *every_step, *poison])
    assert code == 1
    _one_error(capsys.readouterr().err, "step 3", "weights non-finite", "net.")
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and _all_finite(out / "checkpoints" / "last.ckpt")
    assert all(_all_finite(p) for p in out.rglob("*.ckpt"))
    assert not _results(out)


def test_a_checkpoint_with_non_finite_weights_is_refused_by_eval_and_train(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "nan.ckpt")
    data = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][key].view(-1)[0] = float("inf")
    torch.save(data, ckpt)
    csv = _pairs(tmp_path / "d", 2)
    assert _exit_code(_eval, tmp_path / "e", [f"ckpt_path={ckpt}", "data=pairs_csv", f"data.csv={csv}"]) == 1
    _one_error(capsys.readouterr().err, "ckpt_path", ckpt, "non-finite", key)
    assert _exit_code(_train, tmp_path / "t", [*_csv_data(csv), "train=false", f"ckpt_path={ckpt}"]) == 1
    _one_error(capsys.readouterr().err, "ckpt_path", ckpt, "non-finite")
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()


def test_no_optimiser_step_publishes_no_results(tmp_path, capsys):
    """trainer.max_epochs=0 trained nothing: before, the random network was tested and published
    as 'voxelmorph'. Now one error, no results. train=false without ckpt_path: the same."""
    csv = _pairs(tmp_path / "d", 2)
    out = tmp_path / "zero"
    assert _exit_code(_train, out, [*_csv_data(csv), "trainer.max_epochs=0"]) == 1
    _one_error(capsys.readouterr().err, "no optimiser step", "trainer.max_epochs=0")
    assert not _results(out)
    out = tmp_path / "untrained"
    assert _exit_code(_train, out, [*_csv_data(csv), "train=false"]) == 1
    _one_error(capsys.readouterr().err, "train=false", "ckpt_path")
    assert not out.exists()
    # ckpt_path=last with nothing saved yet: Lightning would test the fresh weights (with a warning)
    assert _exit_code(_train, out, [*_csv_data(csv), "train=false", "ckpt_path=last"]) == 1
    _one_error(capsys.readouterr().err, "ckpt_path=last", out / "checkpoints" / "last.ckpt")
    assert not _results(out)


def test_train_false_with_ckpt_path_tests_that_checkpoint(tmp_path):
    """train=false ckpt_path=X tests X's weights (the same numbers eval.py gives for X); before,
    it tested the freshly initialised network."""
    csv = _pairs(tmp_path / "d", 2)
    _train(tmp_path / "run", [*_csv_data(csv), "trainer.max_epochs=2", "test=false", "model.optimizer.lr=0.01"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tested = _train(tmp_path / "tested", [*_csv_data(csv), "train=false", f"ckpt_path={ckpt}", "seed=5"])
    evaluated = _eval(tmp_path / "eval", [f"ckpt_path={ckpt}", "data=pairs_csv", f"data.csv={csv}"])
    untrained = eval_entry.evaluate(compose("eval", [f"paths.output_dir={tmp_path / 'fresh'}", *FAST,
                                                     "model=voxelmorph", "data=pairs_csv", f"data.csv={csv}"]))
    assert tested["n_pairs"] == evaluated["n_pairs"] == 2
    assert tested["dice_mean"] == pytest.approx(evaluated["dice_mean"], abs=1e-12)
    assert tested["folding_pct_mean"] == pytest.approx(evaluated["folding_pct_mean"], abs=1e-12)
    assert tested["sdlogj_mean"] != pytest.approx(untrained["sdlogj_mean"], abs=1e-9)


def test_a_model_with_nothing_to_train_only_tests(tmp_path, capsys):
    """model=identity with train=true (the default): tested, not 'trained' (it crashed before)."""
    csv = _pairs(tmp_path / "d", 2)
    summary = _train(tmp_path / "out", [*_csv_data(csv), "model=identity"])
    assert summary["n_pairs"] == 2 and summary["paradigm"] == "identity"
    assert "nothing to train" in capsys.readouterr().out


def test_on_save_checkpoint_keeps_checkpoints_plain_data():
    """Configs, paths and numpy values become plain values; another object stops the save, named."""
    from omegaconf import OmegaConf

    from models.module import RegistrationModule

    module = RegistrationModule(net=torch.nn.Conv3d(2, 3, 1))
    ckpt = {"state_dict": module.state_dict(),
            "datamodule_hyper_parameters": {"shape": OmegaConf.create([8, 8]), "root": Path("/x"),
                                            "spacing": np.float32(1.5), "keys": np.arange(3)}}
    module.on_save_checkpoint(ckpt)
    hp = ckpt["datamodule_hyper_parameters"]
    assert hp["shape"] == [8, 8] and type(hp["shape"]) is list and hp["root"] == "/x"
    assert type(hp["spacing"]) is float and torch.equal(hp["keys"], torch.arange(3))
    ckpt = {"state_dict": module.state_dict(), "callbacks": {"X": {"when": object()}}}
    with pytest.raises(ValueError, match=r"callbacks/X/when holds a builtins.object"):
        module.on_save_checkpoint(ckpt)


# ============================================================================== 2. config types
TYPE_CASES = [  # (entry, overrides, the key the one error names)
    ("eval", ["model=greedy", "model.lr=abc"], "model.lr"),
    ("eval", ["model=greedy", "model.iterations=[a,b]"], "model.iterations[0]"),
    ("eval", ["model=greedy", "model.affine={lr: abc}"], "model.affine.lr"),
    ("eval", ["model=identity", "seed=abc"], "seed"),
    ("eval", ["model=identity", "save_outputs=no"], "save_outputs"),
    ("train", ["seed=abc"], "seed"),
    ("train", ["save_outputs=no"], "save_outputs"),
    ("train", ["test=maybe"], "test"),
    ("train", ["model.optimizer.lr=-1"], "model.optimizer.lr"),
    ("train", ["model.optimizer.lr=abc"], "model.optimizer.lr"),
    ("train", ["model.hd95=1"], "model.hd95"),
    ("train", ["model.net.ndim=three"], "model.net.ndim"),
    ("train", ["trainer.max_epochs=abc"], "trainer.max_epochs"),
    ("train", ["data.n_train=abc"], "data.n_train"),
    ("train", ["callbacks.last_checkpoint.every_n_train_steps=x"], "callbacks.last_checkpoint.every_n_train_steps"),
]


@pytest.mark.parametrize("entry,overrides,key", TYPE_CASES, ids=[" ".join(c[1]) for c in TYPE_CASES])
def test_a_value_of_the_wrong_type_is_one_error_naming_the_key(entry, overrides, key, tmp_path, capsys):
    out = tmp_path / "out"
    fn = _eval if entry == "eval" else _train
    assert _exit_code(fn, out, ["data=mni", "data.shape=[16,16,16]", *overrides]) == 1
    line = _one_error(capsys.readouterr().err, f"{key}:")
    assert len(line) < 300, line
    assert not out.exists()  # before any work


def test_every_shipped_config_passes_the_type_check():
    """No false alarm: every experiment (with its script's config) and every group option."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from app.config_check import check_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for name in experiment_names():
            check_config(hydra_compose(experiment_script(name), [f"experiment={name}", "paths.output_dir=/tmp/unused"]))
        options = {g: sorted(p.stem for p in (ROOT / "configs" / g).glob("*.yaml"))
                   for g in ("model", "data", "trainer", "callbacks", "logger")}
        for i in range(max(map(len, options.values()))):  # every option of every group at least once
            chosen = [f"{g}={names[i % len(names)]}" for g, names in options.items()]
            check_config(hydra_compose("train", [*chosen, "paths.output_dir=/tmp/unused"]))


def test_type_rules():
    import typing

    from app.config_check import _check_value
    from app import ConfigError

    ok = [(1, float), (1.5, float), (True, bool), (None, typing.Optional[int]), ("32-true", typing.Literal["32-true"]),
          (3, typing.Union[float, torch.Tensor])]
    for value, ann in ok:
        _check_value(value, ann, "k")
    bad = [(True, int), (True, float), (1, bool), ("1", int), (1.5, int), ("abc", typing.Union[float, torch.Tensor]),
           ("no", bool)]
    for value, ann in bad:
        with pytest.raises(ConfigError, match=r"^k: expected"):
            _check_value(value, ann, "k")


# ============================================================================== 3. signals
class SigtermAtStep(L.Callback):
    """Sends this process SIGTERM (or ``signame``) after optimiser step ``step`` (what SLURM does at
    a time limit; SIGINT: Ctrl-C)."""

    def __init__(self, step: int, signame: str = "SIGTERM") -> None:
        self.step = step
        self.signum = signal.Signals[signame]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_saves_the_state_of_that_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, capsys):
    """In process: SIGTERM after step 5 of 8 (mid-epoch 2 of 2, 4 steps each). train.py saves
    last.ckpt at step 5, exits 143 naming it and the resume command, tests nothing; resuming with
    ckpt_path=last ends with the same weights and test metrics as an uninterrupted run (CPU).
    MNI data: its training loader resumes mid-epoch (data.loaders.ResumableLoader)."""
    handler_before = signal.getsignal(signal.SIGTERM)
    base = ["data=mni", "data.shape=[32,32,32]", "data.n_train=4", "data.n_val=2", "data.n_test=2",
            "data.pairs_per_epoch=4", "trainer.max_epochs=2", "seed=3"]
    full = _train(tmp_path / "full", base)
    part = tmp_path / "part"
    term = ["+callbacks.term._target_=test_trust_health.SigtermAtStep", "+callbacks.term.step=5"]
    assert _exit_code(_train, part, base + term) == 128 + signal.SIGTERM
    line = _one_error(capsys.readouterr().err, "stopped by SIGTERM at step 5", part / "checkpoints" / "last.ckpt",
                      f"paths.output_dir={part}", "ckpt_path=last", "resume with: python train.py")
    assert "not tested" in line and not (part / "test").exists()
    saved = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (5, 1)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the stop handler is put back
    resumed = _train(part, base + ["ckpt_path=last"])
    wf = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    wr = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert wf["global_step"] == wr["global_step"] == 8
    assert max(float((wf["state_dict"][k] - wr["state_dict"][k]).abs().max()) for k in wf["state_dict"]) == 0.0
    for key in ("dice_mean", "hd95_mean", "folding_pct_mean"):
        assert full[key] == resumed[key], key


class SigtermInValidation(L.Callback):
    """Sends this process SIGTERM after the first validation batch of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_during_validation_resumes_to_the_checkpoint_an_uninterrupted_run_tests(tmp_path, capsys):
    """SIGTERM during the last epoch's validation: a state saved there would resume past that
    validation, so its epoch could never be the best and another checkpoint would be tested. The
    last checkpoint of a validated epoch is kept instead; the resumed run trains and validates the
    interrupted epoch again and tests what an uninterrupted run tests, with its metrics."""
    base = ["data=mni", "data.shape=[32,32,32]", "data.n_train=4", "data.n_val=4", "data.n_test=2",
            "data.pairs_per_epoch=4", "trainer.max_epochs=2", "seed=3"]
    full = _train(tmp_path / "full", base)
    part = tmp_path / "part"
    term = ["+callbacks.term._target_=test_trust_health.SigtermInValidation", "+callbacks.term.epoch=1"]
    assert _exit_code(_train, part, base + term) == 128 + signal.SIGTERM
    _one_error(capsys.readouterr().err, "stopped by SIGTERM", "stopped during validation", "ckpt_path=last")
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # epoch 0's end
    resumed = _train(part, base + ["ckpt_path=last"])
    assert Path(resumed["checkpoint"]).name == Path(full["checkpoint"]).name
    for key in ("dice_mean", "hd95_mean", "folding_pct_mean"):
        assert full[key] == resumed[key], key


def test_pairs_csv_training_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path, capsys):
    """Your own pairs (data=pairs_csv, 4 training pairs): SIGTERM after step 5 of 8 and a resume
    end with the weights of an uninterrupted run: the pair order is drawn from (seed, epoch) and
    the loader replays the batches already trained on (a shuffling DataLoader drew a new order)."""
    csv = _pairs(tmp_path / "d", 3)
    base = [*_csv_data(csv), "trainer.max_epochs=2", "seed=3"]
    _train(tmp_path / "full", base)
    part = tmp_path / "part"
    term = ["+callbacks.term._target_=test_trust_health.SigtermAtStep", "+callbacks.term.step=5"]
    assert _exit_code(_train, part, base + term) == 128 + signal.SIGTERM
    capsys.readouterr()
    _train(part, base + ["ckpt_path=last"])
    wf = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    wr = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert wf["global_step"] == wr["global_step"] == 8
    assert max(float((wf["state_dict"][k] - wr["state_dict"][k]).abs().max()) for k in wf["state_dict"]) == 0.0


@pytest.fixture
def foreground_sigint():
    """Python's own Ctrl-C handler for the test: a suite started in the background (``cmd &`` in a
    non-interactive shell) inherits SIGINT ignored, which the stop handler rightly leaves alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_saves_the_state_of_that_step_like_sigterm(tmp_path, capfd, foreground_sigint):
    """In process: Ctrl-C (SIGINT) after step 2 stops train.py at that batch boundary (not wherever
    Python's KeyboardInterrupt would land, which a __del__ can swallow): last.ckpt holds step 2, exit
    130 with the resume command, nothing tested; Python's Ctrl-C handler is put back."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    base = ["data=mni", "data.shape=[24,24,24]", "data.n_train=4", "data.n_val=2", "data.n_test=2",
            "data.pairs_per_epoch=4", "trainer.max_epochs=3"]
    part = tmp_path / "part"
    stop = ["+callbacks.term._target_=test_trust_health.SigtermAtStep", "+callbacks.term.step=2",
            "+callbacks.term.signame=SIGINT"]
    assert _exit_code(_train, part, base + stop) == 128 + signal.SIGINT
    err = capfd.readouterr().err  # (the handler's notice is written to the file descriptor)
    assert "Ctrl-C: stopping at the next batch boundary" in err
    line = _one_error(err, "stopped by Ctrl-C (SIGINT) at step 2", part / "checkpoints" / "last.ckpt",
                      "(step 2)", "ckpt_path=last", "resume with: python train.py")
    assert "not tested" in line and not (part / "test").exists()
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_outside_a_trainer_stops_at_once_and_twice_inside_one_forces_the_stop(foreground_sigint):
    """The handler alone: outside a Lightning run Ctrl-C raises Stopped(SIGINT) at once; inside one
    (a trainer's SIGTERM handler in front) the first asks that handler to stop at the next batch and
    returns, and a second Ctrl-C raises KeyboardInterrupt."""
    from app import stopping

    with pytest.raises(stopping.Stopped) as got, stopping.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert got.value.exit_code == 130
    asked = []
    with stopping.installed():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked.append(signum))  # "Lightning"
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            assert asked == [signal.SIGTERM] and stopping.requested() == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_when(proc: subprocess.Popen, ready, signum: int, timeout: float = 240) -> tuple[int, str, str]:
    """Send ``signum`` once ``ready()`` holds (polled); the exit status, stdout and stderr."""
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - start > timeout:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never ready (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.1)
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"did not stop after the signal: {err[-2000:]}")
    return proc.returncode, out, err


def _resume_words(line: str) -> list[str]:
    command = line.split("resume with: ", 1)[1]
    words = shlex.split(command)
    assert words[0] == "python"
    return words[1:]


def _train_args(csv: Path, out: Path) -> list[str]:
    return ["train.py", "logger=csv", *FAST, *_csv_data(csv), "trainer.max_epochs=100000",
            "callbacks.last_checkpoint.every_n_epochs=null", "callbacks.last_checkpoint.every_n_train_steps=1",
            f"paths.output_dir={out}"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_py_stopped_by_a_signal_prints_the_exact_resume_command(signum, tmp_path):
    """A real train.py, signalled once its first last.ckpt exists: SIGTERM exits 143 and Ctrl-C 130,
    each after saving last.ckpt at the step it stopped at. Both print the
    command with the run's own overrides, paths.output_dir pinned and ckpt_path=last, and test nothing."""
    csv = _pairs(tmp_path / "d", 2)
    out = tmp_path / "out"
    args = _train_args(csv, out)
    code, _, err = _signal_when(_start(args), lambda: (out / "checkpoints" / "last.ckpt").exists(), signum)
    assert code == 128 + signum, err[-3000:]
    line = _one_error(err)
    assert _resume_words(line) == ["train.py", *args[1:], "ckpt_path=last"]
    assert not (out / "test").exists()
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
    assert "not tested" in line
    if "stopped during validation" in line:  # signalled during a validation: the last saved state is kept
        assert f"{out / 'checkpoints' / 'last.ckpt'} is kept as last saved" in line
    else:
        assert f"stopped by {name} at step {saved['global_step']} " in line
        assert f"saved {out / 'checkpoints' / 'last.ckpt'} (step {saved['global_step']})" in line


@pytest.mark.slow
def test_eval_py_stopped_by_sigterm_keeps_finished_pairs_and_resumes(tmp_path):
    """eval.py (greedy, 2 pairs) gets SIGTERM once the first pair is written: exit 143, no summary,
    the finished pairs kept; running the printed command completes the rest only."""
    csv = _pairs(tmp_path / "d", 2)
    out = tmp_path / "out"
    args = ["eval.py", "model=greedy", *FAST, "data=pairs_csv", f"data.csv={csv}", f"paths.output_dir={out}"]
    code, _, err = _signal_when(_start(args), lambda: any((out / ".parts").rglob("*.json")), signal.SIGTERM)
    assert code == 143, err[-3000:]
    line = _one_error(err, "stopped by SIGTERM", f"finished pairs are kept in {out}")
    assert _resume_words(line) == args
    parts = {p: p.stat().st_mtime_ns for p in (out / ".parts").rglob("*.json")}
    assert len(parts) >= 1 and not (out / "summary.json").exists()
    rerun = subprocess.run([sys.executable, *_resume_words(line)], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "WANDB_MODE": "offline"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 pairs" in rerun.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in parts.items())  # finished pairs not redone


@pytest.mark.slow
def test_mi_sweep_stops_on_sigterm(tmp_path):
    """mi_sweep.py ran on to the end when SIGTERM came during a level's last pair (Lightning lets
    that one pass and the next level's trainer forgot it). Now: exit 143, no fit written, level 0's
    pairs kept, the resume command printed."""
    out = tmp_path / "out"
    args = ["-m", "experiments.mi_sweep", "data.shape=[24,24,24]", "data.n_test=3", *FAST, f"paths.output_dir={out}"]
    code, _, err = _signal_when(_start(args), lambda: any((out / "level_00" / ".parts").rglob("*.json")),
                                signal.SIGTERM)
    assert code == 143, err[-3000:]
    line = _one_error(err, "stopped by SIGTERM", str(out))
    assert _resume_words(line) == args
    assert not (out / "mi_fit.json").exists() and not (out / "level_01").exists()
    assert list((out / "level_00" / ".parts").rglob("*.json"))


# ============================================================================== 4. checkpoints as data
class RunsCode:
    """Pickles as a call of ``os.system``: loading it with plain pickle runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _crafted(path: Path, marker: Path) -> Path:
    """A checkpoint-looking dict (registration metadata and all) that also carries code."""
    good = torch.load(_checkpoint(path), weights_only=True)
    good["callbacks"] = {"payload": RunsCode(f"touch {shlex.quote(str(marker))}")}
    torch.save(good, path)
    return path


def test_the_crafted_checkpoint_would_run_code_with_a_plain_load(tmp_path):
    """Positive control for the cases below: an unrestricted load runs the payload."""
    marker = tmp_path / "control_marker"
    ckpt = _crafted(tmp_path / "evil.ckpt", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def _through(key: str, ckpt: Path, out: Path, csv: Path) -> int:
    if key == "eval ckpt_path":
        return _exit_code(_eval, out, [f"ckpt_path={ckpt}", "data=pairs_csv", f"data.csv={csv}"])
    if key == "train ckpt_path":
        return _exit_code(_train, out, [*_csv_data(csv), "trainer.max_epochs=2", f"ckpt_path={ckpt}"])
    if key == "model.init_from":
        return _exit_code(_eval, out, ["model=greedy_fast", f"model.init_from={ckpt}", "data=pairs_csv",
                                       f"data.csv={csv}"])
    raise AssertionError(key)


def _truncated(path: Path) -> Path:
    data = _checkpoint(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(path: Path) -> Path:
    path.write_text("this is not a checkpoint\n" * 8)
    return path


KEYS = ["eval ckpt_path", "train ckpt_path", "model.init_from"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", ["crafted", "truncated", "text"])
def test_a_bad_checkpoint_is_one_error_naming_file_and_key_and_runs_no_code(kind, key, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / f"{kind}.ckpt"
    ckpt = {"crafted": lambda: _crafted(path, marker), "truncated": lambda: _truncated(path),
            "text": lambda: _text(path)}[kind]()
    csv = _pairs(tmp_path / "d", 2)
    out = tmp_path / "out"
    assert _through(key, ckpt, out, csv) == 1
    line = _one_error(capsys.readouterr().err, key.split()[-1], ckpt, "cannot read checkpoint")
    if kind == "crafted":
        assert "not plain data" in line and "(GLOBAL posix.system)" in line, line
    assert not marker.exists()
    assert not out.exists()


def test_lightning_resume_reads_last_ckpt_as_data(tmp_path, capsys):
    """train.py ckpt_path=last (Lightning finds checkpoints/last.ckpt and loads it): the same reader,
    so a crafted last.ckpt is refused without running its payload."""
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    _crafted(out / "checkpoints" / "last.ckpt", marker)
    csv = _pairs(tmp_path / "d", 2)
    assert _exit_code(_train, out, [*_csv_data(csv), "trainer.max_epochs=2", "ckpt_path=last"]) == 1
    _one_error(capsys.readouterr().err, "ckpt_path", out / "checkpoints" / "last.ckpt", "not plain data")
    assert not marker.exists() and not _results(out)


def test_a_train_py_checkpoint_loads_as_data(tmp_path):
    """What train.py writes loads with weights_only=True and the project's (empty) allow-list,
    and initialises a refined classical method (model.init_from)."""
    from app.checkpoints import CHECKPOINT_SAFE_GLOBALS, read_checkpoint

    csv = _pairs(tmp_path / "d", 2)
    _train(tmp_path / "run", [*_csv_data(csv), "trainer.max_epochs=1", "test=false"])
    for path in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            torch.load(path, weights_only=True)
        assert math.isfinite(float(read_checkpoint(path)["global_step"]))
    summary = _eval(tmp_path / "hybrid", ["model=greedy_fast", "model.iterations=[2,2,2]",
                                          f"model.init_from={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                          "data=pairs_csv", f"data.csv={csv}"])
    assert summary["paradigm"] == "hybrid" and summary["n_pairs"] == 2


# ============================================================================== 5. a launcher's requeue signal
class SignalAtStep(L.Callback):
    """Sends this process ``signum`` after optimiser step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, int(signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_a_launchers_requeue_signal_saves_first_then_the_launcher_requeues(tmp_path, capsys):
    """submitit (hydra/launcher=slurm) requeues on SIGUSR2 from its own handler and exits. With
    such a handler installed, train.py first saves last.ckpt at the next batch boundary, prints the
    resume line, then calls the launcher's handler (once), whose exit ends the run."""
    calls = []

    def launcher(signum, frame):  # what submitit's handler does: requeue, then sys.exit(-1)
        calls.append((signum, (tmp_path / "part" / "checkpoints" / "last.ckpt").exists()))
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, launcher)
    try:
        csv = _pairs(tmp_path / "d", 2)
        usr2 = ["+callbacks.term._target_=test_trust_health.SignalAtStep", "+callbacks.term.step=3",
                f"+callbacks.term.signum={int(signal.SIGUSR2)}"]
        code = _exit_code(_train, tmp_path / "part", [*_csv_data(csv), "trainer.max_epochs=50", *usr2])
        assert signal.getsignal(signal.SIGUSR2) is launcher  # put back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert code == -1 and calls == [(signal.SIGUSR2, True)]
    _one_error(capsys.readouterr().err, "stopped by SIGUSR2 at step 3", "ckpt_path=last")
    assert torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (tmp_path / "part" / "test").exists()


def test_compare_and_domain_shift_pass_sigterm_on_to_the_method_they_run(tmp_path):
    """experiments/runs.run_method (compare.py, domain_shift.py) stopped by SIGTERM while its eval.py
    child runs: the child gets SIGTERM too (it used to be SIGKILLed), keeps its finished pairs and
    exits 143 with its own resume line; the parent's stop propagates (guarded prints its resume)."""
    import threading

    from app import stopping
    from experiments.runs import run_method

    csv = _pairs(tmp_path / "d", 2)
    parts = tmp_path / "cmp" / "runs" / "greedy" / ".parts"

    def signal_when_a_pair_is_done():
        start = time.monotonic()
        while not any(parts.rglob("*.json")) and time.monotonic() - start < 240:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_a_pair_is_done, daemon=True).start()
    with pytest.raises(stopping.Stopped), stopping.installed():
        run_method("greedy", "eval", ["model=greedy", *FAST, "data=pairs_csv", f"data.csv={csv}"], tmp_path / "cmp")
    log = (tmp_path / "cmp" / "runs" / "greedy.log").read_text()
    assert "error: stopped by SIGTERM; finished pairs are kept in" in log, log[-2000:]
    assert any(parts.rglob("*.json")) and not (tmp_path / "cmp" / "runs" / "greedy" / "summary.json").exists()
