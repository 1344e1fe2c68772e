"""The training sections of the device check (:mod:`experiments.bench_gpu`): one training step of
every network in float32 and bf16 autocast (``training_steps``), the VoxelMorph step on the host CPU
(``cpu_reference``), and short Lightning trainings on the MNI recipe against greedy (``mni_training``)."""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from experiments.bench_gpu_data import StoredSubjects, stored_datamodule
from experiments.bench_gpu_tools import Budget, error_record, free, instantiate, median, merged, peak_memory, timed

__all__ = ["training_steps", "cpu_reference", "mni_training"]


def _module(node: dict, device: torch.device, quick: bool):
    """A network's RegistrationModule from its recipe (``--quick``: the tiny members, so a CPU runs it)."""
    if quick:
        net = node["model"]["net"]
        small = {"TransMorph": {"size": "tiny", "window_size": [2, 2, 2]},
                 "LapIRN": {"channels": 4, "res_channels": 8, "n_res_blocks": 1}, "LKUNet": {"start_channels": 4}, "VoxelMorphUNet": {"variant": "vxm1"}}
        for target, change in small.items():
            if str(net.get("_target_", "")).endswith(target) or str(net.get("backbone", {}).get("_target_", "")).endswith(target):
                node = merged(node, {"model": {"net": change}})
    return instantiate(node["model"], vis_every_n_epochs=0).to(device)


def _step_fn(module, batch: dict, precision: str, device: torch.device) -> Callable[[], float]:
    """One training step as Lightning runs it: the loss under autocast (bf16-mixed) or not
    (32-true), backward and the optimiser step outside it."""
    configured = module.configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    stage = getattr(module, "levels", None)  # LapIRN: the whole pyramid (its last stage)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step() -> float:
        with autocast():
            parts = module.compute_loss(batch) if stage is None else module.compute_loss(batch, stage=stage)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        return parts["loss"].detach()

    return step


def training_steps(recipes: dict, pair: dict, device: torch.device, args, budget: Budget) -> dict:
    out: dict[str, Any] = {}
    batch = {"fixed": pair["fixed"].to(device), "moving": pair["moving"].to(device)}
    for name in args.networks:
        node = recipes["networks"][name]
        rows: dict[str, Any] = {"experiment": node["experiment"]}
        for precision in ("fp32", "bf16"):
            if not budget.allows(20 if device.type == "cuda" else 2):
                rows[precision] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
                continue
            try:
                torch.manual_seed(0)
                module = _module(node, device, args.quick)
                module.train()
                step = _step_fn(module, batch, precision, device)
                loss = step()  # warm-up: kernels, cuDNN algorithms, Adam state
                row: dict[str, Any] = {"params": sum(p.numel() for p in module.parameters())}
                times = []
                with peak_memory(device, row):
                    for _ in range(args.steps):
                        loss, seconds = timed(step, device)
                        times.append(seconds)
                row.update(seconds=median(times), loss=round(float(loss), 5), finite=bool(math.isfinite(float(loss))))
                rows[precision] = row
                del module, step
            except Exception as exc:  # noqa: BLE001
                rows[precision] = error_record(exc)
            free(device)
        fp32, bf16 = rows.get("fp32", {}), rows.get("bf16", {})
        if "seconds" in fp32 and "seconds" in bf16:
            rows["bf16_speedup"] = round(fp32["seconds"] / bf16["seconds"], 2)
        out[name] = rows
    return out


def cpu_reference(recipes: dict, pair: dict, args, budget: Budget) -> dict:
    """The VoxelMorph step of ``training_steps`` on this host's CPU with 2 threads: one timed
    step at full size after a warm-up step on a 32^3 crop (threads, allocator; a full-size
    warm-up would double a step that takes tens of seconds)."""
    if not budget.allows(150 if not args.quick else 2):
        return {"skipped": f"time budget ({budget.left():.0f} s left; a full-size step on 2 CPU threads "
                           "takes tens of seconds)"}
    threads = torch.get_num_threads()
    # 2: the goal's cores; --quick keeps the caller's threads (on a shared CPU a second OpenMP
    # thread that is descheduled stalls every step, tests/conftest.py's one_thread)
    used = threads if args.quick else 2
    torch.set_num_threads(used)
    try:
        torch.manual_seed(0)
        cpu = torch.device("cpu")
        module = _module(recipes["networks"]["voxelmorph"], cpu, args.quick)
        crop = (slice(None), slice(None), *(slice(0, 32),) * 3)
        _step_fn(module, {"fixed": pair["fixed"][crop], "moving": pair["moving"][crop]}, "fp32", cpu)()
        step = _step_fn(module, {"fixed": pair["fixed"], "moving": pair["moving"]}, "fp32", cpu)
        loss, seconds = timed(step, cpu)
        return {"threads": used, "seconds": round(seconds, 3), "shape": list(pair["fixed"].shape[2:]),
                "finite": bool(math.isfinite(float(loss))), "cpu": platform.processor() or platform.machine()}
    except Exception as exc:  # noqa: BLE001
        return error_record(exc)
    finally:
        torch.set_num_threads(threads)


