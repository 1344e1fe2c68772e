"""Does intensity–label mutual information predict how well classical registration does? (paper Q1)

    python -m experiments.mi_analysis data=mni model=greedy_fast            # runs the eval, then the analysis
    python -m experiments.mi_analysis data=oasis results_dir=DIR             # an eval run's pairs.csv you have
    python -m experiments.mi_analysis data=ibsr18 mi.bins=32 mi.mask=all mi.pair=fixed

For every image of the evaluated pairs: ``MI(i; s) = H(s) - H(s | i)`` (:func:`metrics.information.
intensity_label_information`, options ``mi.bins``, ``mi.mask``; a pair's value per ``mi.pair``).
Joined with the eval run's ``pairs.csv`` (registered Dice per pair; exactly the dataset's test pairs:
other rows are left out, a test pair missing from it is an error naming it), it fits Dice = a + b·MI and
Dice = a + b·log(MI) and prints Pearson r and its p-value for both (paper: r = 0.886 and 0.933
over four brain datasets with ANTs). Writes to ``paths.output_dir``: ``mi_pairs.csv`` (one row
per pair), ``mi_fit.json`` (both fits + the options), ``mi_scatter.png``; logs them to the
configured logger (``logger=wandb``).

The functions here are shared by ``mi_sweep.py`` and ``recipe.py``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence


import numpy as np

from data.io import DataError
from metrics.information import LabelInformation, intensity_label_information, pair_information
from app.results import csv_text
from data.files import atomic_write_text

__all__ = [
    "image_information",
    "read_pairs_csv",
    "dataset_pairs",
    "join_pairs",
    "fit_dice_vs_mi",
    "predict_dice",
    "write_outputs",
    "plot_scatter",
]

FIT_MODELS = ("linear", "log")
_LOG_FLOOR = 1e-6  # bits: MI below this is clipped before taking the log


class PairInformation(NamedTuple):
    """MI of a pair's fixed and moving image, and the pair's Dice and mean absolute intensity
    difference before registration (to recognise results of other data under the same ids)."""

    fixed: LabelInformation
    moving: LabelInformation
    dice_identity: float
    mae_identity: float = float("nan")


def image_information(
    dataset, bins: int = 64, mask: str = "foreground", pairs: Iterable[tuple[str, str]] | None = None
) -> dict[tuple[str, str], PairInformation]:
    """MI of the fixed and of the moving image of every pair of a pair dataset (items follow the
    batch contract), each from that pair's own images: one subject id can name different images in
    different pairs (LPBA40's moving subject is resampled into each target's space).

    Args:
        dataset: indexable pairs (``dataset[i]`` -> dict with ``fixed``, ``moving``,
            ``fixed_label``, ``moving_label``, ``fixed_id``, ``moving_id``).
        pairs: only these ``(fixed_id, moving_id)`` (default: all).
    Returns: ``{(fixed_id, moving_id): PairInformation}``. A dataset without labels raises DataError.
    """
    from metrics import dice
    from models.evaluation import mae_identity

    wanted = None if pairs is None else {(str(f), str(m)) for f, m in pairs}
    out: dict[tuple[str, str], PairInformation] = {}
    for index in range(len(dataset)):
        item = dataset[index]
        key = (str(item["fixed_id"]), str(item["moving_id"]))
        if wanted is not None and key not in wanted:
            continue
        sides = []
        for side in ("fixed", "moving"):
            if f"{side}_label" not in item:
                raise DataError(f"MI needs label maps, but the dataset's pairs have no '{side}_label' "
                                f"(pair {key[0]} <- {key[1]})")
            try:
                sides.append(intensity_label_information(item[side], item[f"{side}_label"], bins=bins, mask=mask))
            except ValueError as exc:
                raise DataError(f"pair {key[0]} <- {key[1]}, {side} image {item[f'{side}_id']}: {exc}") from exc
        identity = dice(item["fixed_label"], item["moving_label"], item["moving_label"]).mean  # as eval.py's
        out[key] = PairInformation(sides[0], sides[1], float(identity), mae_identity(item["fixed"], item["moving"]))
    return out


# the metrics_version from which pairs.csv holds both data checks (dice_identity and mae_identity,
# which tell results of other data under the same pair ids: other images with the same labels give
# the same dice_identity) and Dice follows the scorer's label rule; folders of older runs are refused
DICE_RULE_VERSION = 4


def read_pairs_csv(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results folder's ``pairs.csv`` (:func:`app.results.read_results`, the one reader;
    the analysis needs the pair ids and ``dice``, numbers as floats) as dicts with ``fixed_id``/``moving_id``
    and ``method`` (the row's, else ``summary.json``'s, else empty)."""
    from app.results import read_results

    # both data checks are required: a hand-made pairs.csv (no summary.json) must carry them too
    results = read_results(results_dir, required=("fixed_id", "moving_id", "dice", "dice_identity", "mae_identity"))
    if results.summary:  # written by eval.py/train.py: recent enough for the checks and the label rule
        version = results.summary.get("metrics_version")
        if not isinstance(version, int) or version < DICE_RULE_VERSION:
            raise DataError(f"{results.folder / 'summary.json'}: metrics_version {version} predates the data checks "
                            f"of pairs.csv and the Learn2Reg label rule of Dice (metrics_version {DICE_RULE_VERSION}): "
                            f"recompute it with eval.py paths.output_dir={results.folder}")
    default = str(results.summary.get("method", ""))
    return [{"fixed_id": f, "moving_id": m, "method": results.method_of.get((f, m), default), **values}
            for (f, m), values in results.rows.items()]


