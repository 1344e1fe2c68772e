"""Classical registration benchmark on the held-out offline MNI pairs, every method in one process.

    python -m experiments.bench_classical                       # 2 mm, every method found
    python -m experiments.bench_classical --methods greedy_fast fireants --resolution 1
    python -m experiments.bench_classical --pareto              # ours vs FireANTs at several schedules
    python -m experiments.bench_classical --pareto --quick      # one pair, one run, short schedules (a smoke run)
    python -m experiments.bench_classical --pareto --ours "greedy_fast iterations=[60,30,10]" \\
        --fireants "200,100,50" "200,100,50 lr=0.25 cc=7 grad_sigma=1 warp_sigma=0.25"

Pairs: the MNI test subjects of ``data=mni`` (``n_train 16 + n_val 4``: subjects 20-23, consecutive
pairs (20, 21), (21, 22)) at the data config's deformation (``--deformation-scale 2``), with its
bias field and noise. Every method runs with the same torch threads (``--threads``, default: the
CPUs allocated to the process). Seconds are the median of ``--repeats`` runs of the registration
alone; Dice over CSF/GM/WM (labels warped nearest-neighbour), HD95 (mm), SDlogJ (std of log of
the clipped Jacobian determinant, whole field) and folding % come from the project's one metric
path (:func:`metrics.evaluate_pair`). The load average is printed with the results: compare
timings only within one run.

Methods (default mode):

* ``greedy``, ``greedy_fast``, ``syn``, ``affine``: this project's optimiser with
  ``configs/model/<name>.yaml``;
* ``ants_syn_fast``, ``ants_syn_paper``, ``demons``: the peers of :mod:`classical.external`
  (``pip install -r requirements-baselines.txt``), skipped with a note when missing;
* ``fireants``: FireANTs' greedy registration on CPU (``pip install --no-deps fireants==1.5.0``),
  at its default settings (below), skipped with a note when missing.

``--pareto``: ours at each ``--ours`` spec (a config name, then ``key=value`` overrides of
``model.``), FireANTs at each ``--fireants`` spec (its iterations at scales 4, 2, 1, then
``lr= cc= grad_sigma= warp_sigma=`` overriding its defaults lr 0.5, CC window 7, σ 1 / 0.5) and
antspyx's defaults, on the same pairs; then the fastest of ours that reaches FireANTs' Dice at its
first (default) spec on every pair with SDlogJ at most 1.2x its SDlogJ and folding below
0.01 %, with the ratio of its seconds to FireANTs', and the first ``--ours`` spec against
antspyx's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

import torch

from metrics import dice, evaluate_pair
from models.evaluation import warp_label

OURS = ("greedy", "greedy_fast", "syn", "affine")
PEERS = ("ants_syn_fast", "ants_syn_paper", "demons")
# FireANTs 1.5.0 GreedyRegistration's defaults, passed explicitly; each checked to give bitwise
# the field of omitting it (its CC window is 7, not 5: 5 changes the field)
FIREANTS_DEFAULTS = {"lr": 0.5, "cc": 7, "grad_sigma": 1.0, "warp_sigma": 0.5}
OURS_PARETO = (
    "greedy_fast",
    "greedy_fast iterations=[60,30,10]",
    "greedy_fast iterations=[60,30,10] lr=0.35 grad_sigma=1.25",
    "greedy_fast iterations=[60,30,10] lr=0.35",
    "greedy_fast iterations=[100,100,20] lr=0.35",
    "greedy",
)
FIREANTS_PARETO = ("200,100,50", "100,50,25", "50,25,12")
QUICK = {"pairs": ["20,21"], "ours": ["greedy_fast iterations=[20,10,3]"], "fireants": ["25,12,6"]}
# the bars a schedule of ours must meet to count as reaching FireANTs (the goal)
SDLOGJ_FACTOR = 1.2
MAX_FOLDING_PCT = 0.01


@dataclass
class Row:
    method: str
    pair: tuple[int, int]
    seconds: float
    metrics: dict
    extra: dict = field(default_factory=dict)


def _compose_model(spec: str) -> dict:
    """``"greedy_fast iterations=[60,30,10] lr=0.35"`` -> the ``model`` node of ``eval.yaml``
    composed with ``model=greedy_fast model.iterations=... model.lr=...``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    name, *overrides = spec.split()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", [f"model={name}", *[f"model.{o}" for o in overrides]])
    return OmegaConf.to_container(cfg.model, resolve=True)