def _trainer(device: torch.device, precision: str, max_steps: int, root: str):
    import lightning as L

    return L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                     max_steps=max_steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root)


def _test_metrics(results: list[dict]) -> dict:
    row = results[0] if results else {}
    names = {"test/dice": "dice", "test/hd95": "hd95", "test/sdlogj": "sdlogj", "test/folding_pct": "folding_pct",
             "test/dice_identity": "dice_before"}
    return {short: round(float(row[key]), 4) for key, short in names.items() if key in row}


def mni_training(recipes: dict, device: torch.device, args, budget: Budget) -> dict:
    import lightning as L

    out: dict[str, Any] = {}
    sup = recipes["mni"]["supervised"]
    data_node = dict(recipes["mni_data"])
    dm = stored_datamodule(StoredSubjects(Path(args.data) / "subjects.npz"), data_node)
    steps = args.mni_steps or sup["max_epochs"] * int(data_node["pairs_per_epoch"])
    out["setup"] = {"steps": steps, "recipe_steps": sup["max_epochs"] * int(data_node["pairs_per_epoch"]),
                    "data": {k: data_node.get(k) for k in ("resolution", "shape", "n_train", "n_test",
                                                           "pairs_per_epoch", "deformation_scale")}
                    | {"grid": list(dm.subjects.shape), "images": "8-bit quantised"},
                    "recipe": {k: sup["model"][k] for k in ("downsize", "loss_grid", "field")} | {
                        "net": sup["model"]["net"].get("variant"), "lr": sup["model"]["optimizer"]["lr"]}}
    runs = [("supervised", "32-true"), ("supervised", "bf16-mixed"), ("unsupervised", "32-true")]
    first_seconds = None
    with tempfile.TemporaryDirectory() as root:
        for supervision, precision in runs:
            key = f"{supervision}_{precision}"
            need = 1.3 * first_seconds if first_seconds else (60 if device.type == "cuda" else 5)
            if not budget.allows(need):
                out[key] = {"skipped": f"time budget ({budget.left():.0f} s left, one run took "
                                       f"{first_seconds or 0:.0f} s)"}
                continue
            try:
                rec = recipes["mni"][supervision]
                L.seed_everything(int(rec["seed"]), workers=True, verbose=False)
                model = instantiate(rec["model"], vis_every_n_epochs=0)
                trainer = _trainer(device, precision, steps, root)
                _, fit_seconds = timed(functools.partial(trainer.fit, model, datamodule=dm), device)
                test, test_seconds = timed(functools.partial(trainer.test, model, datamodule=dm, verbose=False),
                                            device)
                first_seconds = first_seconds or fit_seconds + test_seconds
                out[key] = {"experiment": rec["experiment"], "precision": precision, "steps": int(trainer.global_step),
                            "fit_seconds": round(fit_seconds, 1), "seconds_per_step": round(fit_seconds / max(steps, 1), 4),
                            **_test_metrics(test)}
                del model, trainer
            except Exception as exc:  # noqa: BLE001
                out[key] = error_record(exc)
            free(device)
        if budget.allows(30 if device.type == "cuda" else 2):
            try:
                node = recipes["classical"]["greedy"]
                if args.classical_iterations:
                    node = {**node, "iterations": args.classical_iterations[: len(node["iterations"])]}
                greedy = instantiate(node)
                trainer = _trainer(device, "32-true", 1, root)
                test, seconds = timed(lambda: trainer.test(greedy, datamodule=dm, verbose=False), device)
                out["greedy"] = {"experiment": "mni_greedy", "test_seconds": round(seconds, 1), **_test_metrics(test)}
            except Exception as exc:  # noqa: BLE001
                out["greedy"] = error_record(exc)
        else:
            out["greedy"] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
    return out

