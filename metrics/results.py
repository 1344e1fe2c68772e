"""The results contract: per-pair and per-label CSVs, a summary, optional moved volumes.

Layout of an output folder ``DIR`` (``eval.py`` and ``train.py``'s test phase write it):

* ``DIR/pairs.csv`` — one row per pair of the run's test set: ``fixed_id, moving_id, method, dice,
  hd95, sdlogj, sdlogj_l2r, folding_pct, seconds, dice_identity`` (``seconds`` = registration only;
  ``dice_identity`` = Dice with no registration).
* ``DIR/labels.csv`` — one row per pair and label: ``fixed_id, moving_id, method, label, dice``.
* ``DIR/summary.json`` — ``n_pairs, dice_mean, dice_std, dice_identity_mean, hd95_mean,
  sdlogj_mean, sdlogj_l2r_mean, folding_pct_mean, seconds_mean`` plus ``method``, ``n_test_pairs``,
  ``label_interp``, ``metrics_version``, ``displacement_convention`` and (from the entry points)
  ``paradigm`` (``identity``, ``classical``, ``unsupervised``, ``supervised`` or ``hybrid``).
  A metric is averaged only when it is finite for every pair; when it is finite for none (no
  labels: every Dice) its mean is ``null``; a mix is an error naming the pairs (:class:`ResultsError`).
* with ``save_outputs``: ``DIR/moved/<pair name>_{image,label,disp}.nii.gz`` (:func:`pair_name`).

Every finished pair is first stored as one small JSON part ``DIR/.parts/<method>/<pair name>.json``
written atomically (temporary file, then ``os.replace``), with its provenance: the signature of
the pair's inputs (the batch's ``pair_signature``: files, their size and mtime, preprocessing; or
the generator's settings and subject indices), a hash of the method (its resolved config and
weights: :func:`method_signature`) and the metric settings (:func:`metric_config`). A rerun into
the same ``DIR`` reuses a part only when all three match; any other pair is recomputed. The CSVs
and the summary are rebuilt from the parts of exactly the run's test pairs (other parts in the
folder are ignored), all three files or none (:func:`atomic_write_files`); a test pair without a
matching part is an error naming it. Several processes (DDP ranks) may add parts to one folder.
Files are written with the mode an ordinary new file gets (``0o666 & ~umask``, :func:`file_mode`).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from data.files import atomic_write_bytes, atomic_write_files, atomic_write_text, file_mode  # noqa: F401 - re-exported

__all__ = ["ResultsWriter", "ResultsError", "PAIR_COLUMNS", "LABEL_COLUMNS", "DISPLACEMENT_CONVENTION",
           "METRICS_VERSION", "atomic_write_text", "atomic_write_bytes", "atomic_write_files", "csv_text",
           "file_mode", "pair_name", "metric_config", "method_signature", "nanmean"]

PAIR_COLUMNS = [
    "fixed_id",
    "moving_id",
    "method",
    "dice",
    "hd95",
    "sdlogj",
    "sdlogj_l2r",
    "folding_pct",
    "seconds",
    "dice_identity",
]
LABEL_COLUMNS = ["fixed_id", "moving_id", "method", "label", "dice"]
# the per-pair columns summary.json averages (each finite for every pair, or for none)
SUMMARY_COLUMNS = ("dice", "dice_identity", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "seconds")

DISPLACEMENT_CONVENTION = (
    "u(B,D,*S) voxel units, channel i along array axis i; moved(x)=moving(x+u(x)); fixed->moving"
)

# Bump when the metric code (metrics/) changes what it computes: parts of an older version are
# then recomputed instead of being reused on resume.
METRICS_VERSION = 1


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


# ---------------------------------------------------------------------------- provenance
def _default_hd95_method() -> str:
    from metrics.evaluate import evaluate_pair

    return str(inspect.signature(evaluate_pair).parameters["hd95_method"].default)


def metric_config(label_interp: str, hd95_method: str | None = None) -> dict[str, Any]:
    """The metric settings a part was computed with: how labels were warped, the HD95 method
    (default: :func:`metrics.evaluate_pair`'s) and :data:`METRICS_VERSION`."""
    return {"label_interp": str(label_interp),
            "hd95_method": _default_hd95_method() if hd95_method is None else str(hd95_method),
            "metrics_version": METRICS_VERSION}


def method_signature(model: Any) -> str:
    """A hash of what makes a method's displacements: its class, ``method`` name, resolved
    ``model_config`` and every tensor of its ``state_dict()`` (names, dtypes, shapes and bytes),
    so a network trained further, or another checkpoint, never reuses an older result."""
    import torch

    h = hashlib.sha256()
    cls = type(model)
    head = {"class": f"{cls.__module__}.{cls.__qualname__}", "method": str(getattr(model, "method", "")),
            "config": getattr(model, "model_config", None)}
    h.update(json.dumps(_jsonable(head), sort_keys=True, default=repr).encode("utf-8"))
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode("utf-8"))
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps([key, repr(value)]).encode("utf-8"))
    return h.hexdigest()


