"""SynthMorph-style training (data/synthmorph.py, losses' "none" similarity): the batch contract,
reproducible draws per (seed, epoch, idx), contrast differing between fixed and moving, labels-only
training, evaluation delegated to the MNI DataModule, one-line errors for bad knobs, and a
train.py smoke run of experiment=mni_synthmorph_voxelmorph. Tiny grids (32^3): seconds each."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, compose
from data import MNIDataModule
from data.loaders import ResumableLoader
from data.synthmorph_datamodule import SynthMorphDataModule
from data.synthmorph import EpochPairSampler, SynthMorphPairs
from losses import NoSimilarity, build_similarity

TINY = dict(shape=(32, 32, 32), n_labels=6, label_smoothness=3.0, pairs_per_epoch=3)
CONTRACT_KEYS = {"fixed", "moving", "fixed_label", "moving_label", "spacing", "fixed_affine", "fixed_id", "moving_id",
                 "pair_signature"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def pairs():
    return SynthMorphPairs(**TINY)


@pytest.fixture(scope="module")
def mni_eval():
    """A small MNI evaluation module (32^3 crop, 2 val and 2 test subjects)."""
    return MNIDataModule(shape=(32, 32, 32), n_train=2, n_val=2, n_test=2)


def _dice(a: np.ndarray, b: np.ndarray, labels) -> float:
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / max(np.sum(a == k) + np.sum(b == k), 1) for k in labels]))


def _assert_same_pair(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key


# --------------------------------------------------------------------------- the pairs
def test_items_follow_the_batch_contract(pairs, mni_eval):
    item = pairs[0]
    assert set(item) == CONTRACT_KEYS == set(mni_eval.test_set[0])  # the keys real pairs have
    for key in ("fixed", "moving"):
        x = item[key]
        assert x.shape == (1, 32, 32, 32) and x.dtype == torch.float32, key
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max() - x.min()) > 0.5, key
    for key in ("fixed_label", "moving_label"):
        lab = item[key]
        assert lab.shape == (1, 32, 32, 32) and lab.dtype == torch.int64, key
        values = torch.unique(lab).tolist()
        assert set(values) <= set(range(1, TINY["n_labels"] + 1)) and len(values) >= 3, (key, values)
    assert item["spacing"].dtype == torch.float32 and item["spacing"].tolist() == [2.0, 2.0, 2.0]
    assert item["fixed_affine"].dtype == torch.float64 and item["fixed_affine"].shape == (4, 4)
    assert item["fixed_id"] == "synthmorph_e0000_p00000_fixed" and item["moving_id"].endswith("_moving")
    assert len(pairs) == TINY["pairs_per_epoch"]
    with pytest.raises(IndexError):
        pairs[TINY["pairs_per_epoch"]]


def test_a_draw_depends_only_on_seed_epoch_and_index(pairs):
    a = pairs[(1, 2)]
    _assert_same_pair(a, SynthMorphPairs(**TINY)[(1, 2)])  # another instance (another process) alike
    fresh = SynthMorphPairs(**TINY)
    fresh.set_epoch(1)
    _assert_same_pair(a, fresh[2])  # integer index: the dataset's epoch
    for other in (pairs[(2, 2)], pairs[(1, 1)], SynthMorphPairs(**{**TINY, "seed": 1})[(1, 2)]):
        assert not torch.equal(a["fixed"], other["fixed"])
        assert not torch.equal(a["fixed_label"], other["fixed_label"])


def test_shared_draw_deformed_twice_vs_independent_draws():
    labels = range(1, TINY["n_labels"] + 1)
    shared = SynthMorphPairs(**TINY)[(0, 0)]
    independent = SynthMorphPairs(**TINY, shared_labels=False)[(0, 0)]
    still = SynthMorphPairs(**TINY, deformation_scale=0.0)[(0, 0)]
    d = {name: _dice(p["fixed_label"].numpy(), p["moving_label"].numpy(), labels)
         for name, p in (("shared", shared), ("independent", independent), ("still", still))}
    assert d["still"] == 1.0  # one draw, no deformation: identical label maps
    assert 0.4 < d["shared"] < 0.98 and d["independent"] < 0.35, d


def test_fixed_and_moving_differ_in_contrast(pairs):
    item = pairs[(0, 1)]
    both = sorted(set(torch.unique(item["fixed_label"]).tolist()) & set(torch.unique(item["moving_label"]).tolist()))
    assert len(both) >= 3
    means = {}
    for side in ("fixed", "moving"):
        img, lab = item[side][0].numpy(), item[f"{side}_label"][0].numpy()
        means[side] = np.array([img[lab == k].mean() for k in both])
    assert np.max(np.abs(means["fixed"] - means["moving"])) > 0.2, means
    # not the same contrast up to a monotone map: the labels' intensity order changes
    assert not np.array_equal(np.argsort(means["fixed"]), np.argsort(means["moving"])), means


def test_shared_contrast_gives_both_images_the_fixed_images_label_intensities(pairs):
    """shared_contrast=True: the same labels and fixed image as the default draw, and a moving
    image whose per-label means follow the fixed image's (blur, bias and gamma still its own)."""
    default, shared = pairs[(0, 1)], SynthMorphPairs(**TINY, shared_contrast=True)[(0, 1)]
    for key in ("fixed", "fixed_label", "moving_label"):
        assert torch.equal(default[key], shared[key]), key
    both = sorted(set(torch.unique(shared["fixed_label"]).tolist())
                  & set(torch.unique(shared["moving_label"]).tolist()))
    means = {side: np.array([shared[side][0].numpy()[shared[f"{side}_label"][0].numpy() == k].mean() for k in both])
             for side in ("fixed", "moving")}
    from scipy.stats import spearmanr
    assert spearmanr(means["fixed"], means["moving"]).statistic > 0.9, means


