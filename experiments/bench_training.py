"""Benchmark of one training step per network on CPU, side by side with MONAI's VoxelMorph.

    python -m experiments.bench_training [--shapes 96x96x96 80x96x112] [--nets vxm1 vxm1_paper vxm2 lkunet transmorph lapirn monai]
                                         [--repeats 3] [--threads N] [--field displacement|velocity]
                                         [--transmorph-size base] [--checkpoint] [--no-timing | --no-memory]
                                         [--json out.json]

Memory with and without activation checkpointing at the full OASIS size (one command each):

    python -m experiments.bench_training --shapes 160x192x224 --nets vxm1 vxm2 lkunet --threads 1 --no-timing
    python -m experiments.bench_training --shapes 160x192x224 --nets vxm1 vxm2 lkunet --threads 1 --no-timing \\
        --checkpoint

One step = forward + LNCC (window 9) + 0.1 · diffusion regulariser + backward + Adam step, on
one random smooth pair (batch 1). Our networks run through ``RegistrationModule.compute_loss``
(so the warp, and with ``--field velocity`` the scaling and squaring, are the project's);
MONAI's ``monai.networks.nets.VoxelMorph`` (default backbone: widths 16/32/32/32/32/32, final
16/16, maxpool, ~244 k parameters) runs its own forward (backbone + its DVF2DDF + its Warp)
and is scored by the same LNCC and diffusion loss. ``--field displacement`` gives MONAI
``integration_steps=0``; ``velocity`` gives both sides 7 scaling-and-squaring steps.
``lapirn`` is the whole 3-level pyramid (C=16, 3 residual blocks, feature passing) trained at
once (the last stage of LapIRNModule's schedule), its field type the bench's ``--field``.
``--checkpoint`` builds our networks with ``checkpoint=True`` (activation checkpointing, see
:func:`models.networks.blocks.checkpointed`); MONAI's has no such option and runs as is.

Timing: all networks of a shape live in ONE process; after one warm-up step each, ``repeats``
rounds time one step of every network in turn (interleaved, so load from other processes hits
all of them alike). Reported: median seconds per step, and the median over rounds of the
per-round ratio to MONAI (the number to trust on a shared machine).

Memory: torch's CPU allocator is invisible to ``tracemalloc`` and psutil is not a dependency,
so each network runs alone in a subprocess: the peak resident set over two training steps
(``VmHWM`` of ``/proc/self/status``, reset just before them) minus the resident set before them
(after the model and data are built) is the memory a training step adds (activations,
gradients, Adam state, workspace). Linux only. (``ru_maxrss`` would be wrong here: a child
inherits its parent's high-water mark, and the parent holds every network.) The worker also
times its second step; ``--no-timing`` skips the interleaved timing and reports that time.

A network whose ``multiple`` does not divide the shape (TransMorph: 32, so 80×96×112) runs on
inputs padded at the end of each axis to the next multiple (96×96×128), the field cropped
back; the table says so.
Goal of the issue: our VoxelMorph of MONAI's size <= 0.7x MONAI's step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn.functional as F
from torch import nn

NETS = ("vxm1", "vxm1_paper", "vxm2", "lkunet", "transmorph", "lapirn", "monai")
LOSS = {"sim": "lncc", "reg": "diffusion", "reg_weight": 0.1}


class Padded(nn.Module):
    """Runs ``net`` on inputs padded up to ``net.multiple`` and crops the field back (explicit
    here, so the table can say so and the bench does not depend on who else pads)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        from models.networks import pad_to_multiple

        moving_p, crop = pad_to_multiple(moving, self.net.multiple)
        fixed_p, _ = pad_to_multiple(fixed, self.net.multiple)
        return self.net(moving_p, fixed_p)[crop]


