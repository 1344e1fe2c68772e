"""The prepared device check: what users run on a GPU, measured in one go (<= 8 minutes), one report.

The device machine has Python 3.12 with torch, lightning, numpy, scipy and pytest, but none of
nibabel, nilearn, monai, torchio, hydra-core, omegaconf or wandb, and no network. So the check
runs in two steps:

1. Here (the project's environment), once: compose the recipes with Hydra and draw the MNI-derived
   subjects with nilearn's template, into the git-ignored folder ``.bench_gpu/`` (about 12 MB, 35 s:
   images quantised to 8 bits, labels as uint8, compressed; optional wheels under ``wheels/``)::

       bash experiments/bench_gpu.sh prepare          # = python -m experiments.bench_gpu --prepare

2. On the device (the device tool's ``run``; the folder travels by ``carry``)::

       run(command="bash experiments/bench_gpu.sh run", carry=[".bench_gpu"], timeout_s=540)

   then read ``bench_gpu.md`` (tables), ``bench_gpu.json`` (every number) and ``pytest.log``
   from ``files_at``. ``bench_gpu.sh run`` is ``python -m experiments.bench_gpu --out $OUT``
   (after installing any wheels carried in ``.bench_gpu/wheels``).

On a CPU with tiny sizes (what ``tests/test_bench_gpu.py`` runs, so it cannot rot)::

    python -m experiments.bench_gpu --prepare --quick --data /tmp/bench_data
    python -m experiments.bench_gpu --data /tmp/bench_data --out /tmp/bench --device cpu --quick

Nothing on the run path imports nibabel, nilearn, monai, hydra, omegaconf, wandb, torchio or
SimpleITK at import time (the test runs it with those imports blocked); TransMorph needs monai
when built (``bench_gpu.sh prepare`` downloads its wheel into ``.bench_gpu/wheels``, 1.7 MB), FireANTs needs
SimpleITK (a 52 MB wheel: not carried, reported as not importable).

The report's sections (each a result, ``{"skipped": why}`` or ``{"error": one line}``; the report
is rewritten after every section, so a run stopped by its time limit still leaves what it measured):

* ``environment``: Python, torch, CUDA, the GPU, package versions, TF32 flags.
* ``tests``: the CUDA half of the device-parametrised suite (``pytest -k cuda`` over
  tests/test_spatial.py, test_losses.py, test_metrics.py, test_classical.py, test_networks.py,
  test_precision.py); tests that need Hydra or the MNI template skip there.
* ``classical``: greedy, greedy_fast and SyN (configs/model/*.yaml) on a 160x192x224 MNI-derived
  pair at 1 mm (subjects 0 and 1, ``configs/data/mni.yaml`` knobs): seconds of the registration
  after a warm-up (median of ``--repeats``), peak GPU memory (allocated by PyTorch, total and
  above the inputs), Dice / HD95 / SDlogJ / folding through the one metric path; FireANTs on the
  same pair if importable.
* ``training_steps``: one training step (forward + loss + backward + Adam step, batch 1) of every
  network of the OASIS recipes (``experiment=oasis_unsup_<net>``: LNCC + diffusion) on that pair,
  in float32 and bf16 autocast (what ``trainer.precision=bf16-mixed`` does): median seconds after
  a warm-up step and peak GPU memory.
* ``mni_training``: ``experiment=mni_sup_voxelmorph`` and ``mni_unsup_voxelmorph`` trained for
  ``--mni-steps`` steps (default 1000, half the recipe's 20 x 100) by Lightning on the recipe's
  subjects (2 mm), the supervised one also in ``bf16-mixed``, and greedy (``experiment=mni_greedy``)
  on the same test pairs: test Dice etc. (Paper finding 3: does supervision beat greedy in 3-D?)
* ``cpu_reference``: the VoxelMorph step of ``training_steps`` on the host CPU with 2 threads
  (the goal's "2 CPU cores"; the device host's cores).
* ``goals``: the issue's goals where measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

import torch

from experiments.bench_gpu_report import REPORT, goals, markdown, write_report  # noqa: F401 - REPORT: the API
from experiments.bench_gpu_data import (  # noqa: F401 - prepare/StoredSubjects/stored_datamodule: this script's API
    CLASSICAL_MODELS, MNI_EXPERIMENTS, NETWORK_EXPERIMENTS, QUICK, SHAPE, StoredSubjects, prepare, stored_datamodule,
)
from experiments.bench_gpu_training import cpu_reference, mni_training, training_steps
from experiments.bench_gpu_tools import (  # noqa: F401 - instantiate/merged: this script's API
    Budget, error_record, free, instantiate, median, merged, pair_metrics, peak_memory, sync, timed,
)
TEST_FILES = ("tests/test_spatial.py", "tests/test_losses.py", "tests/test_metrics.py", "tests/test_classical.py",
              "tests/test_networks.py", "tests/test_precision.py")
DATA_DIR = ROOT / ".bench_gpu"  # git-ignored; what `run`'s carry takes along
DATA_FILES = ("recipes.json", "pair.npz", "subjects.npz")
SECTIONS = ("tests", "classical", "training_steps", "mni_training", "cpu_reference")


# ------------------------------------------------------------------------------------- sections
def environment(device: torch.device) -> dict:
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
        "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    for name in ("lightning", "numpy", "scipy", "nibabel", "nilearn", "monai", "fireants", "SimpleITK"):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "present")
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            info[name] = f"missing ({type(exc).__name__})"
    return info


def run_tests(select: str, files: list[str], timeout: float, out_dir: Path) -> dict:
    """``pytest -k <select>`` over ``files`` in a subprocess; its output goes to ``pytest.log``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-k", select, *files]
    log = out_dir / "pytest.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text, code = text + f"\n[stopped after {timeout:.0f} s]\n", None
    log.write_text(text)
    last = [line for line in text.strip().splitlines() if line.strip()]
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in last if line.startswith(("FAILED ", "ERROR "))]
    return {"command": " ".join(cmd[1:]), "exit_code": code, "summary": last[-1] if last else "",
            "failed": failed[:50], "seconds": round(time.perf_counter() - start, 1)}


