"""How many CPU threads the classical optimiser uses: the CPUs allocated to the process, not the
machine's.

PyTorch sizes its intra-op pool from the machine's cores, not from the CPUs the process may run
on: under ``taskset -c 0``, or in a SLURM job whose ``--cpus-per-task`` promises a few CPUs of a
large node, it starts more threads than it has cores, and more threads than cores run slower,
not faster (measured on a 2-core machine: the classical optimiser with 2 threads while another
process kept one core busy took 3.7x the time of 1 thread). So ``model.threads: null`` means
:func:`allocated_cpus`, and an int sets the count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["allocated_cpus", "check_threads", "set_threads", "using_threads"]


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def allocated_cpus() -> int:
    """CPUs this process may use: its CPU affinity (``os.sched_getaffinity``: taskset, cpusets,
    SLURM's binding; ``os.cpu_count()`` where the platform has no affinity call), capped by
    ``SLURM_CPUS_PER_TASK`` and by ``OMP_NUM_THREADS`` when either is set to a positive int
    (an exported ``OMP_NUM_THREADS=1`` is the user's explicit choice)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    for name in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        cap = _positive_env(name)
        if cap is not None:
            n = min(n, cap)
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


@contextlib.contextmanager
def using_threads(threads: int | None, key: str = "threads") -> Iterator[int]:
    """:func:`set_threads` for the ``with`` block, the previous count restored after it."""
    before = torch.get_num_threads()
    try:
        yield set_threads(threads, key)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
