"""The results contract: per-pair and per-label CSVs, a summary, optional moved volumes.

Layout of an output folder ``DIR`` (``eval.py`` and ``train.py``'s test phase write it):

* ``DIR/pairs.csv`` — one row per pair: ``fixed_id, moving_id, method, dice, hd95, sdlogj,
  sdlogj_l2r, folding_pct, seconds, dice_identity`` (``seconds`` = registration only;
  ``dice_identity`` = Dice with no registration).
* ``DIR/labels.csv`` — one row per pair and label: ``fixed_id, moving_id, method, label, dice``.
* ``DIR/summary.json`` — ``n_pairs, dice_mean, dice_std, dice_identity_mean, hd95_mean,
  sdlogj_mean, sdlogj_l2r_mean, folding_pct_mean, seconds_mean`` plus ``method``,
  ``label_interp``, ``displacement_convention`` and (from the entry points) ``paradigm``
  (``identity``, ``classical``, ``unsupervised``, ``supervised`` or ``hybrid``).
* with ``save_outputs``: ``DIR/moved/<fixed_id>__<moving_id>_{image,label,disp}.nii.gz``.

Every finished pair is first stored as one small JSON part in ``DIR/.parts/`` written
atomically (temporary file, then ``os.replace``); the CSVs and the summary are rebuilt
from the parts, also atomically, all three or none (:func:`atomic_write_files`). A rerun
with the same ``DIR`` skips pairs whose part exists, and several processes (DDP ranks) may
add parts to the same folder: the rank that finalises sees every pair exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["ResultsWriter", "PAIR_COLUMNS", "LABEL_COLUMNS", "DISPLACEMENT_CONVENTION", "atomic_write_text", "atomic_write_bytes",
           "atomic_write_files", "csv_text"]

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

DISPLACEMENT_CONVENTION = (
    "u(B,D,*S) voxel units, channel i along array axis i; moved(x)=moving(x+u(x)); fixed->moving"
)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``.

    On failure no temporary file is left and ``path`` is untouched; an ``OSError`` (permission
    denied, disk full...) is re-raised naming ``path``, not the temporary file.
    """
    atomic_write_files({path: data})


def atomic_write_files(files: dict[str | os.PathLike, bytes | str]) -> None:
    """Write several files (bytes, or text as UTF-8) all or nothing, each like :func:`atomic_write_bytes`.

    Every file is first written to a temporary file beside its target; only when all are written
    are they renamed into place. If anything fails, the temporary files are removed; if it fails
    after a rename, every target of the set is deleted (the results contract rebuilds them from
    the parts on a rerun), so a reader never finds a set with files missing or files from
    different calls. A failure before any rename leaves existing targets untouched.
    ``OSError``\ s are re-raised naming the target file.
    """
    staged: list[tuple[str, Path]] = []
    renamed = False
    try:
        for target, data in files.items():
            target = Path(target)
            payload = data.encode("utf-8") if isinstance(data, str) else data
            staged.append((_write_temporary(target, payload), target))
        for tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _naming(exc, target) from exc
            renamed = True
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if renamed:
            for _, target in staged:
                target.unlink(missing_ok=True)
        raise


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc`` as an OSError about ``target`` (same errno, so the same subclass), e.g.
    ``[Errno 28] cannot write (No space left on device): 'DIR/summary.json'``."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return OSError(exc.errno, f"cannot write ({reason})", str(target))


