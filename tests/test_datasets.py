"""Tests of the public dataset loaders: OASIS (neurite, Learn2Reg), IBSR18, CUMC12, MGH10, LPBA40.

Every test writes tiny fake trees (a few subjects of about 12x14x10 voxels, random labels) in the
exact layouts of PAPER.md into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import ROOT, compose
from data import DataError, KleinDataModule, LabelMapping, OASISDataModule, OASISL2RDataModule, PreprocessConfig
from data.check import check_dataset, main as check_main
from data.datasets_module import PairDataset
from data.layout import VolumeRef
from data.io import load_volume
from data.preprocess import VolumeAugmentation, VolumeStore, load_source, preprocess

SHAPE = (12, 14, 10)
SMALL = dict(shape=(12, 14, 10))  # keep tiny volumes tiny (the dataset defaults pad to 160x192x224)


# ----------------------------------------------------------------------------- fake trees
def _save(path: Path, array, affine=None, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    img -= img.min()
    img[0, :, :] = 0  # some zero background
    return img * 200 + 1.0 * (img > 0)


def _labels(seed: int, ids=(0, 1, 2, 3), shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(1000 + seed).choice(np.asarray(ids), size=shape).astype(np.int16)


def make_oasis(root: Path, numbers=(11, 2, 7, 5, 1, 4, 10), subjects_txt: bool = False) -> Path:
    for k, n in enumerate(numbers):
        folder = root / f"OASIS_OAS1_{n:04d}_MR1"
        _save(folder / "aligned_norm.nii.gz", _image(n))
        _save(folder / "aligned_seg35.nii.gz", _labels(n, ids=range(36)))
        _save(folder / "aligned_seg4.nii.gz", _labels(n, ids=range(5)))
    if subjects_txt:
        (root / "subjects.txt").write_text("".join(f"OASIS_OAS1_{n:04d}_MR1\n" for n in numbers))
    return root


def make_l2r(root: Path, numbers=(1, 2, 3, 5, 6, 7), pairs=((5, 6), (6, 7)), header=True) -> Path:
    for n in numbers:
        _save(root / "imagesTr" / f"OASIS_{n:04d}_0000.nii.gz", _image(n))
        _save(root / "labelsTr" / f"OASIS_{n:04d}_0000.nii.gz", _labels(n, ids=range(36)))
    rows = (["fixed,moving"] if header else []) + [f"{f},{m}" for f, m in pairs]
    (root / "pairs_val.csv").write_text("\n".join(rows) + "\n")
    return root


IBSR_SPACING = (0.9375, 1.5, 0.9375)
IBSR_IDS = (0, 2, 7, 41)


def make_ibsr(root: Path, n: int = 3) -> Path:
    for i in range(1, n + 1):
        name = f"IBSR_{i:02d}"
        _save(root / name / f"{name}_ana_strip.nii.gz", _image(i), spacing=IBSR_SPACING)
        _save(root / name / f"{name}_seg_ana.nii.gz", _labels(i, ids=IBSR_IDS), spacing=IBSR_SPACING)
    return root


def make_brains_atlases(root: Path, letter: str, numbers=(1, 2, 10), spacing=(1.0, 3.0, 1.0)) -> Path:
    for i in numbers:
        _save(root / "Brains" / f"{letter}{i}.nii.gz", _image(i), spacing=spacing)
        _save(root / "Atlases" / f"{letter}{i}.nii.gz", _labels(i), spacing=spacing)
    return root


def make_lpba(root: Path, n: int = 3) -> Path:
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            _save(root / "registered_pairs" / f"l{j}_to_l{i}.nii.gz", _image(10 * i + j))
            _save(root / "registered_label_pairs" / f"l{j}_to_l{i}.nii.gz", _labels(10 * i + j))
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One data_dir holding a tiny copy of every dataset under its config's folder name."""
    base = tmp_path_factory.mktemp("datasets")
    make_oasis(base / "OASIS")
    make_l2r(base / "OASIS_L2R")
    make_ibsr(base / "IBSR18")
    make_brains_atlases(base / "CUMC12", "m")
    make_brains_atlases(base / "MGH10", "g", spacing=(1.0, 1.0, 1.0))
    make_lpba(base / "LPBA40")
    return base


def _one_line_error(fn, *args, must=(), **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for text in must:
        assert str(text) in msg, msg
    return msg


# ----------------------------------------------------------------------------- OASIS neurite
def test_oasis_subjects_sorted_splits_and_pairs(trees):
    dm = OASISDataModule(str(trees / "OASIS"), n_train=4, n_val=3, **SMALL)
    ids = [f"OASIS_OAS1_{n:04d}_MR1" for n in (1, 2, 4, 5, 7, 10, 11)]  # sorted by number
    assert [v.id for v in dm.layout.volumes()] == ids
    assert [v.id for v in dm.train_volumes] == ids[:4]
    assert [(f.id, m.id) for f, m in dm.val_pairs] == [(ids[4], ids[5]), (ids[5], ids[6])]  # fixed k, moving k+1
    assert dm.test_pairs == dm.val_pairs
    assert len(dm.train_pairs) == 12  # all ordered pairs of 4 training subjects
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"fixed", "moving", "fixed_label", "moving_label", "spacing", "fixed_affine",
                          "fixed_id", "moving_id", "pair_signature"}
    for key in ("fixed", "moving"):
        assert batch[key].shape == (1, 1, *SHAPE) and batch[key].dtype == torch.float32
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    for key in ("fixed_label", "moving_label"):
        assert batch[key].shape == (1, 1, *SHAPE) and batch[key].dtype == torch.int64
    assert batch["fixed_id"] == [ids[4]] and batch["moving_id"] == [ids[5]]
    torch.testing.assert_close(batch["spacing"], torch.ones(1, 3))
    assert batch["fixed_affine"].shape == (1, 4, 4) and batch["fixed_affine"].dtype == torch.float64
    # the native grid is kept: voxels equal the file's (min-max normalised), labels unchanged
    src = load_volume(trees / "OASIS" / ids[4] / "aligned_norm.nii.gz").array
    np.testing.assert_allclose(batch["fixed"][0, 0].numpy(), (src - src.min()) / (src.max() - src.min()), atol=1e-6)
    lab = load_volume(trees / "OASIS" / ids[5] / "aligned_seg35.nii.gz", kind="label").array
    np.testing.assert_array_equal(batch["moving_label"][0, 0].numpy(), lab)
    train = list(dm.train_dataloader())
    assert len(train) == 4  # pairs_per_epoch defaults to the number of training subjects
    for b in train:
        assert b["fixed_id"][0] in ids[:4] and b["moving_id"][0] in ids[:4] and b["fixed_id"] != b["moving_id"]
    assert dm.shape == SHAPE and dm.spacing == (1.0, 1.0, 1.0)


