"""The paper's Fig. 1 on a laptop: turn the intensity–label information dial, register, fit Dice vs MI.

    python -m experiments.mi_sweep                                # default: 8 levels x 5 pairs, greedy, ~5 min on 2 cores
    python -m experiments.mi_sweep model=syn data.n_test=11       # another method, more pairs per level
    python -m experiments.mi_sweep 'levels=[{intensity_classes: 1}, {intensity_classes: 16}]'

Each entry of ``levels`` overrides keys of the synthetic data config (:mod:`data.synthetic`;
the dial is ``intensity_classes`` and ``class_noise``); every level gets its own data, is
evaluated with ``model`` (classical greedy by default) into ``paths.output_dir/level_XX`` (a rerun
skips finished pairs), and every image's MI(i; s) is measured (:mod:`experiments.mi_analysis`).
Over all pairs it fits Dice vs MI and Dice vs log MI and prints Pearson r (paper: 0.886 and
0.933). Outputs in ``paths.output_dir``: ``mi_pairs.csv`` (with the level's dial values),
``mi_fit.json``, ``mi_scatter.png`` (coloured by level), ``levels.csv`` (means per level).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


from omegaconf import DictConfig, OmegaConf

from experiments.mi_analysis import (
    fit_dice_vs_mi,
    image_information,
    join_pairs,
    mi_options,
    print_fit,
    read_pairs_csv,
    write_outputs,
)
from app import ConfigError, build_datamodule, check_entry, log_analysis, run_eval
from app.results import csv_text
from data.files import atomic_write_text

__all__ = ["sweep"]


def _level_config(cfg: DictConfig, level: Any, index: int) -> DictConfig:
    if not isinstance(level, (dict, DictConfig)) or not level:
        raise ConfigError(f"levels[{index}] must be a non-empty mapping of data keys, got {level!r}")
    unknown = [k for k in level if k not in cfg.data]
    if unknown:
        raise ConfigError(f"levels[{index}]: unknown data keys {unknown} (data: {cfg.data.get('_target_')})")
    return OmegaConf.merge(cfg, {"data": OmegaConf.to_container(OmegaConf.create(level))})


def sweep(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every level, join with MI, fit; returns the fit (see the module docstring)."""
    check_entry(cfg, "mi_sweep")
    opts = mi_options(cfg)
    levels = list(cfg.get("levels") or [])
    if not levels:
        raise ConfigError("levels: empty; give at least two levels of the dial")
    out_dir = Path(cfg.paths.output_dir)
    level_cfgs = [_level_config(cfg, level, i) for i, level in enumerate(levels)]  # all checked first
    rows: list[dict[str, Any]] = []
    per_level = []
    for i, (level, lcfg) in enumerate(zip(levels, level_cfgs)):
        dial = OmegaConf.to_container(OmegaConf.create(level))
        print(f"level {i}: {dial}")
        sys.stdout.flush()
        datamodule = build_datamodule(lcfg)
        results_dir = out_dir / f"level_{i:02d}"
        run_eval(lcfg, results_dir, datamodule=datamodule)
        pairs = read_pairs_csv(results_dir)
        info = image_information(datamodule.test_dataloader().dataset, bins=opts["bins"], mask=opts["mask"])
        level_rows = [{"level": i, **{f"data.{k}": v for k, v in dial.items()}, **r}
                      for r in join_pairs(pairs, info, opts["pair"])]
        rows.extend(level_rows)
        n = len(level_rows)
        per_level.append({
            "level": i,
            **{f"data.{k}": v for k, v in dial.items()},
            "n_pairs": n,
            "mi_mean": sum(r["mi"] for r in level_rows) / n,
            "dice_identity_mean": sum(r["dice_identity"] for r in level_rows) / n,
            "dice_mean": sum(r["dice"] for r in level_rows) / n,
        })
    # rows of different levels may carry different dial keys: fill the union
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    fit = fit_dice_vs_mi([r["dice"] for r in rows], [r["mi"] for r in rows])
    method = rows[0]["method"]
    paths = write_outputs(out_dir, rows, fit, {**opts, "levels": OmegaConf.to_container(cfg.levels)},
                          title=f"{method} on synthetic data across the MI dial", group="level")
    level_keys = list(dict.fromkeys(k for r in per_level for k in r))
    atomic_write_text(out_dir / "levels.csv", csv_text(per_level, level_keys))
    print("\n" + "  ".join(f"{k:>22}" for k in level_keys))
    for r in per_level:
        print("  ".join(f"{_cell(r.get(k, '')):>22}" for k in level_keys))
    print_fit(fit, prefix=f"[{method}] ")
    print(f"results: {out_dir.resolve()} (mi_pairs.csv, mi_fit.json, mi_scatter.png, levels.csv)")
    log_analysis(cfg, {"mi/r_linear": fit["linear"]["r"], "mi/r_log": fit["log"]["r"], "mi/n_pairs": fit["n"]},
                 images={"mi/scatter": paths["scatter"]}, tables={"mi/levels": per_level, "mi/pairs": rows})
    return fit


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _main() -> None:
    from app import guarded
    from app.entry import hydra_main

    run = guarded(sweep)

    @hydra_main("mi_sweep")
    def main(cfg) -> None:
        run(cfg)

    main()


if __name__ == "__main__":
    _main()
