"""The paper's recipe as a tool: learned or classical registration for *your* data? (paper item 5)

    python -m experiments.recipe --train mni --test mni
    python -m experiments.recipe --train data/train_pairs.csv --test data/test_pairs.csv --curve results/mi_sweep/mi_fit.json
    python -m experiments.recipe --train oasis --test ibsr18 --set train.data_dir=/data --set test.root=/data/IBSR18
    python -m experiments.recipe --train none --test mni --need-fast --out results/recipe

``--train`` / ``--test``: a data config name of ``configs/data/`` (composed with Hydra from
``train.yaml``; ``--set train.KEY=VALUE`` / ``--set test.KEY=VALUE`` set ``data.KEY`` of that
side, adding keys the YAML lacks, e.g. MNI's ``gamma``; ``SIDE.paths.KEY`` and the shorthand
``SIDE.data_dir`` set ``paths.*``), or a path ending in ``.csv`` (a pairs CSV, columns
``fixed,moving[,fixed_label,moving_label]``, read as ``PairsCSVDataModule(csv=PATH)``).
``--train none``: no training set. The training side is the module's training split; a
module without one (Klein sets, a CSV) gives its test pairs' images instead.

What is measured (only ``--max-images`` images per side are read, default 8; the counts of
images and of labelled images cover the whole set and come from the file lists; training
augmentation is off; the files are not all validated: ``python -m data.check`` does that):

1. label availability: distinct training images and how many have a label map
   (``n_labelled``); whether the test images have label maps.
2. MI(i; s) in bits (:func:`metrics.information.intensity_label_information`, 64 bins,
   labelled voxels only), mean over the sampled images of each side that has labels.
3. train/test shift:
   * ``js``: Jensen–Shannon divergence in bits (0 .. 1) between the two sides' pooled
     64-bin intensity histograms over [0, 1] (:func:`experiments.recipe_data.intensity_histogram`,
     :func:`~experiments.recipe_data.js_divergence`). Voxels counted: label > 0 when every sampled image of both
     sides has labels, else intensity > 0 (skull-stripped / zero background).
   * ``mi_diff`` = |MI_train - MI_test| (bits), when both sides have labels.
   * ``shifted = js > --js-threshold or mi_diff > --mi-threshold``.

   Default thresholds ``JS_THRESHOLD = 0.04`` and ``MI_THRESHOLD = 0.1`` bits, calibrated on
   the MNI152 subjects (``mni`` for both sides, 8 training images; test seeds 0-8):

   ============================================  ================  ===============
   test side                                      js (bits)         mi_diff (bits)
   ============================================  ================  ===============
   same MNIDataModule (n_test 4, 9 seeds)         0.002 - 0.020     up to 0.054
   same, n_test 2 (8 seeds)                       0.002 - 0.027     up to 0.086
   ``gamma=1.0`` (5 seeds)                        0.047 - 0.37      < 0.05
   ``bias=0.5`` (5 seeds)                         0.14 - 0.41       0.48 - 0.55
   ``noise=0.05`` (5 seeds)                       0.003 - 0.023     0.11 - 0.18
   contrast inverted (1 - x in the brain)         0.52              (same)
   ============================================  ================  ===============

   The thresholds sit above the worst same-distribution value (JS 1.5x, MI 1.2x with
   2-image test sets; 2x with 4) and every changed setting trips at least one of them. Errors are meant to fall on the safe side: a false "shift" gives
   classical, which the paper never finds badly wrong; a missed shift gives a network out
   of domain (finding 4). JS on few images is noisy: see ``--max-images``.

The rule (:func:`recommend`; paper item 5: "use a learned method only when a large labelled
training set exists AND test data come from the same distribution; otherwise classical"):

R1. no training set, or fewer than ``--min-labelled`` labelled training images -> ``classical``
    (finding 2: unsupervised learned methods do not beat classical optimisers; without
    enough labels there is no supervision, the only thing that made networks win). With test
    labels and ``--curve``, the classical Dice expected from the test MI is reported.
R2. enough labelled training images, shifted -> ``classical`` (finding 4: the gain of
    supervision does not survive domain shift; classical methods rank first out of domain).
R3. enough labelled training images, not shifted -> ``supervised learned`` (finding 3).
R4. ``--need-fast`` (seconds matter more than the last Dice points) changes R1 only: with a
    training set (any labels), not shifted -> ``unsupervised learned``. It is a speed choice:
    the paper never sees it beat classical (finding 2), so expect classical-level Dice at
    best. Shifted, or no training set -> still ``classical``.

``--min-labelled`` default 20: the paper gives no minimum; supervision won with 364
labelled OASIS subjects. Below 20 a set is as small as IBSR18 (18), CUMC12 (12) or MGH10
(10), which the paper uses only as test sets, never to train; 20 is a floor, not a
guarantee (raise it when you can).

Bad input (unknown config name, missing CSV, ``--set`` without ``=``) ends with one
``error: ...`` line and exit status 1 (:func:`app.build.guarded`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence


from experiments.recipe_data import (
    HIST_BINS,
    MI_BINS,
    Side,
    measure_side,
    parse_sets,
    shift_statistic,
)
from app import ConfigError
from experiments.recipe_rule import (  # noqa: F401 - the tool's API
    CLASSICAL, JS_THRESHOLD, MAX_IMAGES, MI_THRESHOLD, MIN_LABELLED, SUPERVISED, UNSUPERVISED, Evidence,
    Recommendation, _f, expected_classical_dice, is_shifted, recommend,
)

__all__ = [
    "CLASSICAL",
    "SUPERVISED",
    "UNSUPERVISED",
    "Evidence",
    "Recommendation",
    "recommend",
    "is_shifted",
    "expected_classical_dice",
    "main",
]

# ------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 1 (argparse's default is usage + exit 2)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recipe.py", description="Learned or classical registration? The paper's recipe "
                "(see the module docstring for the rule and the statistics).")
    p.add_argument("--train", required=True, help="data config name, pairs CSV (.csv) or 'none'")
    p.add_argument("--test", required=True, help="data config name or pairs CSV (.csv)")
    p.add_argument("--set", action="append", default=[], metavar="SIDE.KEY=VALUE",
                   help="data override for train or test, e.g. test.gamma=0.5 (repeatable)")
    p.add_argument("--max-images", type=int, default=MAX_IMAGES, help="images read per side (default 8)")
    p.add_argument("--min-labelled", type=int, default=MIN_LABELLED,
                   help="labelled training images needed for supervision (default 20)")
    p.add_argument("--js-threshold", type=float, default=JS_THRESHOLD, help="JS shift threshold, bits (0.04)")
    p.add_argument("--mi-threshold", type=float, default=MI_THRESHOLD, help="MI difference threshold, bits (0.1)")
    p.add_argument("--need-fast", action="store_true", help="registration speed matters (allows unsupervised)")
    p.add_argument("--curve", default=None, help="mi_fit.json of mi_sweep.py / mi_analysis.py (expected Dice)")
    p.add_argument("--out", default=None, help="folder for recipe.json")
    return p


def _load_curve(path: str) -> dict[str, Any]:
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise ConfigError(f"--curve: no such file: {p}")
    try:
        fit = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--curve: {p} is not readable JSON ({exc})") from exc
    if not isinstance(fit, dict) or "log" not in fit or "mi_range" not in fit:
        raise ConfigError(f"--curve: {p} is not an mi_fit.json (needs keys 'log' and 'mi_range')")
    return fit


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, decide, print; returns the report (also written to ``--out/recipe.json``)."""
    from data.files import atomic_write_text

    if args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    if args.test.lower() == "none":
        raise ConfigError("--test: a test set is required (a config name or a pairs CSV)")
    overrides = parse_sets(args.set)
    no_train = args.train.lower() == "none"
    if no_train and overrides["train"]:
        raise ConfigError("--set train.*: given with --train none")
    fit = _load_curve(args.curve) if args.curve else None

    train = None if no_train else measure_side(args.train, overrides["train"], "--train", True, args.max_images)
    test = measure_side(args.test, overrides["test"], "--test", False, args.max_images)
    evidence = _evidence(train, test)
    rec = recommend(evidence, args.min_labelled, args.js_threshold, args.mi_threshold, args.need_fast)
    dice, warnings = _curve_prediction(fit, evidence)
    warnings += _side_warnings(train, test)
    _print_report(train, test, rec, evidence, dice, args.curve, warnings)
    report = {
        "recommendation": rec.method,
        "rule": rec.rule,
        "shifted": rec.shifted,
        "reasons": rec.reasons,
        "evidence": {**asdict(evidence), "mi_diff": evidence.mi_diff},
        "train": None if train is None else _side_dict(train),
        "test": _side_dict(test),
        "expected_classical_dice": dice,
        "warnings": warnings,
        "options": {k: getattr(args, k) for k in ("train", "test", "set", "max_images", "min_labelled",
                                                  "js_threshold", "mi_threshold", "need_fast", "curve")}
        | {"hist_bins": HIST_BINS, "mi_bins": MI_BINS, "mi_mask": "foreground"},
    }
    if args.out:
        path = Path(os.path.expanduser(args.out)) / "recipe.json"
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        print(f"results: {path.resolve()}")
    return report