def test_oasis_training_inputs_name_each_file_but_not_its_folder(trees, tmp_path):
    """What a checkpoint records of the training data (app.checkpoints compares it on resume): each
    training volume and validation pair by id, file name and size; the same of a copied tree."""
    import shutil

    dm = OASISDataModule(str(trees / "OASIS"), n_train=4, n_val=3, **SMALL)
    rows = dm.training_inputs()
    assert [r[0] for r in rows] == ["train"] * 4 + ["val"] * 2
    first = dm.train_volumes[0]
    assert rows[0] == ["train", first.id, "aligned_norm.nii.gz", first.image.stat().st_size,
                       "aligned_seg35.nii.gz", first.label.stat().st_size]
    copy = shutil.copytree(trees / "OASIS", tmp_path / "elsewhere")
    assert OASISDataModule(str(copy), n_train=4, n_val=3, **SMALL).training_inputs() == rows
    assert OASISDataModule(str(copy), n_train=3, n_val=3, **SMALL).training_inputs() != rows


def test_oasis_paper_split_is_the_default_and_needs_414_subjects(trees):
    msg = _one_line_error(OASISDataModule, str(trees / "OASIS"), must=[trees / "OASIS", "364", "50", "found 7"])
    assert "n_train" in msg
    dm = OASISDataModule(str(trees / "OASIS"), n_train=2, n_val=2, test_split="rest", **SMALL)
    assert [(f.id[11:15], m.id[11:15]) for f, m in dm.val_pairs] == [("0004", "0005")]
    assert [(f.id[11:15], m.id[11:15]) for f, m in dm.test_pairs] == [("0007", "0010"), ("0010", "0011")]


def test_oasis_paper_split_without_subjects_txt_needs_exactly_414_subjects(tmp_path):
    """A stray 415th folder (another release, a merged copy) sorted among the others would move the
    364 / 50 boundary and change every one of the 49 test pairs: refused without subjects.txt, which
    defines the list; a split given by hand is the user's."""
    root = tmp_path / "OASIS"
    for n in range(415):
        folder = root / f"OASIS_OAS1_{n:04d}_MR1"
        folder.mkdir(parents=True)
        for name in ("aligned_norm.nii.gz", "aligned_seg35.nii.gz", "aligned_seg4.nii.gz"):
            (folder / name).write_bytes(b"")  # the split is decided before any file is read
    _one_line_error(OASISDataModule, str(root), must=[root, "415", "subjects.txt"])
    (root / "subjects.txt").write_text("".join(f"OASIS_OAS1_{n:04d}_MR1\n" for n in range(1, 415)))
    dm = OASISDataModule(str(root), **SMALL)  # the listed 414: the paper's split
    assert dm.test_pairs[0][0].id == "OASIS_OAS1_0365_MR1"


def test_oasis_train_split_gives_as_many_training_pairs_as_validation_pairs(trees):
    """test_split=train: consecutive pairs of the first n_val training subjects (finding 3's train >
    val gap is measured on as many pairs as the validation set)."""
    dm = OASISDataModule(str(trees / "OASIS"), n_train=4, n_val=3, test_split="train", **SMALL)
    assert [(f.id, m.id) for f, m in dm.test_pairs] == [(a.id, b.id) for a, b in zip(dm.train_volumes[:2], dm.train_volumes[1:3])]
    assert len(dm.test_pairs) == len(dm.val_pairs) == 2


def test_validate_refuses_a_pair_on_two_grids_before_any_result(tmp_path):
    """One validation subject stored in another voxel order (OASIS keeps the native order): its pair
    would fail only when loaded, after earlier pairs' results were written; validate() now predicts
    every pair's preprocessed grid from the headers and names the file before any result."""
    root = make_oasis(tmp_path / "OASIS")
    odd = root / "OASIS_OAS1_0010_MR1"
    for name in ("aligned_norm.nii.gz", "aligned_seg35.nii.gz", "aligned_seg4.nii.gz"):
        img = nib.load(odd / name)
        las = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt("LAS"))
        nib.save(img.as_reoriented(las), odd / name)
    dm = OASISDataModule(str(root), n_train=4, n_val=3, **{**SMALL, "shape": None})
    _one_line_error(dm.validate, must=[odd / "aligned_norm.nii.gz", "orientation LAS", "data.orientation"])
    OASISDataModule(str(root), n_train=4, n_val=3, orientation="RAS", **{**SMALL, "shape": None}).validate()


def test_oasis_seg4_labels_and_subjects_txt(tmp_path):
    root = make_oasis(tmp_path / "OASIS", numbers=(3, 1, 2, 9), subjects_txt=True)
    (root / "subjects.txt").write_text("OASIS_OAS1_0003_MR1\n1\n\nOASIS_OAS1_0002_MR1\n")  # 9 not listed
    dm = OASISDataModule(str(root), labels="seg4", n_train=1, n_val=2, **SMALL)
    assert [v.id for v in dm.layout.volumes()] == [f"OASIS_OAS1_000{n}_MR1" for n in (1, 2, 3)]
    assert dm.layout.unlisted_folders() == ["OASIS_OAS1_0009_MR1"]
    item = dm.dataset("val")[0]
    assert int(item["fixed_label"].max()) <= 4
    dm.validate()
    assert dm.num_labels == 5
    (root / "subjects.txt").write_text("OASIS_OAS1_0003_MR1\nOASIS_OAS1_0004_MR1\n")
    _one_line_error(OASISDataModule, str(root), n_train=2, n_val=0,
                    must=[root / "OASIS_OAS1_0004_MR1" / "aligned_norm.nii.gz", "not found"])


