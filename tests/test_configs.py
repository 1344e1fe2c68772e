"""configs/experiment: the supervised / unsupervised twins compose from one shared recipe, and an
experiment's Dice-loss weight, name and tags agree (the tags group the runs on W&B)."""

from __future__ import annotations

import functools

import pytest
from omegaconf import OmegaConf

from conftest import CONFIGS, compose

PIN = "paths.output_dir=/pinned"  # ${hydra:runtime.output_dir} does not resolve outside a Hydra run
FILES = sorted((CONFIGS / "experiment").glob("*.yaml"))
TRAIN = [p.stem for p in FILES]  # the analysis scripts' experiments live in their own folders
SUP = [n for n in TRAIN if "_sup_" in n]
UNSUP = [n for n in TRAIN if "_unsup_" in n]


@functools.lru_cache(maxsize=None)
def _composed(*overrides: str) -> tuple[dict, dict]:
    """The train config, (unresolved, resolved), composed once per set of overrides."""
    cfg = compose("train", [*overrides, PIN])
    return OmegaConf.to_container(cfg, resolve=False), OmegaConf.to_container(cfg, resolve=True)


def _resolved(overrides: list[str]) -> dict:
    return _composed(*overrides)[1]


def _flat(d, prefix=""):
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def test_every_twin_has_its_twin():
    assert SUP and sorted(n.replace("_sup_", "_unsup_") for n in SUP) == UNSUP


@pytest.mark.parametrize("sup", SUP)
def test_supervised_twin_differs_only_by_supervision(sup):
    """mni_sup_X composes to mni_unsup_X except the Dice weight, the name and the supervision tag."""
    unsup = sup.replace("_sup_", "_unsup_")
    a, b = _resolved([f"experiment={sup}"]), _resolved([f"experiment={unsup}"])
    assert (a["supervision"], b["supervision"]) == ("supervised", "unsupervised")
    assert a["model"]["loss"]["dice_weight"] > 0 and b["model"]["loss"]["dice_weight"] == 0
    assert (a["experiment_name"], b["experiment_name"]) == (sup, unsup)
    assert a["tags"] == ["supervised" if t == "unsupervised" else t for t in b["tags"]]
    # everything else, compared unresolved (what follows from the name or the tags, as the W&B run
    # name and group, is then the same interpolation)
    fa, fb = (_flat(_composed(f"experiment={e}")[0]) for e in (sup, unsup))
    for key in ("model.loss.dice_weight", "experiment_name", "tags", "supervision"):
        fa.pop(key), fb.pop(key)
    assert fa == fb


@pytest.mark.parametrize("experiment", TRAIN)
def test_dice_weight_name_and_tags_agree(experiment):
    """experiment_name is the file's name; a learned experiment is tagged `supervised` exactly when
    a Dice loss trains it (`unsupervised` otherwise), and `_sup_` / `_unsup_` in its name agree."""
    cfg = _resolved([f"experiment={experiment}"])
    assert cfg["experiment_name"] == experiment
    dice = ((cfg["model"].get("loss") or {}).get("dice_weight"))
    tags = cfg["tags"]
    if dice is None:  # classical or identity: no training loss
        assert "_sup_" not in experiment and "_unsup_" not in experiment
        assert "supervised" not in tags and "unsupervised" not in tags
        return
    supervised = dice > 0
    assert ("supervised" in tags, "unsupervised" in tags) == (supervised, not supervised), (dice, tags)
    if "_sup_" in experiment or "_unsup_" in experiment:
        assert supervised == ("_sup_" in experiment), dice
        assert cfg["supervision"] == ("supervised" if supervised else "unsupervised")


def test_supervision_group_from_the_command_line():
    """`supervision=` switches the Dice loss and the tag together (the name stays the file's)."""
    cfg = _resolved(["experiment=mni_unsup_lkunet", "supervision=supervised"])
    assert cfg["model"]["loss"]["dice_weight"] == 1.0 and cfg["tags"] == ["mni", "supervised", "lkunet"]
    assert cfg["model"]["optimizer"]["lr"] == 2.0e-4  # the rest of the recipe is kept
    cfg = _resolved(["+supervision=supervised"])  # the quickstart has no supervision: add it
    assert cfg["model"]["loss"]["dice_weight"] == 1.0 and cfg["supervision"] == "supervised"