def _our_method(spec: str) -> Callable:
    """This project's optimiser with the settings of ``spec`` (see :func:`_compose_model`)."""
    from classical import register
    from classical.config import config_from_dict

    import inspect

    from classical import InstanceOptimisationModule

    node = _compose_model(spec)
    algorithm = node.pop("algorithm")
    # the module's own arguments (method, threads, verbose, ...) are not the algorithm's settings
    for key in ["_target_", *inspect.signature(InstanceOptimisationModule.__init__).parameters]:
        if key != "settings":
            node.pop(key, None)
    cfg = config_from_dict(algorithm, node)

    def run(fixed, moving, pair):
        return register(fixed, moving, cfg).displacement

    return run


def _external(kind: str) -> Callable:
    from classical import external  # raises ImportError with an install hint when missing

    if kind.startswith("ants_syn"):
        module = external.AntsSyNRegistration(preset=kind.split("_")[-1])
    else:
        module = external.DemonsRegistration()

    def run(fixed, moving, pair):
        return module.register(pair)

    return run


def _parse_fireants(spec: str) -> dict:
    """``"200,100,50 lr=0.25 cc=7"`` -> FireANTs settings (its defaults for what is not given)."""
    its, *rest = spec.split()
    settings = dict(FIREANTS_DEFAULTS, iterations=[int(i) for i in its.split(",")])
    for item in rest:
        key, _, value = item.partition("=")
        if key not in FIREANTS_DEFAULTS:
            raise SystemExit(f"error: --fireants {spec!r}: unknown setting {key!r}; valid: {sorted(FIREANTS_DEFAULTS)}")
        settings[key] = float(value) if key != "cc" else int(value)
    return settings


def _fireants(iterations=(200, 100, 50), lr=0.5, cc=7, grad_sigma=1.0, warp_sigma=0.5, device: str = "cpu") -> Callable:
    """FireANTs' greedy registration on ``device`` (the CPU here; ``experiments.bench_gpu`` runs it on a
    GPU); returns the displacement in this project's convention, on ``device``."""
    import logging

    import numpy as np
    import SimpleITK as sitk

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # its import-time prints
        from fireants.io.image import BatchedImages, Image
        from fireants.registration.greedy import GreedyRegistration
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("fireants")] + ["fireants"]:
        logging.getLogger(name).setLevel(logging.ERROR)  # its per-module INFO/WARNING lines

    def to_image(t: torch.Tensor, spacing) -> Image:
        # SimpleITK arrays are (z, y, x); transposing makes its x axis our axis 0
        img = sitk.GetImageFromArray(t[0, 0].cpu().numpy().transpose(2, 1, 0).astype(np.float32))
        img.SetSpacing([float(s) for s in spacing])
        return Image(img, device=device)

    def run(fixed, moving, pair):
        spacing = pair["spacing"][0].tolist()
        fb, mb = BatchedImages([to_image(fixed, spacing)]), BatchedImages([to_image(moving, spacing)])
        reg = GreedyRegistration(scales=[4, 2, 1], iterations=list(iterations), fixed_images=fb, moving_images=mb,
                                 cc_kernel_size=cc, smooth_grad_sigma=grad_sigma, smooth_warp_sigma=warp_sigma,
                                 optimizer_lr=lr)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            reg.optimize()  # quiet: its per-iteration progress bars
        with torch.no_grad():
            grid = reg.get_warped_coordinates(fb, mb)  # (1, X', Y', Z', 3) over its (z, y, x) array = ours reversed
        # grid[..., k] is normalised coordinate k of (x, y, z) of their array = our axes (0, 1, 2)
        grid = grid.permute(0, 3, 2, 1, 4)  # back to our axis order, channel k along our axis k
        shape = torch.tensor(fixed.shape[2:], dtype=grid.dtype, device=grid.device)
        vox = (grid + 1) / 2 * (shape - 1)
        ident = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=grid.dtype, device=grid.device)
                                             for s in fixed.shape[2:]], indexing="ij"), dim=-1)
        return (vox - ident).permute(0, 4, 1, 2, 3).contiguous()

    return run


