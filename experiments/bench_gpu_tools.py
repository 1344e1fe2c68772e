"""The measuring tools of the device check (:mod:`experiments.bench_gpu`): building a stored config
node, a wall-clock budget, device-synchronised timing, peak GPU memory, one-line errors and the one
metric path on a pair. Imports only torch and the project's torch code (the device has no Hydra)."""

from __future__ import annotations

import contextlib
import gc
import importlib
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import torch

__all__ = ["instantiate", "merged", "Budget", "sync", "timed", "peak_memory", "free", "error_record", "median",
           "pair_metrics"]


def instantiate(node: dict, **overrides: Any) -> Any:
    """Build a config node by its ``_target_`` with its keys as arguments (Hydra's
    ``_recursive_: false``: nested specs are passed as plain dicts, the model builds them)."""
    node = {**node, **overrides}
    module, _, name = str(node.pop("_target_")).rpartition(".")
    for key in ("_recursive_", "_partial_"):
        node.pop(key, None)
    return getattr(importlib.import_module(module), name)(**node)


def merged(node: dict, changes: dict) -> dict:
    """``node`` with ``changes`` applied recursively (nested dicts merged, other values replaced)."""
    out = dict(node)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class Budget:
    """Wall-clock budget of the whole check; sections skip what no longer fits."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + float(seconds)

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """``out["peak_mb"]``: the largest memory PyTorch held on the GPU inside the block;
    ``out["peak_above_start_mb"]``: the same above what it held on entry (inputs, weights)."""
    if device.type != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    out["peak_mb"] = round(peak / 2**20, 1)
    out["peak_above_start_mb"] = round((peak - start) / 2**20, 1)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_record(exc: BaseException) -> dict:
    """One line naming the exception (the traceback goes to stderr, i.e. the run's log)."""
    traceback.print_exc(file=sys.stderr)
    text = " ".join(str(exc).split())
    return {"error": f"{type(exc).__name__}: {text[:300]}"}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def pair_metrics(fixed_lab, moving_lab, u, spacing) -> dict:
    """The one metric path (:func:`metrics.evaluate_pair`), labels warped nearest-neighbour."""
    from metrics import evaluate_pair
    from models.evaluation import warp_label

    u = u.float()
    res = evaluate_pair(fixed_lab[0], moving_lab[0], warp_label(moving_lab.to(u.device), u)[0].cpu(),
                        u.cpu(), spacing)
    return {k: round(float(res[k]), 4) for k in ("dice", "hd95", "sdlogj", "folding_pct")}