class MonaiStep(nn.Module):
    """MONAI's VoxelMorph with the project's loss: ``compute_loss(batch) -> {"loss", ...}``."""

    def __init__(self, field: str) -> None:
        super().__init__()
        from monai.networks.nets import VoxelMorph

        from losses import build_regulariser, build_similarity

        self.net = VoxelMorph(integration_steps=7 if field == "velocity" else 0)
        self.similarity = build_similarity(LOSS["sim"])
        self.regulariser = build_regulariser(LOSS["reg"])

    def compute_loss(self, batch):
        moved, ddf = self.net(batch["moving"], batch["fixed"])
        sim = self.similarity(batch["fixed"], moved)
        reg = self.regulariser(ddf)
        return {"loss": sim + LOSS["reg_weight"] * reg, "sim": sim, "reg": reg}


def build(name: str, shape: tuple[int, ...], field: str, tm_size: str,
          checkpoint: bool = False) -> tuple[nn.Module, str]:
    """A module with ``compute_loss(batch)`` for network ``name``, and a note for the table;
    ``checkpoint``: our networks with activation checkpointing."""
    from models import RegistrationModule
    from models.networks import LapIRN, LKUNet, TransMorph, VoxelMorphUNet

    if name == "monai":
        return MonaiStep(field), "MONAI default backbone"
    ck = {"checkpoint": checkpoint}
    if name in ("vxm1", "vxm1_paper", "vxm2"):
        net, note = VoxelMorphUNet(ndim=3, variant=name, **ck), ""
    elif name == "lkunet":
        net, note = LKUNet(ndim=3, start_channels=8, kernel_size=5, **ck), "C=8, k=5"
    elif name == "transmorph":
        net, note = TransMorph(ndim=3, size=tm_size, **ck), tm_size
    elif name == "lapirn":
        net, note = LapIRN(ndim=3, field=field, integration_steps=7, **ck), "3 levels, C=16"
    else:
        raise ValueError(f"bench_training: unknown network {name!r}; choose from {NETS}")
    if checkpoint:
        note = ", ".join(filter(None, [note, "checkpoint"]))
    if any(s % net.multiple for s in shape):
        padded = tuple(-(-s // net.multiple) * net.multiple for s in shape)
        note = ", ".join(filter(None, [note, f"padded to {'x'.join(map(str, padded))}"]))
        net = Padded(net)
    return RegistrationModule(net=net, field=field, integration_steps=7, loss=LOSS), note


def make_batch(shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """A pair of smooth random images in [0, 1], ``(1, 1, *shape)``."""
    g = torch.Generator().manual_seed(seed)

    def smooth():
        low = torch.rand(1, 1, *(max(s // 8, 2) for s in shape), generator=g)
        return F.interpolate(low, size=shape, mode="trilinear", align_corners=True)

    return {"fixed": smooth(), "moving": smooth()}


def make_step(module: nn.Module, batch) -> Callable[[], float]:
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = module.compute_loss(batch)["loss"]
        loss.backward()
        opt.step()
        return loss.item()

    return step


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def time_shape(shape, nets, repeats, field, tm_size, checkpoint: bool = False) -> dict[str, dict]:
    """Interleaved timing of every network in this process (see the module docstring)."""
    batch = make_batch(shape)
    steps, rows = {}, {}
    for name in nets:
        module, note = build(name, shape, field, tm_size, checkpoint)
        steps[name] = make_step(module, batch)
        rows[name] = {"net": name, "note": note, "params": n_params(module), "times": []}
        steps[name]()  # warm-up: allocator, oneDNN primitive caches, Adam state
    for _ in range(repeats):
        for name in nets:
            t0 = time.perf_counter()
            steps[name]()
            rows[name]["times"].append(time.perf_counter() - t0)
    for row in rows.values():
        row["seconds"] = statistics.median(row["times"])
        if "monai" in rows:
            ratios = [t / m for t, m in zip(row["times"], rows["monai"]["times"])]
            row["ratio_vs_monai"] = statistics.median(ratios)
    return rows


def _status_kib(key: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now; ``VmHWM``: its peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    raise KeyError(key)


def memory_worker(name: str, shape, field: str, tm_size: str, checkpoint: bool = False) -> dict:
    """Run in a fresh process: peak resident set during two training steps minus the resident
    set just before them (MiB), and the wall time of the second step (s). Reads
    ``/proc/self/status`` (Linux): ``VmHWM`` belongs to this process's own address space, unlike
    ``getrusage().ru_maxrss``, which a child started from a big parent inherits (fork + exec keep
    the parent's high-water mark)."""
    module, _ = build(name, shape, field, tm_size, checkpoint)
    step = make_step(module, make_batch(shape))
    before = _status_kib("VmRSS")
    try:  # reset VmHWM to the current RSS (Linux >= 4.0); without it VmHWM covers the build too
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    step()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"step_peak_mb": (peak - before) / 1024.0, "peak_rss_mb": peak / 1024.0, "step_seconds": seconds}


def memory_of(name: str, shape, field: str, tm_size: str, threads: int | None, checkpoint: bool = False) -> dict:
    """:func:`memory_worker` in a fresh subprocess (``python -m experiments.bench_training --worker``,
    run from the repository root so that the project's packages import)."""
    cmd = [sys.executable, "-m", "experiments.bench_training", "--worker", name, "--shapes", "x".join(map(str, shape)),
           "--field", field, "--transmorph-size", tm_size]
    if threads:
        cmd += ["--threads", str(threads)]
    if checkpoint:
        cmd += ["--checkpoint"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 96x96x96, got {text!r}") from None
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"shape must have 3 sizes, got {text!r}")
    return shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", type=parse_shape, default=[(96, 96, 96), (80, 96, 112)])
    ap.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--field", choices=("displacement", "velocity"), default="displacement")
    ap.add_argument("--transmorph-size", default="base", choices=("tiny", "small", "base", "large"))
    ap.add_argument("--checkpoint", action="store_true",
                    help="build our networks with checkpoint=True (activation checkpointing)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-network memory subprocesses")
    ap.add_argument("--no-timing", action="store_true",
                    help="skip the interleaved timing; s / step is then the memory worker's second step")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*grid_sample.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.shapes[0], args.field, args.transmorph_size,
                                       args.checkpoint)))
        return 0
    if args.no_timing and args.no_memory:
        ap.error("--no-timing and --no-memory leave nothing to measure")

    timing = ("the second of 2 steps in the memory subprocess" if args.no_timing
              else f"median of {args.repeats} interleaved steps after 1 warm-up")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, field={args.field}, "
          f"checkpoint={args.checkpoint}, {timing}\n")
    print("| shape | network | params | s / step | x MONAI (same process) | step peak MB |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    results = []
    for shape in args.shapes:
        if args.no_timing:
            rows = {}
            for name in args.nets:
                module, note = build(name, shape, args.field, args.transmorph_size, args.checkpoint)
                rows[name] = {"net": name, "note": note, "params": n_params(module)}
                del module
        else:
            rows = time_shape(shape, args.nets, args.repeats, args.field, args.transmorph_size, args.checkpoint)
        for name, r in rows.items():
            r["shape"] = "x".join(map(str, shape))
            r["checkpoint"] = args.checkpoint
            if not args.no_memory:
                r.update(memory_of(name, shape, args.field, args.transmorph_size, args.threads, args.checkpoint))
            if args.no_timing:
                r["seconds"] = r["step_seconds"]
            results.append(r)
            label = r["net"] + (f" ({r['note']})" if r["note"] else "")
            ratio = f"{r['ratio_vs_monai']:.2f}" if "ratio_vs_monai" in r else "—"
            mem = f"{r['step_peak_mb']:.0f}" if "step_peak_mb" in r else "—"
            print(f"| {r['shape']} | {label} | {r['params']:,} | {r['seconds']:.2f} | {ratio} | {mem} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
