"""The classical optimiser's thread count: the CPUs allocated to the process by default
(:func:`classical.threads.allocated_cpus`), ``model.threads`` when set, restored after a batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import classical.module as module_mod
from classical import InstanceOptimisationModule
from classical.api import RegistrationResult
from classical.threads import allocated_cpus, check_threads, using_threads
from conftest import ROOT


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_allocated_cpus_is_the_affinity_capped_by_slurm_and_omp(clean_env):
    clean_env.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert allocated_cpus() == 4  # the affinity, not os.cpu_count()
    clean_env.setenv("SLURM_CPUS_PER_TASK", "3")
    assert allocated_cpus() == 3
    clean_env.setenv("SLURM_CPUS_PER_TASK", "16")  # an allocation larger than the binding: the binding
    assert allocated_cpus() == 4
    clean_env.setenv("OMP_NUM_THREADS", "1")
    assert allocated_cpus() == 1
    clean_env.setenv("OMP_NUM_THREADS", "")  # unset-like values are ignored
    clean_env.setenv("SLURM_CPUS_PER_TASK", "0")
    assert allocated_cpus() == 4


def test_allocated_cpus_follows_a_real_affinity_change():
    # a child process restricted to one CPU (what taskset -c does) sees 1 whatever the machine has
    code = textwrap.dedent("""
        import os
        os.environ.pop("OMP_NUM_THREADS", None); os.environ.pop("SLURM_CPUS_PER_TASK", None)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from classical.threads import allocated_cpus
        print(allocated_cpus())
    """)
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_threads_named(bad):
    with pytest.raises(ValueError, match="model.threads"):
        InstanceOptimisationModule(algorithm="greedy", threads=bad)
    with pytest.raises(ValueError, match="model.threads"):
        check_threads(bad, "model.threads")


def _recording_register(seen):
    def fake(fixed, moving, cfg, init=None, report=None):
        seen.append(torch.get_num_threads())
        u = fixed.new_zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
        return RegistrationResult(displacement=u)

    return fake


@pytest.mark.parametrize("threads, expected", [(1, 1), (3, 3), (None, 5)])
def test_module_runs_with_its_threads_and_restores_them(clean_env, threads, expected):
    seen: list[int] = []
    clean_env.setattr(module_mod, "register", _recording_register(seen))
    clean_env.setattr("classical.threads.allocated_cpus", lambda: 5)
    model = InstanceOptimisationModule(algorithm="greedy", threads=threads)
    before = torch.get_num_threads()
    batch = {"fixed": torch.zeros(2, 1, 8, 8, 8), "moving": torch.zeros(2, 1, 8, 8, 8)}
    try:
        u = model.register(batch)
    finally:
        torch.set_num_threads(before)
    assert seen == [expected, expected]  # each pair of the batch optimised with the configured count
    assert torch.get_num_threads() == before  # and the caller's count is back afterwards
    assert u.shape == (2, 3, 8, 8, 8)


def test_using_threads_restores_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with using_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_configs_carry_the_threads_key():
    from omegaconf import OmegaConf

    for name in ("affine", "greedy", "syn", "greedy_fast", "greedy_pareto"):
        cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
        if name not in ("greedy_fast", "greedy_pareto"):  # the presets inherit greedy's
            assert "threads" in cfg and cfg.threads is None, name


def test_pareto_preset_is_the_benchmarked_schedule():
    """``model=greedy_pareto`` is exactly the schedule docs/results.md measured against FireANTs
    (``greedy_fast iterations=[60,30,10] lr=0.35 grad_sigma=1.25``): only its name differs."""
    from experiments.bench_classical import _compose_model

    preset = _compose_model("greedy_pareto")
    measured = _compose_model("greedy_fast iterations=[60,30,10] lr=0.35 grad_sigma=1.25")
    assert preset.pop("method") == "greedy_pareto" and measured.pop("method") == "greedy_fast"
    assert preset == measured