def _write_temporary(target: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``target`` (flushed to disk); returns its path."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, target) from exc
        raise


def _pair_key(fixed_id: str, moving_id: str) -> str:
    return f"{fixed_id}__{moving_id}"


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


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
    """Mean over the finite values (None / NaN / inf dropped); NaN when none is left."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _nanstd(values: list[float]) -> float:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.std()) if arr.size else float("nan")


class ResultsWriter:
    """Collects per-pair results for one method into the results contract (see module doc).

    Args:
        out_dir: the output folder ``DIR``; created on the first :meth:`add`, not before.
        method: value of the ``method`` column.
        save_outputs: also save moved image, moved label and displacement as NIfTI.
        label_interp: how labels were warped for evaluation (recorded in the summary).
    """

    def __init__(self, out_dir: str | os.PathLike, method: str, save_outputs: bool = False,
                 label_interp: str = "nearest") -> None:
        self.out_dir = Path(out_dir)
        self.method = str(method)
        self.save_outputs = bool(save_outputs)
        self.label_interp = label_interp

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / ".parts" / _safe_name(self.method)

    def _part_path(self, fixed_id: str, moving_id: str) -> Path:
        return self.parts_dir / f"{_safe_name(_pair_key(fixed_id, moving_id))}.json"

    def is_done(self, fixed_id: str, moving_id: str) -> bool:
        """True when this pair already has a complete result in ``out_dir`` (resume)."""
        return self._part_path(fixed_id, moving_id).exists()

    def add(self, row: dict[str, Any], dice_per_label: dict[int, float]) -> None:
        """Store one pair: ``row`` holds the ``PAIR_COLUMNS`` (method is filled in)."""
        row = dict(row)
        row["method"] = self.method
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"ResultsWriter.add() row lacks columns {missing}")
        part = {
            "pair": {c: _jsonable(row[c]) for c in PAIR_COLUMNS},
            "labels": {str(int(k)): _jsonable(v) for k, v in dice_per_label.items()},
        }
        atomic_write_text(self._part_path(row["fixed_id"], row["moving_id"]), json.dumps(part))

    def moved_path(self, fixed_id: str, moving_id: str, what: str) -> Path:
        """``DIR/moved/<fixed_id>__<moving_id>_<what>.nii.gz`` (what: image, label or disp)."""
        return self.out_dir / "moved" / f"{_safe_name(_pair_key(fixed_id, moving_id))}_{what}.nii.gz"

    def load_parts(self) -> list[dict[str, Any]]:
        """All stored parts of this method, sorted by (fixed_id, moving_id)."""
        if not self.parts_dir.exists():
            return []
        parts = []
        for p in sorted(self.parts_dir.glob("*.json")):
            with open(p) as fh:
                parts.append(json.load(fh))
        parts.sort(key=lambda d: (str(d["pair"]["fixed_id"]), str(d["pair"]["moving_id"])))
        return parts

    def finalize(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rebuild ``pairs.csv``, ``labels.csv`` and ``summary.json`` from the parts; returns the summary."""
        parts = self.load_parts()
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
        summary: dict[str, Any] = {
            "method": self.method,
            "n_pairs": len(pairs),
            "dice_mean": nanmean([p["dice"] for p in pairs]),
            "dice_std": _nanstd([p["dice"] for p in pairs]),
            "dice_identity_mean": nanmean([p["dice_identity"] for p in pairs]),
            "hd95_mean": nanmean([p["hd95"] for p in pairs]),
            "sdlogj_mean": nanmean([p["sdlogj"] for p in pairs]),
            "sdlogj_l2r_mean": nanmean([p["sdlogj_l2r"] for p in pairs]),
            "folding_pct_mean": nanmean([p["folding_pct"] for p in pairs]),
            "seconds_mean": nanmean([p["seconds"] for p in pairs]),
            "label_interp": self.label_interp,
            "displacement_convention": DISPLACEMENT_CONVENTION,
        }
        if extra:
            summary.update(extra)
        atomic_write_files({  # all three or none (a failed write leaves no partial results)
            self.out_dir / "pairs.csv": csv_text(pairs, PAIR_COLUMNS),
            self.out_dir / "labels.csv": csv_text(label_rows, LABEL_COLUMNS),
            self.out_dir / "summary.json": json.dumps(_jsonable(summary), indent=2) + "\n",
        })
        return summary


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