# ----------------------------------------------------------------------------- Learn2Reg
def test_l2r_csv_pairs_are_honoured(trees):
    dm = OASISL2RDataModule(str(trees / "OASIS_L2R"), **SMALL)
    assert [(f.id, m.id) for f, m in dm.val_pairs] == [("OASIS_0005", "OASIS_0006"), ("OASIS_0006", "OASIS_0007")]
    assert dm.test_pairs == dm.val_pairs
    assert [v.id for v in dm.train_volumes] == ["OASIS_0001", "OASIS_0002", "OASIS_0003"]
    f, m = dm.val_pairs[1]
    assert f.image == trees / "OASIS_L2R" / "imagesTr" / "OASIS_0006_0000.nii.gz"
    assert m.label == trees / "OASIS_L2R" / "labelsTr" / "OASIS_0007_0000.nii.gz"
    batch = next(iter(dm.test_dataloader()))
    assert batch["fixed_id"] == ["OASIS_0005"] and batch["moving_id"] == ["OASIS_0006"]


def test_l2r_csv_without_header_and_unknown_subject(tmp_path):
    root = make_l2r(tmp_path / "L2R", pairs=((3, 1), (2, 3)), header=False)
    dm = OASISL2RDataModule(str(root), **SMALL)
    assert [(f.id, m.id) for f, m in dm.test_pairs] == [("OASIS_0003", "OASIS_0001"), ("OASIS_0002", "OASIS_0003")]
    (root / "pairs_val.csv").write_text("fixed,moving\n5,99\n")
    _one_line_error(OASISL2RDataModule, str(root), must=[root / "imagesTr" / "OASIS_0099_0000.nii.gz", "pairs_val.csv"])
    (root / "pairs_val.csv").write_text("fixed,moving\n5,x\n")
    _one_line_error(OASISL2RDataModule, str(root), must=[root / "pairs_val.csv", "line 2"])
    # a subject registered to itself would score Dice 1; a repeated pair would be refused only after the run
    (root / "pairs_val.csv").write_text("fixed,moving\n3,1\n2,2\n")
    _one_line_error(OASISL2RDataModule, str(root), must=[root / "pairs_val.csv", "line 3", "itself"])
    (root / "pairs_val.csv").write_text("fixed,moving\n3,1\n2,3\n3,1\n")
    _one_line_error(OASISL2RDataModule, str(root), must=[root / "pairs_val.csv", "line 4", "twice"])


def test_a_label_the_crop_removes_is_refused_not_skipped(tmp_path):
    """A brain larger than data.shape: labels 3 and 4 lie outside the crop, so Dice (which scores the
    labels present) would drop them from every mean without a word. validate() names the label file
    and the lost ids before any result, with a cache or without (and so does loading the pair);
    leaving them out with labels_subset is fine."""
    shape = (30, 30, 30)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for n in (1, 2):
        img = (100.0 + grid[0] + n).astype(np.float32)
        img[0] = 0
        lab = np.full(shape, 1, np.int16)
        lab[:, :, 15:] = 2
        lab[1:5, 1:5, 1:5] = 3
        lab[25:29, 25:29, 25:29] = 4
        _save(tmp_path / "MGH10" / "Brains" / f"g{n}.nii.gz", img)
        _save(tmp_path / "MGH10" / "Atlases" / f"g{n}.nii.gz", lab)
    root = str(tmp_path / "MGH10")
    dm = KleinDataModule("mgh10", root, strict_count=False, shape=(16, 16, 16))
    _one_line_error(dm.validate, must=["Atlases", "[3, 4]", "data.shape=[16, 16, 16]"])
    with pytest.raises(DataError) as exc:
        dm.dataset("test")[0]
    assert "Atlases" in str(exc.value) and "[3, 4]" in str(exc.value) and "data.shape=[16, 16, 16]" in str(exc.value)
    cached = KleinDataModule("mgh10", root, strict_count=False, shape=(16, 16, 16), cache_dir=str(tmp_path / "c"))
    _one_line_error(cached.validate, must=["Atlases", "[3, 4]"])
    subset = KleinDataModule("mgh10", root, strict_count=False, shape=(16, 16, 16), labels_subset=[1, 2])
    subset.validate()
    assert sorted(subset.dataset("test")[0]["fixed_label"].unique().tolist()) == [1, 2]
    whole = KleinDataModule("mgh10", root, strict_count=False, shape=(32, 32, 32))
    assert sorted(whole.dataset("test")[0]["fixed_label"].unique().tolist()) == [0, 1, 2, 3, 4]


def test_an_image_the_crop_empties_fails_in_validate_without_a_cache(tmp_path):
    """A brain in one corner of its volume and a volume-centred crop that misses it: the cropped image
    is all zeros. validate() names the file before any result (no cache needed); before, it surfaced
    only when the pair was loaded, in the middle of a run."""
    shape = (30, 30, 30)
    for n in (1, 2):
        img = np.zeros(shape, np.float32)
        img[:6, :6, :6] = 50.0 + np.arange(6 * 6 * 6).reshape(6, 6, 6) * n
        lab = np.zeros(shape, np.int16)
        lab[:6, :6, :6] = 1
        _save(tmp_path / "MGH10" / "Brains" / f"g{n}.nii.gz", img)
        _save(tmp_path / "MGH10" / "Atlases" / f"g{n}.nii.gz", lab)
    dm = KleinDataModule("mgh10", str(tmp_path / "MGH10"), strict_count=False, shape=(12, 12, 12),
                         crop_center="volume")
    _one_line_error(dm.validate, must=["g1.nii.gz", "all zeros", "data.shape=[12, 12, 12]"])