# --------------------------------------------------------------------------- loaders and resuming
def test_epochs_bring_new_pairs_and_a_resumed_loader_replays_the_interrupted_epoch():
    dm = SynthMorphDataModule(**TINY, evaluation=None)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and isinstance(loader.sampler, EpochPairSampler)
    loader.sampler.set_epoch(3)  # as Lightning does before epoch 3
    full = list(loader)
    assert [b["fixed_id"][0] for b in full] == [f"synthmorph_e0003_p{i:05d}_fixed" for i in range(3)]
    assert list(loader)[0]["fixed_id"][0].startswith("synthmorph_e0004")  # a plain second pass: new pairs
    loader.sampler.set_epoch(3)
    it = iter(loader)
    next(it)
    state = loader.state_dict()  # interrupted after one batch of epoch 3
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 2
    for a, b in zip(rest, full[1:]):
        _assert_same_pair(a, b)


# --------------------------------------------------------------------------- labels-only training
def test_sim_none_is_an_exact_zero_on_the_inputs_device_and_dtype():
    sim = build_similarity("none")
    assert isinstance(sim, NoSimilarity)
    fixed = torch.rand(2, 1, 6, 6, 6, dtype=torch.float64)
    moving = torch.rand(2, 1, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    zero = sim(fixed, moving)
    assert zero.shape == () and zero.item() == 0.0 and zero.dtype == torch.float64 and zero.device == fixed.device
    (zero + moving.sum()).backward()  # adds nothing to a loss and does not break backward
    assert torch.equal(moving.grad, torch.ones_like(moving))
    with pytest.raises(ValueError, match="NoSimilarity"):
        sim(fixed, moving[:, :, :4])


def test_dice_only_training_on_synthetic_pairs_reduces_the_dice_loss(pairs):
    from models import RegistrationModule
    from models.networks import VoxelMorphUNet

    torch.manual_seed(0)
    model = RegistrationModule(net=VoxelMorphUNet(ndim=3, variant="vxm1"), field="velocity",
                               loss={"sim": "none", "reg": "diffusion", "reg_weight": 0.1, "dice_weight": 1.0},
                               downsize=2, loss_grid="coarse")
    items = [pairs[(0, i)] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("fixed", "moving", "fixed_label", "moving_label")}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        parts = model.compute_loss(batch)
        assert parts["sim"].item() == 0.0
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        history.append(parts["dice_loss"].item())
    assert np.mean(history[-5:]) < history[0] - 0.025, history  # measured: 0.356 -> 0.316


def test_a_pairs_labels_are_registrable_by_a_diffeomorphism():
    """The supervision is consistent: a free velocity field optimised on one pair's Dice loss
    recovers most of the overlap (so a network that fails to learn is short of steps, not of
    signal), while two independent draws cannot be registered that far."""
    from losses import dice_loss, one_hot
    from spatial.functional import integrate, warp as warp_field

    def fitted(pair):
        n = TINY["n_labels"] + 1
        moving, fixed = one_hot(pair["moving_label"][None], n), one_hot(pair["fixed_label"][None], n)
        v = torch.zeros(1, 3, *TINY["shape"], requires_grad=True)
        opt = torch.optim.Adam([v], lr=0.05)
        for _ in range(60):
            loss = dice_loss(warp_field(moving, integrate(v, 7)), fixed)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return dice_loss(moving, fixed).item(), loss.item()

    before, after = fitted(SynthMorphPairs(**TINY)[(0, 0)])
    assert after < 0.5 * before, (before, after)  # measured: 0.30 -> 0.07; independent draws: 0.83 -> 0.64
    before_ind, after_ind = fitted(SynthMorphPairs(**TINY, shared_labels=False)[(0, 0)])
    assert after_ind > 2 * after, (after_ind, after)


# --------------------------------------------------------------------------- the DataModule
def test_validation_and_test_come_from_the_wrapped_mni_module(mni_eval):
    dm = SynthMorphDataModule(**TINY, evaluation=mni_eval)
    dm.validate()
    assert dm.val_dataloader().dataset is mni_eval.val_set and dm.test_dataloader().dataset is mni_eval.test_set
    batch = next(iter(dm.test_dataloader()))
    assert batch["fixed_id"] == ["mni_0004"] and batch["fixed"].shape == (1, 1, 32, 32, 32)
    assert dm.num_labels == mni_eval.num_labels == 4 and dm.label_names == mni_eval.label_names
    assert dm.shape == (32, 32, 32) and dm.spacing == (2.0, 2.0, 2.0)
    assert dm.train_set.n_labels == TINY["n_labels"]  # label counts need not match
    # from a config mapping, split sizes forwarded; the default is data.MNIDataModule()
    built = SynthMorphDataModule(**TINY, evaluation={"_target_": "data.MNIDataModule", "shape": [32, 32, 32]},
                                 n_train=3, n_val=2, n_test=2)
    assert isinstance(built.evaluation, MNIDataModule) and built.evaluation.test_ids == [5, 6]
    assert isinstance(SynthMorphDataModule(**TINY).evaluation, MNIDataModule)
    with pytest.raises(ValueError, match="'n_val'"):
        SynthMorphDataModule(**TINY, evaluation=mni_eval, n_val=2)


@pytest.mark.parametrize(
    "key, value",
    [("n_labels", 1), ("blur", -0.5), ("shape", (32, 32, 32, 32)), ("shape", (32,)), ("noise", -1.0),
     ("intensity_range", (0.8, 0.2)), ("label_smoothness", 0.0), ("deformation_scale", float("nan"))],
)
def test_bad_knobs_raise_one_clear_error_naming_the_key(key, value):
    with pytest.raises(ValueError) as err:
        SynthMorphPairs(**{**TINY, key: value})
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message, message
    with pytest.raises(ValueError, match=f"'{key}'"):
        SynthMorphDataModule(**{**TINY, key: value})


def test_bad_knob_through_the_config_is_one_config_error():
    from app import ConfigError, build_datamodule

    cfg = compose("train", ["data=synthmorph", "data.blur=-1"])
    with pytest.raises(ConfigError, match=r"^data: .*'blur' must be"):
        build_datamodule(cfg)


def test_config_mirrors_the_datamodule_defaults():
    """configs/data/synthmorph.yaml states every knob; its values are the class defaults, and its
    evaluation data are configs/data/mni.yaml (one truth)."""
    cfg = compose("train", ["data=synthmorph"])
    params = {**inspect.signature(SynthMorphPairs).parameters, **inspect.signature(SynthMorphDataModule.__init__).parameters}
    params.pop("generator")  # **generator: SynthMorphPairs' settings
    assert cfg.data._target_ == "data.SynthMorphDataModule"
    assert set(params) - {"self", "evaluation"} <= set(cfg.data), "a knob is missing from the config"
    for key, value in cfg.data.items():
        if key.startswith("_") or key == "evaluation":
            continue
        assert key in params, key
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key
    assert cfg.data.evaluation == compose("train", ["data=mni"]).data


# --------------------------------------------------------------------------- train.py
def test_train_py_runs_the_synthmorph_experiment(tmp_path):
    sys.path.insert(0, str(ROOT))
    import train as train_entry

    cfg = compose("train", [
        "experiment=mni_synthmorph_voxelmorph", f"paths.output_dir={tmp_path}", "logger=csv",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
        "data.shape=[32,32,32]", "data.n_labels=6", "data.pairs_per_epoch=2",
        "data.n_train=2", "data.n_val=2", "data.n_test=2",
    ])
    assert cfg.model.loss.sim == "none" and cfg.model.loss.dice_weight == 1.0
    assert cfg.data.evaluation.shape == [32, 32, 32]  # the evaluation grid follows data.shape
    summary = train_entry.train(cfg)
    assert summary["n_pairs"] == 1 and summary["paradigm"] == "supervised"
    assert (tmp_path / "test" / "pairs.csv").exists()
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    sims = [float(v) for r in rows for k, v in r.items() if k.startswith("train/sim") and v]
    assert sims and all(s == 0.0 for s in sims)