def mni_pair(path: Path) -> dict:
    """Subjects 0 and 1 of ``pair.npz`` (:func:`prepare`) as a batch of one pair (CPU tensors)."""
    from metrics import dice

    subjects = StoredSubjects(path)
    a, b = subjects[0], subjects[1]
    pair = {"fixed": a["image"][None], "moving": b["image"][None], "fixed_label": a["label"][None],
            "moving_label": b["label"][None], "spacing": subjects.spacing}
    pair["info"] = {"shape": list(subjects.shape), "spacing_mm": list(subjects.spacing), "subjects": [0, 1],
                    "images": "8-bit quantised", "dice_before": round(dice(a["label"], b["label"], b["label"]).mean, 4)}
    return pair


def classical(recipes: dict, pair: dict, device: torch.device, args, budget: Budget) -> dict:
    from classical import register

    fixed, moving = pair["fixed"].to(device), pair["moving"].to(device)
    out: dict[str, Any] = {}
    for name in CLASSICAL_MODELS:
        node = recipes["classical"][name]
        if args.classical_iterations:
            node = {**node, "iterations": args.classical_iterations[: len(node["iterations"])]}
        if not budget.allows(30 if device.type == "cuda" else 5):
            out[name] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        try:
            cfg = instantiate(node).config
            warm = dataclasses.replace(cfg, iterations=[min(i, 5) for i in cfg.iterations])
            register(fixed, moving, warm)  # kernels, allocator, cuDNN: not part of the timing
            row: dict[str, Any] = {"iterations": list(cfg.iterations)}
            times, res = [], None
            for _ in range(args.repeats):
                with peak_memory(device, row):
                    res, seconds = timed(lambda: register(fixed, moving, cfg), device)
                times.append(seconds)
            row.update(seconds=median(times), seconds_all=[round(t, 4) for t in times],
                       iterations_run=[len(t) for t in res.losses[cfg.name]],
                       **pair_metrics(pair["fixed_label"], pair["moving_label"], res.displacement, pair["spacing"]))
            out[name] = row
        except Exception as exc:  # noqa: BLE001 - one method failing does not stop the check
            out[name] = error_record(exc)
        free(device)
    out["fireants"] = fireants(pair, device, args, budget)
    return out


