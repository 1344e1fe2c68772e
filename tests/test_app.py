"""The application layer (``app/``): models rebuilt from their hyper-parameters, checkpoints of this
code and of the code before it, a test step that returns rows and writes nothing."""

from __future__ import annotations

import os
import sys

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose

sys.path.insert(0, str(ROOT))
from app import ConfigError, build_model, load_model_from_checkpoint  # noqa: E402
from app.results import PAIR_COLUMNS  # noqa: E402
from models import RegistrationModule  # noqa: E402
from spatial import DISPLACEMENT_CONVENTION  # noqa: E402

NETWORKS = {"voxelmorph": [], "lapirn": [], "symnet": [], "lkunet": [], "transmorph": ["model.net.size=tiny"]}


def _save(model, path) -> str:
    """The checkpoint ``train.py``'s trainer writes for ``model`` (Lightning's dict + on_save_checkpoint)."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return str(path)


def _pair(seed: int = 0, shape=(32, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return {"fixed": torch.rand(1, 1, *shape, generator=g), "moving": torch.rand(1, 1, *shape, generator=g)}


def _displacement(model, batch):
    with torch.no_grad():
        return model.eval().register(batch)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_checkpoint_rebuilds_the_model_with_lightning_and_with_eval(network, tmp_path):
    """Built from config, saved, then rebuilt by Lightning's own ``load_from_checkpoint`` and by
    eval.py's loader: the same class, hyper-parameters and displacement (bit for bit)."""
    model = build_model(compose("train", [f"model={network}", *NETWORKS[network]]))
    path = _save(model, tmp_path / "m.ckpt")
    ckpt = torch.load(path, weights_only=True)  # plain data only
    assert ckpt["registration"]["target"] == f"{type(model).__module__}.{type(model).__qualname__}"
    lightning_loaded = type(model).load_from_checkpoint(path, weights_only=True)
    eval_loaded = load_model_from_checkpoint(path)
    assert type(lightning_loaded) is type(model) and type(eval_loaded) is type(model)
    assert OmegaConf.to_container(OmegaConf.create(dict(eval_loaded.hparams))) == \
        OmegaConf.to_container(OmegaConf.create(dict(model.hparams)))
    batch = _pair()
    u = _displacement(model, batch)
    assert torch.equal(_displacement(lightning_loaded, batch), u)
    assert torch.equal(_displacement(eval_loaded, batch), u)


def _format1(model_name: str, path, weights) -> str:
    """A checkpoint as train.py wrote it before the application layer (format 1): no
    ``hyper_parameters``; ``registration.model_config`` = the resolved Hydra model config (with
    nested ``_target_`` nodes and a ``_partial_`` optimiser) and ``data_config``."""
    cfg = compose("train", [f"model={model_name}"])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    config.pop("_recursive_", None)  # the configs of that time had none
    ckpt = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6", "state_dict": weights.state_dict(),
            "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
            "registration": {"method": config["method"], "model_config": config,
                             "data_config": OmegaConf.to_container(cfg.data, resolve=True),
                             "field": config.get("field", "displacement"),
                             "displacement_convention": DISPLACEMENT_CONVENTION}}
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("network", ["voxelmorph", "lapirn"])
def test_checkpoints_of_the_earlier_format_still_load(network, tmp_path):
    model = build_model(compose("train", [f"model={network}"]))
    loaded = load_model_from_checkpoint(_format1(network, tmp_path / "old.ckpt", model))
    assert type(loaded) is type(model) and loaded.method == model.method
    batch = _pair(1)
    assert torch.equal(_displacement(loaded, batch), _displacement(model, batch))


@pytest.mark.parametrize("where,target", [("registration", "os.system"), ("registration", "data.io.DataError"),
                                          ("net", "subprocess.call")])