def build_method(name: str) -> Callable | None:
    """A method's ``run(fixed, moving, pair) -> displacement``; None (with a printed note) when
    its package is not installed."""
    try:
        if name.split()[0] in OURS:
            return _our_method(name)
        if name in PEERS:
            return _external(name)
        if name.startswith("fireants"):
            spec = name.partition(" ")[2] or ",".join(map(str, (200, 100, 50)))
            return _fireants(**_parse_fireants(spec))
    except ImportError as exc:
        print(f"[skip] {name}: not installed ({exc})", flush=True)
        return None
    raise SystemExit(f"error: unknown method {name!r}; valid: {list(OURS) + list(PEERS) + ['fireants']}")


def load_pairs(resolution: int, deformation_scale: float, pairs) -> list[dict]:
    from data.mni import MNISubjects

    subjects = MNISubjects(resolution=resolution, deformation_scale=deformation_scale)
    out = []
    for i, j in pairs:
        a, b = subjects[i], subjects[j]
        out.append({"fixed": a["image"][None], "moving": b["image"][None], "fixed_label": a["label"][None],
                    "moving_label": b["label"][None], "spacing": torch.tensor([subjects.spacing]), "ids": (i, j)})
    return out


def measure(name: str, run: Callable, pairs: list[dict], repeats: int) -> list[Row]:
    rows = []
    for pair in pairs:
        fixed, moving = pair["fixed"], pair["moving"]
        times, u = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            u = run(fixed, moving, pair)
            times.append(time.perf_counter() - start)
        spacing = pair["spacing"][0].tolist()
        moved = warp_label(pair["moving_label"], u)[0]
        res = evaluate_pair(pair["fixed_label"][0], pair["moving_label"][0], moved, u, spacing)
        rows.append(Row(name, pair["ids"], statistics.median(times), res))
        print(f"{name:48s} {str(pair['ids']):9s} {rows[-1].seconds:8.2f} {res['dice']:7.4f} {res['hd95']:6.2f} "
              f"{res['sdlogj']:7.3f} {res['folding_pct']:7.3f}", flush=True)
    return rows


