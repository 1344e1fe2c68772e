"""Geometry is never ignored, inputs that cannot be registered are refused by name, labels survive.

1. Geometry: a pairs CSV's fixed and moving images, and each label map and its image, must agree
   in the full voxel-to-world affine (orientation, origin, spacing), not only in shape and voxel
   size; a dataset's label map must agree with its image; a dataset pair must agree in
   orientation and spacing after preprocessing (origins are not compared: each subject lies in
   its own scanner space); ``python -m data.check`` reports a label map whose header disagrees.
2. Refused by name: an image that normalises to all zeros, a vector/RGB image, a label map with
   more distinct values than a segmentation has, an axis too small for the configured method.
3. Labels survive: ids above 32767 in saved moved labels; linear label warping and the Dice
   loss's one-hot with sparse large ids work on K + 1 channels and equal the dense computation.
"""

from __future__ import annotations

import sys

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT, compose

sys.path.insert(0, str(ROOT))
import eval as eval_entry  # noqa: E402
import models.training_loss as training_loss_mod  # noqa: E402
from classical import InstanceOptimisationModule, register  # noqa: E402
from classical.config import GreedyConfig  # noqa: E402
from data.check import main as check_main  # noqa: E402
from data.pairs_csv_datamodule import PairsCSVDataModule  # noqa: E402
from data.io import (  # noqa: E402
    MAX_LABEL_VALUES,
    DataError,
    grid_mismatch,
    load_volume,
    read_grid,
    read_header,
)
from data.public import KleinDataModule  # noqa: E402
from data.pairs_csv import PairsCSVDataset  # noqa: E402
from data.geometry import axcodes  # noqa: E402
from data.preprocess import PreprocessConfig, load_source, preprocess, preprocessed_grid, preprocessed_shape  # noqa: E402
from losses import compact_labels, dice_loss, one_hot  # noqa: E402
from app.evaluation import run_test  # noqa: E402
from app.parts import ResultsWriter  # noqa: E402
from models.module import IdentityRegistration  # noqa: E402
from spatial import warp  # noqa: E402

SHAPE = (16, 16, 16)
RAS = np.eye(4)


def _las(shape=SHAPE, spacing=1.0) -> np.ndarray:
    """The LAS affine of the RAS grid ``diag(spacing)``: voxel i along x is RAS voxel n-1-i."""
    aff = np.diag([-spacing, spacing, spacing, 1.0])
    aff[0, 3] = (shape[0] - 1) * spacing
    return aff


