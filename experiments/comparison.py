"""Comparing methods on the same pairs: load results folders, align them on their common pairs,
summarise each method and run paired tests. No Hydra, no files written: the library behind
``experiments/compare.py`` (which also writes the tables and the boxplot) and
``experiments/domain_shift.py``.

``load_results`` reads a results folder (the contract of :mod:`app.results`), ``align``
keeps the pairs common to all methods, ``summary_table`` and ``paired_tests`` (Wilcoxon
signed-rank and paired t-test, two-sided) compute the statistics, ``compare`` does all of it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.io import DataError
from app import ConfigError
from experiments.comparison_checks import (  # noqa: F401 - DATA_COLUMNS, SAME_DATA_TOLERANCE, SCORING_KEYS: this module's API
    DATA_COLUMNS, SAME_DATA_TOLERANCE, SCORING_KEYS, check_same_data, check_same_scoring,
)
from models.evaluation import PARADIGMS

__all__ = [
    "MethodResults",
    "Comparison",
    "CompareWarning",
    "METRICS",
    "LEARNED",
    "TEST_MODES",
    "PARADIGM_COLOURS",
    "load_results",
    "align",
    "summary_table",
    "paired_tests",
    "compare",
    "check_metric",
    "check_paradigm",
]

# metric column -> True when higher is better. Klein et al. 2009's pooled overlaps are comparable
# except total_volume_similarity: signed, best at 0, so neither higher nor lower is better.
METRICS = {
    "dice": True,
    "hd95": False,
    "sdlogj": False,
    "sdlogj_l2r": False,
    "folding_pct": False,
    "total_target_overlap": True,
    "total_mean_overlap": True,
    "total_union_overlap": True,
    "total_fn_error": False,
    "total_fp_error": False,
    "seconds": False,
    "dice_identity": True,
    "mae_identity": False,
}
LEARNED = ("unsupervised", "supervised", "hybrid")
UNKNOWN = "unknown"
TEST_MODES = ("classical_vs_learned", "all")
PARADIGM_COLOURS = {
    "identity": "#9e9e9e",
    "classical": "#1f77b4",
    "unsupervised": "#ff7f0e",
    "supervised": "#d62728",
    "hybrid": "#9467bd",
    UNKNOWN: "#e0e0e0",
}


class CompareWarning(UserWarning):
    """Pairs left out of the comparison (not common to all methods, or a non-finite metric)."""


@dataclass
class MethodResults:
    """One method's per-pair results.

    ``rows``: ``(fixed_id, moving_id) -> {metric: float}`` for every metric in :data:`METRICS`
    (an empty cell is NaN). ``paradigm``: one of ``models.evaluation.PARADIGMS`` or ``"unknown"``.
    """

    name: str
    paradigm: str
    rows: dict[tuple[str, str], dict[str, float]]
    source: Path | None = None
    # how its labels were scored (summary.json's values of :data:`SCORING_KEYS`; absent: unknown)
    scoring: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    """Everything :func:`write_comparison` writes; built by :func:`compare`.

    ``values``: ``(n_pairs, n_methods)`` metric values on the common ``pairs``, columns in the
    order of ``results``; ``table``: :func:`summary_table` rows; ``tests``: :func:`paired_tests` rows.
    """

    results: list[MethodResults]
    metric: str
    mode: str
    pairs: list[tuple[str, str]]
    values: np.ndarray
    table: list[dict[str, Any]]
    tests: list[dict[str, Any]]


# --------------------------------------------------------------------------- loading


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"metric: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def check_paradigm(value: Any, key: str) -> str:
    if value not in PARADIGMS and value != UNKNOWN:
        raise ConfigError(f"{key}: unknown paradigm {value!r}; expected one of {', '.join(PARADIGMS)}")
    return str(value)


def _to_float(text: str | None, where: str) -> float:
    if text is None or text.strip() == "" or text.strip().lower() in ("none", "null"):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: expected a number, got {text!r}") from None


def load_results(path: str | os.PathLike, name: str | None = None, paradigm: str | None = None) -> MethodResults:
    """Read one results folder (``pairs.csv`` + optional ``summary.json``).

    ``path`` is the folder holding ``pairs.csv``, or a ``train.py`` run folder whose results are
    in ``path/test``. ``name`` defaults to the summary's ``method`` (else the ``method`` column,
    else the folder name); ``paradigm`` overrides the summary's ``paradigm`` (absent: ``"unknown"``).
    Raises :class:`DataError` naming the file when pairs.csv is missing, empty, lacks a column of
    the results contract, repeats a pair or holds a non-number; summary.json unreadable likewise.
    """
    from app.results import read_results

    results = read_results(path)
    folder, summary, methods_seen = results.folder, results.summary, results.methods
    rows = {pair: {m: values[m] for m in METRICS} for pair, values in results.rows.items()}
    if name is None:
        name = summary.get("method") or (methods_seen[0] if methods_seen else None) or folder.name
    if paradigm is None:
        paradigm = summary.get("paradigm") or UNKNOWN
        if paradigm not in PARADIGMS:
            paradigm = UNKNOWN
    else:
        paradigm = check_paradigm(paradigm, f"paradigm of {name}")
    scoring = {key: summary[key] for key in SCORING_KEYS if summary.get(key) is not None}
    return MethodResults(name=str(name), paradigm=str(paradigm), rows=rows, source=folder, scoring=scoring)


# --------------------------------------------------------------------------- statistics


def align(results: Sequence[MethodResults], metric: str = "dice") -> tuple[list[tuple[str, str]], np.ndarray]:
    """The pairs common to all methods and their metric values.

    Returns ``(pairs, values)``: ``pairs`` sorted ``(fixed_id, moving_id)`` tuples, ``values`` a
    float64 array ``(n_pairs, n_methods)`` (columns in the order of ``results``). A pair missing
    from any method, or whose ``metric`` is NaN/inf in any method, is left out; a
    :class:`CompareWarning` says how many pairs each method lost. Raises :class:`ConfigError`
    on an unknown metric, no method, a repeated method name or results scored differently
    (:func:`check_same_scoring`), :class:`DataError` when no pair is left or two results of a pair
    come from different data (:func:`check_same_data`).
    """
    check_metric(metric)
    if not results:
        raise ConfigError("methods: no method to compare")
    names = [r.name for r in results]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"methods: repeated method name(s) {', '.join(repeated)}")
    check_same_scoring(results)
    common = set(results[0].rows)
    for r in results[1:]:
        common &= set(r.rows)
    shared = sorted(common)
    for r in results:
        lost = len(r.rows) - len(shared)
        if lost:
            warnings.warn(f"{r.name}: {lost} of {len(r.rows)} pairs are not shared by all methods; left out",
                          CompareWarning, stacklevel=2)
    if not shared:
        detail = "; ".join(f"{r.name}: {len(r.rows)} pairs, e.g. {'->'.join(next(iter(r.rows)))}" for r in results)
        raise DataError(f"no pair is common to all methods ({detail})")
    check_same_data(results, shared)
    values = np.array([[r.rows[p][metric] for r in results] for p in shared], dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = [r.name for j, r in enumerate(results) if not np.isfinite(values[:, j]).all()]
        warnings.warn(f"{metric} is NaN/inf for {int((~finite).sum())} of {len(shared)} common pairs "
                      f"(in {', '.join(bad)}); left out", CompareWarning, stacklevel=2)
        shared = [p for p, ok in zip(shared, finite) if ok]
        values = values[finite]
        if not shared:
            raise DataError(f"no common pair has a finite {metric} in every method")
    return shared, values


def _values(results: Sequence[MethodResults], metric: str, values: np.ndarray | None) -> np.ndarray:
    if values is None:
        return align(results, metric)[1]
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(results):
        raise ValueError(f"values: expected shape (n_pairs, {len(results)}), got {values.shape}")
    return values


def summary_table(results: Sequence[MethodResults], metric: str = "dice",
                  values: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per method: ``method, paradigm, metric, n, mean, std, median`` over the common pairs.

    ``values``: the ``(n_pairs, n_methods)`` array of :func:`align` (computed when None).
    ``std`` is the sample standard deviation (ddof=1; NaN for one pair), in the metric's unit
    (Dice: fraction, HD95: mm, folding_pct: %, seconds: s).
    """
    check_metric(metric)
    values = _values(results, metric, values)
    table = []
    for j, r in enumerate(results):
        col = values[:, j]
        table.append({
            "method": r.name,
            "paradigm": r.paradigm,
            "metric": metric,
            "n": int(col.size),
            "mean": float(col.mean()),
            "std": float(col.std(ddof=1)) if col.size > 1 else float("nan"),
            "median": float(np.median(col)),
        })
    return table


