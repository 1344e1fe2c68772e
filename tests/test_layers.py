"""The layers of DESIGN.md, checked on the source: a library package imports only the packages
below it, and never the application layer (``app/``) or the experiments on top.

    spatial  <-  losses, metrics  <-  data, models  <-  classical  <-  app  <-  experiments, entry points

Every ``import`` statement counts, also those inside functions (an upward import done lazily is
still an upward arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("spatial", "losses", "metrics", "data", "models", "classical", "app", "experiments")
ALLOWED = {
    "spatial": set(),
    "losses": {"spatial"},
    "metrics": {"spatial"},
    "data": {"spatial", "losses", "metrics"},
    "models": {"spatial", "losses", "metrics", "data"},
    "classical": {"spatial", "losses", "metrics", "data", "models"},
    "app": {"spatial", "losses", "metrics", "data", "models", "classical"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_points_upward(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, top in _imports(path):
            if top in PROJECT and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, f"{package}/ may import only {sorted(ALLOWED[package]) or 'no project package'}: " + "; ".join(bad)


def test_the_check_sees_a_lazy_upward_import(tmp_path):
    """The walker finds an import inside a function (the way upward arrows used to hide)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from app.results import PAIR_COLUMNS\n    return PAIR_COLUMNS\n")
    assert _imports(f) == [(2, "app")]


def test_a_wrong_command_line_fails_before_lightning_is_imported():
    """The entry points, the experiment scripts and ``python -m data.check`` load Lightning (about 8 s
    here) only once the command line is good: importing them, Hydra's own error for an unknown key and
    a guarded script's one-line error for a missing file need none of it."""
    import subprocess
    import sys

    code = ("import sys, train, eval, register, apply, data.check, data.klein, data.oasis, experiments.compare, "
            "experiments.domain_shift, experiments.recipe, experiments.mi_analysis, models.evaluation\n"
            "assert 'lightning' not in sys.modules, sorted(m for m in sys.modules if m.startswith('app'))\n"
            "sys.argv = ['train.py', 'no_such_key=1']\n"
            "try:\n    train.main()\nexcept SystemExit as e:\n    assert e.code == 1, e.code\n"
            "sys.argv = ['recipe', '--train', 'none', '--test', 'no_such.csv', '--out', 'no_such_dir']\n"
            "try:\n    experiments.recipe.main()\nexcept SystemExit as e:\n    assert e.code == 1, e.code\n"
            "assert 'lightning' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no_such_key" in r.stderr and "no_such.csv" in r.stderr


def test_no_lazy_name_of_a_package_is_also_one_of_its_submodules():
    """``app``, ``data`` and ``models`` load their names on first use (PEP 562); once a submodule of
    the same name is imported, the package attribute is that module, so ``from app import build``
    would give a function in one process and a module in another."""
    import importlib

    for package in ("app", "data", "models"):
        homes = importlib.import_module(package)._HOMES
        submodules = {p.stem for p in (ROOT / package).glob("*.py")} | {p.name for p in (ROOT / package).iterdir()
                                                                          if (p / "__init__.py").is_file()}
        assert not set(homes) & submodules, f"{package}: {sorted(set(homes) & submodules)}"