def test_analyze_volumes_have_no_known_voxel_order_and_do_not_mix_with_placed_ones(tmp_path):
    """Analyze files (the Klein sets as distributed) hold no orientation: a set of them is read
    consistently (validate passes) but its voxel order is unknown, whatever data.orientation says, and
    a network trained in RAS is refused on it; a tree mixing Analyze and NIfTI files is refused (the
    same voxels came out mirrored)."""
    from app import ConfigError
    from app.checkpoints import check_voxel_axes

    def analyze(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.AnalyzeImage(np.asarray(array), np.eye(4)), str(path))

    root = tmp_path / "MGH10"
    for n in (1, 2):
        analyze(root / "Brains" / f"g{n}.img", _image(n))
        analyze(root / "Atlases" / f"g{n}.img", _labels(n))
    dm = KleinDataModule("mgh10", str(root), strict_count=False, **SMALL)
    dm.validate()
    assert dm.voxel_axes is None and "Analyze" in dm.unplaced_volume()[1]
    with pytest.raises(ConfigError) as exc:
        check_voxel_axes("RAS", dm, "net.ckpt")
    assert "g1.img" in str(exc.value) and "reader's guess" in str(exc.value)
    for n in (1, 2):  # the same set stored as NIfTI: a known order
        _save(tmp_path / "nifti" / "Brains" / f"g{n}.nii.gz", _image(n))
        _save(tmp_path / "nifti" / "Atlases" / f"g{n}.nii.gz", _labels(n))
    assert KleinDataModule("mgh10", str(tmp_path / "nifti"), strict_count=False, **SMALL).voxel_axes == "RAS"
    for folder, array in (("Brains", _image(2)), ("Atlases", _labels(2))):  # subject 2 as NIfTI
        for suffix in (".img", ".hdr"):
            (root / folder / f"g2{suffix}").unlink()
        _save(root / folder / "g2.nii.gz", array)
    mixed = KleinDataModule("mgh10", str(root), strict_count=False, **SMALL)
    _one_line_error(mixed.validate, must=["g1.img", "g2.nii.gz", "one format"])


def test_lpba40_pairs_keep_one_window_or_are_refused(tmp_path):
    """LPBA40's pairs lie on one grid by construction; a crop centred on each volume's own foreground
    (data.crop_center=foreground) shifted the pair apart (identity Dice 1.0 -> about 0.1, no error).
    Now refused naming both files; the default crop keeps them on one window."""
    shape = (40, 40, 40)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    ball = ((grid - 20) ** 2).sum(0) < 8 ** 2
    lab = np.where(ball, np.where(grid[0] < 20, 21, 22), 0).astype(np.int16)
    root = tmp_path / "LPBA40"
    for i in (1, 2):
        for j in (1, 2):
            img = np.where(ball, 100.0 + grid[1], 0.0).astype(np.float32)
            if j == 2:
                img[2:5, 2:5, 2:5] = 50.0  # a small non-brain blob: only the foreground box moves
            _save(root / "registered_pairs" / f"l{j}_to_l{i}.nii.gz", img)
            _save(root / "registered_label_pairs" / f"l{j}_to_l{i}.nii.gz", lab)
    same = KleinDataModule("lpba40", str(root), strict_count=False, shape=(24, 24, 24))
    item = same.dataset("test")[0]
    assert torch.equal(item["fixed_label"], item["moving_label"])  # the pair as registered on disk
    apart = KleinDataModule("lpba40", str(root), strict_count=False, shape=(24, 24, 24), crop_center="foreground")
    with pytest.raises(DataError) as exc:
        apart.dataset("test")[0]
    assert "l2_to_l1" in str(exc.value) and "l1_to_l1" in str(exc.value) and "crop_center=volume" in str(exc.value)


# ----------------------------------------------------------------------------- Klein sets
def test_klein_subject_and_pair_counts_and_order(trees):
    ibsr = KleinDataModule("ibsr18", str(trees / "IBSR18"), strict_count=False, **SMALL)
    assert ibsr.layout.subjects() == ["IBSR_01", "IBSR_02", "IBSR_03"]
    assert [(f.id, m.id) for f, m in ibsr.test_pairs] == [
        ("IBSR_01", "IBSR_02"), ("IBSR_01", "IBSR_03"), ("IBSR_02", "IBSR_01"),
        ("IBSR_02", "IBSR_03"), ("IBSR_03", "IBSR_01"), ("IBSR_03", "IBSR_02")]
    cumc = KleinDataModule("cumc12", str(trees / "CUMC12"), strict_count=False, **SMALL)
    assert cumc.layout.subjects() == ["m1", "m2", "m10"]  # numeric order
    assert len(cumc.test_pairs) == 6 and cumc.test_pairs[0][1].image.name == "m2.nii.gz"
    assert cumc.test_pairs[0][1].label == trees / "CUMC12" / "Atlases" / "m2.nii.gz"
    mgh = KleinDataModule("mgh10", str(trees / "MGH10"), strict_count=False, **SMALL)
    assert mgh.layout.subjects() == ["g1", "g2", "g10"] and len(mgh.test_pairs) == 6
    for dm in (ibsr, cumc, mgh):
        assert dm.val_dataloader() == []
        _one_line_error(dm.train_dataloader, must=["test-only", "data=oasis"])
    msg = _one_line_error(KleinDataModule, "ibsr18", str(trees / "IBSR18"), must=["found 3", "expected 18"])
    assert "strict_count" in msg


