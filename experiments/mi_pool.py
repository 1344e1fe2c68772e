"""Finding 1 over several datasets: one fit of Dice against intensity–label MI over the pairs of
every dataset (the paper, Fig. 1: ANTs on OASIS, LPBA40, MGH10 and IBSR18, Pearson r = 0.886 for
Dice vs MI and 0.933 for Dice vs log MI).

    python -m experiments.mi_analysis data=oasis  model=ants_syn model.preset=paper paths.output_dir=mi/oasis
    python -m experiments.mi_analysis data=lpba40 model=ants_syn model.preset=paper paths.output_dir=mi/lpba40
    ...                                                                              (mgh10, ibsr18)
    python -m experiments.mi_pool mi/oasis mi/lpba40 mi/mgh10 mi/ibsr18 --out mi/pooled

Each folder is an ``mi_analysis`` output (``mi_fit.json`` + ``mi_pairs.csv``). Their pairs are
pooled only when they can be: every folder's MI computed the same way (``mi.bins``, ``mi.mask``,
``mi.pair``), one registration method throughout, each dataset once; otherwise one ``error:`` line
names the folder and what differs. Writes to ``--out``: ``mi_pairs.csv`` (every pair, with its
``dataset``), ``mi_fit.json`` (the pooled fits, the options, the pairs per dataset, the folders)
and ``mi_scatter.png`` (coloured by dataset).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from data.io import DataError
from experiments.mi_analysis import fit_dice_vs_mi, print_fit, write_outputs

__all__ = ["read_analysis", "pool"]

# the options that decide how a pair's MI was computed: pooled values must share them
MI_OPTIONS = ("bins", "mask", "pair")


def read_analysis(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(options, rows)`` of an ``mi_analysis`` output folder: ``mi_fit.json``'s options (with the
    ``data`` and ``method`` they were computed for) and ``mi_pairs.csv``'s rows (``dice`` and ``mi``
    as floats). DataError naming the file when either is missing, unreadable or incomplete."""
    folder = Path(folder)
    fit_file, pairs_file = folder / "mi_fit.json", folder / "mi_pairs.csv"
    try:
        options = json.loads(fit_file.read_text(encoding="utf-8")).get("options")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise DataError(f"{fit_file}: not an mi_analysis fit ({type(err).__name__}: {err})") from None
    missing = [k for k in (*MI_OPTIONS, "data", "method") if not isinstance(options, dict) or k not in options]
    if missing:
        raise DataError(f"{fit_file}: its options lack {missing} (written by an older mi_analysis): run "
                        f"python -m experiments.mi_analysis again into {folder}")
    try:
        with open(pairs_file, newline="", encoding="utf-8") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{pairs_file}: unreadable ({type(err).__name__}: {err})") from None
    if not raw:
        raise DataError(f"{pairs_file}: no pairs")
    rows = []
    for line, r in enumerate(raw, start=2):
        try:
            dice, mi = float(r["dice"]), float(r["mi"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{pairs_file}: line {line}: expected numbers in columns dice and mi, got "
                            f"{r.get('dice')!r}, {r.get('mi')!r}") from None
        if not (math.isfinite(dice) and math.isfinite(mi)):  # a pooled fit would drop it without a word
            raise DataError(f"{pairs_file}: line {line}: dice {dice} and mi {mi} must be finite")
        rows.append({**r, "dice": dice, "mi": mi})
    return options, rows


def pool(folders: Sequence[str | Path]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """``(fit, rows, options)`` of the pooled analysis of ``folders`` (module docstring); DataError
    naming the folder whose options, method or dataset cannot be pooled with the first's."""
    if len(folders) < 2:
        raise DataError(f"give at least two mi_analysis folders to pool, got {len(folders)}")
    first_folder, first = None, None
    counts: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    seen: dict[Path, str] = {}
    owner: dict[tuple, str] = {}
    rows_data: dict[tuple, str] = {}
    for folder in folders:
        resolved = Path(folder).resolve()
        if resolved in seen:
            raise DataError(f"{folder}: given twice (its pairs would count twice)")
        seen[resolved] = str(folder)
        options, folder_rows = read_analysis(folder)
        if first is None:
            first_folder, first = folder, options
        for key in (*MI_OPTIONS, "method"):
            if options[key] != first[key]:
                raise DataError(f"{folder}: {key} {options[key]!r} differs from {first_folder}'s {first[key]!r}: "
                                "MI values or Dice of different settings or methods cannot share one fit")
        data = str(options["data"])
        if data in counts:
            raise DataError(f"{folder}: its data ({data}) is already pooled from another folder: each dataset once")
        for r in folder_rows:  # one dataset under two descriptions (another label protocol, contrast): same pairs
            pair = (r.get("fixed_id"), r.get("moving_id"))
            if pair in owner:
                raise DataError(f"{folder}: pair {pair[0]} <- {pair[1]} is already pooled from {owner[pair]} (data "
                                f"{data} vs {rows_data[pair]}): the same image pairs would count twice in one fit; "
                                "pool each dataset once")
            owner[pair], rows_data[pair] = str(folder), data
        counts[data] = len(folder_rows)
        rows.extend({"dataset": data, **r} for r in folder_rows)
    fit = fit_dice_vs_mi([r["dice"] for r in rows], [r["mi"] for r in rows],
                         [(f"{r['dataset']}/{r.get('fixed_id')}", f"{r['dataset']}/{r.get('moving_id')}") for r in rows])
    options = {**{k: first[k] for k in MI_OPTIONS}, "method": first["method"], "pairs_per_dataset": counts,
               "folders": [str(Path(f).resolve()) for f in folders]}
    return fit, rows, options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 1 (argparse's default is usage + exit 2)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if Path(args.out).resolve() in {Path(f).resolve() for f in args.folders}:
        raise DataError(f"--out {args.out}: is one of the folders pooled; its mi_pairs.csv and mi_fit.json would be "
                        "overwritten: give another folder")
    fit, rows, options = pool(args.folders)
    names = ", ".join(f"{d} ({n})" for d, n in options["pairs_per_dataset"].items())
    write_outputs(args.out, rows, fit, options, title=f"{options['method']} on {names}", group="dataset")
    print_fit(fit, prefix=f"pooled over {names}: ")
    print(f"results: {Path(args.out).resolve()} (mi_pairs.csv, mi_fit.json, mi_scatter.png)")
    return fit


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point (bad input: one ``error:`` line, exit 1)."""
    from app import guarded

    parser = _Parser(prog="mi_pool.py", description="Pool mi_analysis folders into one Dice-vs-MI fit (paper Fig. 1).")
    parser.add_argument("folders", nargs="+", help="mi_analysis output folders (mi_fit.json, mi_pairs.csv)")
    parser.add_argument("--out", required=True, help="folder for the pooled mi_pairs.csv, mi_fit.json, mi_scatter.png")
    return guarded(run)(parser.parse_args(argv))


if __name__ == "__main__":
    main()