def _pvalues(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """Two-sided paired p-values (Wilcoxon signed-rank, t-test) of ``b - a`` and a note."""
    from scipy import stats

    d = b - a
    if np.all(d == 0):
        return 1.0, 1.0, "all differences zero: p set to 1"
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / precision warnings; the note says what matters
        try:
            p_w = float(stats.wilcoxon(b, a, alternative="two-sided").pvalue)
        except ValueError as exc:
            p_w = float("nan")
            notes.append(f"wilcoxon: {exc}")
        p_t = float(stats.ttest_rel(b, a, alternative="two-sided").pvalue)
    if d.size < 2:
        notes.append("fewer than 2 pairs")
    elif np.any(d == 0):
        notes.append(f"{int((d == 0).sum())} zero differences dropped by wilcoxon")
    return p_w, p_t, "; ".join(notes)


def _by_fixed(d: np.ndarray, pair_ids: Sequence[tuple[str, str]]) -> np.ndarray:
    """The mean of ``d`` (one value per pair of ``pair_ids``) over each fixed subject's pairs."""
    groups: dict[str, list[float]] = {}
    for value, (fixed, _) in zip(d, pair_ids):
        groups.setdefault(str(fixed), []).append(float(value))
    return np.array([np.mean(v) for v in groups.values()], dtype=np.float64)


def _subject_tests(a: np.ndarray, b: np.ndarray, pair_ids: Sequence[tuple[str, str]]) -> tuple[dict[str, Any], str]:
    """``n_subjects`` (distinct fixed and moving ids), ``n_fixed`` and ``p_wilcoxon_by_fixed`` (the
    Wilcoxon test of the differences averaged over each fixed subject's pairs first), and a note when
    pairs share subjects: the pair-level p-values then treat dependent pairs as independent (on all
    ordered pairs of 10 subjects they reject a true null far more often than their level says)."""
    if len(pair_ids) != a.size:
        raise ValueError(f"pair_ids: {len(pair_ids)} pairs for {a.size} values")
    subjects = {str(x) for pair in pair_ids for x in pair}
    fixed = _by_fixed(b - a, pair_ids)
    p_fixed = _pvalues(np.zeros_like(fixed), fixed)[0] if fixed.size < a.size else float("nan")
    out = {"n_subjects": len(subjects), "n_fixed": int(fixed.size), "p_wilcoxon_by_fixed": p_fixed}
    note = ""
    if len(subjects) < 2 * a.size:
        note = (f"{a.size} pairs share {len(subjects)} subjects: pair-level p-values assume independent pairs "
                "(optimistic)" + ("; p_wilcoxon_by_fixed averages each fixed subject's pairs first"
                                  if fixed.size < a.size else ""))
    return out, note


def paired_tests(results: Sequence[MethodResults], metric: str = "dice", pairs: str = "classical_vs_learned",
                 values: np.ndarray | None = None,
                 pair_ids: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Paired two-sided tests on the common pairs between methods ``a`` and ``b``.

    ``pairs="classical_vs_learned"``: ``a`` every classical method, ``b`` every learned one
    (paradigm unsupervised, supervised or hybrid); identity/unknown methods are not tested.
    ``pairs="all"``: every pair of methods, ``a`` before ``b`` in the order of ``results``.
    Each row: ``method_a, paradigm_a, method_b, paradigm_b, metric, n, mean_a, mean_b,
    mean_diff`` (= mean of b − a), ``p_wilcoxon`` (``scipy.stats.wilcoxon(b, a)``, zero
    differences dropped, scipy's default), ``p_ttest`` (``scipy.stats.ttest_rel(b, a)``),
    ``better`` (the method with the better mean for this metric, or ``"tie"``) and ``note``.
    When every difference is zero scipy gives no p-value (NaN or an error): both p are set to
    1.0 and the note says so. With one pair the t-test p is NaN. With ``pair_ids`` (the
    ``(fixed_id, moving_id)`` of each row of ``values``): also ``n_subjects``, ``n_fixed`` and
    ``p_wilcoxon_by_fixed`` (:func:`_subject_tests`; NaN when each fixed subject has one pair),
    and the note says when pairs share subjects.
    """
    check_metric(metric)
    if pairs not in TEST_MODES:
        raise ConfigError(f"tests: unknown value {pairs!r}; expected one of {', '.join(TEST_MODES)}")
    values = _values(results, metric, values)
    idx = range(len(results))
    if pairs == "all":
        combos = [(i, j) for i in idx for j in idx if i < j]
    else:
        unknown = [r.name for r in results if r.paradigm not in PARADIGMS]
        if unknown:
            warnings.warn(f"paradigm unknown for {', '.join(unknown)}: not tested (set paradigm.NAME in the "
                          "config, or tests=all)", CompareWarning, stacklevel=2)
        combos = [(i, j) for i in idx if results[i].paradigm == "classical"
                  for j in idx if results[j].paradigm in LEARNED]
    rows = []
    for i, j in combos:
        a, b = values[:, i], values[:, j]
        p_w, p_t, note = _pvalues(a, b)
        subject_rows: dict[str, Any] = {}
        if pair_ids is not None:
            subject_rows, subject_note = _subject_tests(a, b, pair_ids)
            note = "; ".join(n for n in (note, subject_note) if n)
        diff = float((b - a).mean())
        if diff == 0:
            better = "tie"
        else:
            better = results[j].name if (diff > 0) == METRICS[metric] else results[i].name
        rows.append({
            "method_a": results[i].name,
            "paradigm_a": results[i].paradigm,
            "method_b": results[j].name,
            "paradigm_b": results[j].paradigm,
            "metric": metric,
            "n": int(a.size),
            "mean_a": float(a.mean()),
            "mean_b": float(b.mean()),
            "mean_diff": diff,
            "p_wilcoxon": p_w,
            "p_ttest": p_t,
            **subject_rows,
            "better": better,
            "note": note,
        })
    return rows


def compare(results: Sequence[MethodResults], metric: str = "dice", pairs: str = "classical_vs_learned") -> Comparison:
    """:func:`align` once, then :func:`summary_table` and :func:`paired_tests` on the same pairs."""
    check_metric(metric)
    if pairs not in TEST_MODES:
        raise ConfigError(f"tests: unknown value {pairs!r}; expected one of {', '.join(TEST_MODES)}")
    results = list(results)
    common, values = align(results, metric)
    return Comparison(results=results, metric=metric, mode=pairs, pairs=common, values=values,
                      table=summary_table(results, metric, values),
                      tests=paired_tests(results, metric, pairs, values, pair_ids=common))