def test_lpba40_pre_registered_pairs(trees):
    dm = KleinDataModule("lpba40", str(trees / "LPBA40"), strict_count=False, **SMALL)
    assert dm.layout.subjects() == ["l1", "l2", "l3"]
    assert len(dm.test_pairs) == 6 and len(dm.layout.volumes()) == 9
    assert dm.preprocess_config.crop_center == "volume"
    names = [(f.image.name, m.image.name, f.id, m.id) for f, m in dm.test_pairs]
    assert names[0] == ("l1_to_l1.nii.gz", "l2_to_l1.nii.gz", "l1", "l2")  # fixed l{i}, moving l{j}_to_l{i}
    assert names[2] == ("l2_to_l2.nii.gz", "l1_to_l2.nii.gz", "l2", "l1")
    assert dm.test_pairs[0][1].label == trees / "LPBA40" / "registered_label_pairs" / "l2_to_l1.nii.gz"
    item = dm.dataset("test")[2]
    expected = load_volume(trees / "LPBA40" / "registered_label_pairs" / "l1_to_l2.nii.gz", kind="label").array
    src = load_source(trees / "LPBA40" / "registered_pairs" / "l1_to_l2.nii.gz",
                      trees / "LPBA40" / "registered_label_pairs" / "l1_to_l2.nii.gz")
    p = preprocess(*src, dm.preprocess_config)
    np.testing.assert_array_equal(item["moving_label"][0].numpy(), p.label)
    assert set(np.unique(expected)) == set(np.unique(p.label))
    assert item["fixed_id"] == "l2" and item["moving_id"] == "l1"
    os.remove(trees / "LPBA40" / "registered_pairs" / "l3_to_l3.nii.gz")
    try:
        _one_line_error(KleinDataModule, "lpba40", str(trees / "LPBA40"), strict_count=False,
                        must=[trees / "LPBA40" / "registered_pairs" / "l3_to_l3.nii.gz", "not found"])
    finally:
        _save(trees / "LPBA40" / "registered_pairs" / "l3_to_l3.nii.gz", _image(33))


# ----------------------------------------------------------------------------- labels
def test_label_remap_subset_and_saved_mapping(trees, tmp_path):
    root = str(trees / "IBSR18")
    plain = KleinDataModule("ibsr18", root, strict_count=False, **SMALL)
    assert plain.label_values == [0, 2, 7, 41] and plain.num_labels == 42
    remap = KleinDataModule("ibsr18", root, strict_count=False, remap_labels=True,
                            label_map_file=str(tmp_path / "res" / "label_map.json"), **SMALL)
    remap.validate()
    assert remap.num_labels == 4
    saved = json.loads((tmp_path / "res" / "label_map.json").read_text())
    assert saved["new_to_original"] == {"1": 2, "2": 7, "3": 41} and saved["remap"] is True
    assert remap.state_dict()["label_map"]["new_to_original"] == saved["new_to_original"]
    a = plain.dataset("test")[0]["fixed_label"]
    b = remap.dataset("test")[0]["fixed_label"]
    for old, new in ((0, 0), (2, 1), (7, 2), (41, 3)):
        assert torch.equal(a == old, b == new)
    subset = KleinDataModule("ibsr18", root, strict_count=False, labels_subset=[41, 7], remap_labels=True, **SMALL)
    c = subset.dataset("test")[0]["fixed_label"]
    assert subset.num_labels == 3
    assert torch.equal(c == 1, a == 7) and torch.equal(c == 2, a == 41) and torch.equal(c == 0, (a == 0) | (a == 2))
    assert subset.save_label_map(tmp_path / "out").name == "label_map.json"
    keep = KleinDataModule("ibsr18", root, strict_count=False, labels_subset=[7], **SMALL)
    assert keep.num_labels == 8 and set(torch.unique(keep.dataset("test")[0]["fixed_label"]).tolist()) == {0, 7}
    bad = KleinDataModule("ibsr18", root, strict_count=False, labels_subset=[7, 99], **SMALL)
    _one_line_error(bad.validate, must=["99", "labels_subset"])


def test_label_mapping_unit():
    m = LabelMapping([0, 5, 3, 200], remap=True)
    np.testing.assert_array_equal(m.apply(np.array([0, 3, 5, 200, 4, 999])), [0, 1, 2, 3, 0, 0])
    assert m.num_labels == 4 and m.new_to_original == {1: 3, 2: 5, 3: 200}
    keep = LabelMapping([3, 5], remap=False)
    np.testing.assert_array_equal(keep.apply(np.array([0, 3, 5, 200])), [0, 3, 5, 0])
    assert keep.num_labels == 6


# ----------------------------------------------------------------------------- preprocessing
def _blob(shape, centre, radius, spacing) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij"))
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return np.clip(1.0 - r / radius, 0, None).astype(np.float32) * 100


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(0)
    return (affine @ np.append(idx, 1.0))[:3]


