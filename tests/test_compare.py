"""experiments/compare.py: loading, alignment, statistics against scipy, writers, command line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from data.io import DataError
from experiments import comparison as cmp
from experiments.compare import write_comparison
from app import ConfigError
from app.results import PAIR_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ["-m", "experiments.compare"]


def fake_results(folder: Path, method: str, paradigm: str | None, dice: dict, hd95: dict | None = None,
                 **summary_keys) -> Path:
    """A results folder: pairs.csv (contract columns) + summary.json; ``dice``: (fixed, moving) -> value."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        w.writeheader()
        for (f, m), d in dice.items():
            w.writerow({"fixed_id": f, "moving_id": m, "method": method, "dice": d,
                        "hd95": (hd95 or {}).get((f, m), 2.0), "sdlogj": 0.1, "sdlogj_l2r": 0.03,
                        "folding_pct": 0.0, "seconds": 1.5, "dice_identity": 0.6,
                        "mae_identity": 0.125})
    summary = {"method": method, "n_pairs": len(dice), **summary_keys}
    if paradigm is not None:
        summary["paradigm"] = paradigm
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


PAIRS = [(f"s{k:02d}", f"s{k + 1:02d}") for k in range(12)]
RNG = np.random.default_rng(0)
TABLE = {  # fixed table: (12 pairs, 3 methods)
    "greedy": 0.78 + 0.02 * RNG.standard_normal(12),
    "vxm": 0.80 + 0.02 * RNG.standard_normal(12),
    "tm": 0.79 + 0.03 * RNG.standard_normal(12),
}
PARADIGM = {"greedy": "classical", "vxm": "supervised", "tm": "unsupervised"}


@pytest.fixture
def three(tmp_path):
    return {n: fake_results(tmp_path / n, n, PARADIGM[n], dict(zip(PAIRS, v.tolist())),
                            hd95=dict(zip(PAIRS, (3.0 - v).tolist()))) for n, v in TABLE.items()}


def test_load_results(three, tmp_path):
    r = cmp.load_results(three["vxm"])
    assert r.name == "vxm" and r.paradigm == "supervised" and len(r.rows) == 12
    assert r.rows[PAIRS[3]]["dice"] == pytest.approx(TABLE["vxm"][3])
    assert cmp.load_results(three["vxm"], name="x", paradigm="hybrid").paradigm == "hybrid"
    # no paradigm in summary.json (older folder): unknown; a train.py run folder is read from test/
    old = fake_results(tmp_path / "run" / "test", "old", None, {PAIRS[0]: 0.5})
    r = cmp.load_results(tmp_path / "run")
    assert r.paradigm == "unknown" and r.source == old


def test_pvalues_equal_scipy(three):
    results = [cmp.load_results(three[n]) for n in TABLE]
    comp = cmp.compare(results, "dice")
    assert comp.values.shape == (12, 3) and comp.pairs == sorted(PAIRS)
    tests = {(t["method_a"], t["method_b"]): t for t in comp.tests}
    assert set(tests) == {("greedy", "vxm"), ("greedy", "tm")}
    for (a, b), t in tests.items():
        assert t["p_wilcoxon"] == pytest.approx(stats.wilcoxon(TABLE[b], TABLE[a]).pvalue, rel=1e-12)
        assert t["p_ttest"] == pytest.approx(stats.ttest_rel(TABLE[b], TABLE[a]).pvalue, rel=1e-12)
        assert t["mean_diff"] == pytest.approx((TABLE[b] - TABLE[a]).mean())
        assert t["better"] == (b if t["mean_diff"] > 0 else a)
    table = {r["method"]: r for r in comp.table}
    assert table["tm"]["mean"] == pytest.approx(TABLE["tm"].mean())
    assert table["tm"]["std"] == pytest.approx(TABLE["tm"].std(ddof=1))
    assert table["tm"]["median"] == pytest.approx(np.median(TABLE["tm"]))
    assert len(cmp.paired_tests(results, "dice", pairs="all")) == 3
    # lower is better for hd95 (here 3 - dice): the same method wins, the difference flips sign
    hd = {(t["method_a"], t["method_b"]): t for t in cmp.paired_tests(results, "hd95")}
    for key, t in tests.items():
        assert hd[key]["better"] == t["better"] and hd[key]["mean_diff"] == pytest.approx(-t["mean_diff"])


