"""Benchmark of the metric code path on an OASIS-sized pair, and agreement with MONAI's HD95.

    python -m experiments.bench_metrics [--shape 160 192 224] [--labels 35] [--repeats 3]

Builds a synthetic 35-label brain-like label map (wobbly Voronoi regions inside an ellipsoid,
background outside), a smooth random displacement ``u`` (about 3 voxels), and the moved map
``warp(fixed, u, nearest)``. Times each metric (best of ``--repeats``), the whole
``evaluate_pair`` call (the path used by validation / test / eval), then MONAI's
``HausdorffDistanceMetric(percentile=95, include_background=False)`` on the same input.
Goal: dice + hd95 + sdlogj + sdlogj_l2r + folding_pct <= 3 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
import torch.nn.functional as F

import metrics
from spatial import warp


def smooth_field(shape, amplitude: float, coarse, gen: torch.Generator) -> torch.Tensor:
    """``(1, D, *shape)`` smooth random field with max |component| = ``amplitude``."""
    low = torch.randn(1, len(shape), *coarse, generator=gen)
    u = F.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=True)
    return u * (amplitude / u.abs().amax())


def make_pair(shape=(160, 192, 224), n_labels: int = 35, seed: int = 0, amplitude: float = 3.0):
    """Fixed label map ``(*S)`` int64, moved label map, and the displacement ``(1, 3, *S)``.

    The moving label map is the fixed one (``moved`` = fixed warped by ``u``)."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    centre = torch.tensor(shape, dtype=torch.float32) / 2
    radius = centre * 0.85
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*S, 3)
    inside = (((grid - centre) / radius) ** 2).sum(-1) <= 1.0
    seeds = []
    while len(seeds) < n_labels:
        p = torch.rand(3, generator=gen) * torch.tensor(shape, dtype=torch.float32)
        if (((p - centre) / radius) ** 2).sum() < 0.8:
            seeds.append(p)
    seeds = torch.stack(seeds)
    # Voronoi regions of wobbled coordinates: boundaries are curved like real anatomy
    wobble = smooth_field(shape, 6.0, (6, 7, 8), gen)[0].movedim(0, -1)
    pts = (grid + wobble)[inside]
    nearest = torch.cat([torch.cdist(chunk, seeds).argmin(1) for chunk in pts.split(1 << 18)])
    fixed = torch.zeros(shape, dtype=torch.int64)
    fixed[inside] = nearest + 1
    u = smooth_field(shape, amplitude, (5, 6, 7), gen)
    moved = warp(fixed[None, None], u, mode="nearest")[0, 0]
    return fixed, moved, u


def best_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def monai_hd95(fixed: torch.Tensor, moved: torch.Tensor, spacing, n_labels: int) -> np.ndarray:
    from monai.metrics import HausdorffDistanceMetric

    onehot_f = F.one_hot(fixed, n_labels + 1).movedim(-1, 0)[None].float()
    onehot_m = F.one_hot(moved, n_labels + 1).movedim(-1, 0)[None].float()
    metric = HausdorffDistanceMetric(percentile=95, include_background=False, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(y_pred=onehot_m, y=onehot_f, spacing=list(spacing))[0].numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 192, 224])
    ap.add_argument("--labels", type=int, default=35)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    ap.add_argument("--no-monai", action="store_true", help="skip the MONAI comparison")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    fixed, moved, u = make_pair(args.shape, args.labels, args.seed)
    gen_s = time.perf_counter() - t0
    sp = tuple(args.spacing)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"pair {tuple(args.shape)}, {args.labels} labels, spacing {sp}, generated in {gen_s:.1f} s; "
        f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load avg {load:.2f}; "
        f"best of {args.repeats}"
    )

    rows = []
    t_dice, d = best_time(lambda: metrics.dice(fixed, fixed, moved), args.repeats)
    rows.append(("dice", t_dice))
    t_hd, h = best_time(lambda: metrics.hd95(fixed, fixed, moved, sp), args.repeats)
    rows.append(("hd95 (kdtree, default)", t_hd))
    t_hde, he = best_time(lambda: metrics.hd95(fixed, fixed, moved, sp, method="edt"), args.repeats)
    rows.append(("hd95 (edt)", t_hde))
    t_jac, jm = best_time(lambda: metrics.jacobian_metrics(u), args.repeats)
    rows.append(("sdlogj+sdlogj_l2r+folding_pct (one J)", t_jac))
    for name in ("sdlogj", "sdlogj_l2r", "folding_pct"):
        t, _ = best_time(lambda: getattr(metrics, name)(u), args.repeats)
        rows.append((f"  {name} alone", t))
    t_eval, ev = best_time(lambda: metrics.evaluate_pair(fixed, fixed, moved, u, sp), args.repeats)
    rows.append(("evaluate_pair (all five, the path used)", t_eval))

    print()
    print(f"{'metric':42s} {'seconds':>8s}")
    for name, t in rows:
        print(f"{name:42s} {t:8.3f}")
    print(f"{'TOTAL dice+hd95+jacobian trio (goal <= 3)':42s} {t_dice + t_hd + t_jac:8.3f}")

    print()
    print(
        f"values: dice {d.mean:.4f} ({len(d.per_label)} labels, skipped {d.skipped}), "
        f"hd95 {h.mean:.4f} mm, sdlogj {jm['sdlogj']:.4f}, sdlogj_l2r {jm['sdlogj_l2r']:.4f}, "
        f"folding {jm['folding_pct']:.4f} %"
    )
    same = max(abs(h.per_label[k] - he.per_label[k]) for k in h.per_label)
    print(f"hd95 kdtree vs edt: max abs diff {same:.2e} mm")
    assert ev["dice"] == d.mean and ev["hd95"] == h.mean and ev["sdlogj"] == jm["sdlogj"]

    if not args.no_monai:
        t0 = time.perf_counter()
        ref = monai_hd95(fixed, moved, sp, args.labels)
        t_monai = time.perf_counter() - t0
        diffs = np.array([abs(h.per_label[k] - float(ref[k - 1])) for k in h.per_label])
        print()
        print(f"{'MONAI HausdorffDistanceMetric(percentile=95)':42s} {t_monai:8.3f} s (one run)")
        print(f"{'ours hd95 (kdtree, default)':42s} {t_hd:8.3f} s")
        print(f"{'time ratio MONAI / ours':42s} {t_monai / t_hd:8.1f} x")
        print(f"{'HD95 mean: ours / MONAI (mm)':42s} {h.mean:8.4f} / {float(np.nanmean(ref)):.4f}")
        print(f"{'|ours - MONAI| per label: mean / max (mm)':42s} {diffs.mean():.2e} / {diffs.max():.2e}")
        ok = diffs.mean() <= 0.01
        print(f"agreement (mean abs diff <= 0.01 mm): {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
