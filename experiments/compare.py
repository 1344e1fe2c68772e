"""Method comparison: several methods on the same pairs, boxplots, paired tests, a table.

    python -m experiments.compare "methods={identity: {eval: ['model=identity', 'data=mni']}, greedy: {eval: ['model=greedy_fast', 'data=mni']}}"
    python -m experiments.compare "methods={greedy: {results: outputs/greedy}, vxm: {results: outputs/vxm}}" metric=hd95 tests=all

Config: ``configs/compare.yaml`` (its header documents the keys). Each method's results come
from a results folder (the contract of :mod:`app.results`) or from an ``eval.py`` /
``train.py`` run this script starts. Outputs in ``paths.output_dir``:

* ``comparison.csv`` — one row per method: ``method, paradigm, metric, n, mean, std, median``
  and ``p_wilcoxon_vs_<other>``, ``p_ttest_vs_<other>`` for every method it was tested against;
* ``tests.csv`` — one row per tested pair of methods (see :func:`paired_tests`);
* ``comparison.md`` — the summary table and the tests table (also printed at the end);
* ``comparison.png`` — one box per method, coloured by paradigm.

Every statistic uses only the pairs common to all methods (:func:`experiments.comparison.align`);
the statistics live in :mod:`experiments.comparison`, this file writes them and runs the command
line. ``write_comparison`` and ``markdown`` need no Hydra.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any


from omegaconf import DictConfig, OmegaConf

from experiments.comparison import (
    METRICS,
    PARADIGM_COLOURS,
    TEST_MODES,
    UNKNOWN,
    CompareWarning,
    Comparison,
    MethodResults,
    check_paradigm,
    check_metric,
    compare,
    load_results,
)
from experiments.runs import method_overrides, parse_overrides, run_method
from app.entry import hydra_main
from app import ConfigError, check_entry, guarded, log_analysis
from app.results import csv_text
from data.files import atomic_write_bytes, atomic_write_text

__all__ = ["write_comparison", "markdown", "run_compare"]

_METHOD_KINDS = ("results", "eval", "train")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# --------------------------------------------------------------------------- writers


def _cell(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return ""
    return x


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV with non-finite numbers left blank."""
    return csv_text([{k: _cell(v) for k, v in row.items()} for row in rows], columns)


TEST_COLUMNS = ["method_a", "paradigm_a", "method_b", "paradigm_b", "metric", "n", "mean_a", "mean_b",
                "mean_diff", "p_wilcoxon", "p_ttest", "n_subjects", "n_fixed", "p_wilcoxon_by_fixed", "better", "note"]


