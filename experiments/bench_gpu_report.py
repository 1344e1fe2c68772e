"""The device check's report (:mod:`experiments.bench_gpu`): the issue's goals where measured, the
Markdown tables, and both files written at once after every section. Plain Python and the
project's atomic writer only: it runs on the device machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["REPORT", "goals", "markdown", "write_report"]

REPORT = ("bench_gpu.json", "bench_gpu.md")


def goals(report: dict) -> dict:
    """The issue's goals, each with the measured values, or "not measured"."""
    out: dict[str, Any] = {}
    cl = report.get("classical", {})
    greedy, fire = cl.get("greedy", {}), cl.get("fireants", {})
    if "seconds" in greedy:
        row = {"seconds": greedy["seconds"], "dice": greedy["dice"], "met_seconds": greedy["seconds"] <= 0.5}
        if "peak_mb" in greedy:  # GPU memory (not measured on a CPU)
            row.update(peak_gb=round(greedy["peak_mb"] / 1024, 3), met_memory=greedy["peak_mb"] / 1024 <= 1.0)
        else:
            row["peak_gb"] = "not measured (no GPU)"
        if "dice" in fire:
            row.update(fireants_dice=fire["dice"], met_dice=greedy["dice"] >= fire["dice"] - 0.005)
        else:
            row["fireants_dice"] = "not measured (FireANTs not run)"
        out["greedy_0.5s_1GB_fireants_dice"] = row
    else:
        out["greedy_0.5s_1GB_fireants_dice"] = "not measured"
    vxm = report.get("training_steps", {}).get("voxelmorph", {}).get("fp32", {})
    cpu = report.get("cpu_reference", {})
    on_gpu = str(report.get("environment", {}).get("device", "")).startswith("cuda")
    if "seconds" in vxm and "seconds" in cpu and on_gpu and cpu.get("threads") == 2:
        ratio = cpu["seconds"] / vxm["seconds"]
        out["voxelmorph_step_20x_2cpu"] = {"gpu_seconds": vxm["seconds"], "cpu2_seconds": cpu["seconds"],
                                           "speedup": round(ratio, 1), "met": ratio >= 20}
    else:
        out["voxelmorph_step_20x_2cpu"] = "not measured" + ("" if on_gpu else " (no GPU)")
    mni = report.get("mni_training", {})
    a, b = mni.get("supervised_32-true", {}), mni.get("supervised_bf16-mixed", {})
    if "dice" in a and "dice" in b:
        diff = abs(a["dice"] - b["dice"])
        out["bf16_within_0.005_dice"] = {"fp32": a["dice"], "bf16": b["dice"], "difference": round(diff, 4),
                                         "met": diff <= 0.005}
    else:
        out["bf16_within_0.005_dice"] = "not measured"
    return out


# ------------------------------------------------------------------------------------- report
def _cell(value: Any) -> str:
    if isinstance(value, dict):
        if "error" in value:
            return "error: " + value["error"]
        if "skipped" in value:
            return "skipped: " + value["skipped"]
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def markdown(report: dict) -> str:
    lines = ["# Device check (experiments/bench_gpu.py)", ""]
    env = report.get("environment", {})
    lines += [f"{env.get('gpu', env.get('device', '?'))}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
              f"Python {env.get('python')}; total {report.get('seconds', '?')} s; arguments `{report.get('arguments')}`", ""]
    tests = report.get("tests", {})
    lines += ["## CUDA tests", "", f"`{tests.get('command', '')}`: {_cell(tests.get('summary', tests))}"]
    if tests.get("failed"):
        lines += ["", "Failed: " + ", ".join(f"`{t}`" for t in tests["failed"])]
    cl = report.get("classical", {})
    info = report.get("pair", {})
    lines += ["", "## Classical registration", "",
              f"MNI-derived pair {info.get('subjects')} on {info.get('shape')} at {info.get('spacing_mm')} mm, "
              f"Dice before {info.get('dice_before')}", "",
              "| method | seconds | peak MB | above inputs MB | Dice | HD95 | SDlogJ | folding % | iterations run |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in cl.items():
        if isinstance(row, dict) and ("seconds" in row):
            lines.append(f"| {name} | {row['seconds']} | {row.get('peak_mb', '—')} | {row.get('peak_above_start_mb', '—')} | "
                         f"{row['dice']} | {row['hd95']} | {row['sdlogj']} | {row['folding_pct']} | "
                         f"{row.get('iterations_run', '—')} |")
        else:
            lines.append(f"| {name} | {_cell(row)} | | | | | | | |")
    lines += ["", "## One training step (batch 1, OASIS recipes)", "",
              "| network | params | fp32 s | fp32 peak MB | bf16 s | bf16 peak MB | bf16 speed-up |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in report.get("training_steps", {}).items():
        if not isinstance(rows, dict) or "fp32" not in rows:
            lines.append(f"| {name} | {_cell(rows)} | | | | | |")
            continue
        f, b = rows.get("fp32", {}), rows.get("bf16", {})
        lines.append(f"| {name} | {f.get('params', b.get('params', '—'))} | {f.get('seconds', _cell(f))} | "
                     f"{f.get('peak_mb', '—')} | {b.get('seconds', _cell(b))} | {b.get('peak_mb', '—')} | "
                     f"{rows.get('bf16_speedup', '—')} |")
    cpu = report.get("cpu_reference", {})
    lines += ["", f"VoxelMorph step on this host's CPU, {cpu.get('threads', '?')} threads: {cpu.get('seconds', _cell(cpu))} s"]
    mni = report.get("mni_training", {})
    setup = mni.get("setup", {})
    lines += ["", "## Short MNI training (finding 3 in 3-D?)", "",
              f"{setup.get('steps')} steps, data {setup.get('data')}, recipe {setup.get('recipe')}", "",
              "| run | seconds | s / step | Dice | Dice before | HD95 | SDlogJ | folding % |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in mni.items():
        if name == "setup":
            continue
        if isinstance(row, dict) and "dice" in row:
            lines.append(f"| {name} | {row.get('fit_seconds', row.get('test_seconds'))} | {row.get('seconds_per_step', '—')} | "
                         f"{row['dice']} | {row.get('dice_before', '—')} | {row.get('hd95', '—')} | "
                         f"{row.get('sdlogj', '—')} | {row.get('folding_pct', '—')} |")
        else:
            lines.append(f"| {name} | {_cell(row)} | | | | | | |")
    lines += ["", "## Goals", ""]
    for name, value in report.get("goals", {}).items():
        lines.append(f"- {name}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> None:
    from data.files import atomic_write_files

    atomic_write_files({out_dir / REPORT[0]: json.dumps(report, indent=1, default=str) + "\n",
                        out_dir / REPORT[1]: markdown(report)})
