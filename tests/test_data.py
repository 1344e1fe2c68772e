"""Tests of data/: NIfTI I/O and validation, pairs CSV, MNI subjects, DataModules.

Tiny NIfTI files are written into tmp_path; the MNI template comes from the nilearn package
(no network).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data import (
    DataError,
    MNIDataModule,
    GeneratedPairDataset,
    MNISubjects,
    PairsCSVDataModule,
    PairsCSVDataset,
    RandomPairSampler,
    all_pairs,
    consecutive_pairs,
    load_volume,
    normalize_intensity,
    read_header,
    save_nifti_atomic,
)

SPACING = (1.5, 2.0, 2.5)
AFFINE = np.diag([*SPACING, 1.0])


def _write(path: Path, array, affine=AFFINE) -> Path:
    """Write with nibabel directly (not the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _image(shape=(10, 12, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 100


def _labels(shape=(10, 12, 8), seed=0, n=4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, shape).astype(np.int16)


def _dice(a: np.ndarray, b: np.ndarray, labels=(1, 2, 3)) -> float:
    return float(np.mean([2.0 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


def _raises_naming(path, fn, *args, match=None, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


# ----------------------------------------------------------------------------- io
def test_load_volume_round_trip(tmp_path):
    img = _image()
    lab = _labels()
    _write(tmp_path / "img.nii.gz", img)
    _write(tmp_path / "lab.nii.gz", lab)
    vol = load_volume(tmp_path / "img.nii.gz")
    assert vol.array.dtype == np.float32 and vol.array.shape == img.shape
    np.testing.assert_allclose(vol.array, img, rtol=1e-6)
    assert vol.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(vol.affine, AFFINE)
    lv = load_volume(tmp_path / "lab.nii.gz", kind="label")
    assert lv.array.dtype == np.int64
    np.testing.assert_array_equal(lv.array, lab)
    assert read_header(tmp_path / "img.nii.gz") == (img.shape, pytest.approx(SPACING))


def test_labels_stored_as_whole_floats_are_accepted(tmp_path):
    lab = _labels().astype(np.float32)
    _write(tmp_path / "lab.nii.gz", lab)
    out = load_volume(tmp_path / "lab.nii.gz", kind="label").array
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, lab.astype(np.int64))


def test_trailing_singleton_dim_is_squeezed(tmp_path):
    img = _image()
    _write(tmp_path / "img4.nii.gz", img[..., None])
    assert load_volume(tmp_path / "img4.nii.gz").array.shape == img.shape
    assert read_header(tmp_path / "img4.nii.gz")[0] == img.shape


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    _raises_naming(path, load_volume, path, match="not found")
    _raises_naming(path, read_header, path, match="not found")


def test_a_non_finite_affine_is_refused_and_never_matches(tmp_path):
    """A NaN in the header's affine: read_header names the file (NaN would compare as "no difference"
    in every later grid check and reach the outputs' headers); grid_mismatch never calls it a match."""
    import nibabel as nib

    from data.geometry import grid_mismatch

    affine = np.eye(4)
    affine[0, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), affine), str(path))
    _raises_naming(path, read_header, path, match="not finite")
    assert grid_mismatch(np.eye(4), affine) is not None and grid_mismatch(affine, affine) is not None
    assert grid_mismatch(np.eye(4), np.eye(4)) is None


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(os.urandom(400))
    _raises_naming(path, load_volume, path)
    _raises_naming(path, read_header, path)
    path2 = tmp_path / "garbage2.nii.gz"  # valid gzip, garbage inside
    path2.write_bytes(gzip.compress(os.urandom(400)))
    _raises_naming(path2, load_volume, path2)


@pytest.mark.parametrize("name", ["trunc.nii.gz", "trunc.nii"])
def test_truncated_real_file(tmp_path, name):
    full = _write(tmp_path / ("full" + name[5:]), _image((20, 20, 20)))
    raw = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) // 2])
    _raises_naming(path, load_volume, path)
    _raises_naming(path, read_header, path, match="trunc")  # cheap check catches it too


def test_multi_member_gzip_is_not_called_truncated(tmp_path):
    full = _write(tmp_path / "full.nii.gz", _image())
    raw = gzip.decompress(full.read_bytes())
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert read_header(path)[0] == (10, 12, 8)
    np.testing.assert_array_equal(load_volume(path).array, load_volume(full).array)


def test_4d_image(tmp_path):
    path = _write(tmp_path / "four.nii.gz", np.stack([_image(), _image()], axis=-1))
    msg = _raises_naming(path, load_volume, path, match="expected a 3-D volume")
    assert "(10, 12, 8, 2)" in msg
    _raises_naming(path, read_header, path, match="expected a 3-D volume")
    path2 = _write(tmp_path / "two.nii.gz", _image()[:, :, 0])
    _raises_naming(path2, load_volume, path2, match="expected a 3-D volume")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_voxels(tmp_path, bad):
    img = _image()
    img[3, 4, 5] = bad
    path = _write(tmp_path / "nan.nii.gz", img)
    _raises_naming(path, load_volume, path, match="finite")


def test_non_integer_and_negative_labels(tmp_path):
    path = _write(tmp_path / "seg.nii.gz", _labels().astype(np.float32) + 0.5)
    _raises_naming(path, load_volume, path, kind="label", match="integer")
    path2 = _write(tmp_path / "neg.nii.gz", _labels() - 1)
    _raises_naming(path2, load_volume, path2, kind="label", match="non-negative")
    # the same file is a fine image
    assert load_volume(path).array.dtype == np.float32


def test_normalize_intensity():
    rng = np.random.default_rng(0)
    img = np.zeros((20, 20, 20), np.float32)
    img[5:15, 5:15, 5:15] = rng.normal(100, 10, (10, 10, 10))
    img[10, 10, 10] = 1e6  # outlier: clipped by the upper percentile
    out = normalize_intensity(img)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert np.all(out[img == 0] == 0)
    inside = out[5:15, 5:15, 5:15]
    assert 0.3 < np.median(inside) < 0.7  # the outlier did not squash the brain to ~0
    assert np.count_nonzero(out == 1.0) >= 5
    np.testing.assert_array_equal(normalize_intensity(np.full((4, 4, 4), 7.0)), 0.0)
    np.testing.assert_array_equal(normalize_intensity(np.zeros((4, 4, 4))), 0.0)


def test_save_nifti_atomic_round_trip(tmp_path):
    img = _image()
    path = save_nifti_atomic(img, AFFINE, tmp_path / "out" / "img.nii.gz", description="d" * 100)
    assert sorted(os.listdir(tmp_path / "out")) == ["img.nii.gz"]
    hdr = nib.load(str(path)).header
    assert hdr["descrip"].tobytes().rstrip(b"\0") == b"d" * 80
    vol = load_volume(path)
    np.testing.assert_allclose(vol.array, img, rtol=1e-6)
    assert vol.spacing == pytest.approx(SPACING)
    lab = torch.from_numpy(_labels().astype(np.int64))
    lp = save_nifti_atomic(lab, AFFINE, tmp_path / "lab.nii")
    np.testing.assert_array_equal(load_volume(lp, kind="label").array, lab.numpy())


def test_save_nifti_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", broken)
    with pytest.raises(OSError, match="disk full"):
        save_nifti_atomic(_image(), AFFINE, tmp_path / "img.nii.gz")
    assert os.listdir(tmp_path) == []
    # an existing target is left as it was
    (tmp_path / "old.nii.gz").write_bytes(b"old")
    with pytest.raises(OSError):
        save_nifti_atomic(_image(), AFFINE, tmp_path / "old.nii.gz")
    assert os.listdir(tmp_path) == ["old.nii.gz"]
    assert (tmp_path / "old.nii.gz").read_bytes() == b"old"


# ------------------------------------------------------------------------ pairs CSV
def _subjects(folder: Path, n=3, shape=(10, 12, 8)) -> None:
    for i in range(n):
        _write(folder / f"sub{i}.nii.gz", _image(shape, seed=i))
        _write(folder / f"sub{i}_seg.nii.gz", _labels(shape, seed=i))


def _csv(path: Path, rows, header="fixed,moving,fixed_label,moving_label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_pairs_csv_relative_paths_ids_and_items(tmp_path):
    _subjects(tmp_path / "imgs")
    csv = _csv(
        tmp_path / "pairs.csv",
        [
            ("imgs/sub0.nii.gz", "imgs/sub1.nii.gz", "imgs/sub0_seg.nii.gz", "imgs/sub1_seg.nii.gz", "x"),
            (str(tmp_path / "imgs/sub1.nii.gz"), "imgs/sub2.nii.gz", "imgs/sub1_seg.nii.gz", "imgs/sub2_seg.nii.gz", "y"),
        ],
        header="fixed,moving,fixed_label,moving_label,notes",
    )
    cwd = os.getcwd()
    os.chdir("/")  # relative paths resolve against the CSV's folder, not the working directory
    try:
        ds = PairsCSVDataset(csv)
    finally:
        os.chdir(cwd)
    assert len(ds) == 2 and ds.has_labels and ds.num_labels == 4
    item = ds[1]
    assert item["fixed_id"] == "sub1" and item["moving_id"] == "sub2"
    assert item["fixed"].shape == (1, 10, 12, 8) and item["fixed"].dtype == torch.float32
    assert 0.0 <= item["moving"].min() and item["moving"].max() <= 1.0 and item["moving"].max() == 1.0
    assert item["fixed_label"].dtype == torch.int64 and item["fixed_label"].shape == (1, 10, 12, 8)
    np.testing.assert_array_equal(item["moving_label"][0].numpy(), _labels(seed=2))
    assert item["spacing"].dtype == torch.float32
    torch.testing.assert_close(item["spacing"], torch.tensor(SPACING))


def test_pairs_csv_without_labels(tmp_path):
    _subjects(tmp_path)
    ds = PairsCSVDataset(_csv(tmp_path / "p.csv", [("sub0.nii.gz", "sub1.nii.gz")], header="fixed,moving"))
    assert not ds.has_labels and ds.num_labels is None
    assert set(ds[0]) == {"fixed", "moving", "spacing", "fixed_affine", "fixed_id", "moving_id", "pair_signature"}


def test_pairs_csv_shape_mismatch_names_row_and_shapes(tmp_path):
    _subjects(tmp_path)
    _write(tmp_path / "big.nii.gz", _image((10, 12, 9)))
    csv = _csv(tmp_path / "p.csv", [("sub0.nii.gz", "sub1.nii.gz"), ("sub2.nii.gz", "big.nii.gz")], "fixed,moving")
    msg = _raises_naming(tmp_path / "big.nii.gz", PairsCSVDataset, csv, check="header")
    assert str(csv) in msg and "row 2" in msg and str(tmp_path / "sub2.nii.gz") in msg
    assert "(10, 12, 8)" in msg and "(10, 12, 9)" in msg


def test_pairs_csv_spacing_and_label_shape_mismatch(tmp_path):
    _subjects(tmp_path)
    _write(tmp_path / "coarse.nii.gz", _image(), affine=np.diag([1.5, 2.0, 3.0, 1.0]))
    csv = _csv(tmp_path / "p.csv", [("sub0.nii.gz", "coarse.nii.gz")], "fixed,moving")
    _raises_naming(tmp_path / "coarse.nii.gz", PairsCSVDataset, csv, match="spacing")
    _write(tmp_path / "seg_small.nii.gz", _labels((5, 12, 8)))
    csv2 = _csv(tmp_path / "q.csv", [("sub0.nii.gz", "sub1.nii.gz", "seg_small.nii.gz", "sub1_seg.nii.gz")])
    _raises_naming(tmp_path / "seg_small.nii.gz", PairsCSVDataset, csv2, match="(5, 12, 8)")


def test_pairs_csv_bad_tables(tmp_path):
    _subjects(tmp_path)
    csv = _csv(tmp_path / "nomoving.csv", [("sub0.nii.gz",)], header="fixed")
    msg = _raises_naming(csv, PairsCSVDataset, csv, match="'moving'")
    assert "column" in msg
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises_naming(empty, PairsCSVDataset, empty, match="empty")
    header_only = _csv(tmp_path / "header.csv", [], header="fixed,moving")
    _raises_naming(header_only, PairsCSVDataset, header_only, match="no rows")
    one_label = _csv(tmp_path / "one.csv", [("sub0.nii.gz", "sub1.nii.gz", "sub0_seg.nii.gz")], "fixed,moving,fixed_label")
    _raises_naming(one_label, PairsCSVDataset, one_label, match="moving_label")
    blank = _csv(tmp_path / "blank.csv", [("sub0.nii.gz", "")], header="fixed,moving")
    _raises_naming(blank, PairsCSVDataset, blank, match="row 1")
    missing = _csv(tmp_path / "missing.csv", [("sub0.nii.gz", "ghost.nii.gz")], header="fixed,moving")
    _raises_naming(tmp_path / "ghost.nii.gz", PairsCSVDataset, missing, match="not found")
    _raises_naming(tmp_path / "absent.csv", PairsCSVDataset, tmp_path / "absent.csv")


def test_pairs_csv_validate_finds_voxel_problems(tmp_path):
    _subjects(tmp_path)
    img = _image()
    img[0, 0, 0] = np.nan
    _write(tmp_path / "nan.nii.gz", img)
    _write(tmp_path / "soft_seg.nii.gz", _labels().astype(np.float32) * 0.7)
    csv = _csv(tmp_path / "p.csv", [("sub0.nii.gz", "sub1.nii.gz"), ("sub1.nii.gz", "nan.nii.gz")], "fixed,moving")
    ds = PairsCSVDataset(csv, check="header")  # headers are fine
    assert not ds.validated
    msg = _raises_naming(tmp_path / "nan.nii.gz", ds.validate, match="NaN")
    assert "row 2" in msg
    _raises_naming(tmp_path / "nan.nii.gz", PairsCSVDataset, csv)  # check="full" by default
    csv2 = _csv(tmp_path / "q.csv", [("sub0.nii.gz", "sub1.nii.gz", "soft_seg.nii.gz", "sub1_seg.nii.gz")])
    _raises_naming(tmp_path / "soft_seg.nii.gz", PairsCSVDataset, csv2, match="integer")
    _write(tmp_path / "flat.nii.gz", np.full((10, 12, 8), 3.0, np.float32))
    csv3 = _csv(tmp_path / "r.csv", [("sub0.nii.gz", "flat.nii.gz")], "fixed,moving")
    _raises_naming(tmp_path / "flat.nii.gz", PairsCSVDataset, csv3, match="constant")
    # normalize=False needs [0, 1] intensities
    _raises_naming(tmp_path / "sub0.nii.gz", PairsCSVDataset, _csv(tmp_path / "s.csv", [("sub0.nii.gz", "sub1.nii.gz")], "fixed,moving"), normalize=False)


def test_pairs_csv_datamodule(tmp_path):
    _subjects(tmp_path)
    rows = [("sub0.nii.gz", "sub1.nii.gz", "sub0_seg.nii.gz", "sub1_seg.nii.gz"), ("sub1.nii.gz", "sub2.nii.gz", "sub1_seg.nii.gz", "sub2_seg.nii.gz")]
    csv = _csv(tmp_path / "p.csv", rows)
    dm = PairsCSVDataModule(csv=str(csv), batch_size=2)
    dm.validate()
    assert dm.shape == (10, 12, 8) and dm.spacing == pytest.approx(SPACING) and dm.num_labels == 4
    batch = next(iter(dm.test_dataloader()))
    assert batch["fixed"].shape == (2, 1, 10, 12, 8) and batch["fixed_label"].dtype == torch.int64
    assert batch["spacing"].shape == (2, 3) and batch["fixed_id"] == ["sub0", "sub1"]
    with pytest.raises(DataError, match="data.train_csv is not set"):
        dm.train_dataloader()
    with pytest.raises(DataError, match="data.train_csv is not set"):
        dm.setup("fit")
    assert PairsCSVDataModule(train_csv=str(csv)).val_dataloader() == []
    with pytest.raises(DataError, match="data.csv"):
        PairsCSVDataModule()
    with pytest.raises(DataError, match="data.csv"):
        PairsCSVDataModule(train_csv=str(csv)).test_dataloader()


# ---------------------------------------------------------------------------- MNI
@pytest.fixture(scope="module")
def mni():
    return MNISubjects(resolution=2, seed=0)


def test_mni_subjects_basic(mni):
    s0, s1 = mni[0], mni[1]
    assert mni.shape == (96, 112, 96) and mni.spacing == (2.0, 2.0, 2.0)
    for s in (s0, s1):
        assert s["image"].shape == (1, 96, 112, 96) and s["image"].dtype == torch.float32
        assert s["label"].shape == (1, 96, 112, 96) and s["label"].dtype == torch.int64
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0 and s["image"].max() > 0.9
        assert set(torch.unique(s["label"]).tolist()) == {0, 1, 2, 3}
    assert s0["id"] == "mni_0000" and s1["id"] == "mni_0001"
    assert not torch.equal(s0["image"], s1["image"])
    assert not torch.equal(s0["label"], s1["label"])
    lab, img = s0["label"], s0["image"]
    # tissue contrast of a T1: CSF < GM < WM, background dark
    means = [img[lab == k].mean().item() for k in range(4)]
    assert means[0] < 0.05 and means[1] < means[2] < means[3]
    # the brain is inside the grid: no tissue on the x/y faces
    assert lab[0, [0, -1]].sum() == 0 and lab[0, :, [0, -1]].sum() == 0


def test_mni_subjects_deterministic(mni):
    other = MNISubjects(resolution=2, seed=0, cache=False)
    a, b = mni[3], other[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert 3 in mni._cache and torch.equal(mni[3]["label"], a["label"])  # cached copy is the same
    c = MNISubjects(resolution=2, seed=1, cache=False)[3]
    assert not torch.equal(a["image"], c["image"])


def test_mni_dice_between_subjects(mni):
    d = _dice(mni[0]["label"].numpy(), mni[1]["label"].numpy())
    assert 0.58 < d < 0.72, d  # ~0.63-0.66 (mean CSF/GM/WM) before registration at the 2 mm default
    tpl = mni.template.labels
    assert _dice(tpl, tpl) == 1.0


def test_mni_deformation_is_diffeomorphic(mni):
    from spatial.jacobian import jacobian_determinant

    u = mni.displacement(np.random.default_rng(0))
    assert u.shape == (1, 3, 96, 112, 96)
    jac = jacobian_determinant(u)
    assert jac.min() > 0
    assert 0.3 < (u * 2.0).norm(dim=1).mean() < 5.0  # mm


def test_mni_intensity_knobs_off_give_warped_template():
    gen = MNISubjects(resolution=2, seed=0, deformation_scale=0.0, bias=0.0, gamma=0.0, noise=0.0, cache=False)
    s = gen[7]
    tpl = gen.template
    np.testing.assert_array_equal(s["label"][0].numpy(), tpl.labels)
    np.testing.assert_allclose(s["image"][0].numpy(), tpl.image, atol=1e-6)


def test_pair_schemes_and_sampler():
    assert consecutive_pairs([4, 5, 6]) == [(4, 5), (5, 6)]
    assert all_pairs([1, 2, 3]) == [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]
    s = RandomPairSampler(12, 20, seed=3)
    e0, e1 = list(s), list(s)
    assert len(e0) == 20 and all(0 <= i < 12 for i in e0)
    assert e0 != e1  # re-drawn each epoch
    assert sorted(e0[:12]) == list(range(12))  # without replacement within a permutation
    s.set_epoch(0)
    assert list(s) == e0 and RandomPairSampler(12, 20, seed=3).indices(1) == e1  # seeded


def test_mni_datamodule_batch_contract_and_splits():
    dm = MNIDataModule(n_train=2, n_val=3, n_test=2, pairs_per_epoch=3, batch_size=2, seed=0)
    dm.setup("fit")
    assert dm.shape == (96, 112, 96) and dm.spacing == (2.0, 2.0, 2.0) and dm.num_labels == 4
    assert set(dm.train_ids).isdisjoint(dm.val_ids) and set(dm.train_ids).isdisjoint(dm.test_ids)
    assert set(dm.val_ids).isdisjoint(dm.test_ids)
    assert dm.train_set.pairs == [(0, 1), (1, 0)]
    assert dm.val_set.pairs == [(2, 3), (3, 4)] and dm.test_set.pairs == [(5, 6)]
    loader = dm.train_dataloader()
    assert len(loader) == 2  # ceil(3 / 2)
    batch = next(iter(loader))
    assert set(batch) == {"fixed", "moving", "fixed_label", "moving_label", "spacing", "fixed_affine", "fixed_id", "moving_id",
                          "pair_signature"}
    for key in ("fixed", "moving"):
        assert batch[key].shape == (2, 1, 96, 112, 96) and batch[key].dtype == torch.float32
    for key in ("fixed_label", "moving_label"):
        assert batch[key].shape == (2, 1, 96, 112, 96) and batch[key].dtype == torch.int64
    assert batch["spacing"].shape == (2, 3) and batch["spacing"].dtype == torch.float32
    train_names = {MNISubjects.subject_id(k) for k in dm.train_ids}
    assert set(batch["fixed_id"]) | set(batch["moving_id"]) <= train_names
    assert all(f != m for f, m in zip(batch["fixed_id"], batch["moving_id"]))
    val = list(dm.val_dataloader())
    assert [b["fixed_id"] for b in val] == [["mni_0002", "mni_0003"]]
    assert [b["moving_id"] for b in val] == [["mni_0003", "mni_0004"]]
    test = next(iter(dm.test_dataloader()))
    assert test["fixed_id"] == ["mni_0005"] and test["moving_id"] == ["mni_0006"]
    no_labels = MNIDataModule(n_train=2, n_val=0, n_test=2, with_labels=False)
    assert no_labels.num_labels is None and not no_labels.test_set.with_labels
    with pytest.raises(DataError, match="data.n_val"):
        no_labels.val_dataloader()


def test_mni_pair_dataset(mni):
    ds = GeneratedPairDataset(mni, [(0, 1), (1, 0)], with_labels=False)
    assert len(ds) == 2 and ds.subject_ids == [0, 1]
    item = ds[1]
    assert set(item) == {"fixed", "moving", "spacing", "fixed_affine", "fixed_id", "moving_id", "pair_signature"}
    assert item["fixed_id"] == "mni_0001" and torch.equal(item["fixed"], mni[1]["image"])
    torch.testing.assert_close(item["spacing"], torch.tensor([2.0, 2.0, 2.0]))
    with pytest.raises(DataError, match="empty"):
        GeneratedPairDataset(mni, [])


def test_mni_parcels_and_inverted_contrast():
    from data.mni import PARCEL_NAMES

    tissue = MNISubjects(resolution=2, seed=0, cache=False)
    parcels = MNISubjects(resolution=2, seed=0, labels="parcels", cache=False)
    t, p = tissue[1], parcels[1]
    assert torch.equal(t["image"], p["image"])  # same subject, finer labels
    tl, pl = t["label"][0].numpy(), p["label"][0].numpy()
    np.testing.assert_array_equal(pl == 0, tl == 0)
    np.testing.assert_array_equal(pl == 1, tl == 1)
    assert np.all((pl >= 2) & (pl <= 9) == (tl == 2)) and np.all((pl >= 10) == (tl == 3))
    assert set(np.unique(pl)) == set(PARCEL_NAMES) and len(PARCEL_NAMES) == 18
    # left/right: voxels left of the midline (MNI x < 0) carry the L parcels
    world_x = parcels.template.affine[0, 0] * np.arange(pl.shape[0]) + parcels.template.affine[0, 3]
    gm_left = [k for k, v in PARCEL_NAMES.items() if v.startswith("GM_L")]
    left_share = np.isin(pl, gm_left)[world_x < 0].sum() / max(np.isin(pl, gm_left).sum(), 1)
    assert left_share > 0.95, left_share  # the subject's deformation moves the plane a little
    inv = MNISubjects(resolution=2, seed=0, contrast="inverted", cache=False)[1]
    torch.testing.assert_close(inv["label"], t["label"])
    csf, wm = inv["label"] == 1, inv["label"] == 3
    assert inv["image"][csf].mean() > inv["image"][wm].mean() + 0.2  # T2-like: CSF bright, WM dark
    assert t["image"][csf].mean() < t["image"][wm].mean() - 0.2
    assert float(inv["image"][inv["label"] == 0].mean()) < 0.02  # background stays dark (partial volume at the rim)
    with pytest.raises(ValueError, match="labels"):
        MNISubjects(labels="lobes")
    with pytest.raises(ValueError, match="contrast"):
        MNISubjects(contrast="t2")
    dm = MNIDataModule(n_train=2, n_val=0, n_test=2, labels="parcels")
    assert dm.num_labels == 18 and dm.label_names[17] == "WM_RAS"


def test_mni_thick_slices_blur_only_the_last_axis_and_keep_labels():
    """slice_thickness=6 (mm, 3 voxels at 2 mm): a resolution shift of the image alone."""
    thin = MNISubjects(resolution=2, seed=0, cache=False)[1]
    thick = MNISubjects(resolution=2, seed=0, slice_thickness=6.0, cache=False)[1]
    assert torch.equal(thin["label"], thick["label"])
    detail = lambda im, axis: float(im[0].diff(dim=axis).abs().mean())  # noqa: E731
    assert detail(thick["image"], 2) < 0.85 * detail(thin["image"], 2)  # through-slice detail lost
    assert detail(thick["image"], 0) > 0.85 * detail(thin["image"], 0)  # in-plane detail mostly kept
    assert float(thick["image"].min()) >= 0.0 and float(thick["image"].max()) <= 1.0
    with pytest.raises(ValueError, match="slice_thickness"):
        MNISubjects(slice_thickness=-1)


def test_mni_axial_slices_are_2d_subjects_cut_from_the_3d_ones():
    """data.slice_index: each subject is its 3-D subject's slice at that index along the last
    axis; the grid, spacing and affine follow; the pairs differ out of plane too; a bad index
    is one error naming the key."""
    from data.generated import AxialSlices

    full = MNISubjects(resolution=2, seed=0, cache=False)
    cut = AxialSlices(full, 48)
    assert cut.shape == (96, 112) and cut.spacing == (2.0, 2.0)
    one, three = cut[1], full[1]
    assert one["image"].shape == (1, 96, 112) and one["label"].dtype == torch.int64
    assert torch.equal(one["image"], three["image"][..., 48]) and torch.equal(one["label"], three["label"][..., 48])
    assert one["id"] == three["id"] and cut[1]["image"] is one["image"]  # served from the cache
    voxel = np.array([10, 20, 48, 1.0])
    assert np.allclose(cut.affine @ np.array([10, 20, 0, 1.0]), np.asarray(full.affine) @ voxel)
    dm = MNIDataModule(n_train=2, n_val=0, n_test=2, slice_index=48)
    batch = next(iter(dm.test_dataloader()))
    assert batch["fixed"].shape == (1, 1, 96, 112) and batch["spacing"].shape == (1, 2)
    assert dm.shape == (96, 112) and dm.spacing == (2.0, 2.0)
    for bad in (96, -1, 4.5, True):
        with pytest.raises(ValueError, match="slice_index"):
            MNIDataModule(n_train=2, n_val=0, n_test=2, slice_index=bad)


def test_mni_config_mirrors_the_datamodule_defaults():
    """configs/data/mni.yaml states every knob; its values are the class defaults (one truth)."""
    import inspect

    from conftest import compose

    cfg = compose("train", [])
    params = inspect.signature(MNIDataModule.__init__).parameters
    for key, value in cfg.data.items():
        if key in ("_target_", "pairs_per_epoch"):
            continue
        assert key in params, key
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key