def fireants(pair: dict, device: torch.device, args, budget: Budget) -> dict:
    """FireANTs' greedy registration with the paper's settings (experiments.bench_classical) if importable."""
    try:
        from experiments.bench_classical import _fireants

        run = _fireants(device=device.type)
    except ImportError as exc:
        return {"skipped": f"not importable ({exc}); it needs SimpleITK, a 52.6 MB wheel that does not fit "
                           "the 64 MiB a device call carries together with the rest"}
    if device.type != "cuda" or args.quick:  # its CPU run at 1 mm takes many minutes: bench_classical times it
        return {"skipped": "--quick" if args.quick else "timed on a GPU only (CPU: experiments.bench_classical)"}
    if not budget.allows(60):
        return {"skipped": f"time budget ({budget.left():.0f} s left)"}
    try:
        fixed, moving = pair["fixed"], pair["moving"]
        batch = {"spacing": torch.tensor([pair["spacing"]])}
        run(fixed, moving, batch)  # warm-up
        row: dict[str, Any] = {}
        with peak_memory(device, row):
            u, seconds = timed(lambda: run(fixed, moving, batch), device)
        row.update(seconds=round(seconds, 4),
                   **pair_metrics(pair["fixed_label"], pair["moving_label"], u, pair["spacing"]))
        return row
    except Exception as exc:  # noqa: BLE001
        return error_record(exc)


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true",
                        help="write the recipes and the MNI subjects into --data and stop (needs Hydra and nilearn)")
    parser.add_argument("--data", metavar="DIR", default=str(DATA_DIR),
                        help=f"what --prepare writes and the run reads (default {DATA_DIR.relative_to(ROOT)}/)")
    parser.add_argument("--out", metavar="DIR", help="report folder ($OUT on the device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a CPU (the test): with --prepare 32^3 data; when running, small networks")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--networks", nargs="+", default=list(NETWORK_EXPERIMENTS), choices=list(NETWORK_EXPERIMENTS))
    parser.add_argument("--test-select", default="cuda", help="pytest -k expression (default: the CUDA parameters)")
    parser.add_argument("--test-files", nargs="+", default=list(TEST_FILES))
    parser.add_argument("--test-timeout", type=float, default=150.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed registrations per classical method")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per network and precision")
    parser.add_argument("--classical-iterations", type=int, nargs="+", help="override every method's iterations")
    parser.add_argument("--mni-steps", type=int,
                        help="training steps per MNI run (default 1000, --quick 2; 0: the recipe's max_epochs x "
                             "pairs_per_epoch)")
    args = parser.parse_args(argv)
    if args.mni_steps is None:
        args.mni_steps = 2 if args.quick else 1000
    if args.quick:  # seconds on a CPU: one timed repeat, a few iterations per level
        args.repeats, args.steps = min(args.repeats, 1), min(args.steps, 1)
        args.classical_iterations = args.classical_iterations or [4, 4, 4, 4]
    data_dir = Path(args.data)
    if args.prepare:
        start = time.perf_counter()
        prepare(data_dir, quick=args.quick)
        size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
        print(f"prepared {data_dir} ({size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s): "
              f"{', '.join(DATA_FILES)}")
        return 0
    if not args.out:
        parser.error("--out is required (the report folder)")
    missing = [name for name in DATA_FILES if not (data_dir / name).is_file()]
    if missing:
        print(f"error: {data_dir} lacks {', '.join(missing)}: run `bash experiments/bench_gpu.sh prepare` "
              f"(python -m experiments.bench_gpu --prepare --data {data_dir}) where Hydra and nilearn are installed",
              file=sys.stderr)
        return 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    recipes = json.loads((data_dir / "recipes.json").read_text())
    if bool(recipes.get("quick")) != bool(args.quick):
        print(f"error: {data_dir} was prepared {'with' if recipes.get('quick') else 'without'} --quick and this run "
              f"is {'with' if args.quick else 'without'} it: prepare again to match", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget)
    start = time.perf_counter()
    report: dict[str, Any] = {"arguments": " ".join(sys.argv[1:] if argv is None else argv),
                              "environment": environment(device)}

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in args.sections:
            report[name] = {"skipped": "not in --sections"}
        else:
            print(f"[bench_gpu] {name} ({budget.left():.0f} s left)", flush=True)
            try:
                report[name] = fn()
            except Exception as exc:  # noqa: BLE001 - the other sections still run
                report[name] = error_record(exc)
        report["goals"] = goals(report)
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_report(report, out_dir)

    section("tests", lambda: run_tests(args.test_select, args.test_files, min(args.test_timeout, budget.left() / 3),
                                       out_dir))
    pair: dict = {}
    try:
        pair = mni_pair(data_dir / "pair.npz")
        report["pair"] = pair["info"]
    except Exception as exc:  # noqa: BLE001
        report["pair"] = error_record(exc)
    for name, fn in (("classical", lambda: classical(recipes, pair, device, args, budget)),
                     ("training_steps", lambda: training_steps(recipes, pair, device, args, budget)),
                     ("mni_training", lambda: mni_training(recipes, device, args, budget)),
                     ("cpu_reference", lambda: cpu_reference(recipes, pair, args, budget))):
        if name != "mni_training" and "fixed" not in pair and name in args.sections:
            report[name] = {"skipped": "no MNI pair (see 'pair')"}
            write_report(report, out_dir)
            continue
        section(name, fn)
    print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