def dataset_pairs(rows: Sequence[Mapping[str, Any]], expected: Iterable[tuple[str, str]],
                  source: str | os.PathLike = "pairs.csv") -> list[Mapping[str, Any]]:
    """The rows of a results ``pairs.csv`` for exactly the dataset's test pairs ``expected``
    (``(fixed_id, moving_id)``), in the dataset's order. A dataset pair missing from the results,
    or listed twice, is a DataError naming it; rows of other pairs are left out (see the count
    this prints)."""
    by_pair: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        key = (str(row["fixed_id"]), str(row["moving_id"]))
        if key in by_pair:
            raise DataError(f"{source}: pair ({key[0]}, {key[1]}) is listed twice; results must list each pair once")
        by_pair[key] = row
    expected = [(str(f), str(m)) for f, m in expected]
    missing = [p for p in expected if p not in by_pair]
    if missing:
        names = ", ".join(f"({f}, {m})" for f, m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{source}: no result for {len(missing)} of the dataset's {len(expected)} test pairs: {names} "
                        "(evaluate this data= into results_dir first)")
    extra = len(by_pair) - len(set(expected))
    if extra:
        print(f"{source}: ignored {extra} rows of pairs outside the dataset's test pairs")
        sys.stdout.flush()
    return [by_pair[p] for p in expected]


def join_pairs(
    pairs: Sequence[Mapping[str, Any]], info: Mapping[tuple[str, str], PairInformation],
    reduction: str = "mean",
) -> list[dict[str, Any]]:
    """One row per pair: its ids, method, Dice (registered and identity) and MI (fixed, moving, pair;
    ``info`` from :func:`image_information`). A result whose Dice before registration is not the
    dataset's for that pair comes from other data under the same ids: DataError naming the pair."""
    from experiments.comparison import DATA_COLUMNS, SAME_DATA_TOLERANCE

    rows = []
    for p in pairs:
        fixed_id, moving_id = str(p["fixed_id"]), str(p["moving_id"])
        if (fixed_id, moving_id) not in info:
            raise DataError(f"pairs.csv lists pair ({fixed_id!r}, {moving_id!r}), which is not in the dataset "
                            "(data=... differs from the eval run?)")
        fi, mi, identity, mae = info[(fixed_id, moving_id)]
        for column, own in (("dice_identity", identity), ("mae_identity", mae)):
            given = float(p.get(column, float("nan")))
            if not np.isfinite(given):  # no check would be made: refused, not skipped
                raise DataError(f"pair {fixed_id} <- {moving_id}: the results give no {DATA_COLUMNS[column]} ({column}): "
                                "whether they were computed on this data cannot be checked")
            if np.isfinite(own) and abs(given - own) > SAME_DATA_TOLERANCE:
                raise DataError(f"pair {fixed_id} <- {moving_id}: the results give {DATA_COLUMNS[column]} "
                                f"({column}) {given:.6g}, this data {own:.6g}: they were computed on other data "
                                "(data=... differs from the eval run: images, labels, label protocol or contrast)")
        rows.append({
            "fixed_id": fixed_id,
            "moving_id": moving_id,
            "method": p.get("method", ""),
            "dice": float(p["dice"]),
            "dice_identity": float(p.get("dice_identity", float("nan"))),
            "mi_fixed": fi.mi,
            "mi_moving": mi.mi,
            "mi": pair_information(fi.mi, mi.mi, reduction),
            "h_labels": pair_information(fi.h_labels, mi.h_labels, reduction),
        })
    return rows