def test_align_drops_non_common_pairs(tmp_path):
    a = cmp.load_results(fake_results(tmp_path / "a", "a", "classical", {p: 0.7 for p in PAIRS[:5]}))
    b = cmp.load_results(fake_results(tmp_path / "b", "b", "supervised", {p: 0.8 for p in PAIRS[2:8]}))
    with pytest.warns(cmp.CompareWarning) as rec:
        pairs, values = cmp.align([a, b])
    assert pairs == PAIRS[2:5] and values.shape == (3, 2)
    msgs = " ".join(str(w.message) for w in rec)
    assert "a: 2 of 5 pairs" in msgs and "b: 3 of 6 pairs" in msgs
    # a non-finite metric in one method drops that pair for everyone
    c = cmp.load_results(fake_results(tmp_path / "c", "c", "classical", {p: 0.7 for p in PAIRS[2:5]},
                                      hd95={PAIRS[3]: float("nan")}))
    with pytest.warns(cmp.CompareWarning) as rec:
        pairs, _ = cmp.align([a, b, c], "hd95")
    assert any("NaN/inf for 1 of 3" in str(w.message) for w in rec)
    assert pairs == [PAIRS[2], PAIRS[4]]


def test_results_scored_differently_are_not_compared(tmp_path):
    """Nearest vs linear label warping moves Dice by about 0.01 (the paper's gap between classical
    methods), another metrics version is another scorer: pairing them is refused, naming both folders;
    a folder that does not say (no summary value) passes."""
    dice = {p: 0.7 for p in PAIRS[:4]}
    a = cmp.load_results(fake_results(tmp_path / "a", "a", "classical", dice, label_interp="nearest",
                                      metrics_version=5))
    b = cmp.load_results(fake_results(tmp_path / "b", "b", "supervised", dice, label_interp="linear",
                                      metrics_version=5))
    c = cmp.load_results(fake_results(tmp_path / "c", "c", "classical", dice, label_interp="nearest",
                                      metrics_version=4))
    old = cmp.load_results(fake_results(tmp_path / "old", "old", "classical", dice))
    assert cmp.align([a, old])[0] == PAIRS[:4]
    with pytest.raises(ConfigError, match=r"label_interp is 'nearest' in a \(.*a\) but 'linear' in b \(.*b\)"):
        cmp.align([a, old, b])
    with pytest.raises(ConfigError, match=r"metrics_version is 5 in a .* but 4 in c"):
        cmp.compare([a, c], "dice")


def test_zero_differences_give_p_one(tmp_path):
    same = {p: 0.75 + 0.01 * k for k, p in enumerate(PAIRS)}
    a = cmp.load_results(fake_results(tmp_path / "a", "a", "classical", same))
    b = cmp.load_results(fake_results(tmp_path / "b", "b", "unsupervised", same))
    (t,) = cmp.paired_tests([a, b])
    assert t["p_wilcoxon"] == 1.0 and t["p_ttest"] == 1.0 and t["mean_diff"] == 0.0
    assert t["better"] == "tie" and "zero" in t["note"]


def test_bad_input_one_clear_error(tmp_path, three):
    with pytest.raises(DataError, match="pairs.csv"):
        cmp.load_results(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"empty_dir/pairs\.csv"):
        cmp.load_results(tmp_path / "empty_dir")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pairs.csv").write_text("fixed_id,moving_id,dice\na,b,0.5\n")
    with pytest.raises(DataError, match=r"bad/pairs\.csv: missing column\(s\) method,hd95"):
        cmp.load_results(bad)
    (bad / "pairs.csv").write_text(",".join(PAIR_COLUMNS) + "\na,b,m,oops" + ",1" * (len(PAIR_COLUMNS) - 4) + "\n")
    with pytest.raises(DataError, match="line 2, column dice"):
        cmp.load_results(bad)
    a = cmp.load_results(fake_results(tmp_path / "a", "a", "classical", {PAIRS[0]: 0.7}))
    b = cmp.load_results(fake_results(tmp_path / "b", "b", "supervised", {PAIRS[1]: 0.8}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cmp.CompareWarning)
        with pytest.raises(DataError, match="no pair is common to all methods"):
            cmp.align([a, b])
    results = [cmp.load_results(three["greedy"]), cmp.load_results(three["vxm"])]
    for fn in (cmp.align, cmp.summary_table, cmp.paired_tests, cmp.compare):
        with pytest.raises(ConfigError, match="metric: unknown metric 'jaccard'"):
            fn(results, "jaccard")
    with pytest.raises(ConfigError, match="tests: unknown value"):
        cmp.paired_tests(results, pairs="some")


def test_writers(three, tmp_path):
    comp = cmp.compare([cmp.load_results(three[n]) for n in TABLE], "dice")
    paths = write_comparison(tmp_path / "out", comp)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["method"] for r in rows] == list(TABLE)
    greedy = rows[0]
    assert float(greedy["p_wilcoxon_vs_vxm"]) == pytest.approx(stats.wilcoxon(TABLE["vxm"], TABLE["greedy"]).pvalue)
    assert greedy["p_ttest_vs_tm"] != "" and rows[1]["p_ttest_vs_tm"] == ""  # vxm vs tm not tested
    assert len(list(csv.DictReader(open(paths["tests"])))) == 2
    md = paths["md"].read_text()
    assert "| greedy | classical | 12 |" in md and "| classical | learned | Δmean |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def _run(args, timeout=120):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def _methods(spec: dict) -> str:
    inner = ", ".join(f"{name}: {value}" for name, value in spec.items())
    return f"methods={{{inner}}}"


