"""How many CPU threads a run uses: the CPUs allocated to the process, not the machine's.

PyTorch starts with as many threads as the process's CPU affinity allows (``taskset -c 0``
gives 1), but a SLURM job that does not bind CPUs sees the whole node while
``--cpus-per-task`` promises it only a few, and more threads than cores run slower, not
faster (measured on this 2-core machine: the classical optimiser with 2 threads while another
process kept one core busy took 3.7x the time of 1 thread).
"""

from __future__ import annotations

import os

import torch

__all__ = ["allocated_cpus", "check_threads", "set_threads"]


def allocated_cpus() -> int:
    """CPUs this process may use: its CPU affinity (``os.sched_getaffinity``: taskset, cpusets,
    SLURM's binding), capped by ``SLURM_CPUS_PER_TASK`` when set; ``os.cpu_count()`` where the
    platform has no affinity call."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(n, 1)


def check_threads(threads: int | None, key: str = "threads") -> int | None:
    """``threads`` if it is None or an int >= 1, else ``ValueError`` naming ``key``."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{key} must be null (the CPUs allocated to the process) or an int >= 1, got {threads!r}")
    return threads


def set_threads(threads: int | None, key: str = "threads") -> int:
    """``torch.set_num_threads(threads)``, or :func:`allocated_cpus` when ``threads`` is None
    (checked by :func:`check_threads`). Returns the count."""
    n = allocated_cpus() if check_threads(threads, key) is None else threads
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
