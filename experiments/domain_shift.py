"""Does a learned method's advantage survive domain shift? (paper finding 4, Fig. 5)

    python -m experiments.domain_shift experiment=domain_shift/mni_domain_shift     # offline: MNI, controlled shifts
    python -m experiments.domain_shift experiment=domain_shift/paper_fig5_domain_shift   # OASIS -> IBSR18, CUMC12, MGH10, LPBA40

Every method is evaluated on every test set. ``methods`` as in :mod:`experiments.compare`:
``{eval: [...]}`` (a classical method: evaluated directly on each test set) or ``{train:
[...]}`` (a network: trained ONCE with its overrides + ``train_common``, then its checkpoint —
the best one by ``val/dice``, else ``last.ckpt`` — is evaluated on each test set), or
``{ckpt: PATH}`` (an already trained network). ``test_sets`` maps a name to eval overrides
(the data); the first one is the reference (in-domain).

Outputs in ``paths.output_dir``: ``runs/<method>`` (training), ``runs/<method>/<test set>``
(results contract per test set; a rerun skips what exists), ``domain_shift.csv`` (method x test
set: mean, std, median of the metric, its drop from the reference (positive = worse, for HD95 too), paradigm), ``domain_shift.md``, ``tests.csv``
(per test set: paired Wilcoxon / t-tests, classical vs learned) and ``domain_shift.png``
(boxplots per test set).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any


from omegaconf import DictConfig, ListConfig

from experiments.comparison import (
    METRICS,
    PARADIGM_COLOURS,
    MethodResults,
    check_metric,
    compare,
    load_results,
)
from experiments.runs import method_overrides, parse_overrides, run_method
from app.entry import hydra_main
from app import ConfigError, check_entry, guarded, log_analysis, save_figure
from app.results import csv_text
from data.files import atomic_write_text

__all__ = ["find_checkpoint", "run_domain_shift"]

_KINDS = ("eval", "train", "ckpt")


def find_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint ``train.py`` tested in ``run_dir``: the one its ``test/summary.json`` names
    (``checkpoint``, looked up in ``run_dir/checkpoints`` by file name, so a moved folder still
    works); without that record, the single ``epoch_*.ckpt`` (top-1 by ``val/dice``), else
    ``last.ckpt``. Several ``epoch_*.ckpt`` and no record (``save_top_k`` > 1) is a ConfigError:
    which one is the model is not guessed."""
    folder = Path(run_dir) / "checkpoints"
    summary_path = Path(run_dir) / "test" / "summary.json"
    recorded = None
    if summary_path.is_file():
        try:
            recorded = json.loads(summary_path.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            raise ConfigError(f"{summary_path}: not readable JSON") from None
    if recorded:
        found = folder / Path(str(recorded)).name
        if found.is_file():
            return found
        raise ConfigError(f"{summary_path}: the tested checkpoint {recorded} is not in {folder}")
    best = sorted(folder.glob("epoch_*.ckpt"))
    if len(best) == 1:
        return best[0]
    if len(best) > 1:
        raise ConfigError(f"{folder}: {len(best)} epoch checkpoints ({', '.join(b.name for b in best)}) and no "
                          f"record of which one train.py tested ({summary_path}); give the method as {{ckpt: PATH}}")
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise ConfigError(f"{folder}: no checkpoint (epoch_*.ckpt or last.ckpt); did training run?")


def _specs(cfg: DictConfig) -> list[tuple[str, str, Any]]:
    methods = cfg.get("methods")
    if not isinstance(methods, DictConfig) or len(methods) < 2:
        raise ConfigError("methods: give at least two methods (e.g. a classical {eval: [...]} and a {train: [...]})")
    out = []
    for name, spec in methods.items():
        key = f"methods.{name}"
        if not isinstance(spec, DictConfig) or len(spec) != 1 or next(iter(spec)) not in _KINDS:
            raise ConfigError(f"{key}: expected exactly one of {{eval: [...]}}, {{train: [...]}}, {{ckpt: PATH}}")
        kind = str(next(iter(spec)))
        value = spec[kind]
        if kind == "ckpt":
            if not isinstance(value, str) or not Path(value).is_file():
                raise ConfigError(f"{key}.ckpt: no checkpoint file at {value!r}")
        else:
            value = method_overrides(kind, value, f"{key}.{kind}", cfg)
        out.append((str(name), kind, value))
    return out


def _test_sets(cfg: DictConfig) -> list[tuple[str, list[str]]]:
    sets = cfg.get("test_sets")
    if not isinstance(sets, DictConfig) or len(sets) < 2:
        raise ConfigError("test_sets: give at least two test sets (the first is the in-domain reference)")
    out = []
    for name, overrides in sets.items():
        if not isinstance(overrides, (ListConfig, str)):
            raise ConfigError(f"test_sets.{name}: expected a list of eval overrides, got {overrides!r}")
        out.append((str(name), parse_overrides(overrides, f"test_sets.{name}")))
    return out


def _data_facts(config_name: str, overrides: list[str]) -> tuple[str | None, tuple | None, str | None]:
    """The voxel order of the data ``configs/<config_name>.yaml`` + ``overrides`` builds (headers
    only; None when unknown or mixed), its first volume placed nowhere in world space (its
    order a reader's guess; ``unplaced_volume()`` of the on-disk datasets) or None, and its
    intensity normalisation (None when unknown)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from app.build import build
    from app.entry import CONFIGS

    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]  # launcher etc.: not the data
    if GlobalHydra.instance().is_initialized():  # inside this script's Hydra app: its search path is configs/
        cfg = compose(config_name=config_name, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3", job_name=config_name):
            cfg = compose(config_name=config_name, overrides=overrides)
    dm = build(cfg.data, "data")
    return (getattr(dm, "voxel_axes", None), getattr(dm, "unplaced_volume", lambda: None)(),
            getattr(dm, "intensity_normalisation", None))


def check_voxel_orders(specs: list[tuple[str, str, Any]], sets: list[tuple[str, list[str]]],
                       eval_common: list[str]) -> None:
    """Before anything is trained: every network (``train:`` its training data, ``ckpt:`` what its
    checkpoint records) and every test set give their volumes in one voxel order and one intensity
    normalisation, or a ConfigError names the method, the test set and both values. A network sees
    voxels and intensities, and eval.py refuses a checkpoint on data given otherwise
    (:func:`app.checkpoints.check_trained_data`): found there, after the trainings, it would cost
    them all (e.g. OASIS in its native order, or min-max normalised, against the Klein sets in RAS,
    percentile normalised)."""
    from app.checkpoints import read_checkpoint

    trained, norms = {}, {}
    for name, kind, value in specs:
        if kind == "train":
            trained[name], _, norms[name] = _data_facts("train", value)
        elif kind == "ckpt":
            record = read_checkpoint(value, f"methods.{name}.ckpt")["registration"]
            trained[name], norms[name] = record.get("voxel_axes"), record.get("intensity_normalisation")
    if not any(trained.values()) and not any(norms.values()):
        return
    for set_name, overrides in sets:
        given, unplaced, given_norm = _data_facts("eval", overrides + eval_common)
        for name, norm in norms.items():
            if norm and given_norm and str(norm) != str(given_norm):
                raise ConfigError(
                    f"methods.{name}: trained on images normalised '{norm}', but test_sets.{set_name} normalises "
                    f"'{given_norm}': a network sees intensities, and eval.py would refuse it after the trainings; "
                    "give every data set one normalisation (e.g. data.normalize=percentile on the training data and "
                    "on each test set)")
        if not any(trained.values()):
            continue
        if unplaced is not None:
            name = next(n for n, order in trained.items() if order)
            raise ConfigError(f"test_sets.{set_name}: {unplaced[0]}: {unplaced[1]}, so its voxel order is a reader's "
                              f"guess and the network methods.{name} could see it flipped; store the set as NIfTI "
                              "with its true orientation")
        for name, order in trained.items():
            if order and given and str(order) != str(given):
                raise ConfigError(
                    f"methods.{name}: trained on data in voxel order {order}, but test_sets.{set_name} gives {given}: "
                    "a network sees voxels, not world space, and eval.py would refuse it after the trainings; give "
                    "every data set one order (data.orientation=RAS on the training data and on each test set)")


def _boxplots(comparisons: dict[str, Any], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(comparisons)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 4), sharey=True, squeeze=False)
    for ax, (set_name, comp) in zip(axes[0], comparisons.items()):
        parts = ax.boxplot([comp.values[:, j] for j in range(comp.values.shape[1])], patch_artist=True)
        for patch, res in zip(parts["boxes"], comp.results):
            patch.set_facecolor(PARADIGM_COLOURS.get(res.paradigm, "white"))
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(comp.results) + 1), [r.name for r in comp.results], rotation=45, ha="right", fontsize=8)
        ax.set_title(set_name)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric)
    fig.tight_layout()
    save_figure(fig, path)


def _drop(reference: float, mean: float, metric: str) -> float:
    """How much worse ``mean`` is than ``reference`` on the metric (positive = worse): a fall for a
    higher-is-better metric (Dice), a rise for a lower-is-better one (HD95, SDlogJ, folding)."""
    return reference - mean if METRICS[metric] else mean - reference


@guarded
def run_domain_shift(cfg: DictConfig) -> dict[str, Any]:
    """The command line (module docstring); returns ``{test set: Comparison}``."""
    check_entry(cfg, "domain_shift")
    metric = check_metric(str(cfg.metric))
    specs = _specs(cfg)
    sets = _test_sets(cfg)
    eval_common = parse_overrides(cfg.get("eval_common") or [], "eval_common")
    out_dir = Path(cfg.paths.output_dir)
    check_voxel_orders(specs, sets, eval_common)  # and normalisations
    # 1. train every network once
    checkpoints: dict[str, Path] = {}
    for name, kind, value in specs:
        if kind == "train":
            run_method(name, "train", value, out_dir)  # value ends with train_common
            checkpoints[name] = find_checkpoint(out_dir / "runs" / name)
        elif kind == "ckpt":
            checkpoints[name] = Path(value)
    # 2. evaluate every method on every test set
    comparisons: dict[str, Any] = {}
    for set_name, set_overrides in sets:
        results: list[MethodResults] = []
        for name, kind, value in specs:
            run_name = f"{name}/{set_name}"
            if kind == "eval":
                overrides = value + set_overrides + eval_common
            else:
                overrides = [f"ckpt_path={checkpoints[name]}"] + set_overrides + eval_common
            results.append(load_results(run_method(run_name, "eval", overrides, out_dir), name=name))
        comparisons[set_name] = compare(results, metric, "classical_vs_learned")
    # 3. tables and figure
    reference = sets[0][0]
    ref_mean = {row["method"]: row["mean"] for row in comparisons[reference].table}
    rows, test_rows = [], []
    for set_name, comp in comparisons.items():
        for row, res in zip(comp.table, comp.results):
            rows.append({"test_set": set_name, "method": row["method"], "paradigm": res.paradigm, "n": row["n"],
                         "mean": row["mean"], "std": row["std"], "median": row["median"],
                         "drop_from_reference": _drop(ref_mean[row["method"]], row["mean"], metric)})
        for t in comp.tests:
            test_rows.append({"test_set": set_name, **t})
    atomic_write_text(out_dir / "domain_shift.csv", csv_text(rows))
    atomic_write_text(out_dir / "tests.csv", csv_text(test_rows))
    md = _markdown(rows, test_rows, [s for s, _ in sets], metric, reference)
    atomic_write_text(out_dir / "domain_shift.md", md)
    _boxplots(comparisons, out_dir / "domain_shift.png", metric)
    print(md)
    print(f"domain shift: {out_dir.resolve()} (domain_shift.csv, domain_shift.md, tests.csv, domain_shift.png)")
    sys.stdout.flush()
    scalars = {f"domain_shift/{r['test_set']}/{r['method']}/{metric}_mean": r["mean"] for r in rows}
    log_analysis(cfg, scalars, images={"domain_shift/boxplots": out_dir / "domain_shift.png"},
                 tables={"domain_shift/summary": rows, "domain_shift/tests": test_rows})
    return comparisons


def _markdown(rows, test_rows, set_names, metric, reference) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["test_set"]): r for r in rows}
    head = "| method | paradigm | " + " | ".join(set_names) + " |"
    lines = [f"Mean {metric} ± std per test set (Δ: how much worse than in `{reference}`; positive = worse)", "", head,
             "|" + " --- |" * (len(set_names) + 2)]
    for m in methods:
        cells = []
        for s in set_names:
            r = by[(m, s)]
            cell = f"{r['mean']:.3f} ± {r['std']:.3f}"
            if s != reference:
                cell += f" (Δ {r['drop_from_reference']:+.3f})"
            cells.append(cell)
        lines.append(f"| {m} | {by[(m, set_names[0])]['paradigm']} | " + " | ".join(cells) + " |")
    if test_rows:
        lines += ["", "Paired tests over pairs; pairs that share subjects are not independent, so these p-values "
                  "are optimistic; *p by fixed* tests each fixed subject's mean difference (blank: one pair per "
                  "fixed subject).", "",
                  "| test set | classical | learned | Δmean (learned − classical) | p Wilcoxon | p t-test | p by fixed |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for t in test_rows:
            by_fixed = t.get("p_wilcoxon_by_fixed", float("nan"))
            lines.append(f"| {t['test_set']} | {t['method_a']} | {t['method_b']} | {t['mean_diff']:+.4f} | "
                         f"{t['p_wilcoxon']:.3g} | {t['p_ttest']:.3g} | "
                         f"{'' if not math.isfinite(by_fixed) else f'{by_fixed:.3g}'} |")
    return "\n".join(lines) + "\n"


@hydra_main("domain_shift")
def main(cfg: DictConfig) -> None:
    run_domain_shift(cfg)


if __name__ == "__main__":
    main()