def test_a_checkpoint_names_no_code_to_run(where, target, tmp_path):
    """A checkpoint is data: a class that is not a RegistrationModule, or a part outside
    models.specs.ALLOWED_TARGETS, is refused with one error naming the key and the file."""
    model = build_model(compose("train", ["model=voxelmorph"]))
    path = _save(model, tmp_path / "m.ckpt")
    ckpt = torch.load(path, weights_only=True)
    if where == "registration":
        ckpt["registration"]["target"] = target
    else:
        for hparams in (ckpt["hyper_parameters"], ckpt["registration"]["hyper_parameters"]):
            hparams["net"] = {"_target_": target, "args": ["touch", str(tmp_path / "ran")]}
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=r"ckpt_path: .*m\.ckpt.*cannot be built here"):
        load_model_from_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_test_step_returns_rows_and_writes_nothing(tmp_path, monkeypatch):
    """The LightningModule returns each pair's row (the results contract's columns), per-label Dice,
    the displacement and the moved label; it opens no file (the results callback writes)."""
    from models import IdentityRegistration

    monkeypatch.chdir(tmp_path)
    lab = torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64)
    lab[..., 2:6, 2:6, 2:6] = 3
    batch = {**_pair(2, (8, 8, 8)), "fixed_label": lab, "moving_label": lab, "spacing": torch.ones(1, 3),
             "fixed_id": ["f"], "moving_id": ["m"], "pair_signature": ["sig"]}
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    (result,) = IdentityRegistration().test_step(batch, 0)
    assert not opened and not os.listdir(tmp_path)
    assert set(result["pair"]) | {"method"} == set(PAIR_COLUMNS)
    perfect = {"dice": 1.0, "target_overlap": 1.0, "union_overlap": 1.0, "volume_similarity": 0.0, "fn_error": 0.0,
               "fp_error": 0.0}
    assert result["pair"]["dice"] == 1.0 and result["labels"] == {3: perfect} and result["signature"] == "sig"
    assert result["displacement"].shape == (1, 3, 8, 8, 8) and torch.equal(result["moved_label"], lab[0])


def test_a_model_built_from_objects_is_still_usable_but_keeps_no_object_hyperparameters():
    from models.networks import VoxelMorphUNet

    model = RegistrationModule(net=VoxelMorphUNet(ndim=2, enc=(4, 4), dec=(4, 4)), method="vm",
                               optimizer=torch.optim.SGD)
    assert "net" not in model.hparams and "optimizer" not in model.hparams and model.hparams["method"] == "vm"
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)


def test_a_checkpoint_is_refused_on_test_data_in_another_voxel_order():
    """A network sees voxels: trained on LIA-ordered OASIS and tested on RAS Klein data, it would see
    every brain with two axes swapped and read the failure as domain shift. Unknown orders pass."""
    from types import SimpleNamespace

    from app import ConfigError
    from app.checkpoints import check_voxel_axes

    net, data = "LIA", SimpleNamespace(voxel_axes="RAS")
    with pytest.raises(ConfigError, match=r"ckpt_path: run/best.ckpt was trained on data in voxel order LIA, "
                                          r"this data= gives RAS.*data.orientation=LIA"):
        check_voxel_axes(net, data, "run/best.ckpt")
    check_voxel_axes(net, SimpleNamespace(voxel_axes="LIA"), "run/best.ckpt")
    check_voxel_axes(None, data, "old.ckpt")  # checkpoints before the record
    check_voxel_axes(net, SimpleNamespace(voxel_axes=None), "run/best.ckpt")  # e.g. generated data


def test_a_checkpoint_is_refused_on_test_data_normalised_otherwise():
    """A network sees intensities: trained on min-max normalised images and tested on percentile
    normalised ones, its drop would read as domain shift. Unknown normalisations pass."""
    from types import SimpleNamespace

    from app import ConfigError
    from app.checkpoints import check_trained_data

    record = {"voxel_axes": "RAS", "intensity_normalisation": "minmax"}
    data = SimpleNamespace(voxel_axes="RAS", intensity_normalisation="percentile")
    with pytest.raises(ConfigError, match=r"ckpt_path: run/best.ckpt was trained on images normalised 'minmax', but "
                                          r"this data= normalises them 'percentile'.*set data.normalize=minmax"):
        check_trained_data(record, data, "run/best.ckpt")
    check_trained_data(record, SimpleNamespace(voxel_axes="RAS", intensity_normalisation="minmax"), "run/best.ckpt")
    check_trained_data({"voxel_axes": "RAS"}, data, "old.ckpt")  # checkpoints before the record
    check_trained_data(record, SimpleNamespace(voxel_axes=None, intensity_normalisation=None), "x.ckpt")  # MNI
    with pytest.raises(ConfigError, match="voxel order RAS"):  # and the voxel order, as check_voxel_axes
        check_trained_data(record, SimpleNamespace(voxel_axes="LIA", intensity_normalisation="minmax"), "x.ckpt")