def _evidence(train: Side | None, test: Side) -> Evidence:
    js, mask_name = shift_statistic(train, test) if train is not None else (None, None)
    return Evidence(
        n_train_images=0 if train is None else train.n_images,
        n_labelled=0 if train is None else train.n_labelled,
        test_labelled=test.labelled,
        mi_train=None if train is None else train.mi_mean,
        mi_test=test.mi_mean,
        js=js,
        histogram_mask=mask_name,
        n_test_images=test.n_images,
        n_train_sampled=0 if train is None else len(train.ids),
        n_test_sampled=len(test.ids),
    )


def _curve_prediction(fit: dict[str, Any] | None, evidence: Evidence) -> tuple[float | None, list[str]]:
    """The classical Dice a ``--curve`` predicts at the test set's MI, and the warnings about it."""
    if fit is None:
        return None, []
    if evidence.mi_test is None:
        return None, ["--curve given but the test set has no labels: no MI, no Dice prediction"]
    dice, warning = expected_classical_dice(fit, evidence.mi_test)
    warnings = [warning] if warning else []
    opts = fit.get("options") or {}
    if opts.get("bins", MI_BINS) != MI_BINS or opts.get("mask", "foreground") != "foreground":
        warnings.append(f"the curve's MI options {opts} differ from this tool's (bins {MI_BINS}, "
                        "mask foreground): the prediction is approximate")
    if opts.get("pair", "mean") != "mean":
        warnings.append(f"the curve was fitted on the pairs' {opts['pair']} MI, this tool gives the test set's mean: "
                        "the prediction is approximate")
    return dice, warnings