# ---------------------------------------------------------------------------- text helpers
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


def nanmean(values: list[float]) -> float:
    """Mean over the finite values (None / NaN / inf dropped); NaN when none is left.
    (Validation-time logging only; result files use :meth:`ResultsWriter.finalize`'s strict means.)"""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class ResultsWriter:
    """Collects per-pair results for one method into the results contract (see module doc).

    Args:
        out_dir: the output folder ``DIR``; created on the first :meth:`add`, not before.
        method: value of the ``method`` column.
        save_outputs: also save moved image, moved label and displacement as NIfTI.
        label_interp: how labels were warped for evaluation (recorded in the summary and in
            every part's metric settings).
        method_hash: :func:`method_signature` of the model; may be set later (attribute
            ``method_hash``), but before the first :meth:`reuse_batch` / :meth:`add`.

    Use: :meth:`reuse_batch` (skip pairs with a matching part), :meth:`add` (store a computed
    pair), then :meth:`finalize` with the run's test pairs. ``seen`` holds every pair the run
    was given; ``run_id`` marks the parts this writer wrote.
    """

    def __init__(self, out_dir: str | os.PathLike, method: str, save_outputs: bool = False,
                 label_interp: str = "nearest", method_hash: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.method = str(method)
        self.save_outputs = bool(save_outputs)
        self.label_interp = label_interp
        self.metrics = metric_config(label_interp)
        self.method_hash = method_hash
        self.run_id = uuid.uuid4().hex
        self.seen: set[tuple[str, str]] = set()
        self.pairs: list[dict[str, Any]] = []  # the rows of the last finalize()
        self.counts: dict[str, int] = {}

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / ".parts" / _name([self.method])

    def _part_path(self, fixed_id: str, moving_id: str) -> Path:
        return self.parts_dir / f"{pair_name(fixed_id, moving_id)}.json"

    def provenance(self, pair_signature: str | None) -> dict[str, Any]:
        """What a part of this run records: ``inputs`` (the pair's signature), ``method`` and ``metrics``."""
        if self.method_hash is None:
            raise RuntimeError("ResultsWriter.method_hash is not set (metrics.results.method_signature(model))")
        return {"inputs": pair_signature, "method": self.method_hash, "metrics": self.metrics}

    @staticmethod
    def _read_part(path: Path) -> dict[str, Any] | None:
        """The part at ``path``, or None when absent or unreadable (then it is recomputed)."""
        try:
            with open(path, encoding="utf-8") as fh:
                part = json.load(fh)
        except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
            return None
        return part if isinstance(part, dict) and isinstance(part.get("pair"), dict) else None

    def _matches(self, part: Mapping[str, Any], fixed_id: str, moving_id: str,
                 pair_signature: str | None, check_inputs: bool = True) -> bool:
        pair, prov = part.get("pair") or {}, part.get("provenance")
        if (pair.get("fixed_id"), pair.get("moving_id")) != (fixed_id, moving_id) or not isinstance(prov, dict):
            return False
        want = self.provenance(pair_signature)
        if check_inputs and (pair_signature is None or prov.get("inputs") != pair_signature):
            return False
        return prov.get("method") == want["method"] and prov.get("metrics") == want["metrics"]

    def reusable(self, fixed_id: str, moving_id: str, pair_signature: str | None) -> bool:
        """True when ``DIR`` holds a part of this pair computed from the same inputs, method and
        metric settings (resume). A pair without a signature is never reused."""
        fixed_id, moving_id = str(fixed_id), str(moving_id)
        self.seen.add((fixed_id, moving_id))
        part = self._read_part(self._part_path(fixed_id, moving_id))
        return part is not None and self._matches(part, fixed_id, moving_id, pair_signature)

    def reuse_batch(self, ids: Sequence[tuple[str, str]], signatures: Sequence[str | None] | None) -> bool:
        """Whether every pair of a batch is :meth:`reusable` (each is recorded in ``seen``)."""
        signatures = [None] * len(ids) if signatures is None else list(signatures)
        return all([self.reusable(f, m, sig) for (f, m), sig in zip(ids, signatures)])

    def add(self, row: dict[str, Any], dice_per_label: dict[int, float], pair_signature: str | None = None) -> None:
        """Store one pair: ``row`` holds the ``PAIR_COLUMNS`` (method is filled in), with its provenance."""
        row = dict(row)
        row["method"] = self.method
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"ResultsWriter.add() row lacks columns {missing}")
        fixed_id, moving_id = str(row["fixed_id"]), str(row["moving_id"])
        self.seen.add((fixed_id, moving_id))
        path = self._part_path(fixed_id, moving_id)
        old = self._read_part(path)
        part = {
            "pair": {c: _jsonable(row[c]) for c in PAIR_COLUMNS},
            "labels": {str(int(k)): _jsonable(v) for k, v in dice_per_label.items()},
            "provenance": self.provenance(pair_signature),
            "run": self.run_id,
            # a part of other inputs / method / metric settings was replaced (counted in the report)
            "replaced_stale": old is not None and not self._matches(old, fixed_id, moving_id, pair_signature),
        }
        atomic_write_text(path, json.dumps(part))

    def moved_path(self, fixed_id: str, moving_id: str, what: str) -> Path:
        """``DIR/moved/<pair name>_<what>.nii.gz`` (what: image, label or disp; :func:`pair_name`)."""
        return self.out_dir / "moved" / f"{pair_name(fixed_id, moving_id)}_{what}.nii.gz"

    def finalize(self, expected: Iterable[tuple[str, str]], extra: dict[str, Any] | None = None,
                 seen: Iterable[tuple[str, str]] | None = None, run_ids: Iterable[str] | None = None,
                 n_test_pairs: int | None = None) -> dict[str, Any]:
        """Rebuild ``pairs.csv``, ``labels.csv`` and ``summary.json`` from the parts of exactly the
        ``expected`` pairs (the run's test set, in order); returns the summary.

        Args:
            expected: ``(fixed_id, moving_id)`` of every pair the run tested.
            seen: the pairs the run was given, over all processes (default: ``self.seen``).
            run_ids: ``run_id`` of every process's writer (default: this one's), to count reuse.
            n_test_pairs: size of the whole test set (recorded; default ``len(expected)``).

        Raises :class:`ResultsError` naming the pairs when ``expected`` is empty or repeats a
        pair, when an expected pair was not given to the run or has no part of this method and
        metric settings, or when a metric is finite for some pairs and not for others. Parts of
        other pairs in the folder are ignored (``self.counts["ignored"]``); ``self.counts`` also
        holds ``reused`` (parts of earlier runs) and ``stale`` (parts replaced by this run).
        """
        expected = [(str(f), str(m)) for f, m in expected]
        where = self.parts_dir
        if not expected:
            raise ResultsError(f"{self.out_dir}: the run has no test pairs; nothing to summarise")
        repeated = sorted({p for p in expected if expected.count(p) > 1}) if len(set(expected)) < len(expected) else []
        if repeated:
            raise ResultsError(f"{self.out_dir}: the test set lists pair(s) {_pairs_text(repeated)} more than once; "
                               "pair ids must be unique")
        seen = set(self.seen if seen is None else ((str(f), str(m)) for f, m in seen))
        run_ids = {self.run_id} if run_ids is None else set(run_ids)
        not_given = [p for p in expected if p not in seen]
        if not_given:
            raise ResultsError(f"{self.out_dir}: test pair(s) {_pairs_text(not_given)} of {len(expected)} were not "
                               "evaluated by this run (the test loader did not deliver them)")
        parts, missing = [], []
        for f, m in expected:
            part = self._read_part(self._part_path(f, m))
            if part is None or not self._matches(part, f, m, None, check_inputs=False):
                missing.append((f, m))
            else:
                parts.append(part)
        if missing:
            raise ResultsError(f"{where}: no result of this method and metric settings for test pair(s) "
                               f"{_pairs_text(missing)} (of {len(expected)}); rerun to compute them")
        names = {self._part_path(f, m).name for f, m in expected}
        ignored = sum(1 for p in where.glob("*.json") if p.name not in names)
        self.counts = {
            "expected": len(expected),
            "reused": sum(1 for d in parts if d.get("run") not in run_ids),
            "stale": sum(1 for d in parts if d.get("run") in run_ids and d.get("replaced_stale")),
            "ignored": ignored,
        }
        pairs = [d["pair"] for d in parts]
        label_rows = []
        for d in parts:
            for label, value in sorted(d["labels"].items(), key=lambda kv: int(kv[0])):
                label_rows.append({
                    "fixed_id": d["pair"]["fixed_id"],
                    "moving_id": d["pair"]["moving_id"],
                    "method": self.method,
                    "label": int(label),
                    "dice": value,
                })
        columns = {c: self._strict_column(pairs, c) for c in SUMMARY_COLUMNS}
        summary: dict[str, Any] = {
            "method": self.method,
            "n_pairs": len(pairs),
            "n_test_pairs": len(expected) if n_test_pairs is None else int(n_test_pairs),
            "dice_mean": _mean(columns["dice"]),
            "dice_std": None if columns["dice"] is None else float(np.std(columns["dice"])),
            "dice_identity_mean": _mean(columns["dice_identity"]),
            "hd95_mean": _mean(columns["hd95"]),
            "sdlogj_mean": _mean(columns["sdlogj"]),
            "sdlogj_l2r_mean": _mean(columns["sdlogj_l2r"]),
            "folding_pct_mean": _mean(columns["folding_pct"]),
            "seconds_mean": _mean(columns["seconds"]),
            "label_interp": self.label_interp,
            "metrics_version": METRICS_VERSION,
            "displacement_convention": DISPLACEMENT_CONVENTION,
        }
        if extra:
            summary.update(extra)
        atomic_write_files({  # all three or none (a failed write leaves no partial results)
            self.out_dir / "pairs.csv": csv_text(pairs, PAIR_COLUMNS),
            self.out_dir / "labels.csv": csv_text(label_rows, LABEL_COLUMNS),
            self.out_dir / "summary.json": json.dumps(_jsonable(summary), indent=2) + "\n",
        })
        self.pairs = pairs
        return summary

    def _strict_column(self, pairs: Sequence[Mapping[str, Any]], column: str) -> np.ndarray | None:
        """The finite values of ``column`` for every pair, None when no pair has one; a column
        finite for some pairs only is a :class:`ResultsError` naming the others (never a mean
        over fewer pairs than ``n_pairs`` counts)."""
        values = [_finite(p.get(column)) for p in pairs]
        bad = [(str(p["fixed_id"]), str(p["moving_id"])) for p, v in zip(pairs, values) if v is None]
        if not bad:
            return np.asarray(values, dtype=float)
        if len(bad) == len(pairs):
            return None
        raise ResultsError(
            f"{self.out_dir}: '{column}' is not finite for pair(s) {_pairs_text(bad)} but is for the other "
            f"{len(pairs) - len(bad)} of {len(pairs)}; a mean over some pairs only would misreport the method "
            f"(parts in {self.parts_dir})"
        )


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None else float(values.mean())


def _jsonable(value: Any) -> Any:
    """Floats stay floats (NaN -> None so the JSON is standard); numpy/torch scalars unwrap."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
