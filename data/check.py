"""Verify a downloaded copy of a dataset and print a summary table.

    python -m data.check <dataset> <root> [--labels seg35|seg4] [--pairs-csv FILE]
                         [--expect N] [--preprocess] [--per-volume] [--max-problems 20]

``<dataset>``: ``oasis``, ``oasis_l2r``, ``ibsr18``, ``cumc12``, ``mgh10``, ``lpba40`` (the
``data=`` config names). Every expected file is looked for and loaded once with the checks of
:mod:`data.io` (readable, 3-D, one scalar channel, finite; labels whole, non-negative, at most
``data.io.MAX_LABEL_VALUES`` distinct values, on their image's grid in world space: shape and
voxel-to-world affine, so a label map stored flipped or shifted against its image is a problem). The table gives subject and pair counts against the paper's, the image shapes,
spacings, orientations and intensity ranges found, label sets, the brain extent against the
dataset's default crop, and the missing or unreadable files. With ``--preprocess`` each
volume also goes through the dataset's default preprocessing and the share of label voxels
lost to the crop is reported (slower: about a second per volume).

Exit status: 0 when nothing is wrong, 1 when problems were found (listed one per line under
the table), 2 on a usage error. A tree that is not the dataset at all (empty, missing,
another layout) ends with a single ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from data.layout import LAYOUTS, Layout, VolumeRef, layout_class
from data.io import DataError
from data.preprocess import PreprocessConfig, load_source, preprocess

__all__ = ["check_dataset", "main"]

_AXIS_OF = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def _make_layout(dataset: str, root: str, labels: str | None, pairs_csv: str | None) -> Layout:
    cls = layout_class(dataset)
    kwargs: dict[str, Any] = {}
    if cls.name == "oasis" and labels:
        kwargs["labels"] = labels
    if cls.name == "oasis_l2r" and pairs_csv:
        kwargs["pairs_csv"] = pairs_csv
    return cls(root, **kwargs)


def _extent_mm(mask: np.ndarray, affine: np.ndarray, spacing: Sequence[float], orientation: str | None):
    """Bounding-box size (mm) of ``mask`` along the preprocessed array axes (after ``orientation``)."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return None
    size = np.array([(i.max() - i.min() + 1) * s for i, s in zip(idx, spacing)], dtype=float)
    if orientation is None:
        return size
    world_axis = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # array axis k -> world axis
    out = np.zeros(3)
    for t, letter in enumerate(orientation):
        k = int(np.nonzero(world_axis == _AXIS_OF[letter])[0][0])
        out[t] = size[k]
    return out