def test_cli_results_folders(three, tmp_path):
    out = tmp_path / "cmp"
    r = _run([_methods({n: f"{{results: '{p}'}}" for n, p in three.items()}), f"paths.output_dir={out}",
              f"hydra.run.dir={tmp_path / 'hydra'}", "paradigm={tm: hybrid}"])
    assert r.returncode == 0, r.stderr
    for f in ("comparison.csv", "comparison.md", "comparison.png", "tests.csv"):
        assert (out / f).is_file(), f
    assert "| tm | hybrid | 12 |" in r.stdout
    # bad input through the command line: one error line naming the folder, exit 1
    r = _run([_methods({"greedy": f"{{results: '{three['greedy']}'}}", "x": f"{{results: '{tmp_path / 'nope'}'}}"}),
              f"paths.output_dir={tmp_path / 'cmp2'}", f"hydra.run.dir={tmp_path / 'hydra'}"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]


@pytest.mark.slow  # ~45 s: one eval.py subprocess per method; test_cli_results_folders covers the comparison itself
def test_cli_runs_eval_subprocesses(tmp_path):
    """Two methods given as eval.py overrides: run in subprocesses, then resumed without running."""
    data = "'data=mni', 'data.shape=[64,64,64]', 'data.n_train=2', 'data.n_val=0', 'data.n_test=3', " \
           "'trainer.accelerator=cpu', 'trainer.enable_progress_bar=false'"
    methods = _methods({"identity": f"{{eval: ['model=identity', {data}]}}",
                        "identity2": f"{{eval: ['model=identity', {data}]}}"})
    out = tmp_path / "cmp"
    args = [methods, "tests=all", f"paths.output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    r = _run(args, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("identity", "identity2"):
        s = json.loads((out / "runs" / name / "summary.json").read_text())
        assert s["n_pairs"] == 2 and s["paradigm"] == "identity"
    tests = list(csv.DictReader(open(out / "tests.csv")))
    assert len(tests) == 1 and float(tests[0]["p_wilcoxon"]) == 1.0  # same method twice: all zero
    # rerun with a third, failing method: the two finished runs reuse every pair (resume), the
    # failing one ends the command with one error naming the method
    methods = methods[:-1] + ", broken: {eval: ['model=identity', 'data=pairs_csv', " \
        "'data.csv=/nonexistent/p.csv', 'data.train_csv=null']}}"
    r = _run([methods, *args[1:]])
    assert r.stdout.count("earlier results in") == 2 and r.stdout.count("reused 2 of 2 pairs") == 2, r.stdout[-2000:]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith("error: methods.broken: eval.py failed"), r.stderr[-2000:]
    assert "p.csv" in lines[-1] and (out / "runs" / "broken.log").is_file()


def test_cli_logs_tables_figure_and_means_to_wandb_offline(three, tmp_path):
    """logger=wandb without credentials: one offline run holding the summary and test tables,
    the boxplot and each method's mean (to sync later with `wandb sync`)."""
    out = tmp_path / "cmp"
    r = _run([_methods({n: f"{{results: '{p}'}}" for n, p in three.items()}), f"paths.output_dir={out}",
              f"hydra.run.dir={tmp_path / 'hydra'}", "logger=wandb"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    summary = json.loads(next(runs[0].rglob("media/table/compare/summary_*.table.json")).read_text())
    assert [row[summary["columns"].index("method")] for row in summary["data"]] == list(TABLE)
    tests = json.loads(next(runs[0].rglob("media/table/compare/tests_*.table.json")).read_text())
    assert len(tests["data"]) == 2  # greedy (classical) against vxm and tm
    assert list(runs[0].rglob("media/images/compare/boxplot_*.png"))
    record = next(runs[0].glob("run-*.wandb")).read_bytes()  # the offline log: scalars by key
    assert all(f"compare/{n}/dice_mean".encode() in record for n in TABLE)


def test_train_common_follows_every_train_method():
    """``train_common`` (as in domain_shift.py) is appended to every ``{train: [...]}`` method's own
    overrides, so it wins over a method's value of the same key; eval and results methods keep theirs."""
    from omegaconf import OmegaConf

    from conftest import compose
    from experiments.compare import _method_specs

    cfg = OmegaConf.create({"methods": {"r": {"results": "somewhere"}, "e": {"eval": ["model=identity"]},
                                        "t": {"train": "model=lkunet trainer.max_epochs=8"}},
                            "train_common": ["trainer.max_epochs=4", "logger=csv"], "paradigm": None})
    specs = {name: (kind, value) for name, kind, value in _method_specs(cfg)}
    assert specs == {"r": ("results", "somewhere"), "e": ("eval", ["model=identity"]),
                     "t": ("train", ["model=lkunet", "trainer.max_epochs=8", "trainer.max_epochs=4", "logger=csv"])}
    assert compose("train", specs["t"][1]).trainer.max_epochs == 4
    cfg.train_common = ["paths.output_dir=/x"]
    with pytest.raises(ConfigError, match="train_common: do not set paths.output_dir"):
        _method_specs(cfg)
    # mni_networks states its training budget once: every network gets it, lapirn its stages too
    cfg = compose("compare", ["experiment=compare/mni_networks"])
    budget = ["trainer.max_epochs=4", "data.pairs_per_epoch=50", "model.downsize=2", "model.loss_grid=coarse"]
    trains = {name: value for name, kind, value in _method_specs(cfg) if kind == "train"}
    assert len(trains) == 11 and all(value[-4:] == budget for value in trains.values())
    lapirn = compose("train", trains["lapirn_sup"] + list(cfg.common))
    assert (lapirn.trainer.max_epochs, lapirn.data.pairs_per_epoch, lapirn.model.downsize, lapirn.model.loss_grid,
            list(lapirn.model.stage_epochs), lapirn.model.loss.dice_weight) == (4, 50, 2, "coarse", [1, 2], 1.0)


def test_run_method_reruns_the_script_and_refuses_another_command(tmp_path, monkeypatch, capsys):
    """runs/<name>.command.json: a rerun launches the script again (it reuses what is unchanged: a
    folder is never skipped on the strength of its summary.json, which a changed checkpoint file,
    config or data set behind the same overrides would make stale); other overrides under the same
    name, or a folder without a record, stop with one error naming the method; nothing is run then."""
    import experiments.runs as runs
    from app import ConfigError

    started, cwds = [], []

    class FakeRun:  # stands in for the eval.py / train.py subprocess
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            cwds.append(kwargs.get("cwd"))
            self.stdout = iter(["done\n"])

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(runs.subprocess, "Popen", FakeRun)
    out = tmp_path / "cmp"
    over = ["model=greedy", "data=mni"]
    runs.run_method("greedy", "eval", over, out)  # first run: records its command
    record = json.loads((out / "runs" / "greedy.command.json").read_text())
    assert record == {"script": "eval.py", "overrides": over} and len(started) == 1
    assert cwds == [os.getcwd()]  # relative paths mean to the run what they meant to this script
    (out / "runs" / "greedy").mkdir()
    (out / "runs" / "greedy" / "summary.json").write_text("{}")
    assert runs.run_method("greedy", "eval", over, out) == out / "runs" / "greedy"
    assert "earlier results in" in capsys.readouterr().out and len(started) == 2
    with pytest.raises(ConfigError, match=r"^methods\.greedy: .* was made by another command \(eval\.py model=greedy "
                                          r"data=mni; now eval\.py model=greedy data=mni model\.lr=0\.1\)"):
        runs.run_method("greedy", "eval", over + ["model.lr=0.1"], out)
    assert len(started) == 2
    (out / "runs" / "vxm").mkdir()
    (out / "runs" / "vxm" / "last.ckpt").write_text("")
    with pytest.raises(ConfigError, match=r"^methods\.vxm: .* whose command was not recorded"):
        runs.run_method("vxm", "train", ["experiment=x"], out)
    assert len(started) == 2


def test_results_of_different_data_under_the_same_pair_ids_are_refused(three, tmp_path):
    """Dice before registration depends on the pair's label maps only: two folders that disagree on
    it for a shared pair were evaluated on different data (another dataset with the same file names,
    another label protocol) and are not paired; the error names the pair and both folders."""
    other = fake_results(tmp_path / "other", "other", "classical", dict(zip(PAIRS, TABLE["vxm"].tolist())))
    clean = (other / "pairs.csv").read_text()
    (other / "pairs.csv").write_text(clean.replace(",0.6,", ",0.55,", 1))  # the first pair's identity Dice
    results = [cmp.load_results(three["greedy"]), cmp.load_results(other)]
    with pytest.raises(DataError, match=rf"pair s00 <- s01: Dice before registration \(dice_identity\) is 0.6 in "
                                        rf"greedy \({three['greedy']}\) but 0.55 in other \({other}\)"):
        cmp.align(results)
    # the same label maps under other images (another contrast): the images' difference tells them apart
    (other / "pairs.csv").write_text(clean.replace(",0.125\n", ",0.25\n", 1))
    with pytest.raises(DataError, match=r"pair s00 <- s01: mean \|fixed - moving\| before registration "
                                        r"\(mae_identity\) is 0.125 in greedy .* but 0.25 in other"):
        cmp.align([cmp.load_results(three["greedy"]), cmp.load_results(other)])
    assert len(cmp.align([cmp.load_results(three[n]) for n in ("greedy", "vxm")])[0]) == 12  # same data: fine


@pytest.mark.parametrize("name", ["paper_fig2_unsup", "paper_fig4_sup"])
def test_paper_comparisons_train_with_the_oasis_recipes_and_the_papers_classical_smoothing(name):
    """compare/paper_fig2_unsup and paper_fig4_sup train each network with its oasis_* recipe (Adam 1e-4,
    300 epochs, full resolution; not the model's CPU defaults) and run greedy / SyN with the paper's
    smoothing (grad / warp sigma 1 / 0.25 and 0.5 / 0.25)."""
    from conftest import compose

    from experiments.runs import method_overrides

    cfg = compose("compare", [f"experiment=compare/{name}"])
    sigma = {"greedy": (1.0, 0.25), "syn": (0.5, 0.25)}
    trained = 0
    for method, spec in cfg.methods.items():
        kind = next(iter(spec))
        overrides = method_overrides(kind, spec[kind], f"methods.{method}.{kind}", cfg) + list(cfg.common)
        run_cfg = compose("train" if kind == "train" else "eval", overrides)
        assert run_cfg.data._target_ == "data.OASISDataModule", method
        if kind == "train":
            trained += 1
            assert run_cfg.model.optimizer.lr == 1e-4 and run_cfg.trainer.max_epochs == 300, method
            assert run_cfg.model.downsize == 1 and run_cfg.model.loss_grid == "full", method
            assert (run_cfg.model.loss.dice_weight > 0) == name.endswith("_sup"), method
        elif method in sigma:
            assert (run_cfg.model.grad_sigma, run_cfg.model.warp_sigma) == sigma[method], method
    assert trained == (5 if name.endswith("unsup") else 4)


def test_pairs_that_share_subjects_get_a_test_by_fixed_subject(tmp_path):
    """All ordered pairs of 5 subjects (20 pairs): the pair-level tests treat them as independent, so
    the row says how many subjects they share and adds the Wilcoxon test of each fixed subject's mean
    difference (scipy on the 5 means); consecutive pairs (one per fixed subject) leave it blank."""
    from scipy import stats

    ids = [f"s{k}" for k in range(5)]
    ordered = [(f, m) for f in ids for m in ids if f != m]
    rng = np.random.default_rng(0)
    a_vals = {p: 0.7 + 0.01 * rng.standard_normal() for p in ordered}
    b_vals = {p: a_vals[p] + 0.02 + 0.01 * rng.standard_normal() for p in ordered}
    a = cmp.load_results(fake_results(tmp_path / "a", "a", "classical", a_vals))
    b = cmp.load_results(fake_results(tmp_path / "b", "b", "supervised", b_vals))
    (t,) = cmp.compare([a, b], "dice").tests
    means = [np.mean([b_vals[p] - a_vals[p] for p in ordered if p[0] == f]) for f in sorted(ids)]
    assert t["n"] == 20 and t["n_subjects"] == 5 and t["n_fixed"] == 5
    assert t["p_wilcoxon_by_fixed"] == pytest.approx(stats.wilcoxon(means).pvalue)
    assert "20 pairs share 5 subjects" in t["note"] and t["p_wilcoxon_by_fixed"] > t["p_wilcoxon"]
    chain = {(f"s{k}", f"s{k + 1}"): 0.7 + 0.01 * k for k in range(4)}
    (t,) = cmp.compare([cmp.load_results(fake_results(tmp_path / "c", "c", "classical", chain)),
                        cmp.load_results(fake_results(tmp_path / "d", "d", "supervised",
                                                      {p: v + 0.01 for p, v in chain.items()}))], "dice").tests
    assert t["n_subjects"] == 5 and t["n_fixed"] == 4 and math.isnan(t["p_wilcoxon_by_fixed"])