def reaching(ours: dict[str, list[Row]], target: list[Row]) -> tuple[str, list[float]] | None:
    """The fastest (summed seconds) of ``ours`` whose every pair reaches ``target``'s Dice with
    SDlogJ <= :data:`SDLOGJ_FACTOR` x its SDlogJ and folding < :data:`MAX_FOLDING_PCT` %; with
    its seconds over the target's per pair. None if none does."""
    best = None
    for name, rows in ours.items():
        ok = all(r.metrics["dice"] >= t.metrics["dice"] and r.metrics["sdlogj"] <= SDLOGJ_FACTOR * t.metrics["sdlogj"]
                 and r.metrics["folding_pct"] < MAX_FOLDING_PCT for r, t in zip(rows, target))
        if ok and (best is None or sum(r.seconds for r in rows) < sum(r.seconds for r in ours[best])):
            best = name
    if best is None:
        return None
    return best, [r.seconds / t.seconds for r, t in zip(ours[best], target)]


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} (1 min)"
    except OSError:
        return "load average unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2))
    parser.add_argument("--pairs", nargs="+", default=["20,21", "21,22"],
                        help="MNI subject ids 'fixed,moving' (default: the first two test pairs of data=mni)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deformation-scale", type=float, default=2.0,
                        help="MNI subjects' deformation (mm), data.deformation_scale (default 2: Dice before ~0.63)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the CPUs allocated to the process)")
    parser.add_argument("--methods", nargs="+", default=["greedy", "greedy_fast", "syn", "ants_syn_fast", "demons",
                                                         "fireants"])
    parser.add_argument("--pareto", action="store_true", help="ours vs FireANTs at several schedules (see above)")
    parser.add_argument("--ours", nargs="+", default=list(OURS_PARETO), help="--pareto: our specs")
    parser.add_argument("--fireants", nargs="+", default=list(FIREANTS_PARETO), help="--pareto: FireANTs specs")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: pair {QUICK['pairs'][0]}, 1 repeat, short schedules "
                             f"(ours {QUICK['ours']}, FireANTs {QUICK['fireants']}); timings not comparable")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.repeats, args.ours, args.fireants = QUICK["pairs"], 1, QUICK["ours"], QUICK["fireants"]
        args.methods = [*QUICK["ours"], f"fireants {QUICK['fireants'][0]}"]
    from classical.threads import set_threads

    threads = set_threads(args.threads, "--threads")
    try:
        ids = [tuple(int(k) for k in p.split(",")) for p in args.pairs]
        assert all(len(p) == 2 for p in ids)
    except (ValueError, AssertionError):
        raise SystemExit(f"error: --pairs takes 'fixed,moving' subject ids, got {args.pairs}")
    pairs = load_pairs(args.resolution, args.deformation_scale, ids)
    before = [dice(p["fixed_label"][0], p["moving_label"][0], p["moving_label"][0]).mean for p in pairs]
    print(f"MNI {args.resolution} mm, deformation scale {args.deformation_scale:g}, pairs {ids}, grid "
          f"{tuple(pairs[0]['fixed'].shape[2:])}, {threads} threads, Dice before "
          f"{' / '.join(f'{b:.4f}' for b in before)}; {_load()}")
    print(f"{'method':48s} {'pair':9s} {'seconds':>8s} {'dice':>7s} {'hd95':>6s} {'sdlogj':>7s} {'fold%':>7s}", flush=True)
    names = args.methods
    if args.pareto:
        names = [*args.ours, *[f"fireants {s}" for s in args.fireants], *([] if args.quick else ["ants_syn_fast"])]
    results: dict[str, list[Row]] = {}
    for name in names:
        run = build_method(name)
        if run is not None:
            results[name] = measure(name, run, pairs, args.repeats)
    print(f"after: {_load()}")
    if args.pareto:
        _pareto_summary(results, args)
    return 0


def _pareto_summary(results: dict[str, list[Row]], args) -> None:
    ours = {k: v for k, v in results.items() if k in args.ours}
    peer = f"fireants {args.fireants[0]}"
    if peer not in results:
        print("FireANTs is not installed: no ratio to it (pip install --no-deps fireants==1.5.0)")
    else:
        target = results[peer]
        found = reaching(ours, target)
        dices = " / ".join(f"{r.metrics['dice']:.4f}" for r in target)
        if found is None:
            print(f"none of ours reaches FireANTs' Dice {dices} ({peer}) within the SDlogJ and folding bars")
        else:
            name, ratios = found
            print(f"fastest of ours reaching FireANTs' Dice {dices} ({peer}; SDlogJ <= {SDLOGJ_FACTOR}x, folding < "
                  f"{MAX_FOLDING_PCT} %): {name!r}, seconds ours / FireANTs = "
                  f"{' / '.join(f'{x:.3f}' for x in ratios)} (1/{1 / max(ratios):.1f} at worst)")
    fast, ants = args.ours[0], "ants_syn_fast"
    if fast in results and ants in results:
        d = " / ".join(f"{a.metrics['dice'] - b.metrics['dice']:+.4f}" for a, b in zip(results[fast], results[ants]))
        t = " / ".join(f"{a.seconds / b.seconds:.2f}" for a, b in zip(results[fast], results[ants]))
        print(f"{fast!r} vs antspyx defaults: Dice {d}, seconds ratio {t}")


if __name__ == "__main__":
    raise SystemExit(main())
