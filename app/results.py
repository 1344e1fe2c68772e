"""The results contract: what a results folder holds, how its files are named, and the one reader.

Layout of an output folder ``DIR`` (``eval.py`` and ``train.py``'s test phase write it through
:class:`app.parts.ResultsWriter`):

* ``DIR/pairs.csv`` — one row per pair of the run's test set: :data:`PAIR_COLUMNS` (the metrics
  of :data:`metrics.PAIR_METRICS`, ``n_erased`` = labels the warp erased (Dice 0, HD95 the grid
  diagonal), ``seconds`` = registration only, ``dice_identity`` = Dice with no registration, ``mae_identity`` =
  the mean absolute intensity difference of the pair's images before registration: the two
  ``_identity`` columns are properties of the data, not of the method, and tell two datasets
  under the same pair ids apart, :func:`experiments.comparison.check_same_data`).
  ``total_<measure>``: Klein et al. 2009's overlap measures pooled over the pair's scored labels
  (sums over labels in numerator and denominator, :func:`metrics.klein_overlaps`), beside ``dice``,
  the unweighted mean of the per-label Dice.
* ``DIR/labels.csv`` — one row per pair and scored label: :data:`LABEL_COLUMNS` (the metrics of
  :data:`metrics.LABEL_METRICS`: Dice (= Klein's mean overlap), target overlap, union overlap,
  volume similarity, false negative and false positive error; ``erased`` 1 when the warp erased
  that label: Dice, target and union overlap 0, volume similarity -2, FN error 1, FP error 0).
* ``DIR/summary.json`` — ``n_pairs, n_test_pairs`` and the mean of each :data:`SUMMARY_COLUMNS`
  (``<column>_mean``; ``dice_std``: the sample std over pairs, ddof 1), ``n_erased_total``, ``method``, ``paradigm``, ``label_interp``,
  ``label_rule``, ``metrics_version``, ``displacement_convention``. A metric is averaged only when it
  is finite for every pair; when it is finite for none (no labels: every Dice) its mean is
  ``null``; a mix is an error naming the pairs (:class:`ResultsError`).
* with ``save_outputs``: ``DIR/moved/<pair name>_{image,label,disp,disp_itk}.nii.gz`` (:func:`pair_name`;
  ``disp``: the project's displacement, ``disp_itk``: its ITK/ANTs form, :mod:`data.transforms`).
* ``DIR/.parts/<method>/<pair name>.json``: one finished pair with its provenance (:mod:`app.parts`).

:func:`read_results` is the one reader of a results folder (``experiments/comparison.py``,
``experiments/mi_analysis.py``): it checks the columns and the numbers and names the file at fault.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.io import DataError
from metrics import LABEL_METRICS, PAIR_METRICS

__all__ = ["PAIR_COLUMNS", "LABEL_COLUMNS", "SUMMARY_COLUMNS", "LABEL_RULE", "ResultsError", "Results",
           "read_results", "missing_columns", "pair_name", "csv_text"]

PAIR_COLUMNS = ["fixed_id", "moving_id", "method", *PAIR_METRICS, "n_erased", "seconds", "dice_identity",
                "mae_identity"]
LABEL_COLUMNS = ["fixed_id", "moving_id", "method", "label", *LABEL_METRICS, "erased"]
# the per-pair columns summary.json averages (each finite for every pair, or for none)
SUMMARY_COLUMNS = (*PAIR_METRICS, "dice_identity", "seconds")
# which labels a pair scores (metrics.dice / metrics.hd95), recorded in every summary
LABEL_RULE = ("foreground labels present in the fixed and the un-warped moving label map (Learn2Reg 2021); "
              "a label the warp erases scores Dice 0 and HD95 = the fixed grid's diagonal in mm "
              "(Klein 2009 overlaps: target/mean/union overlap 0, volume similarity -2, FN error 1, FP error 0)")


class ResultsError(ValueError):
    """The results of a run do not add up (a test pair without a result, a metric finite for some
    pairs only); the message names the folder and the pairs."""


# ---------------------------------------------------------------------------- names
_PLAIN_ID = re.compile(r"[A-Za-z0-9.\-]+(?:_[A-Za-z0-9.\-]+)*\Z")


_MAX_STEM = 150  # characters of a file-name stem (a hash keeps long ones unique)


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def _short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode("utf-8")).hexdigest()[:12]


def _name(parts: Sequence[str]) -> str:
    """A file-name stem unique per exact ``parts``: ``parts`` joined by ``__`` when every part is
    plain (ASCII letters, digits, ``.``, ``-`` and single inner ``_``: such a join splits back
    one way only), else their safe forms (other characters as ``_``) plus ``+`` and a 12-hex-digit
    hash of the exact parts. ``+`` never occurs in a plain name, so the two kinds never meet."""
    plain = "__".join(parts)
    if all(_PLAIN_ID.match(p) for p in parts) and len(plain) <= _MAX_STEM:
        return plain
    return "__".join(_safe_name(p) for p in parts)[:_MAX_STEM] + "+" + _short_hash(list(parts))


def pair_name(fixed_id: str, moving_id: str) -> str:
    """The file-name stem of a pair's part and moved volumes, one per exact ``(fixed_id, moving_id)``:
    ``f0__m0`` for plain ids, ``a_b__m0+<hash>`` for ``("a b", "m0")`` (:func:`_name`)."""
    return _name([str(fixed_id), str(moving_id)])


def _pair_text(pair: tuple[str, str]) -> str:
    return f"({pair[0]}, {pair[1]})"


def _pairs_text(pairs: Sequence[tuple[str, str]], n: int = 5) -> str:
    text = ", ".join(_pair_text(p) for p in pairs[:n])
    return text + (f" and {len(pairs) - n} more" if len(pairs) > n else "")


def csv_text(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> str:
    """CSV text of ``rows`` (dicts): ``columns`` in order (default: every key, first-seen order);
    missing keys are blank, extra keys ignored; values as ``csv`` writes them (NaN -> ``nan``)."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