def _save(path, array, affine=RAS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _volume(seed=0, shape=SHAPE):
    """An image in (0, 1] with contrast, and a label map (ids 0..3)."""
    img = np.random.default_rng(seed).random(shape).astype(np.float32) * 0.9 + 0.05
    return img, np.minimum((img * 4).astype(np.int16), 3)


def _raises(fn, *args, must=(), **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for text in must:
        assert str(text) in msg, (text, msg)
    return msg


def _csv(folder, fixed=("f.nii.gz", RAS), moving=("m.nii.gz", RAS), fixed_label=None, moving_label=None,
         moving_array=None, moving_label_array=None):
    """A one-pair CSV; each file ``(name, affine)``; arrays from :func:`_volume`."""
    img, lab = _volume(0)
    mimg, mlab = _volume(1)
    _save(folder / fixed[0], img, fixed[1])
    _save(folder / moving[0], mimg if moving_array is None else moving_array, moving[1])
    cols = ["fixed", "moving"]
    vals = [fixed[0], moving[0]]
    if fixed_label is not None:
        _save(folder / fixed_label[0], lab, fixed_label[1])
        _save(folder / moving_label[0], mlab if moving_label_array is None else moving_label_array, moving_label[1])
        cols += ["fixed_label", "moving_label"]
        vals += [fixed_label[0], moving_label[0]]
    csv = folder / "pairs.csv"
    csv.write_text(",".join(cols) + "\n" + ",".join(vals) + "\n")
    return csv


# ============================================================== 1. geometry: pairs CSV
def test_pairs_csv_moving_stored_las_is_refused(tmp_path):
    """Same shape and voxel size, but the moving image is stored LAS: registered in voxel space it
    would be mirrored. Today's shape/spacing check passed it."""
    img, _ = _volume(1)
    csv = _csv(tmp_path, moving=("m.nii.gz", _las()), moving_array=img[::-1])
    msg = _raises(PairsCSVDataset, csv, must=[tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "RAS vs LAS"])
    assert "origin" in msg  # the flip moves voxel (0,0,0) to the other side: 15 mm


def test_pairs_csv_origin_20mm_off_is_refused(tmp_path):
    shifted = RAS.copy()
    shifted[:3, 3] = (20.0, 0.0, 0.0)
    csv = _csv(tmp_path, moving=("m.nii.gz", shifted))
    msg = _raises(PairsCSVDataset, csv, check="header", must=[tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"])
    assert "origin offset 20 mm" in msg and "orientation" not in msg and "spacing" not in msg


def test_pairs_csv_label_map_stored_flipped_is_refused(tmp_path):
    _, mlab = _volume(1)
    csv = _csv(tmp_path, fixed_label=("f_seg.nii.gz", RAS), moving_label=("m_seg.nii.gz", _las()),
               moving_label_array=mlab[::-1])
    _raises(PairsCSVDataset, csv, check="header",
            must=[tmp_path / "m_seg.nii.gz", tmp_path / "m.nii.gz", "moving_label", "RAS vs LAS"])


def test_pairs_csv_oblique_and_spacing_differences_in_words(tmp_path):
    theta = np.radians(2.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    csv = _csv(tmp_path, moving=("m.nii.gz", rot))
    _raises(PairsCSVDataset, csv, check="header", must=["rotated by up to 2 degrees", "(both RAS)"])
    # spacing is reported in the same one error, with the orientation
    aniso = _las()
    aniso[2, 2] = 1.2
    msg = _raises(PairsCSVDataset, _csv(tmp_path / "b", moving=("m.nii.gz", aniso)), check="header")
    assert "RAS vs LAS" in msg and "spacing (1, 1, 1) vs (1, 1, 1.2) mm" in msg


def test_pairs_csv_header_rounding_is_tolerated(tmp_path):
    """Positive control: float32 header noise (1e-6) is the same grid; the pair loads."""
    noisy = RAS.copy()
    noisy[:3, :3] += 1e-6
    noisy[:3, 3] = 1e-5
    csv = _csv(tmp_path, moving=("m.nii.gz", noisy), fixed_label=("f_seg.nii.gz", RAS),
               moving_label=("m_seg.nii.gz", noisy))
    ds = PairsCSVDataset(csv)
    assert ds[0]["moving"].shape == (1, *SHAPE)


def test_grid_mismatch_tolerances():
    assert grid_mismatch(RAS, RAS) is None
    off = RAS.copy()
    off[1, 3] = 2e-3  # above the 1e-3 mm origin tolerance
    assert grid_mismatch(RAS, off).startswith("origin offset 0.002 mm")
    off[1, 3] = 5e-4
    assert grid_mismatch(RAS, off) is None
    assert "spacing (1, 1, 1) vs (1, 1, 1.002) mm" in grid_mismatch(RAS, RAS, (1, 1, 1), (1, 1, 1.002))


def test_a_moving_grid_that_drifts_across_the_volume_is_resampled_not_taken_as_the_fixed_one():
    """Voxel sizes 1.0009 vs 1.0 mm agree per voxel (grid_mismatch) but put the last of 256 voxels
    0.23 mm apart: the moving image is resampled onto the fixed grid (found by a review; before, it
    was used as it stood). Header rounding (1e-6) still reads as one grid."""
    import numpy as np

    from data.geometry import Grid, corner_drift
    from data.pair_inputs import moving_on_fixed_grid

    shape = (256, 6, 6)
    fixed = Grid(shape, (1.0, 1.0, 1.0), np.eye(4))
    drifting = np.diag([1.0009, 1.0, 1.0, 1.0])
    assert grid_mismatch(fixed.affine, drifting) is None
    assert corner_drift(fixed.affine, drifting, shape) == pytest.approx(0.2295)
    array = np.tile(np.arange(256, dtype=np.float32)[:, None, None], (1, 6, 6))
    out = moving_on_fixed_grid(array, Grid(shape, (1.0009, 1.0, 1.0), drifting), fixed, "image", "m.nii.gz")
    assert out is not array
    # fixed voxel 255 is moving voxel 255 / 1.0009 = 254.77: a ramp reads 254.77 there, not 255
    assert out[255, 3, 3] == pytest.approx(255 / 1.0009, abs=1e-3)
    rounded = np.eye(4)
    rounded[:3, :3] += 1e-6
    assert moving_on_fixed_grid(array, Grid(shape, (1.0, 1.0, 1.0), rounded), fixed, "image", "m.nii.gz") is array


# ============================================================== 1. geometry: datasets
def _ibsr(root, affines=None, label_affines=None, shape=SHAPE):
    """An IBSR18 tree of two subjects; per-subject image/label affines (default RAS)."""
    for i in (1, 2):
        name = f"IBSR_{i:02d}"
        img, lab = _volume(i, shape)
        aff = (affines or {}).get(i, RAS)
        laff = (label_affines or {}).get(i, aff)
        if aff[0, 0] < 0:  # stored LAS: the same anatomy, x reversed in the file
            img, lab = img[::-1], lab[::-1]
        if laff[0, 0] < 0 <= aff[0, 0]:
            lab = lab[::-1]
        _save(root / name / f"{name}_ana_strip.nii.gz", img, aff)
        _save(root / name / f"{name}_seg_ana.nii.gz", lab, laff)
    return root


def test_load_source_refuses_label_map_flipped_against_its_image(tmp_path):
    _ibsr(tmp_path / "IBSR18", label_affines={2: _las()})
    image = tmp_path / "IBSR18" / "IBSR_02" / "IBSR_02_ana_strip.nii.gz"
    label = tmp_path / "IBSR18" / "IBSR_02" / "IBSR_02_seg_ana.nii.gz"
    _raises(load_source, image, label, must=[image, label, "RAS vs LAS"])
    load_source(str(image).replace("IBSR_02", "IBSR_01"), str(label).replace("IBSR_02", "IBSR_01"))  # control


def test_data_check_reports_label_header_disagreeing_with_image(tmp_path, capsys):
    root = _ibsr(tmp_path / "IBSR18", label_affines={2: _las()})
    assert check_main(["ibsr18", str(root), "--expect", "2"]) == 1
    problems = capsys.readouterr().out.split("\nproblems:\n", 1)[1].strip().splitlines()
    assert len(problems) == 1, problems
    for text in ("IBSR_02_seg_ana.nii.gz", "IBSR_02_ana_strip.nii.gz", "RAS vs LAS"):
        assert text in problems[0], problems


def test_dataset_pair_orientations_must_agree_after_preprocessing(tmp_path):
    """orientation=None keeps each file's voxel order: an LAS subject against a RAS one is refused
    naming both files; reoriented to RAS the same pair loads. Origins are not compared."""
    root = _ibsr(tmp_path / "IBSR18", affines={2: _las()})
    kept = KleinDataModule("ibsr18", str(root), strict_count=False, orientation=None, spacing=None, shape=None)
    _raises(kept.dataset("test").__getitem__, 0,
            must=["IBSR_01_ana_strip.nii.gz", "IBSR_02_ana_strip.nii.gz", "LAS", "RAS", "data.orientation"])
    reoriented = KleinDataModule("ibsr18", str(root), strict_count=False, orientation="RAS", spacing=None, shape=None)
    item = reoriented.dataset("test")[0]
    assert item["fixed"].shape == item["moving"].shape == (1, *SHAPE)
    # each subject in its own scanner space: a 50 mm origin difference is not an error
    shifted = RAS.copy()
    shifted[:3, 3] = (50.0, -30.0, 10.0)
    root2 = _ibsr(tmp_path / "other" / "IBSR18", affines={2: shifted})
    dm = KleinDataModule("ibsr18", str(root2), strict_count=False, orientation=None, spacing=None, shape=None)
    assert dm.dataset("test")[0]["moving"].shape == (1, *SHAPE)


# ============================================================== 2. refused by name
@pytest.mark.parametrize("kind", ["mask", "bright_voxel"])
def test_image_normalising_to_zeros_is_refused(kind, tmp_path):
    if kind == "mask":
        bad = (_volume(1)[0] > 0.5).astype(np.float32)  # a binary 0/1 mask
    else:
        bad = np.zeros(SHAPE, np.float32)
        bad[3, 4, 5] = 1000.0
    csv = _csv(tmp_path, moving_array=bad)
    _raises(PairsCSVDataset, csv, must=[tmp_path / "m.nii.gz", "all zeros after intensity normalisation"])
    ds = PairsCSVDataset(csv, check="header")
    _raises(ds.__getitem__, 0, must=[tmp_path / "m.nii.gz", "all zeros"])
    # dataset preprocessing (OASIS/Klein DataModules) refuses it by name too
    lab = np.ones(SHAPE, np.int16)
    _save(tmp_path / "seg.nii.gz", lab)
    image, label = load_source(tmp_path / "m.nii.gz", tmp_path / "seg.nii.gz")
    _raises(preprocess, image, label, PreprocessConfig(spacing=None, shape=(12, 12, 12)),
            must=[tmp_path / "m.nii.gz", "all zeros", "data.normalize=percentile"])
    # the same mask under min-max normalisation has contrast: not an error
    assert preprocess(image, label, PreprocessConfig(spacing=None, normalize="minmax")).image.max() == 1.0
    # a dataset's full check (no cache: no preprocessing) and data.check find it on the source voxels
    root = _ibsr(tmp_path / "IBSR18")
    _save(root / "IBSR_02" / "IBSR_02_ana_strip.nii.gz", bad)
    dm = KleinDataModule("ibsr18", str(root), strict_count=False, shape=[16, 16, 16])
    _raises(dm.validate, must=["IBSR_02_ana_strip.nii.gz", "all zeros"])
    assert check_main(["ibsr18", str(root), "--expect", "2"]) == 1


@pytest.mark.parametrize("kind", ["5d_vector", "rgb24", "xyz3"])
def test_vector_or_rgb_image_is_refused(kind, tmp_path):
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "5d_vector":
        img = nib.Nifti1Image(np.random.rand(8, 8, 8, 1, 3).astype(np.float32), RAS)
        img.header.set_intent("vector")
        nib.save(img, str(path))
    elif kind == "rgb24":
        rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = np.random.default_rng(0).integers(0, 255, (8, 8, 8))
        _save(path, rgb)
    else:
        _save(path, np.random.rand(8, 8, 8, 3).astype(np.float32))
    for fn, kwargs in ((load_volume, {}), (load_volume, {"kind": "label"}), (read_header, {}), (read_grid, {})):
        _raises(fn, path, **kwargs, must=[path, "vector/RGB image, expected one scalar channel"])


def test_intensity_image_given_as_labels_is_refused(tmp_path):
    values = (np.arange(np.prod(SHAPE)) % 4001).reshape(SHAPE).astype(np.int16)  # whole-valued 0..4000
    path = _save(tmp_path / "seg.nii.gz", values)
    _raises(load_volume, path, kind="label", must=[path, "4001 distinct values", str(MAX_LABEL_VALUES)])
    sparse = np.zeros(SHAPE, np.int32)
    sparse[:4], sparse[8:] = 7, 40000  # few distinct ids, however large: a segmentation
    assert set(np.unique(load_volume(_save(tmp_path / "ok.nii.gz", sparse), kind="label").array)) == {0, 7, 40000}


def _trainer():
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


class _NoRegistration(IdentityRegistration):
    def register(self, batch):  # pragma: no cover - the size check must stop the run first
        raise AssertionError("registration ran on inputs the method cannot register")


def test_singleton_axis_refused_before_registration(tmp_path):
    shape = (32, 32, 1)
    _save(tmp_path / "f.nii.gz", _volume(0, shape)[0])
    _save(tmp_path / "m.nii.gz", _volume(1, shape)[0])
    (tmp_path / "pairs.csv").write_text("fixed,moving\nf.nii.gz,m.nii.gz\n")
    dm = PairsCSVDataModule(csv=str(tmp_path / "pairs.csv"))
    assert dm.volume_shapes("test") == [(str(tmp_path / "f.nii.gz"), shape), (str(tmp_path / "m.nii.gz"), shape)]
    _raises(run_test, _trainer(), _NoRegistration(), dm, tmp_path / "out",
            must=[tmp_path / "f.nii.gz", "(32, 32, 1)", "axis 2", "fewer than the 2", "model.downsize=1"])
    assert IdentityRegistration(downsize=2).min_input_size() == 4


def test_six_voxels_refused_for_the_greedy_pyramid(tmp_path, capsys):
    """eval.py model=greedy on 6-voxel-thick volumes: one error line naming the file, the axis and
    model.scales, before any optimisation, no result files."""
    shape = (6, 16, 16)
    _save(tmp_path / "data" / "f.nii.gz", _volume(0, shape)[0])
    _save(tmp_path / "data" / "m.nii.gz", _volume(1, shape)[0])
    (tmp_path / "data" / "pairs.csv").write_text("fixed,moving\nf.nii.gz,m.nii.gz\n")
    out = tmp_path / "out"
    cfg = compose("eval", [f"paths.output_dir={out}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                           "model=greedy", "data=pairs_csv", f"data.csv={tmp_path / 'data' / 'pairs.csv'}"])
    with pytest.raises(SystemExit) as info:
        eval_entry.evaluate(cfg)
    assert info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    for text in ("f.nii.gz", "(6, 16, 16)", "axis 0", "fewer than the 7", "model.scales=[4, 2, 1]",
                 "model.sim_kwargs.window=7"):
        assert text in errors[0], (text, errors[0])
    left = [p for p in out.rglob("*") if p.name in ("pairs.csv", "summary.json", "labels.csv")] if out.exists() else []
    assert not left, left


def test_classical_min_input_size_from_scales_window_and_smoothing():
    assert InstanceOptimisationModule(algorithm="greedy", sim_kwargs={"window": 7}).min_input_size() == 7
    assert InstanceOptimisationModule(algorithm="syn", sim_kwargs={"window": 5}).min_input_size() == 7  # 2*ceil(3)+1
    assert InstanceOptimisationModule(algorithm="affine").min_input_size() == 4
    assert InstanceOptimisationModule(algorithm="greedy", sim="mse", grad_sigma=0, warp_sigma=0).min_input_size() == 4
    # a level needing more than the 8 voxels level_shape keeps: the largest scale sets it
    wide = InstanceOptimisationModule(algorithm="greedy", sim_kwargs={"window": 11}, scales=[4, 2, 1])
    assert wide.min_input_size() == 43  # round(43 / 4) = 11, round(42 / 4) = 10
    assert InstanceOptimisationModule(algorithm="greedy", sim_kwargs={"window": 11}, scales=[2, 1],
                                      iterations=[1, 1]).min_input_size() == 22  # round(21 / 2) = 10
    with pytest.raises(ValueError, match=r"axis 2.*model.scales"):
        register(torch.rand(1, 1, 16, 16, 6), torch.rand(1, 1, 16, 16, 6), GreedyConfig(iterations=[1, 1, 1]))


def test_dataset_volume_shapes_predict_preprocessing(tmp_path):
    """DatasetDataModule lists data.shape when set, else the shape preprocessing will make."""
    aff = np.array([[0.0, 0.0, 1.2, 3.0], [-0.9375, 0.0, 0.0, 5.0], [0.0, 1.5, 0.0, -2.0], [0, 0, 0, 1]])
    img = np.random.default_rng(0).random((10, 12, 9)).astype(np.float32) + 0.1
    _save(tmp_path / "img.nii.gz", img, aff)
    volume, _ = load_source(tmp_path / "img.nii.gz", None)
    for cfg in (PreprocessConfig(orientation="RAS", spacing=1.0), PreprocessConfig(orientation="LPI", spacing=2.0),
                PreprocessConfig(orientation=None, spacing=None), PreprocessConfig(orientation="RAS", spacing=None)):
        assert preprocessed_shape(img.shape, aff, cfg) == preprocess(volume, None, cfg).image.shape, cfg
        prep = preprocess(volume, None, cfg)  # the whole grid validate() predicts for the pair check
        codes, shape, spacing = preprocessed_grid(img.shape, aff, cfg)
        assert (codes, shape) == (axcodes(prep.affine), prep.image.shape), cfg
        np.testing.assert_allclose(spacing, prep.spacing, atol=1e-6)
    root = _ibsr(tmp_path / "IBSR18")
    dm = KleinDataModule("ibsr18", str(root), strict_count=False, shape=[16, 16, 1])
    shapes = dm.volume_shapes("test")
    assert [s for _, s in shapes] == [(16, 16, 1)] * 2 and shapes[0][0].endswith("IBSR_01_ana_strip.nii.gz")
    _raises(run_test, _trainer(), _NoRegistration(), dm, tmp_path / "out", must=["IBSR_01_ana_strip.nii.gz", "axis 2"])
    native = KleinDataModule("ibsr18", str(root), strict_count=False, shape=None, spacing=2.0)
    assert [s for _, s in native.volume_shapes("test")] == [(8, 8, 8)] * 2  # 16 voxels of 1 mm at 2 mm


# ============================================================== 3. labels survive
def test_saved_moved_label_keeps_ids_above_int16(tmp_path):
    from app.callbacks import ResultsCallback

    model = IdentityRegistration()
    callback = ResultsCallback(ResultsWriter(tmp_path, method="identity", method_hash="h"), save_outputs=True)
    lab = torch.zeros(1, 1, 6, 6, 6, dtype=torch.int64)
    lab[..., :3] = 40000
    lab[..., 3:5] = 7
    batch = {"fixed": torch.rand(1, 1, 6, 6, 6), "moving": torch.rand(1, 1, 6, 6, 6), "fixed_label": lab,
             "moving_label": lab, "spacing": torch.ones(1, 3), "fixed_id": ["a"], "moving_id": ["b"]}
    callback.on_test_batch_end(None, model, model.test_step(batch, 0), batch, 0)
    saved = load_volume(callback.writer.moved_path("a", "b", "label"), kind="label").array
    np.testing.assert_array_equal(saved, lab[0, 0].numpy())


def _smooth_field(shape, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 3, 3, 3, generator=g) * scale
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)


def _dense_warp_label(label, u):
    n = int(label.max()) + 1
    warped = warp(one_hot(label, n), u, padding_mode="half_voxel")
    moved = warped.argmax(dim=1, keepdim=True)
    return torch.where(warped.sum(dim=1, keepdim=True) > 0.5, moved, torch.zeros_like(moved))


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_scored_labels_read_background_beyond_half_a_voxel_as_register_py_does(interp):
    """eval.py's moved labels (``warp_label``) and register.py's (:func:`spatial.world.sample`, ITK's
    rule) agree where the field reads outside the moving grid: the border label within half a
    voxel, background beyond. With border padding, labels touching the edge were smeared outward
    (eval.py scored them, register.py did not)."""
    from spatial.world import sample

    shape = (9, 6, 5)
    label = torch.full((1, 1, *shape), 4, dtype=torch.int64)  # one label touching every face
    label[..., :3, :, :] = 2
    for shift in (1.7, -0.4, 0.45, -2.6):
        u = torch.zeros(1, 3, *shape)
        u[:, 0] = shift
        coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                            indexing="ij"))
        coords[0] += shift
        want = sample(label, coords, mode="nearest")
        got = IdentityRegistration(label_interp=interp).warp_label(label, u)
        assert torch.equal(got, want), (interp, shift)
        beyond = int(np.ceil(abs(shift) - 0.5)) if abs(shift) > 0.5 else 0
        assert int((got[0, 0, :, 0, 0] == 0).sum()) == beyond


@pytest.mark.parametrize("with_background", [True, False])
def test_linear_label_warp_equals_dense_computation(with_background):
    shape = (10, 9, 8)
    rng = np.random.default_rng(1)
    ids = np.array([0, 2, 3, 7, 12]) if with_background else np.array([2, 3, 7, 12])
    label = torch.from_numpy(ids[rng.integers(0, len(ids), shape)]).view(1, 1, *shape)
    u = _smooth_field(shape)
    model = IdentityRegistration(label_interp="linear")
    torch.testing.assert_close(model.warp_label(label, u), _dense_warp_label(label, u), rtol=0, atol=0)


def _few_channel_spy(monkeypatch, calls):
    real = training_loss_mod.one_hot

    def spy(label, num_classes, *args, **kwargs):
        calls.append(num_classes)
        assert num_classes <= 16, f"one-hot of {num_classes} channels for sparse label ids"
        return real(label, num_classes, *args, **kwargs)

    import models.evaluation as evaluation_mod

    for mod in (training_loss_mod, evaluation_mod):  # the Dice loss's one-hot and the label warp's
        monkeypatch.setattr(mod, "one_hot", spy)


def test_linear_label_warp_of_sparse_large_ids_uses_few_channels(monkeypatch):
    shape = (8, 8, 8)
    small = torch.zeros(1, 1, *shape, dtype=torch.int64)
    small[..., 2:5, :, :] = 1
    small[..., 5:, :, :] = 2
    large = torch.tensor([0, 7, 40000])[small]
    u = _smooth_field(shape, seed=3)
    expected = torch.tensor([0, 7, 40000])[_dense_warp_label(small, u)]
    calls: list[int] = []
    _few_channel_spy(monkeypatch, calls)
    moved = IdentityRegistration(label_interp="linear").warp_label(large, u)
    assert calls == [3]
    torch.testing.assert_close(moved, expected, rtol=0, atol=0)


def test_dice_loss_one_hot_equals_dense_and_stays_small(monkeypatch):
    shape = (8, 8, 8)
    rng = np.random.default_rng(2)
    fixed = torch.from_numpy(rng.choice([0, 1, 4, 6], size=(2, 1, *shape)))
    moving = torch.from_numpy(rng.choice([0, 1, 3, 6], size=(2, 1, *shape)))
    u = torch.cat([_smooth_field(shape, seed=4), _smooth_field(shape, seed=5)])
    model = IdentityRegistration()
    moving_oh, fixed_oh = model._label_maps({"fixed_label": fixed, "moving_label": moving})
    assert moving_oh.shape[1] == 5  # ids {0, 1, 3, 4, 6}, not 7 channels
    n = 7
    dense = dice_loss(warp(one_hot(moving, n), u), one_hot(fixed, n))
    torch.testing.assert_close(dice_loss(warp(moving_oh, u), fixed_oh), dense)
    # sparse large ids: the same loss as the small ids they stand for, on 3 channels
    lut = torch.tensor([0, 7, 40000])
    small_f = torch.from_numpy(rng.integers(0, 3, (1, 1, *shape)))
    small_m = torch.from_numpy(rng.integers(0, 3, (1, 1, *shape)))
    want = dice_loss(warp(one_hot(small_m, 3), u[:1]), one_hot(small_f, 3))
    calls: list[int] = []
    _few_channel_spy(monkeypatch, calls)
    m_oh, f_oh = model._label_maps({"fixed_label": lut[small_f], "moving_label": lut[small_m]})
    assert calls == [3, 3]
    torch.testing.assert_close(dice_loss(warp(m_oh, u[:1]), f_oh), want)


def test_compact_labels_unique_and_lookup_paths_agree():
    a = torch.tensor([[[[0, 5], [5, 9]]]])
    b = torch.tensor([[[[9, 2], [2, 2]]]])
    ids, (ia, ib) = compact_labels(a, b)
    assert ids.tolist() == [0, 2, 5, 9]
    assert torch.equal(ids[ia], a) and torch.equal(ids[ib], b)
    huge = torch.tensor([[[[0, 1 << 40], [3, 1 << 40]]]])  # ids beyond the lookup table: torch.unique
    ids, (ih,) = compact_labels(huge)
    assert ids.tolist() == [0, 3, 1 << 40] and torch.equal(ids[ih], huge)
    ids, (iz,) = compact_labels(torch.tensor([[[[4, 4], [8, 4]]]]))  # no background: 0 still index 0
    assert ids.tolist() == [0, 4, 8] and iz.min() == 1


def test_header_voxel_sizes_that_disagree_with_the_affine_are_refused(tmp_path):
    """pixdim 1 mm under a 2 mm sform: HD95 (voxel sizes) and world space (the affine) would
    describe different images; the file is refused by name with both values."""
    import nibabel as nib

    from data.io import read_grid

    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["pixdim"][1:4] = 1.0
    path = tmp_path / "bad.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: the header's voxel sizes \(pixdim 1x1x1 mm\) disagree with "
                                        r"its affine \(sform/qform: 2x2x2 mm\)"):
        read_grid(path)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([2.0, 1.5, 3.0, 1.0])), str(good))
    assert read_grid(good).spacing == (2.0, 1.5, 3.0)
