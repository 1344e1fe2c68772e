"""Finished pairs and their provenance: ``DIR/.parts/<method>/<pair name>.json`` (the results
contract, :mod:`app.results`), and the summary files built from them.

Every finished pair is one small JSON part written atomically, with its provenance: the signature
of the pair's inputs (the batch's ``pair_signature``: files, their size, mtime and ctime, preprocessing;
or the generator's settings and subject indices), a hash of the method (its class, hyper-parameters
and weights: :func:`method_signature`), the metric settings (:func:`metric_config`) and the code that
computes results (:func:`data.signature.code_signature`: any edit of ``data/``, ``spatial/``,
``classical/``, ``models/``, ``metrics/``, ``losses/`` or ``app/``). A rerun into the same ``DIR`` reuses a part
only when all four match; any other pair is recomputed. The CSVs and
the summary are rebuilt from the parts of exactly the run's test pairs (other parts in the folder
are ignored), all three files or none; a test pair without a matching part is an error naming it.
Several processes (DDP ranks) may add parts to one folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from app.results import (LABEL_COLUMNS, LABEL_RULE, PAIR_COLUMNS, SUMMARY_COLUMNS, ResultsError, _name, _pairs_text,
                         csv_text, pair_name)
from data.files import atomic_write_files, atomic_write_text
from data.signature import code_signature
from metrics import LABEL_METRICS
from spatial import DISPLACEMENT_CONVENTION

__all__ = ["METRICS_VERSION", "MOVED_KINDS", "metric_config", "method_signature", "ResultsWriter"]

# the volumes save_outputs writes per pair under DIR/moved/ (ResultsWriter.moved_path)
MOVED_KINDS = ("image", "label", "disp", "disp_itk")

# Bump when the metric code (metrics/) changes what it computes: parts of an older version are
# then recomputed instead of being reused on resume. 3: Klein et al. 2009's overlap measures
# (total_* in pairs.csv, per label in labels.csv). 4: a label the field reads more than half a voxel
# outside the moving grid is background (spatial.warp padding_mode="half_voxel", as register.py);
# pairs.csv gains mae_identity.
METRICS_VERSION = 4


def _default_hd95_method() -> str:
    from metrics.evaluate import evaluate_pair

    return str(inspect.signature(evaluate_pair).parameters["hd95_method"].default)


def metric_config(label_interp: str, hd95_method: str | None = None) -> dict[str, Any]:
    """The metric settings a part was computed with: how labels were warped, the HD95 method
    (default: :func:`metrics.evaluate_pair`'s) and :data:`METRICS_VERSION`."""
    return {"label_interp": str(label_interp),
            "hd95_method": _default_hd95_method() if hd95_method is None else str(hd95_method),
            "metrics_version": METRICS_VERSION}


def method_signature(model: Any, precision: str | None = None) -> str:
    """A hash of what makes a method's displacements: its class, ``method`` name, hyper-parameters
    (what rebuilds it), every tensor of its ``state_dict()`` (names, dtypes, shapes and bytes) and
    the trainer's ``precision`` when given (``bf16-mixed`` computes other fields than ``32-true``),
    so a network trained further, another checkpoint or another precision never reuses an older result."""
    import torch

    h = hashlib.sha256()
    cls = type(model)
    head = {"class": f"{cls.__module__}.{cls.__qualname__}", "method": str(getattr(model, "method", "")),
            "config": dict(getattr(model, "hparams", {}) or {})}
    if precision is not None:
        head["precision"] = str(precision)
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


def timing_of(device: Any) -> str:
    """What times a run's pairs on ``device`` (a torch device): ``"cpu (N threads)"`` or
    ``"cuda (<GPU name>)"``; recorded in every part (:class:`ResultsWriter`)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def _timing_summary(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``timing``: what timed the pairs, when one thing did; else ``seconds_mean`` is None (a mean of
    seconds from two machines describes neither) and ``timing`` lists each with its pair count."""
    counts: dict[str, int] = {}
    for part in parts:
        key = str(part.get("timing") or "unknown")
        counts[key] = counts.get(key, 0) + 1
    if len(counts) <= 1:
        return {"timing": next(iter(counts), None)}
    return {"seconds_mean": None,
            "timing": "; ".join(f"{k}: {n} pairs" for k, n in counts.items()) + " (no common mean of seconds)"}


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
        label_interp: how labels were warped for evaluation (recorded in the summary and in
            every part's metric settings).
        method_hash: :func:`method_signature` of the model whose results are stored.
        timing: what timed the pairs this run computes (:func:`timing_of`), kept in each part.

    Use: :meth:`reusable` (a pair with a matching part is not computed again), :meth:`add` (store a
    computed pair), then :meth:`finalize` with the run's test pairs. ``seen`` holds every pair the
    run was given or reused; ``run_id`` marks the parts this writer wrote.
    """

    def __init__(self, out_dir: str | os.PathLike, method: str, label_interp: str = "nearest",
                 method_hash: str | None = None, save_outputs: bool = False, timing: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.method = str(method)
        self.label_interp = label_interp
        self.metrics = metric_config(label_interp)
        self.method_hash = method_hash
        self.save_outputs = bool(save_outputs)  # a reused pair must then have its moved volumes
        # the hardware that times this run's pairs (timing_of): a resumed folder may hold pairs timed on
        # another, whose seconds are right for each pair but have no common mean (see _summary)
        self.timing = timing
        self.run_id = uuid.uuid4().hex
        self.seen: set[tuple[str, str]] = set()
        self.inputs: dict[tuple[str, str], str | None] = {}  # each asked pair's current input signature
        self.pairs: list[dict[str, Any]] = []  # the rows of the last finalize()
        self.counts: dict[str, int] = {}

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / ".parts" / _name([self.method])

    def _part_path(self, fixed_id: str, moving_id: str) -> Path:
        return self.parts_dir / f"{pair_name(fixed_id, moving_id)}.json"

    def provenance(self, pair_signature: str | None) -> dict[str, Any]:
        """What a part of this run records: ``inputs`` (the pair's signature), ``method``, ``metrics``
        and ``code`` (:func:`data.signature.code_signature`: the sources that compute a result)."""
        if self.method_hash is None:
            raise RuntimeError("ResultsWriter.method_hash is not set (app.results.method_signature(model))")
        return {"inputs": pair_signature, "method": self.method_hash, "metrics": self.metrics,
                "code": code_signature()}

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
        return all(prov.get(key) == want[key] for key in ("method", "metrics", "code"))

    def reusable(self, fixed_id: str, moving_id: str, pair_signature: str | None) -> bool:
        """True when ``DIR`` holds a part of this pair computed from the same inputs, method,
        metric settings and code (resume) and, with ``save_outputs``, its moved volumes. A pair
        without a signature is never reused. Only a reused pair counts as ``seen``: a pair that is
        not must be computed by this run (:meth:`add`), else :meth:`finalize` names it."""
        key = (str(fixed_id), str(moving_id))
        self.inputs[key] = pair_signature
        part = self._read_part(self._part_path(*key))
        ok = part is not None and self._matches(part, *key, pair_signature) and self._has_moved(part)
        if ok:
            self.seen.add(key)
        return ok

    def _has_moved(self, part: Mapping[str, Any]) -> bool:
        """With ``save_outputs``: the part's run wrote its moved volumes and they are all there."""
        if not self.save_outputs:
            return True
        moved = part.get("moved")  # {file name: digest of the bytes written}
        return (isinstance(moved, dict) and bool(moved)
                and all(_file_digest(self.out_dir / "moved" / str(n)) == d for n, d in moved.items()))

    def add(self, result: Mapping[str, Any], moved: Sequence[Path] = ()) -> None:
        """Store one pair, a result of ``RegistrationModule.test_step``: ``pair`` (a row of
        :data:`PAIR_COLUMNS` without ``method``), ``labels`` (``{label: {name: value}}`` with every
        name of :data:`metrics.LABEL_METRICS`), ``erased`` (labels the warp erased) and
        ``signature`` (the inputs' signature), with its provenance and the ``moved`` volumes
        written for it (:meth:`moved_path`); without them, earlier moved volumes of the pair are
        removed (they showed another result)."""
        row = {**result["pair"], "method": self.method}
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"ResultsWriter.add() row lacks columns {missing}")
        for label, values in result["labels"].items():
            lacking = [m for m in LABEL_METRICS if not isinstance(values, Mapping) or m not in values]
            if lacking:
                raise ValueError(f"ResultsWriter.add() pair {row['fixed_id']} <- {row['moving_id']}: label {label} "
                                 f"lacks metric(s) {lacking} (expected {{label: {{name: value}}}})")
        fixed_id, moving_id = str(row["fixed_id"]), str(row["moving_id"])
        signature = result.get("signature")
        self.seen.add((fixed_id, moving_id))
        path = self._part_path(fixed_id, moving_id)
        old = self._read_part(path)
        erased = {int(k) for k in result.get("erased", ())}
        part = {
            "pair": {c: _jsonable(row[c]) for c in PAIR_COLUMNS},
            "labels": {str(int(k)): {m: _jsonable(v[m]) for m in LABEL_METRICS} for k, v in result["labels"].items()},
            "erased": sorted(erased),
            "provenance": self.provenance(signature),
            "timing": self.timing,
            "run": self.run_id,
            # a part of other inputs / method / metric settings was replaced (counted in the report)
            "replaced_stale": old is not None and not self._matches(old, fixed_id, moving_id, signature),
            # each moved volume's digest: moved/ is shared by the methods of a folder, and a reused
            # part must come with the volumes its own run wrote, not another method's
            "moved": {Path(m).name: _file_digest(Path(m)) for m in sorted(moved, key=lambda m: Path(m).name)},
        }
        if not moved:
            for what in MOVED_KINDS:
                self.moved_path(fixed_id, moving_id, what).unlink(missing_ok=True)
        atomic_write_text(path, json.dumps(part))

    def retract(self) -> None:
        """Remove ``summary.json``, ``pairs.csv`` and ``labels.csv`` (the summary first) before a run
        that computes pairs: until :meth:`finalize` writes them again, the folder must not hold an
        earlier run's complete-looking results over parts that are being replaced (a run stopped
        or failed part-way would leave them to be read as this run's)."""
        for name in ("summary.json", "pairs.csv", "labels.csv"):
            (self.out_dir / name).unlink(missing_ok=True)

    def moved_path(self, fixed_id: str, moving_id: str, what: str) -> Path:
        """``DIR/moved/<pair name>_<what>.nii.gz`` (what: one of :data:`MOVED_KINDS`; :func:`pair_name`)."""
        return self.out_dir / "moved" / f"{pair_name(fixed_id, moving_id)}_{what}.nii.gz"

    def finalize(self, expected: Iterable[tuple[str, str]], extra: dict[str, Any] | None = None,
                 seen: Iterable[tuple[str, str]] | None = None, run_ids: Iterable[str] | None = None,
                 n_test_pairs: int | None = None) -> dict[str, Any]:
        """Rebuild ``pairs.csv``, ``labels.csv`` and ``summary.json`` from the parts of exactly the
        ``expected`` pairs (the run's test set, in order); returns the summary.

        Args:
            expected: ``(fixed_id, moving_id)`` of every pair the run tested.
            seen: the pairs the run was given or reused, over all processes (default: ``self.seen``).
            run_ids: ``run_id`` of every process's writer (default: this one's), to count reuse.
            n_test_pairs: size of the whole test set (recorded; default ``len(expected)``).

        Raises :class:`ResultsError` naming the pairs when ``expected`` is empty or repeats a
        pair, when an expected pair was not given to the run or has no part of this method and
        metric settings, or when a metric is finite for some pairs and not for others. Parts of
        other pairs in the folder are ignored (``self.counts["ignored"]``); ``self.counts`` also
        holds ``reused`` (parts of earlier runs) and ``stale`` (parts replaced by this run).
        """
        expected = [(str(f), str(m)) for f, m in expected]
        parts = self._expected_parts(expected, set(self.seen if seen is None else map(tuple, seen)))
        run_ids = {self.run_id} if run_ids is None else set(run_ids)
        names = {self._part_path(f, m).name for f, m in expected}
        self.counts = {
            "expected": len(expected),
            "reused": sum(1 for d in parts if d.get("run") not in run_ids),
            "stale": sum(1 for d in parts if d.get("run") in run_ids and d.get("replaced_stale")),
            "ignored": sum(1 for p in self.parts_dir.glob("*.json") if p.name not in names),
        }
        pairs = [d["pair"] for d in parts]
        summary = {**self._summary(pairs), **_timing_summary(parts),
                   "n_test_pairs": len(expected) if n_test_pairs is None else int(n_test_pairs), **(extra or {})}
        atomic_write_files({  # all three or none (a failed write leaves no partial results)
            self.out_dir / "pairs.csv": csv_text(pairs, PAIR_COLUMNS),
            self.out_dir / "labels.csv": csv_text(self._label_rows(parts), LABEL_COLUMNS),
            self.out_dir / "summary.json": json.dumps(_jsonable(summary), indent=2) + "\n",
        })
        self.pairs = pairs
        return summary

    def _expected_parts(self, expected: list[tuple[str, str]], seen: set) -> list[dict[str, Any]]:
        """The part of every expected pair, in order; :class:`ResultsError` naming the pairs when the
        set is empty or repeats a pair, or a pair was not given to the run or has no matching part."""
        if not expected:
            raise ResultsError(f"{self.out_dir}: the run has no test pairs; nothing to summarise")
        repeated = sorted({p for p in expected if expected.count(p) > 1}) if len(set(expected)) < len(expected) else []
        if repeated:
            raise ResultsError(f"{self.out_dir}: the test set lists pair(s) {_pairs_text(repeated)} more than once; "
                               "pair ids must be unique")
        not_given = [p for p in expected if p not in seen]
        if not_given:
            raise ResultsError(f"{self.out_dir}: test pair(s) {_pairs_text(not_given)} of {len(expected)} were not "
                               "evaluated by this run (the test loader did not deliver them)")
        parts, missing = [], []
        for f, m in expected:
            part = self._read_part(self._part_path(f, m))
            # inputs as this run saw them (rank 0 asked for every pair); else another process's check
            check = (f, m) in self.inputs
            if part is None or not self._matches(part, f, m, self.inputs.get((f, m)), check_inputs=check):
                missing.append((f, m))
            else:
                parts.append(part)
        if missing:
            raise ResultsError(f"{self.parts_dir}: no result of this method and metric settings for test pair(s) "
                               f"{_pairs_text(missing)} (of {len(expected)}); rerun to compute them")
        return parts

    def _label_rows(self, parts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for d in parts:
            erased = set(d.get("erased", ()))
            for label, values in sorted(d["labels"].items(), key=lambda kv: int(kv[0])):
                rows.append({"fixed_id": d["pair"]["fixed_id"], "moving_id": d["pair"]["moving_id"],
                             "method": self.method, "label": int(label), **{m: values[m] for m in LABEL_METRICS},
                             "erased": int(int(label) in erased)})
        return rows

    def _summary(self, pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        columns = {c: self._strict_column(pairs, c) for c in SUMMARY_COLUMNS}
        return {
            "method": self.method,
            "n_pairs": len(pairs),
            **{f"{c}_mean": _mean(values) for c, values in columns.items()},
            # the sample standard deviation over pairs (ddof 1, as the comparison tables; None for one pair)
            "dice_std": None if columns["dice"] is None or len(columns["dice"]) < 2 else float(np.std(columns["dice"], ddof=1)),
            "n_erased_total": int(sum(int(p.get("n_erased") or 0) for p in pairs)),
            "label_interp": self.label_interp,
            "label_rule": LABEL_RULE,
            "metrics_version": METRICS_VERSION,
            "displacement_convention": DISPLACEMENT_CONVENTION,
        }

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


def _file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None