@dataclass
class Results:
    """One results folder, read by :func:`read_results`: ``rows`` maps ``(fixed_id, moving_id)`` to
    ``{column: float}`` for the numeric :data:`PAIR_COLUMNS` (an empty cell is NaN) in file order;
    ``summary`` is ``summary.json`` (empty when absent); ``methods`` the ``method`` column's values,
    ``method_of`` each pair's (absent when the file has no ``method`` column)."""

    folder: Path
    rows: dict[tuple[str, str], dict[str, float]]
    summary: dict[str, Any] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    method_of: dict[tuple[str, str], str] = field(default_factory=dict)


_NUMERIC = [c for c in PAIR_COLUMNS if c not in ("fixed_id", "moving_id", "method")]


def _number(text: str | None, where: str) -> float:
    if text is None or text.strip() == "" or text.strip().lower() in ("none", "null", "nan"):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: expected a number, got {text!r}") from None


def missing_columns(csv_path: Path, header: Sequence[str] | None,
                    required: Sequence[str] = tuple(PAIR_COLUMNS)) -> str | None:
    """The one-line reason a ``pairs.csv`` with ``header`` lacks columns of ``required`` (by default
    every column of :data:`PAIR_COLUMNS`), or None: the missing columns by name and, for a folder written by an older metric version
    (``metrics_version`` of the ``summary.json`` beside it, or none recorded), that version and how
    to bring it up to date (older results are not mixed with newer ones: a version change may
    change what a metric means)."""
    header = list(header or [])
    missing = [c for c in required if c not in header]
    if not missing:
        return None
    from app.parts import METRICS_VERSION

    line = (f"{csv_path}: missing column(s) {','.join(missing)}; expected {','.join(required)}, "
            f"got {','.join(header) or 'an empty file'}")
    version = None
    try:
        version = json.loads((Path(csv_path).parent / "summary.json").read_text()).get("metrics_version")
    except (OSError, ValueError, AttributeError):
        pass
    if header and (version is None or (isinstance(version, int) and version < METRICS_VERSION)):
        written = "an unrecorded" if version is None else f"metrics_version {version}"
        line += (f" (written with {written}; this code writes metrics_version {METRICS_VERSION}: recompute it "
                 f"with eval.py paths.output_dir={Path(csv_path).parent}, and ckpt_path=<its checkpoint> for a "
                 "trained network)")
    return line


def read_results(path: str | os.PathLike, required: Sequence[str] = tuple(PAIR_COLUMNS)) -> Results:
    """Read a results folder: ``path/pairs.csv`` (or ``path/test/pairs.csv`` for a ``train.py`` run
    folder) and ``summary.json`` when present. A missing or empty file, a missing column of
    ``required`` (by default the whole contract, :data:`PAIR_COLUMNS`; a reader that needs fewer,
    such as the MI analysis, names its own), a pair listed twice or a non-number is one
    :class:`data.io.DataError` naming the file (and line). Numeric columns of the contract that the
    file has are read; absent optional ones are left out of ``rows``."""
    folder = Path(path)
    if not (folder / "pairs.csv").is_file() and (folder / "test" / "pairs.csv").is_file():
        folder = folder / "test"
    csv_path = folder / "pairs.csv"
    if not csv_path.is_file():
        what = "no such folder" if not folder.exists() else "not a results folder of eval.py/train.py"
        raise DataError(f"{csv_path}: no pairs.csv ({what})")
    rows: dict[tuple[str, str], dict[str, float]] = {}
    methods: list[str] = []
    method_of: dict[tuple[str, str], str] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        problem = missing_columns(csv_path, header, required)
        if problem:
            raise DataError(problem)
        numeric = [c for c in _NUMERIC if c in header]
        for line, raw in enumerate(reader, start=2):
            if None in raw or any(raw[c] is None for c in header):  # DictReader: extra / missing cells
                cells = sum(len(v) if isinstance(v, list) else v is not None for v in raw.values())
                raise DataError(f"{csv_path}: line {line}: {cells} cells for the header's {len(header)} columns")
            key = (str(raw["fixed_id"]), str(raw["moving_id"]))
            if key in rows:
                raise DataError(f"{csv_path}: line {line}: pair {key[0]} -> {key[1]} appears twice")
            rows[key] = {c: _number(raw[c], f"{csv_path}: line {line}, column {c}") for c in numeric}
            if "method" in raw:
                method_of[key] = raw["method"]
            if raw.get("method") and raw["method"] not in methods:
                methods.append(raw["method"])
    if not rows:
        raise DataError(f"{csv_path}: no pairs (header only)")
    summary: dict[str, Any] = {}
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{summary_path}: not readable JSON ({exc})") from None
        if not isinstance(summary, dict):
            raise DataError(f"{summary_path}: expected a JSON object")
    return Results(folder=folder, rows=rows, summary=summary, methods=methods, method_of=method_of)
