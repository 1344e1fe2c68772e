"""Classical registration benchmark on offline MNI pairs, all methods in one process, same threads.

    python -m experiments.bench_classical                       # 2 mm (96x112x96), every method found
    python -m experiments.bench_classical --resolution 1 --methods greedy_fast fireants
    python -m experiments.bench_classical --repeats 1 --threads 2

Prints, per method: seconds (median of ``--repeats`` runs of the registration only), Dice over
CSF/GM/WM (labels warped nearest-neighbour), HD95 (mm) and folding % — all through the project's
one metric path (:func:`metrics.evaluate_pair`). Methods:

* ``greedy`` (paper's settings), ``greedy_fast``, ``syn``: this project's optimiser, configs
  read from ``configs/model/*.yaml``;
* ``ants_syn_fast``, ``ants_syn_paper``, ``demons``: the peers of :mod:`classical.external`
  (``pip install -r requirements-baselines.txt``), skipped when missing;
* ``fireants``: the FireANTs package on CPU (``pip install fireants --no-deps``), its greedy
  registration with its defaults and the paper's iterations, skipped when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from metrics import dice, evaluate_pair
from spatial import warp

OURS = {"greedy": "greedy", "greedy_fast": "greedy_fast", "syn": "syn"}


def _our_method(config_name: str):
    """This project's optimiser with the settings of ``configs/model/<config_name>.yaml``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from classical import register
    from classical.config import config_from_dict

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        node = OmegaConf.to_container(compose("eval", [f"model={config_name}"]).model, resolve=True)
    algorithm = node.pop("algorithm")
    for key in ("_target_", "method", "init_from", "label_interp", "hd95"):
        node.pop(key, None)
    cfg = config_from_dict(algorithm, node)

    def run(fixed, moving, pair):
        return register(fixed, moving, cfg).displacement

    return run


def _external(kind: str):
    from classical import external  # noqa: F401 - raises with an install hint when missing

    if kind.startswith("ants_syn"):
        module = external.AntsSyNRegistration(preset=kind.split("_")[-1])
    else:
        module = external.DemonsRegistration()

    def run(fixed, moving, pair):
        return module.register(pair)

    return run


def _fireants(device: str = "cpu"):
    """FireANTs' greedy registration on ``device`` (the CPU here; ``experiments.bench_gpu`` runs it
    on a GPU); returns the displacement in this project's convention, on ``device``."""
    import logging

    import numpy as np
    import SimpleITK as sitk

    logging.getLogger("fireants").setLevel(logging.ERROR)
    from fireants.io.image import BatchedImages, Image
    from fireants.registration.greedy import GreedyRegistration

    def to_image(t: torch.Tensor, spacing) -> Image:
        # SimpleITK arrays are (z, y, x); transposing makes its x axis our axis 0
        img = sitk.GetImageFromArray(t[0, 0].cpu().numpy().transpose(2, 1, 0).astype(np.float32))
        img.SetSpacing([float(s) for s in spacing])
        return Image(img, device=device)

    def run(fixed, moving, pair):
        spacing = pair["spacing"][0].tolist()
        fb, mb = BatchedImages([to_image(fixed, spacing)]), BatchedImages([to_image(moving, spacing)])
        reg = GreedyRegistration(scales=[4, 2, 1], iterations=[250, 200, 100], fixed_images=fb, moving_images=mb,
                                 cc_kernel_size=7, smooth_grad_sigma=1.0, smooth_warp_sigma=0.25, optimizer_lr=0.25)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            reg.optimize()  # quiet: its per-iteration progress bars
        with torch.no_grad():
            grid = reg.get_warped_coordinates(fb, mb)  # (1, X', Y', Z', 3) over its (z, y, x) array = ours reversed
        # their array order is ours reversed: grid[..., k] is normalised coordinate k of (x, y, z) of
        # their array = our axes (0, 1, 2) after the transpose above
        grid = grid.permute(0, 3, 2, 1, 4)  # back to our axis order, channel k along our axis k
        shape = torch.tensor(fixed.shape[2:], dtype=grid.dtype, device=grid.device)
        vox = (grid + 1) / 2 * (shape - 1)
        ident = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=grid.dtype, device=grid.device)
                                             for s in fixed.shape[2:]], indexing="ij"), dim=-1)
        return (vox - ident).permute(0, 4, 1, 2, 3).contiguous()

    return run


def build_methods(names):
    methods = {}
    for name in names:
        try:
            if name in OURS:
                methods[name] = _our_method(OURS[name])
            elif name in ("ants_syn_fast", "ants_syn_paper", "demons"):
                methods[name] = _external(name)
            elif name == "fireants":
                methods[name] = _fireants()
            else:
                raise SystemExit(f"error: unknown method {name!r}")
        except ImportError as exc:
            print(f"[skip] {name}: {exc}")
    return methods


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2))
    parser.add_argument("--pair", type=int, nargs=2, default=(0, 1), help="MNI subject ids (fixed, moving)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deformation-scale", type=float, default=1.0,
                        help="MNI subjects' deformation (mm); the README's table used 1.0 (Dice before 0.77)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--methods", nargs="+",
                        default=["greedy", "greedy_fast", "syn", "ants_syn_fast", "ants_syn_paper", "demons", "fireants"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from data.mni import MNISubjects

    subjects = MNISubjects(resolution=args.resolution, deformation_scale=args.deformation_scale)
    a, b = subjects[args.pair[0]], subjects[args.pair[1]]
    fixed, moving = a["image"][None], b["image"][None]
    fixed_lab, moving_lab = a["label"][None], b["label"][None]
    spacing = subjects.spacing
    pair = {"fixed": fixed, "moving": moving, "fixed_label": fixed_lab, "moving_label": moving_lab,
            "spacing": torch.tensor([spacing])}
    before = dice(fixed_lab[0], moving_lab[0], moving_lab[0]).mean
    print(f"MNI {args.resolution} mm pair {tuple(args.pair)}, grid {tuple(fixed.shape[2:])}, "
          f"{args.threads} threads, Dice before {before:.4f}")
    print(f"{'method':16s} {'seconds':>8s} {'dice':>7s} {'hd95':>6s} {'fold%':>7s}")
    for name, run in build_methods(args.methods).items():
        times, u = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            u = run(fixed, moving, pair)
            times.append(time.perf_counter() - start)
        res = evaluate_pair(fixed_lab[0], moving_lab[0], warp(moving_lab, u, mode="nearest")[0], u, spacing)
        print(f"{name:16s} {statistics.median(times):8.2f} {res['dice']:7.4f} {res['hd95']:6.2f} "
              f"{res['folding_pct']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
