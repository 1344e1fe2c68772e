"""Every command the README and docs/ show still runs as written, up to the work itself.

Each ``python ...`` command of README.md and docs/*.md (in code blocks and inline) is parsed:
an entry point with a Hydra config (``train.py``, ``eval.py``, ``register.py``, ``apply.py``,
``python -m experiments.compare`` ...) composes with exactly the overrides shown (the first value
of a ``-m`` sweep; ``<placeholders>`` kept as text) and passes the checks the entry point runs
before any work (the experiment belongs to that script; every value has the right type); any
other module (``data.check``, a benchmark) exists and its argument parser accepts the arguments
shown. A renamed config key, experiment file or module turns this red, naming the file and
command.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from conftest import compose

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_SCRIPTS = {"train.py": "train", "eval.py": "eval", "register.py": "register", "apply.py": "apply"}
HYDRA_MODULES = {"experiments.compare": "compare", "experiments.domain_shift": "domain_shift",
                 "experiments.mi_analysis": "mi_analysis", "experiments.mi_sweep": "mi_sweep"}
# what each config's entry point accepts as its experiments (app.build.check_entry)
ACCEPTS = {"train": ("train",), "eval": ("train", "eval"), "compare": ("compare",),
           "domain_shift": ("domain_shift",), "mi_analysis": ("mi_analysis",), "mi_sweep": ("mi_sweep",)}


def _commands(path: Path) -> list[str]:
    """The ``python ...`` commands of a Markdown file: lines of fenced blocks (with ``\\``
    continuations joined, comments cut) and inline code spans."""
    text = path.read_text()
    out: list[str] = []
    in_block, pending = False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            code = (pending + " " + line.strip()) if pending else line.strip()
            if code.endswith("\\"):
                pending = code[:-1].strip()
                continue
            pending = ""
            code = re.sub(r"\s+#.*$", "", code)
            if code.startswith("python "):
                out.append(code)
        else:
            out += [span for span in re.findall(r"`([^`]+)`", line) if span.startswith("python ")]
    return out


def _cases():
    """One case per distinct command (the first document showing it names it)."""
    seen: dict[str, str] = {}
    for path in DOCS:
        for command in _commands(path):
            seen.setdefault(" ".join(command.split()), path.name)
    return [pytest.param(doc, command, id=f"{doc}:{command[:70]}") for command, doc in seen.items()]


def _tokens(command: str) -> list[str]:
    """The command's words; ``<placeholders>`` become a plain word, and brackets that mark an
    optional argument in prose (``[--checkpoint]``, ``[results_dir=DIR]``) are dropped (a Hydra
    list value ``key=[a,b]`` starts with its key and is kept)."""
    words = []
    for word in shlex.split(re.sub(r"<[^<>]*>", "PLACEHOLDER", command)):
        if word.startswith("[") and word.endswith("]"):
            word = word[1:-1]
        elif word.startswith("["):
            word = word[1:]
        elif word.endswith("]") and "[" not in word:
            word = word[:-1]
        if word not in ("...", "|"):
            words.append(word)
    return words


def _first_of_sweep(override: str) -> str:
    """``key=a,b`` of a ``-m`` sweep -> ``key=a`` (commas inside brackets or braces are values)."""
    key, sep, value = override.partition("=")
    if not sep or value[:1] in "[{'\"":
        return override
    return f"{key}={value.split(',')[0]}"


class _Parsed(Exception):
    pass


def _parses(module: str, args: list[str], doc: str, command: str) -> None:
    """Run ``python -m module args`` up to its argument parser and stop there: argparse refusing
    an argument (exit status 2) fails the test."""
    import argparse
    import runpy
    import sys

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        original(self, *a, **k)
        raise _Parsed

    argv = sys.argv
    argparse.ArgumentParser.parse_args = parse_then_stop
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
        pytest.fail(f"{doc}: `{command}` ran without parsing arguments")
    except _Parsed:
        pass
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}`: the arguments are refused (exit {exc.code})")
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = argv


def test_the_docs_show_commands():
    assert len(_cases()) > 40


@pytest.mark.parametrize("doc, command", _cases())
def test_documented_command_composes_and_passes_the_entry_checks(doc, command):
    words = _tokens(command)[1:]  # after "python"
    if words[:2] == ["-m", "pytest"]:
        return
    if words[0] == "-m":
        module, args = words[1], words[2:]
        config = HYDRA_MODULES.get(module)
        if config is None:
            if module.split(".")[-1].isupper():  # python -m experiments.NAME: a pattern, not a command
                return
            assert importlib.util.find_spec(module) is not None, f"{doc}: no module {module}: {command}"
            if args:  # (a bare `python -m data.check` in prose names the tool)
                _parses(module, args, doc, command)
            return
    else:
        config, args = ENTRY_SCRIPTS.get(words[0]), words[1:]
        assert config is not None, f"{doc}: unknown script {words[0]}: {command}"
        assert (ROOT / words[0]).is_file()
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if multirun:
        overrides = [_first_of_sweep(a) for a in overrides]
    try:
        cfg = compose(config, overrides, hydra=True)
    except Exception as exc:  # noqa: BLE001 - the message names the override
        pytest.fail(f"{doc}: `{command}` does not compose: {type(exc).__name__}: {exc}")
    if config in ACCEPTS:
        from app.build import check_entry

        check_entry(cfg, *ACCEPTS[config])
