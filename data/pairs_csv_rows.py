"""Reading a pairs CSV (:mod:`data.pairs_csv`): its rows, paths resolved against its folder, and the
item id of every image file it lists."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from data.io import DataError, volume_id

__all__ = ["REQUIRED_COLUMNS", "LABEL_COLUMNS", "read_pairs_csv", "assign_ids"]

REQUIRED_COLUMNS = ("fixed", "moving")
LABEL_COLUMNS = ("fixed_label", "moving_label")


def read_pairs_csv(path: Path) -> tuple[list[dict], bool]:
    """The rows of a pairs CSV (each column's path resolved against the CSV's folder, plus ``_row`` and
    ``_line``) and whether it has the label columns; DataError naming the file, row and column."""
    rows: list[dict] = []
    if not path.is_file():
        raise DataError(f"{path}: pairs CSV not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            lines = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: unreadable pairs CSV ({type(err).__name__}: {err})") from err
    lines = [(n, row) for n, row in lines if any(cell.strip() for cell in row)]
    if not lines:
        raise DataError(f"{path}: empty pairs CSV, expected a header row with columns fixed,moving")
    header_line, header = lines[0]
    columns = [c.strip() for c in header]
    for col in REQUIRED_COLUMNS:
        if col not in columns:
            raise DataError(
                f"{path}: missing required column '{col}' (header has {columns}; expected "
                f"fixed,moving[,fixed_label,moving_label])"
            )
    present = [c for c in LABEL_COLUMNS if c in columns]
    if len(present) == 1:
        missing = LABEL_COLUMNS[1 - LABEL_COLUMNS.index(present[0])]
        raise DataError(f"{path}: has column '{present[0]}' but not '{missing}'; give both label columns or neither")
    has_labels = len(present) == 2
    wanted = REQUIRED_COLUMNS + (LABEL_COLUMNS if has_labels else ())
    index = {col: columns.index(col) for col in wanted}
    if len(lines) == 1:
        raise DataError(f"{path}: pairs CSV has a header but no rows, expected at least one pair")
    folder = path.parent
    for number, (line, row) in enumerate(lines[1:], start=1):
        entry: dict[str, Path] = {}
        for col, j in index.items():
            value = row[j].strip() if j < len(row) else ""
            if not value:
                raise DataError(f"{path}: row {number} (line {line}): empty value in column '{col}'")
            file = Path(os.path.expanduser(value))
            entry[col] = file if file.is_absolute() else folder / file
        entry["_row"] = number  # type: ignore[assignment]
        entry["_line"] = line  # type: ignore[assignment]
        rows.append(entry)
    return rows, has_labels


def assign_ids(rows: list[dict], csv_path: Path) -> dict[Path, str]:
    """Item ids of the image files (fixed and moving columns): the file stem when no other file
    of the CSV has it, else the path relative to the CSV's folder without the extension (with
    it, if that still collides). One file (same resolved path) has one id. A (fixed, moving)
    pair of files listed twice is a DataError naming both rows."""
    folder = Path(os.path.abspath(csv_path.parent))
    ids: dict[Path, str] = {}
    listed: dict[Path, Path] = {}  # resolved file -> its first listed path (names come from it)
    for row in rows:
        for col in REQUIRED_COLUMNS:
            listed.setdefault(row[col].resolve(), Path(os.path.abspath(row[col])))
    by_stem: dict[str, list[Path]] = {}
    for key, path in listed.items():
        by_stem.setdefault(volume_id(path), []).append(key)
    relative: dict[Path, str] = {}
    for key, path in listed.items():
        if len(by_stem[volume_id(path)]) == 1:
            ids[key] = volume_id(path)
        else:
            rel = Path(os.path.relpath(path, folder)).as_posix()
            relative[key] = rel[: len(rel) - len(path.name)] + volume_id(path)
    names = list(relative.values()) + list(ids.values())
    for key, rel in relative.items():  # e.g. t1.nii and t1.nii.gz side by side: keep the extension
        ids[key] = rel if names.count(rel) == 1 else Path(os.path.relpath(listed[key], folder)).as_posix()
    first: dict[tuple[str, str], dict] = {}
    for row in rows:
        pair = ids[row["fixed"].resolve()], ids[row["moving"].resolve()]
        if pair in first:
            raise DataError(
                f"{csv_path}: row {row['_row']} (line {row['_line']}) lists the same fixed and moving files as row {first[pair]['_row']} "
                f"(line {first[pair]['_line']}): fixed {row['fixed']}, moving {row['moving']}; "
                "each pair must appear once"
            )
        first[pair] = row
    return ids