def _inspect(ref: VolumeRef, config: PreprocessConfig, run_preprocess: bool) -> dict[str, Any]:
    image, label = load_source(ref.image, ref.label, config.normalize)
    arr = image.array
    info: dict[str, Any] = {
        "id": ref.id,
        "shape": tuple(arr.shape),
        "spacing": tuple(round(s, 4) for s in image.spacing),
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
    mask = arr > 0
    if label is not None:
        ids = np.unique(label.array)
        info["labels"] = [int(v) for v in ids]
        if (label.array > 0).any():
            mask = label.array > 0
    info["extent"] = _extent_mm(mask, image.affine, image.spacing, config.orientation)
    if run_preprocess and label is not None:
        before = float((label.array > 0).sum()) * float(np.prod(image.spacing))
        p = preprocess(image, label, config)
        after = float((p.label > 0).sum()) * float(np.prod(p.spacing))
        info["label_lost"] = max(0.0, 1.0 - after / before) if before > 0 else 0.0
    return info


def _counts(values, fmt) -> str:
    c = Counter(values)
    parts = [f"{fmt(v)} ({n})" for v, n in c.most_common(3)]
    if len(c) > 3:
        parts.append(f"+{len(c) - 3} more")
    return ", ".join(parts) if parts else "-"


def _x(values, nd: int = 4) -> str:
    return "x".join(f"{v:.{nd}g}" if isinstance(v, float) else str(v) for v in values)


def _ids(values: Sequence[int], n: int = 8) -> str:
    values = sorted(values)
    head = ", ".join(str(v) for v in values[:n])
    return f"{head}{', ...' if len(values) > n else ''}"


def check_dataset(
    dataset: str,
    root: str,
    labels: str | None = None,
    pairs_csv: str | None = None,
    expect: int | None = None,
    run_preprocess: bool = False,
    per_volume: bool = False,
    out=sys.stdout,
    progress=None,
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Check ``root`` as ``dataset``; print the table; return ``(rows, problems)``.

    Raises:
        DataError: the root is missing, empty, or not this dataset's layout.
    """
    layout = _make_layout(dataset, root, labels, pairs_csv)
    config = PreprocessConfig(**layout.grid)
    problems: list[str] = []
    volumes = layout.volumes()
    subjects = layout.subjects()
    expected_n = expect if expect is not None else layout.paper_subjects
    try:
        pairs = layout.pairs()
    except DataError as err:
        problems.append(str(err))
        pairs = []
    missing = layout.missing_files(volumes)
    problems.extend(f"{p}: file not found" for p in missing)
    infos, unreadable = _inspect_all(volumes, set(missing), config, run_preprocess, problems, progress)
    if expected_n is not None and len(subjects) != expected_n:
        problems.insert(0, f"{layout.root}: found {len(subjects)} {layout.title} subjects, expected {expected_n}")
    rows = _layout_rows(layout, subjects, expected_n, pairs, len(infos), len(volumes), len(missing), unreadable)
    if infos:
        rows += _volume_rows(layout, infos, config, problems)
    rows.append(("status", "OK" if not problems else f"{len(problems)} problem(s)", ""))
    _print_table(rows, infos if per_volume else [], out)
    return rows, problems


def _inspect_all(volumes, missing: set, config, run_preprocess: bool, problems: list[str], progress):
    """:func:`_inspect` of every volume whose files exist; ``(infos, number unreadable)``; each
    unreadable file's error is appended to ``problems``."""
    infos: list[dict[str, Any]] = []
    unreadable = 0
    for n, ref in enumerate(volumes, start=1):
        if progress is not None and (n % 25 == 0 or n == len(volumes)):
            print(f"checked {n}/{len(volumes)} volumes", file=progress, flush=True)
        if ref.image in missing or (ref.label is not None and ref.label in missing):
            continue
        try:
            infos.append(_inspect(ref, config, run_preprocess))
        except DataError as err:
            unreadable += 1
            problems.append(str(err))
    return infos, unreadable


def _layout_rows(layout, subjects, expected_n, pairs, loaded: int, n_volumes: int, n_missing: int,
                 unreadable: int) -> list[tuple[str, str, str]]:
    """The table's rows about the tree: dataset, root, layout, subject and pair counts, files."""
    rows = [("dataset", f"{layout.title} (data={layout.name})", ""), ("root", str(layout.root), ""),
            ("layout", layout.expected, ""),
            ("subjects", str(len(subjects)), "" if expected_n is None else
             ("ok" if len(subjects) == expected_n else f"MISMATCH: expected {expected_n}"))]
    for split, n_paper in (layout.paper_pairs or {}).items():
        rows.append((f"pairs ({split})", str(len(pairs)), "ok" if len(pairs) == n_paper else f"paper: {n_paper}"))
    if not layout.paper_pairs:
        rows.append(("pairs", str(len(pairs)), ""))
    rows += [("volumes loaded", f"{loaded}/{n_volumes}", ""),
             ("missing files", str(n_missing), "ok" if not n_missing else "PROBLEM"),
             ("unreadable/invalid files", str(unreadable), "ok" if not unreadable else "PROBLEM")]
    unlisted = getattr(layout, "unlisted_folders", None)  # OASIS only: folders subjects.txt leaves out
    extra = unlisted() if callable(unlisted) else []
    if extra:
        rows.append(("folders not in subjects.txt", str(len(extra)), "ignored: " + ", ".join(extra[:3])))
    return rows


def _volume_rows(layout, infos: list[dict[str, Any]], config, problems: list[str]) -> list[tuple[str, str, str]]:
    """The table's rows about the volumes read: shapes, spacings, orientations, intensities, labels,
    brain extent against the default crop (a problem when it exceeds it), label volume lost."""
    rows = [("image shapes", _counts([i["shape"] for i in infos], _x), ""),
            ("spacings (mm)", _counts([i["spacing"] for i in infos], _x), ""),
            ("orientations", _counts([i["orientation"] for i in infos], str), "")]
    lo, hi = min(i["min"] for i in infos), max(i["max"] for i in infos)
    rows.append(("intensity range", f"[{lo:.4g}, {hi:.4g}]", ""))
    sets = [set(i["labels"]) - {0} for i in infos if "labels" in i]
    if sets:
        union, common = set().union(*sets), set.intersection(*sets)
        rows.append(("labels per volume", f"{min(len(s) for s in sets)}-{max(len(s) for s in sets)} foreground ids", ""))
        rows.append(("label ids (union)", f"{len(union)}: {_ids(union)}",
                     f"{len(union - common)} not in every volume" if union - common else "same in every volume"))
    extents = [i["extent"] for i in infos if i.get("extent") is not None]
    if extents:
        ext = np.max(np.stack(extents), axis=0)
        text = f"max {_x([round(float(e), 1) for e in ext])}"
        note = ""
        if config.shape is not None and config.spacing is not None:
            crop = np.array(config.shape) * np.array(config.spacing)
            fits = bool(np.all(ext <= crop))
            note = (f"{'fits' if fits else 'EXCEEDS'} the default crop {_x(config.shape)} at {_x(config.spacing)} mm"
                    f"{'' if config.orientation is None else ' (' + config.orientation + ')'}")
            if not fits:
                problems.append(f"{layout.root}: brain extent {_x([round(float(e), 1) for e in ext])} mm exceeds "
                                f"the default crop {_x(crop.tolist())} mm; set data.shape larger")
        rows.append(("brain extent (mm)", text, note))
    lost = [i["label_lost"] for i in infos if "label_lost" in i]
    if lost:
        rows.append(("label volume lost to crop", f"max {100 * max(lost):.2f} %", "ok" if max(lost) < 0.01 else "CHECK"))
    return rows


def _print_table(rows: list[tuple[str, str, str]], infos: list[dict[str, Any]], out) -> None:
    """The check table; with ``infos``, one line per volume after it."""
    width = max(len(r[0]) for r in rows)
    vwidth = min(60, max(len(r[1]) for r in rows))
    print(f"{'check':<{width}}  {'value':<{vwidth}}  note", file=out)
    print(f"{'-' * width}  {'-' * vwidth}  ----", file=out)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {note}".rstrip(), file=out)
    if infos:
        print("", file=out)
        print("id\tshape\tspacing\torientation\tmin\tmax\tn_labels", file=out)
        for i in infos:
            n_labels = len(set(i.get("labels", [])) - {0})
            print(f"{i['id']}\t{_x(i['shape'])}\t{_x(i['spacing'])}\t{i['orientation']}\t{i['min']:.4g}\t"
                  f"{i['max']:.4g}\t{n_labels}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    import data.klein  # noqa: F401  (register layouts)
    import data.oasis  # noqa: F401

    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(LAYOUTS), help="the data= config name")
    parser.add_argument("root", help="the dataset folder")
    parser.add_argument("--labels", choices=["seg35", "seg4"], default=None, help="OASIS label file (default seg35)")
    parser.add_argument("--pairs-csv", default=None, help="Learn2Reg pairs CSV (default ROOT/pairs_val.csv)")
    parser.add_argument("--expect", type=int, default=None, help="expected subject count (default: the paper's)")
    parser.add_argument("--preprocess", action="store_true", help="also preprocess each volume (label loss to crop)")
    parser.add_argument("--per-volume", action="store_true", help="also print one row per volume")
    parser.add_argument("--max-problems", type=int, default=20, help="problems listed (default 20)")
    args = parser.parse_args(argv)
    try:
        _, problems = check_dataset(args.dataset, args.root, labels=args.labels, pairs_csv=args.pairs_csv,
                                    expect=args.expect, run_preprocess=args.preprocess, per_volume=args.per_volume,
                                    progress=sys.stderr)
    except DataError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    if problems:
        print("\nproblems:")
        for p in problems[: args.max_problems]:
            print(f"  {p}")
        if len(problems) > args.max_problems:
            print(f"  ... and {len(problems) - args.max_problems} more")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