def test_image_and_label_stay_aligned_through_preprocessing(tmp_path):
    spacing = (1.0, 3.0, 1.25)  # CUMC12-like thick slices
    shape = (30, 10, 24)
    img = _blob(shape, centre=(12.0, 17.0, 13.0), radius=10.0, spacing=spacing) / 100  # off-centre, in [0, 1]
    lab = (img > 0.3).astype(np.int16)  # the label is a threshold of the image
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])  # x flipped: not RAS
    affine[:3, 3] = (30.0, -5.0, 2.0)
    _save(tmp_path / "img.nii.gz", img, affine)
    _save(tmp_path / "lab.nii.gz", lab, affine)
    cfg = PreprocessConfig(orientation="RAS", spacing=1.0, shape=(32, 32, 32), crop_center="foreground",
                           normalize="none")
    image, label = load_source(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    p = preprocess(image, label, cfg)
    assert p.image.shape == (32, 32, 32) and p.label.shape == (32, 32, 32)
    assert p.image.dtype == np.float32 and p.label.dtype == np.int64
    assert p.spacing == (1.0, 1.0, 1.0) and 0.0 <= p.image.min() and p.image.max() <= 1.0
    assert "".join(nib.aff2axcodes(p.affine)) == "RAS"
    # the same threshold of the resampled image still gives the resampled label (up to the
    # nearest-neighbour edge of 3 mm slices); a label 3 voxels off would score far lower
    seg, obj = p.image > 0.3, p.label == 1

    def dice(a, b):
        return 2 * np.sum(a & b) / (a.sum() + b.sum())

    assert dice(seg, obj) > 0.9, dice(seg, obj)
    assert dice(seg, np.roll(obj, 3, axis=0)) < dice(seg, obj) - 0.1
    # at the same place in the world
    np.testing.assert_allclose(_world_centroid(obj, p.affine), _world_centroid(lab == 1, affine), atol=1.0)
    # default (percentile) normalisation is monotone: the label is still the bright region
    q = preprocess(image, label, PreprocessConfig(spacing=1.0, shape=(32, 32, 32), crop_center="foreground"))
    np.testing.assert_array_equal(q.label, p.label)
    assert q.image[q.label == 1].min() > np.percentile(q.image[q.label == 0], 90)


def test_shapes_after_preprocessing_klein(trees):
    dm = KleinDataModule("ibsr18", str(trees / "IBSR18"), strict_count=False, shape=(16, 16, 16))
    item = dm.dataset("test")[0]
    assert item["fixed"].shape == (1, 16, 16, 16) and item["moving_label"].shape == (1, 16, 16, 16)
    torch.testing.assert_close(item["spacing"], torch.ones(3))  # resampled from 0.9375 x 1.5 x 0.9375
    assert dm.spacing == (1.0, 1.0, 1.0) and dm.shape == (16, 16, 16)
    cumc = KleinDataModule("cumc12", str(trees / "CUMC12"), strict_count=False, spacing=None, shape=None,
                           orientation=None)
    assert cumc.spacing == (1.0, 3.0, 1.0) and cumc.shape == SHAPE  # native grid when asked


def test_cache_is_keyed_by_config_and_source(tmp_path, monkeypatch):
    make_ibsr(tmp_path / "IBSR18", n=2)
    img = tmp_path / "IBSR18" / "IBSR_01" / "IBSR_01_ana_strip.nii.gz"
    lab = tmp_path / "IBSR18" / "IBSR_01" / "IBSR_01_seg_ana.nii.gz"
    cfg = PreprocessConfig(spacing=1.0, shape=(12, 12, 12))
    store = VolumeStore(cfg, tmp_path / "cache")
    first = store.get("IBSR_01", img, lab)
    files = list((tmp_path / "cache" / cfg.key()).glob("*.npz"))
    assert len(files) == 1 and (tmp_path / "cache" / cfg.key() / "config.json").is_file()
    import data.preprocess as pp

    monkeypatch.setattr(pp, "load_source", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = store.get("IBSR_01", img, lab)  # from the cache: no decoding
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.label, first.label)
    np.testing.assert_allclose(again.affine, first.affine)
    assert again.spacing == first.spacing and again.source_labels == first.source_labels
    monkeypatch.undo()
    other = PreprocessConfig(spacing=2.0, shape=(12, 12, 12))
    assert other.key() != cfg.key()
    import data.signature as sig

    with monkeypatch.context() as m:  # another version of the preprocessing code: another cache folder
        m.setattr(sig, "source_signature", lambda *files: "an edited data/preprocess.py")
        edited = cfg.key()
    assert edited != cfg.key()
    assert VolumeStore(other, tmp_path / "cache").get("IBSR_01", img, lab).spacing == (2.0, 2.0, 2.0)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited source file is not read stale
    assert store.cache_path("IBSR_01", img, lab) != files[0]
    # a DataModule with a cache: validate() fills it, items come from it
    dm = KleinDataModule("ibsr18", str(tmp_path / "IBSR18"), strict_count=False, cache_dir=str(tmp_path / "c2"),
                         shape=(12, 12, 12), num_workers=0)
    dm.validate()
    assert len(list((tmp_path / "c2").rglob("*.npz"))) == 2
    monkeypatch.setattr(pp, "load_source", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    assert dm.dataset("test")[1]["fixed"].shape == (1, 12, 12, 12)


def _thresholded_volume(folder: Path) -> VolumeRef:
    img = _blob((16, 16, 16), centre=(6.0, 8.0, 9.0), radius=6.0, spacing=(1, 1, 1))
    _save(folder / "a.nii.gz", img)
    _save(folder / "a_seg.nii.gz", (img > 30).astype(np.int16))
    return VolumeRef("a", folder / "a.nii.gz", folder / "a_seg.nii.gz")


def test_augmentation_is_independent_for_fixed_and_moving(tmp_path):
    ref = _thresholded_volume(tmp_path)
    store = VolumeStore(PreprocessConfig(orientation=None, spacing=None, shape=None))
    plain = PairDataset([(ref, ref)], store)[0]
    assert torch.equal(plain["fixed"], plain["moving"])
    torch.manual_seed(0)
    aug = VolumeAugmentation(translation=4.0, degrees=10.0)
    ds = PairDataset([(ref, ref)], store, augment=aug)
    for _ in range(3):
        item = ds[0]
        assert not torch.equal(item["fixed"], item["moving"])  # two draws, not one shared transform
        assert not torch.equal(item["fixed_label"], item["moving_label"])
        for key in ("fixed", "moving"):
            img, lab = item[key][0], item[f"{key}_label"][0]
            assert 0.0 <= img.min() and img.max() <= 1.0 and lab.dtype == torch.int64
            # image and its own label still move together
            assert img[lab == 1].mean() > 2 * img[lab == 0].mean()
            assert set(torch.unique(lab).tolist()) <= {0, 1}
    assert VolumeAugmentation.from_config(None) is None and VolumeAugmentation.from_config({"enabled": False}) is None
    dm_aug = VolumeAugmentation.from_config({"gamma": 0.2, "noise_std": 0.02})
    out, _ = dm_aug(plain["fixed"])
    assert out.shape == plain["fixed"].shape and 0.0 <= out.min() and out.max() <= 1.0


def test_oasis_training_pairs_are_augmented_but_val_pairs_are_not(trees):
    dm = OASISDataModule(str(trees / "OASIS"), n_train=4, n_val=3, augment={"translation": 3.0}, **SMALL)
    assert dm.dataset("train").augment is not None
    assert dm.dataset("val").augment is None and dm.dataset("test").augment is None


# ----------------------------------------------------------------------------- bad input
def test_missing_label_file(tmp_path):
    root = make_ibsr(tmp_path / "IBSR18")
    os.remove(root / "IBSR_02" / "IBSR_02_seg_ana.nii.gz")
    _one_line_error(KleinDataModule, "ibsr18", str(root), strict_count=False,
                    must=[root / "IBSR_02" / "IBSR_02_seg_ana.nii.gz", "not found", "IBSR_XX_seg_ana"])


def test_unreadable_file(tmp_path):
    root = make_brains_atlases(tmp_path / "MGH10", "g")
    bad = root / "Brains" / "g2.nii.gz"
    bad.write_bytes(os.urandom(300))
    dm = KleinDataModule("mgh10", str(root), strict_count=False, **SMALL)  # construction looks at names only
    _one_line_error(dm.validate, must=[bad, "unreadable"])
    with pytest.raises(DataError, match="g2.nii.gz"):
        dm.dataset("test")[0]


def test_wrong_layout_and_empty_or_missing_directory(trees, tmp_path):
    msg = _one_line_error(KleinDataModule, "ibsr18", str(trees / "OASIS"), strict_count=False,
                          must=[trees / "OASIS", "IBSR_XX/IBSR_XX_ana_strip.nii.gz"])
    assert "data=oasis" in msg  # says what the tree looks like
    _one_line_error(OASISDataModule, str(trees / "LPBA40"), must=[trees / "LPBA40", "OASIS_OAS1_XXXX_MR1", "data=lpba40"])
    _one_line_error(KleinDataModule, "cumc12", str(trees / "MGH10"), strict_count=False, must=["Brains/m{i}", "data=mgh10"])
    (tmp_path / "empty").mkdir()
    _one_line_error(KleinDataModule, "lpba40", str(tmp_path / "empty"), must=[tmp_path / "empty", "empty",
                                                                               "registered_pairs"])
    _one_line_error(OASISL2RDataModule, str(tmp_path / "nowhere"), must=[tmp_path / "nowhere", "not found",
                                                                         "paths.data_dir"])


def test_label_map_with_a_different_shape(tmp_path):
    root = make_oasis(tmp_path / "OASIS", numbers=(1, 2, 3))
    bad = root / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz"
    _save(bad, _labels(2, shape=(12, 14, 9)))
    dm = OASISDataModule(str(root), n_train=1, n_val=2, **SMALL)
    msg = _one_line_error(dm.validate, must=[bad, "(12, 14, 9)", "(12, 14, 10)", "aligned_norm.nii.gz"])
    assert "expected equal shapes" in msg


# ----------------------------------------------------------------------------- configs and data.check
CONFIG_OVERRIDES = {
    "oasis": ["data.n_train=4", "data.n_val=3"],
    "oasis_l2r": [],
    "ibsr18": ["data.strict_count=false"],
    "cumc12": ["data.strict_count=false"],
    "mgh10": ["data.strict_count=false"],
    "lpba40": ["data.strict_count=false"],
}


@pytest.mark.parametrize("name", sorted(CONFIG_OVERRIDES))
def test_every_dataset_config_instantiates(name, trees):
    from hydra.utils import instantiate

    cfg = compose("eval", [f"data={name}", f"paths.data_dir={trees}", "data.shape=[12,14,10]"] + CONFIG_OVERRIDES[name])
    dm = instantiate(cfg.data)
    assert dm.root.parent == trees
    loader = dm.test_dataloader()
    batch = next(iter(loader))
    assert batch["fixed"].shape == (1, 1, 12, 14, 10) and batch["spacing"].shape == (1, 3)


def test_data_root_follows_the_environment_variable(trees, monkeypatch):
    monkeypatch.setenv("REGISTRATION_DATA_DIR", str(trees))
    cfg = compose("eval", ["data=mgh10"])
    assert cfg.data.root == f"{trees}/MGH10"


def test_data_check_table_and_problems(trees, tmp_path):
    out = io.StringIO()
    rows, problems = check_dataset("cumc12", str(trees / "CUMC12"), expect=3, out=out)
    text = out.getvalue()
    table = {r[0]: r for r in rows}
    assert problems == [] and table["status"][1] == "OK"
    assert table["subjects"][1] == "3" and table["pairs (test)"][1] == "6" and "paper: 132" in table["pairs (test)"][2]
    assert "12x14x10 (3)" in table["image shapes"][1] and "1x3x1" in table["spacings (mm)"][1]
    assert "label ids (union)" in text and "missing files" in text
    assert check_main(["ibsr18", str(trees / "IBSR18"), "--expect", "3"]) == 0
    # problems: a subject count off the paper's, a missing and an unreadable file
    root = make_lpba(tmp_path / "LPBA40", n=2)
    os.remove(root / "registered_label_pairs" / "l1_to_l2.nii.gz")
    (root / "registered_pairs" / "l2_to_l2.nii.gz").write_bytes(b"not a nifti")
    rows, problems = check_dataset("lpba40", str(root), out=io.StringIO())
    joined = "\n".join(problems)
    assert "found 2 LPBA40 subjects, expected 40" in joined
    assert f"{root / 'registered_label_pairs' / 'l1_to_l2.nii.gz'}: file not found" in joined
    assert str(root / "registered_pairs" / "l2_to_l2.nii.gz") in joined
    assert {r[0]: r for r in rows}["missing files"][1] == "1"
    assert check_main(["lpba40", str(root)]) == 1


def test_data_check_command_line(trees, capsys):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run([sys.executable, "-m", "data.check", "oasis", str(trees / "OASIS"), "--expect", "7",
                         "--preprocess"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "subjects" in ok.stdout and "OK" in ok.stdout and "label volume lost to crop" in ok.stdout
    assert check_main(["ibsr18", str(trees / "OASIS")]) == 1  # wrong layout: one error line
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "data=oasis" in err


def test_an_analyze_pair_header_edited_in_place_is_not_read_stale(tmp_path):
    """The .hdr half of an ``.img``/``.hdr`` pair holds the voxel size and orientation: fixing it alone
    (the voxel data untouched) must give a new cache entry and a new input signature, not the old volume."""
    import nibabel as nib

    from data.signature import file_signature

    rng = np.random.default_rng(0)
    img = (rng.random((12, 12, 10)) * 100 + 1).astype(np.float32)
    lab = (img > 50).astype(np.uint8) + 1

    def write(folder, zooms):
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("img", img), ("lab", lab)):
            nib.save(nib.Nifti1Pair(arr, np.diag([*zooms, 1.0])), folder / f"{name}.img")

    write(tmp_path / "d", (1.0, 1.0, 1.0))
    store = VolumeStore(PreprocessConfig(orientation="RAS", spacing=1.0), tmp_path / "cache")
    first = store.get("s1", tmp_path / "d" / "img.img", tmp_path / "d" / "lab.img")
    assert first.image.shape == (12, 12, 10)
    before = file_signature(tmp_path / "d" / "img.img")
    write(tmp_path / "new", (1.0, 1.0, 2.0))  # the fixed header (2 mm slices), the same voxel data
    for name in ("img", "lab"):
        os.replace(tmp_path / "new" / f"{name}.hdr", tmp_path / "d" / f"{name}.hdr")
    assert file_signature(tmp_path / "d" / "img.img") != before
    again = store.get("s1", tmp_path / "d" / "img.img", tmp_path / "d" / "lab.img")
    assert again.image.shape == (12, 12, 20)  # resampled from the new header, not the cached volume
    # the label file rewritten (same size) with its old modification time put back (cp -p, rsync -t):
    # the cached labels must not be served
    label_file = tmp_path / "d" / "lab.img"
    st = os.stat(label_file)
    data = bytearray(label_file.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # voxels of the first half set to background
    label_file.write_bytes(bytes(data))
    os.utime(label_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(label_file).st_size == st.st_size and os.stat(label_file).st_mtime_ns == st.st_mtime_ns
    rewritten = store.get("s1", tmp_path / "d" / "img.img", label_file)
    assert not np.array_equal(rewritten.label, again.label)


def test_datamodules_say_their_voxel_order(tmp_path):
    """What a checkpoint records and eval.py compares (app.checkpoints.check_voxel_axes): the
    configured orientation when set, else the axis codes the headers share; the MNI template's."""
    import nibabel as nib

    from data import MNIDataModule

    assert MNIDataModule(n_train=2, n_val=0, n_test=2, resolution=2).voxel_axes == "RAS"
    assert MNIDataModule(n_train=2, n_val=0, n_test=2, resolution=2, slice_index=40).voxel_axes == "RA"
    root = make_ibsr(tmp_path / "IBSR18")
    for orientation in ("RAS", "LIA"):
        dm = KleinDataModule("ibsr18", str(root), strict_count=False, **{**SMALL, "orientation": orientation})
        assert dm.voxel_axes == orientation
    native = KleinDataModule("ibsr18", str(root), strict_count=False, **{**SMALL, "orientation": None})
    image = root / "IBSR_01" / "IBSR_01_ana_strip.nii.gz"
    assert native.voxel_axes == "".join(nib.aff2axcodes(nib.load(image).affine))


def test_an_spm_mat_beside_an_analyze_file_is_part_of_what_is_read(tmp_path):
    """nibabel reads an Analyze ``x.img`` with SPM's ``x.mat`` beside it by that matrix (it can flip an
    axis): creating it must give a new input signature and cache entry, not the volume read before."""
    import shutil

    import nibabel as nib

    from data.signature import file_identity, file_signature

    rng = np.random.default_rng(0)
    img = (rng.random((12, 12, 10)) * 100 + 1).astype(np.float32)
    lab = (img > 50).astype(np.uint8) + 1
    d, spm = tmp_path / "d", tmp_path / "spm"
    d.mkdir()
    spm.mkdir()
    flip = np.diag([1.0, -1.0, 1.0, 1.0])  # y flipped: not nibabel's guess for a plain Analyze file (x flipped)
    flip[1, 3] = 11.0
    for name, arr in (("img", img), ("lab", lab)):
        nib.save(nib.AnalyzeImage(arr, np.eye(4)), d / f"{name}.img")
        nib.save(nib.Spm2AnalyzeImage(arr, flip), spm / f"{name}.img")  # writes spm/<name>.mat
    store = VolumeStore(PreprocessConfig(orientation="RAS", spacing=1.0), tmp_path / "cache")
    first = store.get("s1", d / "img.img", d / "lab.img")
    before, identity = file_signature(d / "img.img"), file_identity(d / "img.img")
    for name in ("img", "lab"):
        shutil.copy(spm / f"{name}.mat", d / f"{name}.mat")
    assert nib.load(str(d / "img.img")).affine[1, 1] == -1.0  # the premise: nibabel reads the .mat
    assert file_signature(d / "img.img") != before and file_identity(d / "img.img") != identity
    again = store.get("s1", d / "img.img", d / "lab.img")
    fresh = VolumeStore(PreprocessConfig(orientation="RAS", spacing=1.0), tmp_path / "cache2").get(
        "s1", d / "img.img", d / "lab.img")
    assert not np.array_equal(again.image, first.image)  # read anew, through the .mat's flip
    assert np.array_equal(again.image, fresh.image) and np.array_equal(again.label, fresh.label)


def test_an_analyze_label_stored_otherwise_than_its_image_is_refused(tmp_path):
    """Analyze's orient code (0 transverse unflipped, 3 flipped) and pixdim signs are read by no reader:
    a label map stored with another code than its image would be read flipped against it, every Dice
    of the subject against the wrong voxels. Refused, naming both files; equal codes pass."""
    import nibabel as nib

    from data.preprocess import load_source

    lab = np.zeros((12, 12, 10), np.int16)
    lab[2:10, 2:6, 2:8], lab[2:10, 6:10, 2:8] = 1, 2
    img = np.where(lab > 0, 50.0 * lab, 0.0).astype(np.float32) + 1.0
    for name, arr, orient in (("img", img, 0), ("same", lab, 0), ("flipped", lab[:, ::-1].copy(), 3)):
        h = nib.AnalyzeImage(arr, np.eye(4))
        h.header["orient"] = orient
        nib.save(h, tmp_path / f"{name}.img")
    load_source(tmp_path / "img.img", tmp_path / "same.img")
    with pytest.raises(DataError, match=r"flipped.img: label map is not stored as its image .*img.img \(the label "
                                        r"map: .*Analyze header \(orient code 3, pixdim signs \(\+, \+, \+\)\).*"
                                        r"the image: .*\(orient code 0"):
        load_source(tmp_path / "img.img", tmp_path / "flipped.img")
