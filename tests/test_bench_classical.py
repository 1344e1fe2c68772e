"""experiments.bench_classical's Pareto verdict (which of ours reaches FireANTs, and at what time
ratio) on hand-made rows; its --help. No registration runs here."""

from __future__ import annotations

import pytest

from experiments.bench_classical import Row, main, reaching


def _rows(name, seconds, dice, sdlogj, fold=0.0):
    return [Row(name, (i, i + 1), s, {"dice": d, "sdlogj": j, "folding_pct": fold})
            for i, (s, d, j) in enumerate(zip(seconds, dice, sdlogj))]


def test_reaching_picks_the_fastest_that_meets_every_bar_on_every_pair():
    target = _rows("fireants", [30.0, 40.0], [0.85, 0.86], [0.10, 0.10])
    ours = {
        "fast_but_short": _rows("a", [1.0, 1.0], [0.86, 0.85], [0.10, 0.10]),  # misses pair 2's Dice
        "rough": _rows("b", [2.0, 2.0], [0.90, 0.90], [0.13, 0.10]),  # SDlogJ 1.3x on pair 1
        "folds": _rows("c", [3.0, 3.0], [0.90, 0.90], [0.10, 0.10], fold=0.02),
        "ok_slow": _rows("d", [10.0, 10.0], [0.85, 0.87], [0.12, 0.05]),
        "ok": _rows("e", [6.0, 8.0], [0.851, 0.861], [0.11, 0.11]),
    }
    name, ratios = reaching(ours, target)
    assert name == "ok"
    assert ratios == pytest.approx([6.0 / 30.0, 8.0 / 40.0])
    del ours["ok"], ours["ok_slow"]
    assert reaching(ours, target) is None


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--pareto" in out and "--quick" in out