def _comparison_rows(comp: Comparison) -> tuple[list[str], list[dict[str, Any]]]:
    columns = ["method", "paradigm", "metric", "n", "mean", "std", "median"]
    rows = [dict(r) for r in comp.table]
    by_name = {r["method"]: r for r in rows}
    for t in comp.tests:
        for me, other in ((t["method_a"], t["method_b"]), (t["method_b"], t["method_a"])):
            for test in ("wilcoxon", "ttest"):
                col = f"p_{test}_vs_{other}"
                if col not in columns:
                    columns.append(col)
                by_name[me][col] = t[f"p_{test}"]
    return columns, rows


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "nan"
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def _p(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def markdown(comp: Comparison) -> str:
    """The two Markdown tables: per method (mean ± std, median) and the paired tests."""
    lines = [f"**{comp.metric}** on {len(comp.pairs)} pairs common to all {len(comp.results)} methods "
             f"({'higher' if METRICS[comp.metric] else 'lower'} is better)", "",
             "| method | paradigm | n | mean ± std | median |", "| --- | --- | ---: | ---: | ---: |"]
    for r in comp.table:
        lines.append(f"| {r['method']} | {r['paradigm']} | {r['n']} | {_num(r['mean'])} ± {_num(r['std'])} "
                     f"| {_num(r['median'])} |")
    lines.append("")
    a, b = ("classical", "learned") if comp.mode == "classical_vs_learned" else ("method A", "method B")
    if comp.tests:
        lines += [f"Paired two-sided tests over pairs; Δmean = {b} − {a}. Pairs that share subjects are not "
                  "independent: the pair-level p-values are then optimistic; *p by fixed* tests each fixed "
                  "subject's mean difference (blank: one pair per fixed subject).", "",
                  f"| {a} | {b} | Δmean | p Wilcoxon | p t-test | p by fixed | better |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for t in comp.tests:
            by_fixed = t.get("p_wilcoxon_by_fixed", float("nan"))
            lines.append(f"| {t['method_a']} | {t['method_b']} | {t['mean_diff']:+.4g} | {_p(t['p_wilcoxon'])} "
                         f"| {_p(t['p_ttest'])} | {'' if not math.isfinite(by_fixed) else _p(by_fixed)} "
                         f"| {t['better']} |")
    else:
        lines.append("No paired tests: " + ("no classical and learned method to pair "
                                            "(set `paradigm` or use `tests=all`)."
                                            if comp.mode == "classical_vs_learned" else "fewer than two methods."))
    return "\n".join(lines) + "\n"


def _boxplot_png(comp: Comparison) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(comp.results)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * n + 1.5), 4.0))
    try:
        box = ax.boxplot([comp.values[:, j] for j in range(n)], patch_artist=True, showmeans=True,
                         medianprops={"color": "black"},
                         meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
                                    "markersize": 5})
        ax.set_xticks(range(1, n + 1), [r.name for r in comp.results], rotation=30 if n > 4 else 0,
                      ha="right" if n > 4 else "center")
        for patch, r in zip(box["boxes"], comp.results):
            patch.set_facecolor(PARADIGM_COLOURS.get(r.paradigm, PARADIGM_COLOURS[UNKNOWN]))
        present = list(dict.fromkeys(r.paradigm for r in comp.results))
        ax.legend(handles=[Patch(facecolor=PARADIGM_COLOURS.get(p, PARADIGM_COLOURS[UNKNOWN]), label=p) for p in present],
                  fontsize="small", loc="best")
        ax.set_ylabel(comp.metric)
        ax.set_title(f"{comp.metric} over {len(comp.pairs)} common pairs (line: median, diamond: mean)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_comparison(out_dir: str | os.PathLike, comp: Comparison) -> dict[str, Path]:
    """Write ``comparison.csv``, ``tests.csv``, ``comparison.md``, ``comparison.png`` atomically.

    Returns file kind -> path.
    """
    out = Path(out_dir)
    paths = {k: out / f for k, f in (("csv", "comparison.csv"), ("tests", "tests.csv"),
                                     ("md", "comparison.md"), ("png", "comparison.png"))}
    columns, rows = _comparison_rows(comp)
    atomic_write_text(paths["csv"], _csv_text(columns, rows))
    atomic_write_text(paths["tests"], _csv_text(TEST_COLUMNS, comp.tests))
    atomic_write_text(paths["md"], markdown(comp))
    atomic_write_bytes(paths["png"], _boxplot_png(comp))
    return paths


# --------------------------------------------------------------------------- command line


def _method_specs(cfg: DictConfig) -> list[tuple[str, str, Any]]:
    """Validated ``(name, kind, value)`` per configured method, in config order."""
    methods = cfg.get("methods")
    if not isinstance(methods, DictConfig) or len(methods) < 2:
        raise ConfigError("methods: give at least two methods, e.g. "
                          "\"methods={a: {results: DIR_A}, b: {eval: ['model=identity', 'data=mni']}}\"")
    specs = []
    for name, spec in methods.items():
        name = str(name)
        key = f"methods.{name}"
        if not _NAME_RE.match(name):
            raise ConfigError(f"{key}: a method name may hold letters, digits and _ . + - only")
        if not isinstance(spec, DictConfig) or len(spec) != 1 or next(iter(spec)) not in _METHOD_KINDS:
            raise ConfigError(f"{key}: expected exactly one of {{results: DIR}}, {{eval: [...]}}, {{train: [...]}}")
        kind = str(next(iter(spec)))
        value = spec[kind]
        if kind == "results":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key}.results: expected a folder path, got {value!r}")
        else:
            value = method_overrides(kind, value, f"{key}.{kind}", cfg)
        specs.append((name, kind, value))
    overrides = cfg.get("paradigm") or {}
    for name, value in overrides.items():
        if str(name) not in methods:
            raise ConfigError(f"paradigm.{name}: no method of that name in methods")
        check_paradigm(value, f"paradigm.{name}")
    return specs


@guarded
def run_compare(cfg: DictConfig) -> Comparison:
    """The command line: collect or run every method, compare, write, print the Markdown."""
    check_entry(cfg, "compare")
    metric = check_metric(str(cfg.metric))
    mode = str(cfg.tests)
    if mode not in TEST_MODES:
        raise ConfigError(f"tests: unknown value {mode!r}; expected one of {', '.join(TEST_MODES)}")
    specs = _method_specs(cfg)
    paradigm = OmegaConf.to_container(cfg.get("paradigm") or OmegaConf.create({}))
    out_dir = Path(cfg.paths.output_dir)
    loaded: dict[str, MethodResults] = {}
    for name, kind, value in specs:  # existing folders first: bad input fails before any long run
        if kind == "results":
            loaded[name] = load_results(value, name=name, paradigm=paradigm.get(name))
    common = parse_overrides(cfg.get("common") or [], "common")
    for name, kind, value in specs:
        if kind != "results":
            loaded[name] = load_results(run_method(name, kind, value + common, out_dir), name=name,
                                        paradigm=paradigm.get(name))
    results = [loaded[name] for name, _, _ in specs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompareWarning)
        comp = compare(results, metric, mode)
    for w in caught:
        if issubclass(w.category, CompareWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    paths = write_comparison(out_dir, comp)
    print(markdown(comp))
    print(f"comparison: {out_dir.resolve()} ({', '.join(p.name for p in paths.values())})")
    sys.stdout.flush()
    scalars = {f"compare/{row['method']}/{metric}_{stat}": row[stat]
               for row in comp.table for stat in ("mean", "median")}
    log_analysis(cfg, scalars, images={"compare/boxplot": paths["png"]},
                 tables={"compare/summary": comp.table, "compare/tests": comp.tests})
    return comp


@hydra_main("compare")
def main(cfg: DictConfig) -> None:
    run_compare(cfg)


if __name__ == "__main__":
    main()
