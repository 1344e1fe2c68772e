"""The data layer's written-down interface: one batch builder, one DataModule base, the MNI knobs
declared once, one atomic writer.

* :func:`data.batch.pair_item` builds every item: numpy becomes tensors of the contract's dtypes,
  a part of the wrong kind or shape is one DataError naming the pair and the key;
* every DataModule derives from :class:`data.base.RegistrationDataModule` and inherits its defaults;
* :class:`data.mni.MNIKnobs` is the one declaration of the MNI generator's knobs: each is a
  parameter of ``MNIDataModule``, a key of ``configs/data/mni.yaml`` and part of every pair's
  signature, and is checked by name;
* :mod:`data.files` is the one atomic writer: the preprocessing cache and label maps get the mode
  an ordinary new file gets, a failed write leaves nothing and names the target.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import compose
from data import DataError, MNIDataModule, PairsCSVDataModule, SynthMorphDataModule
from data.base import RegistrationDataModule, stage_splits
from data.batch import CONTRACT_KEYS, pair_item
from data.generated import GeneratedPairDataset

PARTS = dict(spacing=(1.0, 2.0, 3.0), fixed_affine=np.diag([1.0, 2.0, 3.0, 1.0]), fixed_id="a", moving_id="b",
             pair_signature="sig")


def _img(shape=(1, 4, 5, 6), dtype=np.float32):
    return np.random.default_rng(0).random(shape).astype(dtype)


# ----------------------------------------------------------------------------- the batch builder
def test_pair_item_converts_numpy_to_the_contract_dtypes():
    lab = np.ones((1, 4, 5, 6), dtype=np.int16)
    item = pair_item(_img(dtype=np.float64), _img(), fixed_label=lab, moving_label=lab, **PARTS)
    assert tuple(item) == CONTRACT_KEYS
    assert all(isinstance(item[k], torch.Tensor) for k in ("fixed", "moving", "fixed_label", "spacing"))
    assert item["fixed"].dtype == torch.float32 and item["moving"].dtype == torch.float32
    assert item["fixed_label"].dtype == torch.int64 and item["moving_label"].dtype == torch.int64
    assert item["spacing"].dtype == torch.float32 and item["spacing"].tolist() == [1.0, 2.0, 3.0]
    assert item["fixed_affine"].dtype == torch.float64 and item["fixed_affine"].shape == (4, 4)
    no_labels = pair_item(torch.zeros(1, 4, 5), torch.zeros(1, 4, 5), **{**PARTS, "spacing": (1.0, 1.0)})
    assert set(no_labels) == set(CONTRACT_KEYS) - {"fixed_label", "moving_label"}


@pytest.mark.parametrize("change, key", [
    (dict(moving=_img((1, 4, 5, 7))), "'moving'"),
    (dict(fixed=_img((4, 5, 6)), moving=_img((4, 5, 6))), "'fixed'"),
    (dict(fixed_label=np.ones((1, 4, 5, 6), np.float32), moving_label=np.ones((1, 4, 5, 6), np.float32)),
     "'fixed_label' must be int64"),
    (dict(fixed_label=np.ones((1, 4, 5, 6), bool), moving_label=np.ones((1, 4, 5, 6), bool)), "'fixed_label'"),
    (dict(fixed=np.ones((1, 4, 5, 6), np.int64)), "'fixed' must be float32"),
    (dict(fixed_label=np.ones((1, 4, 5, 6), np.int64)), "both"),
    (dict(fixed_label=np.ones((1, 4, 5, 6), np.int64), moving_label=np.ones((1, 4, 5, 5), np.int64)), "'moving_label'"),
    (dict(spacing=(1.0, 1.0)), "'spacing'"),
    (dict(fixed_affine=np.eye(3)), "'fixed_affine'"),
    (dict(moving_id=3), "str"),
])
def test_pair_item_refuses_a_part_of_the_wrong_kind_naming_pair_and_key(change, key):
    parts = {"fixed": _img(), "moving": _img(), **PARTS, **change}
    with pytest.raises(DataError, match="pair a <- ") as err:
        pair_item(**parts)
    assert key in str(err.value)


class _Subjects:
    """A generator whose label maps are stored as float (a bug the builder must catch)."""

    spacing, affine, shape, label_names = (1.0, 1.0, 1.0), np.eye(4), (8, 8, 8), {0: "bg", 1: "fg"}

    def __getitem__(self, k):
        return {"image": torch.rand(1, 8, 8, 8), "label": torch.ones(1, 8, 8, 8), "id": f"s{k}"}

    def subject_id(self, k):
        return f"s{k}"


def test_a_dataset_item_of_the_wrong_dtype_is_refused_naming_the_pair():
    ds = GeneratedPairDataset(_Subjects(), [(0, 1)], with_labels=True, config="x")
    with pytest.raises(DataError, match=r"pair s0 <- s1: 'fixed_label' must be int64, got torch.float32"):
        ds[0]
    assert set(GeneratedPairDataset(_Subjects(), [(0, 1)], with_labels=False, config="x")[0]) == \
        set(CONTRACT_KEYS) - {"fixed_label", "moving_label"}


# ----------------------------------------------------------------------------- the DataModule base
def test_every_datamodule_derives_from_the_one_base():
    from data import DatasetDataModule, KleinDataModule, OASISDataModule, OASISL2RDataModule
    from data.generated import GeneratedDataModule
    from data.synthetic import SyntheticDataModule

    for cls in (GeneratedDataModule, MNIDataModule, SyntheticDataModule, PairsCSVDataModule, SynthMorphDataModule,
                DatasetDataModule, OASISDataModule, OASISL2RDataModule, KleinDataModule):
        assert issubclass(cls, RegistrationDataModule), cls.__name__


def test_the_base_states_the_defaults_of_what_is_optional(tmp_path):
    class Minimal(RegistrationDataModule):
        pass

    dm = Minimal()
    dm.validate()  # nothing to check
    assert dm.input_files() == [] and dm.volume_shapes("test") == []
    assert dm.spacing is None and dm.shape is None and dm.num_labels is None and dm.label_names == {}
    assert dm.save_label_map(tmp_path) is None and list(tmp_path.iterdir()) == []
    with pytest.raises(NotImplementedError, match="Minimal"):
        dm.test_pair_ids()
    assert stage_splits("fit") == ("train", "val") and stage_splits("predict") == ("test",)
    assert stage_splits(None) == ("train", "val", "test")
    mni = MNIDataModule(shape=(16, 16, 16), n_train=2, n_val=0, n_test=2)
    assert mni.input_files() == [] and mni.volume_shapes() == [] and mni.label_names[3] == "WM"


def test_synthmorph_asks_its_evaluation_module_directly(tmp_path, pairs_csv):
    """Every member comes from the evaluation module (no probing), the training grid is listed
    for the size check, and an evaluation module outside the interface is refused."""
    import lightning as L

    evaluation = PairsCSVDataModule(csv=str(pairs_csv))
    dm = SynthMorphDataModule(shape=(16, 16, 16), n_labels=4, pairs_per_epoch=2, evaluation=evaluation)
    assert dm.test_pair_ids() == evaluation.test_pair_ids() and dm.input_files() == evaluation.input_files()
    assert dm.volume_shapes("test") == evaluation.volume_shapes("test") != []
    assert dm.volume_shapes("fit")[0] == ("SynthMorph training pairs (data.shape)", (16, 16, 16))
    assert dm.spacing == evaluation.spacing and dm.num_labels == evaluation.num_labels
    assert dm.save_label_map(tmp_path / "out") is None
    with pytest.raises(ValueError, match="RegistrationDataModule"):
        SynthMorphDataModule(shape=(16, 16, 16), evaluation=L.LightningDataModule())


# ----------------------------------------------------------------------------- MNI knobs, once
ANOTHER_VALUE = {"resolution": 1, "shape": (16, 16, 24), "deformation_scale": 3.0, "deformation_smoothness": 10.0,
                 "bias": 0.2, "gamma": 0.2, "noise": 0.02, "contrast": "inverted", "labels": "parcels",
                 "slice_thickness": 4.0}


def test_each_mni_knob_is_a_parameter_a_config_key_and_part_of_the_pair_signature():
    from data.mni import MNIKnobs, MNISubjects

    names = [f.name for f in dataclasses.fields(MNIKnobs)]
    assert sorted(ANOTHER_VALUE) == sorted(names), "give every knob another value here"
    params = inspect.signature(MNIDataModule).parameters
    cfg = compose("train", ["data=mni"]).data
    base = dict(shape=(16, 16, 16), n_train=2, n_val=0, n_test=2)
    sig = MNIDataModule(**base).test_set.pair_signature(0)
    for f in dataclasses.fields(MNIKnobs):
        assert params[f.name].default == f.default and f.name in cfg, f.name
        other = MNIDataModule(**{**base, f.name: ANOTHER_VALUE[f.name]})
        assert other.test_set.pair_signature(0) != sig, f.name
        assert getattr(other.test_set.subjects, f.name) == ANOTHER_VALUE[f.name] or f.name == "shape"
    assert MNIDataModule(**{**base, "noise": 0.01}).test_set.pair_signature(0) == sig  # a default given
    subjects = MNISubjects(MNIKnobs(noise=0.0), seed=3)
    assert subjects.noise == 0.0 and subjects.seed == 3 and subjects.shape == (96, 112, 96)


@pytest.mark.parametrize("knob, value", [("noise", -1), ("bias", "abc"), ("deformation_smoothness", 0),
                                         ("contrast", "t2"), ("labels", "lobes"), ("shape", [16, 16]),
                                         ("resolution", 3), ("slice_thickness", float("nan"))])
def test_a_bad_mni_knob_is_one_error_naming_it(knob, value):
    with pytest.raises(ValueError, match=f"'{knob}'"):
        MNIDataModule(**{knob: value})


def test_an_unknown_mni_knob_is_named():
    from data.mni import MNISubjects

    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['noize'\]"):
        MNIDataModule(noize=0.1)
    with pytest.raises(TypeError, match="noize"):
        MNISubjects(noize=0.1)


# ----------------------------------------------------------------------------- one atomic writer
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cache_label_map_and_volumes_get_the_mode_of_ordinary_files(tmp_path):
    """The preprocessing cache was written 0600 (mkstemp's mode); every file now gets 0o666 & ~umask."""
    from data.label_mapping import LabelMapping
    from data.preprocess import PreprocessConfig, VolumeStore
    from data.save import save_nifti_atomic

    image = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10)).astype(np.float32) + 0.1, np.eye(4)),
             str(image))
    old = os.umask(0o022)
    try:
        store = VolumeStore(PreprocessConfig(orientation=None, spacing=None), tmp_path / "cache")
        store.get("v", image, None)
        LabelMapping([1, 2], remap=True).save(tmp_path / "maps" / "label_map.json")
        save_nifti_atomic(np.zeros((2, 2, 2)), None, tmp_path / "vol.nii.gz")
    finally:
        os.umask(old)
    files = sorted((tmp_path / "cache").rglob("*")) + [tmp_path / "maps" / "label_map.json", tmp_path / "vol.nii.gz"]
    files = [f for f in files if f.is_file()]
    assert {f.suffix for f in files} >= {".npz", ".json", ".gz"}
    assert {oct(_mode(f)) for f in files} == {oct(0o644)}
    assert not [f for f in tmp_path.rglob(".*") if ".tmp" in f.name]  # no temporary file left


def test_one_writer_a_failed_write_leaves_nothing_and_names_the_target(tmp_path):
    import app.parts
    from data import files

    assert app.parts.atomic_write_files is files.atomic_write_files  # one implementation
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")

    def full_disk(path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left") as err:
        files.atomic_write_with(target, full_disk)
    assert str(target) in str(err.value) and ".tmp" not in str(err.value)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.npz"]


# ----------------------------------------------------------------------------- classical reads one grid
def test_classical_module_reads_no_moving_spacing():
    """Batches carry one grid (``spacing`` of the fixed image); a stray ``moving_spacing`` key,
    which no dataset makes, is not read (it used to be compared with ``spacing``)."""
    from classical.module import InstanceOptimisationModule

    img = torch.rand(1, 1, 8, 8, 8)
    model = InstanceOptimisationModule("greedy", scales=[1], iterations=[1])
    batch = {"fixed": img, "moving": img, "spacing": torch.ones(1, 3), "moving_spacing": torch.full((1, 3), 3.0)}
    assert model.register(batch).shape == (1, 3, 8, 8, 8)