def _side_warnings(train: Side | None, test: Side) -> list[str]:
    warnings = []
    if train is not None:  # over the whole sets when their file lists name every image, else the samples
        whole = bool(train.all_ids and test.all_ids)
        shared = sorted(set(train.all_ids if whole else train.ids) & set(test.all_ids if whole else test.ids))
        if shared:
            warnings.append(f"{len(shared)} {'' if whole else 'sampled '}test images also in the training set: "
                            f"{', '.join(shared[:5])}" + (" ..." if len(shared) > 5 else "")
                            + " (the same subjects on both sides)")
    return warnings + [f"{s.source}: {s.note}" for s in (train, test) if s is not None and s.note]


def _print_report(train: Side | None, test: Side, rec, evidence: Evidence, dice: float | None, curve: str | None,
                  warnings: list[str]) -> None:
    lines = []
    for name, s in (("train", train), ("test", test)):
        if s is None:
            lines.append(f"{name}: none")
            continue
        lines.append(f"{name}: {s.source}: {s.n_images} images, {s.n_labelled} labelled; sampled {len(s.ids)}; "
                     f"MI(i; s) = {_f(s.mi_mean)} bits" + ("" if s.mi else " (no labels)"))
    lines.append(f"recommendation: {rec.method} (rule {rec.rule})")
    lines += [f"  - {r}" for r in rec.reasons]
    if dice is not None:
        lines.append(f"expected classical Dice at test MI {evidence.mi_test:.3f} bits: {dice:.3f} (curve {curve})")
    lines += [f"warning: {w}" for w in warnings]
    print("\n".join(lines))
    sys.stdout.flush()


def _side_dict(s: Side) -> dict[str, Any]:
    return {"source": s.source, "n_images": s.n_images, "n_labelled": s.n_labelled, "sampled": list(s.ids),
            "labelled": s.labelled, "mi_mean": s.mi_mean, "mi": dict(s.mi), "note": s.note}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point (bad input: one ``error:`` line, exit 1)."""
    from app import guarded

    args = _parser().parse_args(argv)
    return guarded(run)(args)


if __name__ == "__main__":
    main()
