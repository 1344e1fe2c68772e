"""Hydra launchers (configs/hydra/launcher/): SLURM job parameters without a cluster, and a real
two-job sweep through submitit's local executor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import pytest

from conftest import CONFIGS, ROOT

SLURM_ENV = [
    "REGISTRATION_SLURM_PARTITION",
    "REGISTRATION_SLURM_GPUS",
    "REGISTRATION_SLURM_TASKS",
    "REGISTRATION_SLURM_CPUS",
    "REGISTRATION_SLURM_TIME_MIN",
    "REGISTRATION_SLURM_MEM_GB",
    "REGISTRATION_SLURM_ARRAY_PARALLELISM",
    "REGISTRATION_SLURM_ACCOUNT",
    "REGISTRATION_SLURM_QOS",
]
LOCAL_ENV = ["REGISTRATION_LOCAL_TIMEOUT_MIN", "REGISTRATION_LOCAL_GPUS"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests start from the documented defaults, whatever the caller's shell exports."""
    for name in SLURM_ENV + LOCAL_ENV:
        monkeypatch.delenv(name, raising=False)


def _compose(overrides: list[str]):
    """Compose ``train`` with its Hydra node, as ``python train.py -m ...`` would before launching."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        with warnings.catch_warnings():
            # submitit_local.yaml shadows the plugin's schema of the same name (see the file)
            warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _launcher(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    cfg = _compose(overrides)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_defaults():
    launcher = _launcher(["hydra/launcher=slurm"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu"
    assert launcher["gpus_per_node"] == 1
    assert launcher["tasks_per_node"] == 1
    assert launcher["cpus_per_task"] == 8
    assert launcher["timeout_min"] == 240
    assert launcher["mem_gb"] == 32
    assert launcher["array_parallelism"] == 16
    assert launcher["nodes"] == 1
    assert launcher["account"] is None and launcher["qos"] is None
    # the plugin's schema is still there underneath (fields this config does not set)
    assert launcher["max_num_timeout"] == 0 and launcher["additional_parameters"] == {}


def test_slurm_values_from_environment(monkeypatch):
    env = {
        "REGISTRATION_SLURM_PARTITION": "a100",
        "REGISTRATION_SLURM_GPUS": "4",
        "REGISTRATION_SLURM_CPUS": "6",
        "REGISTRATION_SLURM_TIME_MIN": "720",
        "REGISTRATION_SLURM_MEM_GB": "128",
        "REGISTRATION_SLURM_ARRAY_PARALLELISM": "3",
        "REGISTRATION_SLURM_ACCOUNT": "lab",
        "REGISTRATION_SLURM_QOS": "high",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    launcher = _launcher(["hydra/launcher=slurm"])
    assert launcher["partition"] == "a100"
    assert launcher["gpus_per_node"] == 4
    assert launcher["tasks_per_node"] == 4  # one task per GPU unless REGISTRATION_SLURM_TASKS says
    assert launcher["cpus_per_task"] == 6
    assert launcher["timeout_min"] == 720
    assert launcher["mem_gb"] == 128
    assert launcher["array_parallelism"] == 3
    assert launcher["account"] == "lab" and launcher["qos"] == "high"
    # numbers come out as ints (the plugin's typed schema converts the environment's strings)
    assert all(type(launcher[k]) is int for k in ("gpus_per_node", "tasks_per_node", "timeout_min", "mem_gb"))

    monkeypatch.setenv("REGISTRATION_SLURM_TASKS", "1")
    assert _launcher(["hydra/launcher=slurm"])["tasks_per_node"] == 1


def test_slurm_command_line_beats_environment(monkeypatch):
    monkeypatch.setenv("REGISTRATION_SLURM_PARTITION", "a100")
    monkeypatch.setenv("REGISTRATION_SLURM_GPUS", "2")
    monkeypatch.setenv("REGISTRATION_SLURM_TIME_MIN", "30")
    launcher = _launcher([
        "hydra/launcher=slurm",
        "hydra.launcher.partition=h100",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.cpus_per_task=12",
        "hydra.launcher.timeout_min=600",
        "hydra.launcher.mem_gb=200",
        "hydra.launcher.array_parallelism=2",
    ])
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == ("h100", 4, 4)
    assert (launcher["cpus_per_task"], launcher["timeout_min"], launcher["mem_gb"]) == (12, 600, 200)
    assert launcher["array_parallelism"] == 2
    # tasks follow GPUs when only the GPUs are given
    assert _launcher(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=3"])["tasks_per_node"] == 3


def test_slurm_multi_gpu_pairing_with_trainer():
    """The documented DDP recipe: one SLURM task per Lightning device."""
    cfg = _compose(["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                    "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.devices == cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 4


def test_slurm_launcher_builds_the_sbatch_script(tmp_path, monkeypatch):
    """Instantiate the launcher Hydra would build and let the plugin configure a real submitit
    SLURM executor; stop at submission and check the #SBATCH lines it would submit."""
    import submitit
    from hydra.utils import instantiate
    from submitit.slurm.slurm import _make_sbatch_string

    # submitit's SlurmExecutor refuses to start without `srun` on PATH: a dummy one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("REGISTRATION_SLURM_PARTITION", "a100")

    sweep_dir = tmp_path / "sweep"
    cfg = _compose(["hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.gpus_per_node=2",
                    "hydra.launcher.mem_gb=64", "hydra.launcher.timeout_min=90",
                    "hydra.launcher.array_parallelism=1"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    launcher.config = cfg  # what launcher.setup() stores; launch() needs nothing else

    seen = {}

    class _Job:
        def results(self):
            return ["done"]

    def fake_map_array(executor, fn, *iterables):
        seen["executor"] = executor
        seen["n"] = len(iterables[0])
        return [_Job() for _ in range(seen["n"])]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    assert launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0) == ["done", "done"]

    executor = seen["executor"]
    assert executor.cluster == "slurm" and seen["n"] == 2
    params = dict(executor._executor.parameters)
    script = _make_sbatch_string(command="CMD", folder=executor.folder, map_count=seen["n"], **params)
    lines = set(script.splitlines())
    for line in ["#SBATCH --partition=a100", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=90", "#SBATCH --mem=64GB", "#SBATCH --nodes=1",
                 "#SBATCH --array=0-1%1", f"#SBATCH --job-name={cfg.hydra.job.name}"]:
        assert line in lines, f"{line!r} not in sbatch script:\n{script}"
    assert not any(line.startswith(("#SBATCH --account", "#SBATCH --qos")) for line in lines)
    # logs under the sweep dir
    assert str(executor.folder).startswith(str(sweep_dir / ".submitit"))
    assert f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out" in lines


def test_submitit_local_config(monkeypatch):
    launcher = _launcher(["hydra/launcher=submitit_local"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launcher["timeout_min"] == 15
    assert launcher["gpus_per_node"] == 0 and launcher["tasks_per_node"] == 1
    assert launcher["submitit_folder"].endswith("/.submitit/%j")

    monkeypatch.setenv("REGISTRATION_LOCAL_TIMEOUT_MIN", "3")
    monkeypatch.setenv("REGISTRATION_LOCAL_GPUS", "1")
    launcher = _launcher(["hydra/launcher=submitit_local"])
    assert (launcher["timeout_min"], launcher["gpus_per_node"]) == (3, 1)
    assert type(launcher["timeout_min"]) is int
    assert _launcher(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])["timeout_min"] == 5


@pytest.mark.slow  # ~21 s: two submitit jobs; the launcher configs are checked above
def test_submitit_local_two_job_sweep(tmp_path):
    """A real multirun: two jobs as local subprocesses (test phase only: identity, train=false)."""
    env = {k: v for k, v in os.environ.items() if k not in SLURM_ENV + LOCAL_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", HYDRA_FULL_ERROR="1")
    env["REGISTRATION_LOCAL_TIMEOUT_MIN"] = "3"
    log_dir = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", "model=identity", "train=false",
           "data=mni", "data.shape=[64,64,64]", "data.n_train=2", "data.n_val=0", "data.n_test=2",
           "logger=csv", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "seed=0,1",
           f"paths.log_dir={log_dir}"]
    start = time.monotonic()
    # from the repository root, as documented: the jobs import the project from their working folder
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    sweeps = list((log_dir / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    for num, seed in ((0, 0), (1, 1)):
        job_dir = sweep / str(num)
        pairs = job_dir / "test" / "pairs.csv"
        assert pairs.is_file(), sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*"))
        assert len(pairs.read_text().strip().splitlines()) >= 2  # header + at least one pair
        assert f"seed={seed}" in (job_dir / ".hydra" / "overrides.yaml").read_text()
    # submitit's per-job folders (logs and pickled results): one per job, each with a result
    results = list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2, sorted(str(p.relative_to(sweep)) for p in (sweep / ".submitit").rglob("*"))
    assert elapsed < 180, f"sweep took {elapsed:.0f} s"