def _line_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy import stats

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": float("nan"), "p": float("nan"), "slope": float("nan"), "intercept": float("nan")}
    r, p = stats.pearsonr(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    return {"r": float(r), "p": float(p), "slope": float(slope), "intercept": float(intercept)}


def fit_dice_vs_mi(dice: Sequence[float], mi: Sequence[float],
                   pair_ids: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Least-squares fits ``dice = intercept + slope * x`` with ``x = MI`` ("linear") and
    ``x = ln(max(MI, 1e-6))`` ("log"), each with Pearson r and its two-sided p; NaN pairs dropped.
    Fewer than 3 pairs, or constant MI or Dice, give NaN fits. With ``pair_ids`` (each pair's
    ``(fixed_id, moving_id)``): ``n_subjects`` and a ``note`` when pairs share subjects: the p-values
    take the pairs as independent, so they are optimistic there (with ``pair=mean`` the pairs (a, b)
    and (b, a) even share their MI)."""
    d, m = np.asarray(dice, dtype=float), np.asarray(mi, dtype=float)
    keep = np.isfinite(d) & np.isfinite(m)
    d, m = d[keep], m[keep]
    out = {
        "n": int(len(d)),
        "linear": _line_fit(m, d),
        "log": _line_fit(np.log(np.maximum(m, _LOG_FLOOR)), d),
        "mi_range": [float(m.min()), float(m.max())] if len(m) else [float("nan")] * 2,
    }
    if pair_ids is not None:
        kept = [p for p, k in zip(pair_ids, keep) if k]
        subjects = {str(x) for p in kept for x in p}
        out["n_subjects"] = len(subjects)
        if len(subjects) < 2 * len(kept):
            out["note"] = (f"{len(kept)} pairs share {len(subjects)} subjects: the p-values take them as "
                           "independent and are optimistic")
    return out


def predict_dice(fit: Mapping[str, Any], mi: float, model: str = "log") -> float:
    """Dice expected at ``mi`` from a :func:`fit_dice_vs_mi` result (clipped to [0, 1])."""
    if model not in FIT_MODELS:
        raise ValueError(f"predict_dice() 'model' must be one of {FIT_MODELS}, got {model!r}")
    line = fit[model]
    x = float(mi) if model == "linear" else math.log(max(float(mi), _LOG_FLOOR))
    return float(np.clip(line["intercept"] + line["slope"] * x, 0.0, 1.0))


def plot_scatter(rows: Sequence[Mapping[str, Any]], fit: Mapping[str, Any], path: str | os.PathLike,
                 title: str = "", group: str | None = None) -> None:
    """Dice vs MI (left) and vs log MI (right) with the fitted lines; ``group`` colours by a row key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mi = np.array([r["mi"] for r in rows], dtype=float)
    dice = np.array([r["dice"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = sorted({str(r[group]) for r in rows}, key=_natural) if group else [None]
    for name in groups:
        sel = np.array([group is None or str(r[group]) == name for r in rows])
        for ax, x in zip(axes, (mi, np.log(np.maximum(mi, _LOG_FLOOR)))):
            ax.scatter(x[sel], dice[sel], s=14, label=None if name is None else f"{group}={name}")
    for ax, model, xs, label in (
        (axes[0], "linear", mi, "MI(i; s) [bits]"),
        (axes[1], "log", np.log(np.maximum(mi, _LOG_FLOOR)), "ln MI(i; s)"),
    ):
        line = fit[model]
        if np.isfinite(line["slope"]):
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(grid, line["intercept"] + line["slope"] * grid, "k--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("Dice after registration")
        ax.set_title(f"{model}: r = {line['r']:.3f}, p = {line['p']:.2g}, n = {fit['n']}")
        ax.grid(alpha=0.3)
    if group:
        axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from app import save_figure

    save_figure(fig, path)


def _natural(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def write_outputs(out_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fit: Mapping[str, Any],
                  options: Mapping[str, Any], title: str = "", group: str | None = None) -> dict[str, Path]:
    """``mi_pairs.csv``, ``mi_fit.json`` (fit + options) and ``mi_scatter.png`` in ``out_dir`` (atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pairs": out / "mi_pairs.csv", "fit": out / "mi_fit.json", "scatter": out / "mi_scatter.png"}
    atomic_write_text(paths["pairs"], csv_text(rows))
    atomic_write_text(paths["fit"], json.dumps({**fit, "options": dict(options)}, indent=2) + "\n")
    plot_scatter(rows, fit, paths["scatter"], title=title, group=group)
    return paths


def print_fit(fit: Mapping[str, Any], prefix: str = "") -> None:
    lin, log = fit["linear"], fit["log"]
    print(
        f"{prefix}Dice vs MI over {fit['n']} pairs: linear r = {lin['r']:.3f} (p = {lin['p']:.2g}), "
        f"log r = {log['r']:.3f} (p = {log['p']:.2g})  [paper, ANTs on 4 brain sets: 0.886, 0.933]"
        + (f"; {fit['note']}" if fit.get("note") else "")
    )
    sys.stdout.flush()


def mi_options(cfg) -> dict[str, Any]:
    """The ``mi`` config node as plain values, checked."""
    from metrics.information import MASKS, PAIR_REDUCTIONS

    node = cfg.get("mi") or {}
    opts = {"bins": int(node.get("bins", 64)), "mask": str(node.get("mask", "foreground")),
            "pair": str(node.get("pair", "mean"))}
    if opts["mask"] not in MASKS:
        raise DataError(f"mi.mask must be one of {list(MASKS)}, got {opts['mask']!r}")
    if opts["pair"] not in PAIR_REDUCTIONS:
        raise DataError(f"mi.pair must be one of {list(PAIR_REDUCTIONS)}, got {opts['pair']!r}")
    if opts["bins"] < 2:
        raise DataError(f"mi.bins must be >= 2, got {opts['bins']}")
    return opts


def data_description(cfg) -> str:
    """The data a fit comes from, for its title and ``mi_fit.json``: the ``data=`` choice (e.g.
    ``lpba40``, not the class all four Klein sets share) with its label protocol and contrast when
    set (``mni, labels=parcels``)."""
    name = None
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("data")
    except Exception:  # noqa: BLE001 - not under Hydra's main (a test composing the config)
        pass
    name = name or cfg.data.get("name") or str(cfg.data.get("_target_", "data")).split(".")[-1]
    extras = [f"{k}={cfg.data.get(k)}" for k in ("labels", "contrast") if cfg.data.get(k) not in (None, "")]
    return ", ".join([str(name), *extras])


def analyse(cfg) -> dict[str, Any]:
    """The script's work (see the module docstring); returns the fit."""
    from app import build_datamodule, check_entry, check_output_dir, log_analysis, run_eval

    check_entry(cfg, "mi_analysis")
    opts = mi_options(cfg)
    datamodule = build_datamodule(cfg)
    out_dir = check_output_dir(cfg.paths.output_dir, datamodule)
    results_dir = cfg.get("results_dir")
    if not results_dir:
        results_dir = out_dir / "eval"
        run_eval(cfg, results_dir, datamodule=datamodule)
    pairs = dataset_pairs(read_pairs_csv(results_dir), datamodule.test_pair_ids(), Path(results_dir) / "pairs.csv")
    dataset = datamodule.test_dataloader().dataset
    info = image_information(dataset, bins=opts["bins"], mask=opts["mask"],
                             pairs=[(p["fixed_id"], p["moving_id"]) for p in pairs])
    rows = join_pairs(pairs, info, opts["pair"])
    fit = fit_dice_vs_mi([r["dice"] for r in rows], [r["mi"] for r in rows],
                         [(r["fixed_id"], r["moving_id"]) for r in rows])
    data = data_description(cfg)
    paths = write_outputs(out_dir, rows, fit, {**opts, "results_dir": str(results_dir), "data": data,
                                               "method": rows[0]["method"]},
                          title=f"{rows[0]['method']} on {data}")
    print_fit(fit)
    print(f"results: {out_dir.resolve()} (mi_pairs.csv, mi_fit.json, mi_scatter.png)")
    log_analysis(cfg, {"mi/r_linear": fit["linear"]["r"], "mi/r_log": fit["log"]["r"], "mi/n_pairs": fit["n"]},
                 images={"mi/scatter": paths["scatter"]}, tables={"mi/pairs": rows})
    return fit


def _main() -> None:
    from app import guarded
    from app.entry import hydra_main

    run = guarded(analyse)

    @hydra_main("mi_analysis")
    def main(cfg) -> None:
        run(cfg)

    main()


if __name__ == "__main__":
    _main()
