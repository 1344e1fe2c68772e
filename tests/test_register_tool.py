"""The one-pair tools: ``register.py`` (own images in world space) and ``apply.py`` (a saved transform
applied to any image), the world-space library under them (:mod:`spatial.world`,
:mod:`data.transforms`) and ``data.resample=fixed`` for pairs CSVs.

The pair: the offline MNI template (2 mm) as the fixed image on a RAS grid, and a "subject" made from
it (shifted and smoothly deformed anatomy, intensities x1000 + 50) stored on another grid: LAS,
2.5 mm, rotated 8 degrees, another shape. Both are written by scipy here, independently of the code
under test. ANTs and SimpleITK checks skip where those packages are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import ROOT, compose, write_nifti

sys.path.insert(0, str(ROOT))
import apply as apply_entry  # noqa: E402
import register as register_entry  # noqa: E402
from data.io import DataError  # noqa: E402
from data.transforms import (  # noqa: E402
    ITK_INTENT,
    VOXEL_INTENT,
    AffineStage,
    FieldStage,
    displacement_bytes,
    itk_affine_text,
    read_affine,
    read_displacement,
    resample_to_grid,
    transform_volume,
)
from spatial import compose as compose_fields  # noqa: E402
from spatial import gaussian_blur, jacobian_determinant  # noqa: E402
from spatial.world import displace_points, grid_points, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_SITK = importlib.util.find_spec("SimpleITK") is not None
HAS_ANTS = importlib.util.find_spec("ants") is not None
GREEDY_SHORT = ["model=greedy", "model.iterations=[30,15,8]", "model.tolerance=0", "device=cpu"]
LPS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- the pair
def _read_world(array, src_affine, shape, dst_affine, order, deform=None):
    """scipy: ``array`` (grid ``src_affine``) read at the world points of the grid (shape, dst_affine)."""
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1).astype(float)
    p = dst_affine[:3, :3] @ g + dst_affine[:3, 3:]
    if deform is not None:
        p = deform(p)
    c = np.linalg.solve(src_affine[:3, :3], p - src_affine[:3, 3:])
    return ndimage.map_coordinates(array, c, order=order, mode="constant", cval=0).reshape(shape)


def make_pair(folder: Path) -> dict[str, Path]:
    from data.mni_template import load_mni_template

    t = load_mni_template(2, (48, 56, 48))
    fixed_shape, moving_shape = (40, 48, 40), (34, 40, 34)
    a_f = t.affine.copy()
    a_f[:3, 3] = t.affine[:3, :3] @ np.array([4, 4, 4]) + t.affine[:3, 3]
    th = np.deg2rad(8)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    a_m = np.eye(4)
    a_m[:3, :3] = rot @ np.diag([-2.5, 2.5, 2.5])  # LAS, 2.5 mm, rotated
    centre = a_f[:3, :3] @ (np.array(fixed_shape) / 2) + a_f[:3, 3]
    a_m[:3, 3] = centre - a_m[:3, :3] @ (np.array(moving_shape) / 2)

    def deform(p):  # the subject's anatomy at q is the template's at q + shift + a smooth bump
        return p + np.array([[4.0], [-3.0], [2.0]]) + 3.0 * np.sin(p[[1, 2, 0]] / 15.0)

    arrays = {
        "fixed": (_read_world(t.image, t.affine, fixed_shape, a_f, 1).astype(np.float32), a_f),
        "fixed_seg": (_read_world(t.labels, t.affine, fixed_shape, a_f, 0).astype(np.int16), a_f),
        "moving": ((_read_world(t.image, t.affine, moving_shape, a_m, 1, deform) * 1000 + 50).astype(np.float32), a_m),
        "moving_seg": (_read_world(t.labels, t.affine, moving_shape, a_m, 0, deform).astype(np.int16), a_m),
    }
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (array, affine) in arrays.items():
        out[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(out[name]))
    return out


def _register(files, out, extra=()):
    overrides = [f"fixed={files['fixed']}", f"moving={files['moving']}", f"out={out}"] + list(extra)
    return register_entry.register(compose("register", overrides))


def _apply(overrides):
    return apply_entry.apply(compose("apply", overrides))


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def _one_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:"), err
    for w in words:
        assert str(w) in err, err
    return err


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("mni_pair"))


@pytest.fixture(scope="module")
def greedy_run(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("greedy") / "out"
    record = _register(pair, out, GREEDY_SHORT + [f"fixed_label={pair['fixed_seg']}",
                                                  f"moving_label={pair['moving_seg']}"])
    return out, record


# --------------------------------------------------------------------------- register.py
def test_register_pair_on_different_grids_writes_every_output(pair, greedy_run):
    out, record = greedy_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["disp.nii.gz", "disp_itk.nii.gz", "jacobian_det.nii.gz", "metrics.json", "moved.nii.gz",
         "moved_label.nii.gz", "transform.json"])
    assert record == json.loads((out / "transform.json").read_text())
    assert record["fixed"]["orientation"] == "RAS" and record["moving"]["orientation"] == "LAS"
    assert "orientation RAS vs LAS" in record["resampling"] and "spacing (2, 2, 2) vs (2.5, 2.5, 2.5)" in record["resampling"]
    assert record["inverse"] is None and record["method"] == "greedy"
    fixed = nib.load(str(pair["fixed"]))
    for name in ("moved.nii.gz", "moved_label.nii.gz", "jacobian_det.nii.gz", "disp.nii.gz", "disp_itk.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape[:3] == fixed.shape and np.allclose(img.affine, fixed.affine)
    metrics = json.loads((out / "metrics.json").read_text())
    # the world-space pair registers: Dice after well above Dice before (both on the fixed grid)
    assert metrics["dice_identity"] < 0.65 and metrics["dice"] > metrics["dice_identity"] + 0.2
    assert metrics["folding_pct"] == 0.0 and set(metrics["dice_per_label"]) == {"1", "2", "3"}


def test_displacement_files_name_their_convention_and_agree(pair, greedy_run):
    out, _ = greedy_run
    ours, img = _load(out / "disp.nii.gz")
    itk, img_itk = _load(out / "disp_itk.nii.gz")
    assert ours.shape == (40, 48, 40, 1, 3) and itk.shape == ours.shape and ours.dtype == np.float32
    for h, name in ((img.header, VOXEL_INTENT), (img_itk.header, ITK_INTENT)):
        code, _, intent_name = h.get_intent()
        assert code == "vector" and int(h["intent_code"]) == 1007 and intent_name == name
    assert "moved(x)=moving(x+u(x))" in img.header["descrip"].item().decode()
    # ITK's vectors: d = LPS A[:3, :3] u (mm), at every voxel
    a = nib.load(str(pair["fixed"])).affine
    expected = ours[:, :, :, 0, :].astype(np.float64) @ (LPS @ a[:3, :3]).T
    assert np.allclose(itk[:, :, :, 0, :], expected, atol=1e-4)
    # the Jacobian determinant map is that of u
    u = torch.from_numpy(np.moveaxis(ours[:, :, :, 0, :], -1, 0)).unsqueeze(0)
    assert np.allclose(_load(out / "jacobian_det.nii.gz")[0], jacobian_determinant(u)[0].numpy(), atol=1e-5)


def test_moved_image_is_the_moving_image_read_in_world_space_in_its_own_intensities(pair, greedy_run):
    """Independently of the code: scipy reads the raw moving image at A_m^-1 A_f (x + u(x))."""
    out, _ = greedy_run
    u = _load(out / "disp.nii.gz")[0][:, :, :, 0, :].astype(np.float64)  # (X, Y, Z, 3)
    moving, moving_img = _load(pair["moving"])
    a_f, a_m = nib.load(str(pair["fixed"])).affine, moving_img.affine
    shape = u.shape[:3]
    x = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1) + u
    c = np.linalg.solve(a_m[:3, :3], (x @ a_f[:3, :3].T + a_f[:3, 3] - a_m[:3, 3]).reshape(-1, 3).T)
    expected = ndimage.map_coordinates(moving.astype(np.float64), c, order=1, mode="nearest").reshape(shape)
    inside = np.all((c > 0.5) & (c < np.array(moving.shape)[:, None] - 1.5), axis=0).reshape(shape)
    moved = _load(out / "moved.nii.gz")[0]
    assert inside.sum() > 0.3 * inside.size
    assert np.allclose(moved[inside], expected[inside], rtol=1e-5, atol=1e-2)
    assert moved.max() > 900  # original intensities (x1000 + 50), not [0, 1]
    lab = ndimage.map_coordinates(_load(pair["moving_seg"])[0], c, order=0, mode="nearest").reshape(shape)
    assert np.mean(_load(out / "moved_label.nii.gz")[0][inside] == lab[inside]) > 0.999  # ties may differ


def test_metrics_json_are_the_metrics_of_the_written_label_maps(pair, greedy_run):
    from metrics import dice, hd95

    out, _ = greedy_run
    metrics = json.loads((out / "metrics.json").read_text())
    fixed = torch.from_numpy(_load(pair["fixed_seg"])[0].astype(np.int64))
    moved = torch.from_numpy(_load(out / "moved_label.nii.gz")[0].astype(np.int64))
    a_f = nib.load(str(pair["fixed"])).affine
    before = torch.from_numpy(resample_to_grid(_load(pair["moving_seg"])[0], nib.load(str(pair["moving_seg"])).affine,
                                               fixed.shape, a_f, kind="label"))
    assert dice(fixed, before, moved).mean == pytest.approx(metrics["dice"], abs=1e-9)
    assert dice(fixed, before, before).mean == pytest.approx(metrics["dice_identity"], abs=1e-9)
    assert hd95(fixed, before, moved, spacing=(2.0, 2.0, 2.0)).mean == pytest.approx(metrics["hd95"], abs=1e-6)


@pytest.mark.skipif(not HAS_SITK, reason="SimpleITK is not installed (pip install -r requirements-baselines.txt)")
def test_simpleitk_applies_our_exported_warp_to_the_identical_label_map(pair, greedy_run):
    import SimpleITK as sitk

    out, _ = greedy_run
    field = sitk.ReadImage(str(out / "disp_itk.nii.gz"), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    reference = sitk.ReadImage(str(pair["fixed"]))
    label = sitk.Resample(sitk.ReadImage(str(pair["moving_seg"])), reference, transform, sitk.sitkNearestNeighbor, 0)
    ours = _load(out / "moved_label.nii.gz")[0]
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(label), (2, 1, 0)), ours)  # every voxel, borders too
    image = sitk.Resample(sitk.ReadImage(str(pair["moving"]), sitk.sitkFloat64), reference, transform,
                          sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    assert np.allclose(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), _load(out / "moved.nii.gz")[0],
                       rtol=1e-5, atol=1e-2)


@pytest.mark.skipif(not HAS_ANTS, reason="antspyx is not installed (pip install -r requirements-baselines.txt)")
def test_ants_apply_transforms_gives_the_identical_label_map(pair, greedy_run):
    import ants

    out, _ = greedy_run
    fixed, moving = ants.image_read(str(pair["fixed"])), ants.image_read(str(pair["moving_seg"]))
    warped = ants.apply_transforms(fixed, moving, [str(out / "disp_itk.nii.gz")], interpolator="nearestNeighbor")
    assert np.array_equal(np.round(warped.numpy()).astype(np.int64), _load(out / "moved_label.nii.gz")[0])


def test_apply_reproduces_register_moved_label_and_image(pair, greedy_run, tmp_path):
    out, _ = greedy_run
    _apply([f"transform={out}", f"image={pair['moving_seg']}", "label=true", f"out={tmp_path / 'l.nii.gz'}"])
    label, img = _load(tmp_path / "l.nii.gz")
    assert np.array_equal(label, _load(out / "moved_label.nii.gz")[0]) and label.dtype.kind in "iu"
    assert np.allclose(img.affine, nib.load(str(pair["fixed"])).affine)
    _apply([f"transform={out / 'disp_itk.nii.gz'}", f"image={pair['moving']}", f"out={tmp_path / 'i.nii.gz'}"])
    assert np.allclose(_load(tmp_path / "i.nii.gz")[0], _load(out / "moved.nii.gz")[0], rtol=1e-5, atol=1e-3)


def test_a_sheared_fixed_grid_gets_no_itk_fields_and_a_sheared_itk_field_is_refused(pair, tmp_path, capsys):
    """ITK/ANTs images cannot be sheared: for a sheared fixed header register.py writes its own
    exact disp.nii.gz (apply.py reads it) but no disp_itk.nii.gz, and says so in transform.json and
    on the console; an ITK-form field with a sheared header is refused by name."""
    from data.transforms import ITK_INTENT, displacement_bytes

    array, img = _load(pair["fixed"])
    sheared = img.affine.copy()
    sheared[:3, :3] = sheared[:3, :3] @ np.array([[1.0, 0.15, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fixed = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(array, sheared), str(fixed))
    out = tmp_path / "out"
    record = _register({**pair, "fixed": fixed}, out, ["model=greedy", "model.scales=[1]", "model.iterations=[2]",
                                                       "device=cpu"])
    assert record["itk_fields"].startswith(f"not written: {fixed}'s affine is sheared")
    assert (out / "disp.nii.gz").exists() and not (out / "disp_itk.nii.gz").exists()
    assert "ITK/ANTs displacement files not written" in capsys.readouterr().out
    _apply([f"transform={out}", f"image={pair['moving']}", f"out={tmp_path / 'm.nii.gz'}"])
    assert np.allclose(_load(tmp_path / "m.nii.gz")[0], _load(out / "moved.nii.gz")[0], rtol=1e-5, atol=1e-3)
    # a qform cannot hold a shear: the outputs keep the sform alone (a fitted qform, which ITK would
    # read, would place them rotated), and the tool reads its own outputs back
    for name in ("moved.nii.gz", "disp.nii.gz", "jacobian_det.nii.gz"):
        header = nib.load(str(out / name)).header
        assert (int(header["sform_code"]), int(header["qform_code"])) == (2, 0), name
        assert np.allclose(header.get_sform(), sheared), name
    _apply([f"transform={out}", f"image={pair['moving']}", f"reference={out / 'moved.nii.gz'}",
            f"out={tmp_path / 'm2.nii.gz'}"])
    assert np.array_equal(_load(tmp_path / "m2.nii.gz")[0], _load(tmp_path / "m.nii.gz")[0])
    with pytest.raises(ValueError, match="sheared"):
        displacement_bytes(torch.zeros(1, 3, 4, 4, 4), sheared, "d.nii.gz", "itk")
    itk = tmp_path / "itk.nii.gz"
    itk.write_bytes(displacement_bytes(torch.zeros(1, 3, 4, 4, 4), img.affine, "itk.nii.gz", "itk"))
    field = nib.load(str(itk))
    assert field.header.get_intent()[2] == ITK_INTENT
    field = nib.Nifti1Image(np.asarray(field.dataobj), sheared, field.header)
    nib.save(field, str(itk))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _apply([f"transform={itk}", f"image={pair['moving']}", f"out={tmp_path / 'x.nii.gz'}"])
    _one_error(capsys, str(itk), "sheared grid")
    assert not (tmp_path / "x.nii.gz").exists()


def test_syn_inverse_inverts_and_apply_maps_fixed_labels_to_the_moving_grid(pair, tmp_path):
    out = tmp_path / "syn"
    record = _register(pair, out, ["model=syn", "model.iterations=[30,15,8]", "model.tolerance=0", "device=cpu",
                                   "model.affine={scales:[1],iterations:[0]}"])  # moments pre-alignment
    assert record["inverse"] == "inverse_disp.nii.gz" and (out / "inverse_disp_itk.nii.gz").exists()
    assert record["inverse_residual"]["max_voxels"] < 0.2 and record["inverse_residual"]["voxels"] > 10000
    assert record["affine_stage"]["file"] == "affine_itk.txt" and (out / "affine_itk.txt").exists()
    u = read_displacement(out / "disp.nii.gz").u.float()
    inv = read_displacement(out / "inverse_disp.nii.gz").u.float()
    core = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert compose_fields(u, inv)[core].abs().max() < 0.25 * u[core].abs().max()  # inverse up to the fixed-point solve
    _apply([f"transform={out}", "inverse=true", f"image={pair['fixed_seg']}", "label=true",
            f"out={tmp_path / 'back.nii.gz'}"])
    back, img = _load(tmp_path / "back.nii.gz")
    moving_seg, moving_img = _load(pair["moving_seg"])
    # the folder inverted as one entry of a list (invert=, antspyx's whichtoinvert): the same inverse
    _apply([f"transform=[{out}]", "invert=[true]", f"image={pair['fixed_seg']}", "label=true",
            f"out={tmp_path / 'back2.nii.gz'}"])
    assert np.array_equal(_load(tmp_path / "back2.nii.gz")[0], back)
    assert back.shape == moving_seg.shape and np.allclose(img.affine, moving_img.affine)
    from metrics import dice

    b, m = (torch.from_numpy(a.astype(np.int64)) for a in (back, moving_seg))
    assert dice(m, b, b).mean > 0.75
    # a method without inverse registered into the same folder: no stale inverse or affine is left
    record = _register(pair, out, ["model=greedy", "model.scales=[1]", "model.iterations=[1]", "device=cpu"])
    assert sorted(p.name for p in out.iterdir()) == sorted(record["files"])
    assert not (out / "inverse_disp_itk.nii.gz").exists() and not (out / "affine_itk.txt").exists()


def test_a_velocity_network_from_a_checkpoint_has_an_inverse(pair, tmp_path, capsys):
    """``ckpt_path=``: the model a checkpoint describes; a velocity field's inverse is exp(-v). A
    network trained on data in another voxel order than the fixed image's is refused, named."""
    from test_app import _save

    from app import build_model

    # the narrower vxm1: with every weight x3 it gives a visible field that is still invertible (the
    # default VoxelMorph-1's is folded, and the tool then rightly writes no inverse)
    model = build_model(compose("register", ["model=voxelmorph", "model.field=velocity", "model.net.variant=vxm1"]))
    with torch.no_grad():
        for p in model.net.parameters():  # a visible field from an untrained net
            p.mul_(3.0)
    ckpt = _save(model, tmp_path / "vxm.ckpt")
    record = _register(pair, tmp_path / "out", [f"ckpt_path={ckpt}", "device=cpu"])
    assert record["model"] == {"ckpt_path": str(Path(ckpt).resolve())} and record["inverse"] == "inverse_disp.nii.gz"
    u = read_displacement(tmp_path / "out" / "disp.nii.gz").u.float()
    inv = read_displacement(tmp_path / "out" / "inverse_disp.nii.gz").u.float()
    assert u.abs().max() > 0.05
    assert compose_fields(u, inv).abs().max() < 0.2 * u.abs().max()
    content = torch.load(ckpt, weights_only=True)
    content["registration"]["voxel_axes"] = "LIA"  # trained on LIA-stored data; the fixed image is RAS
    torch.save(content, tmp_path / "lia.ckpt")
    for overrides in ([f"ckpt_path={tmp_path / 'lia.ckpt'}"], ["model=greedy", f"model.init_from={tmp_path / 'lia.ckpt'}"]):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            _register(pair, tmp_path / "lia_out", [*overrides, "device=cpu"])
        _one_error(capsys, overrides[-1].split("=")[0] + ":", "voxel order LIA", f"fixed={pair['fixed']} is stored in RAS")
        assert not (tmp_path / "lia_out").exists()
    content["registration"]["voxel_axes"] = "RAS"  # trained on min-max normalised images: not what register.py gives
    content["registration"]["intensity_normalisation"] = "minmax"
    torch.save(content, tmp_path / "minmax.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _register(pair, tmp_path / "mm_out", [f"ckpt_path={tmp_path / 'minmax.ckpt'}", "device=cpu"])
    _one_error(capsys, "ckpt_path:", "normalised 'minmax'", "register.py normalises them 'percentile'")
    assert not (tmp_path / "mm_out").exists()


def test_register_with_inverse_of_the_methods():
    """Identity: zero inverse; greedy and a displacement net: none; SymNet: the swapped halves."""
    from classical import InstanceOptimisationModule
    from models import IdentityRegistration

    batch = {"fixed": torch.rand(1, 1, 16, 16, 16), "moving": torch.rand(1, 1, 16, 16, 16)}
    u, inv = IdentityRegistration().register_with_inverse(batch)
    assert torch.equal(inv, torch.zeros_like(u))
    greedy = InstanceOptimisationModule("greedy", scales=[1], iterations=[2], sim_kwargs={"window": 3})
    assert greedy.register_with_inverse(batch)[1] is None
    from app import build_model

    sym = build_model(compose("register", ["model=symnet"]))
    with torch.no_grad():
        u, inv = sym.register_with_inverse(batch)
        out = sym(batch["moving"], batch["fixed"])
        v_f, v_m = sym.half_velocities(out)
        swapped = sym.to_displacement(torch.cat([v_m, v_f], 1), (16, 16, 16))
    assert torch.equal(inv, swapped) and not torch.equal(inv, sym.to_displacement(-out, (16, 16, 16)))


# --------------------------------------------------------------------------- world space, analytic
def test_resampling_onto_a_flipped_grid_of_the_same_world_is_a_flip():
    rng = np.random.default_rng(0)
    image = rng.random((6, 7, 5)).astype(np.float32)
    label = rng.integers(0, 40000, (6, 7, 5))
    a = np.diag([2.0, 3.0, 1.5, 1.0])
    a[:3, 3] = [10, -4, 7]
    flipped = a.copy()
    flipped[:, 0] *= -1
    flipped[:3, 3] = a[:3, 3] + a[:3, 0] * 5  # LAS: voxel 0 on axis 0 sits where RAS voxel 5 does
    assert np.allclose(resample_to_grid(image, a, (6, 7, 5), flipped), image[::-1], atol=1e-6)
    assert np.array_equal(resample_to_grid(label, a, (6, 7, 5), flipped, kind="label"), label[::-1])
    # a grid twice as fine on axis 1: every other voxel is an original one
    fine = a.copy()
    fine[:3, 1] /= 2
    out = resample_to_grid(image, a, (6, 13, 5), fine)
    assert np.allclose(out[:, ::2], image, atol=1e-6)
    assert np.allclose(out[:, 1::2], (image[:, :-1] + image[:, 1:]) / 2, atol=1e-6)


def test_world_sampling_boundary_and_field_rules():
    """Half a voxel outside: the border value; beyond: 0. A field moves points by A[:3,:3] u."""
    img = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2).contiguous()
    coords = torch.zeros(3, 5, 1, 1, dtype=torch.float64)
    coords[0, :, 0, 0] = torch.tensor([-0.6, -0.4, 1.5, 3.4, 3.6])
    assert sample(img, coords)[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 1.5, 3.0, 0.0]
    a = np.array([[0.0, -2.0, 0.0, 5.0], [1.5, 0.0, 0.0, 1.0], [0.0, 0.0, 3.0, -2.0], [0, 0, 0, 1]])
    u = torch.zeros(1, 3, 4, 5, 6, dtype=torch.float64)
    u[:, 0], u[:, 1], u[:, 2] = 0.5, -1.0, 0.25
    p = grid_points((4, 5, 6), a)
    moved = displace_points(p, u, a)
    step = a[:3, :3] @ np.array([0.5, -1.0, 0.25])
    assert torch.allclose(moved - p, torch.tensor(step).view(3, 1, 1, 1).expand_as(p))
    outside = p + 100.0
    assert torch.equal(displace_points(outside, u, a), outside)


def test_transform_files_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = np.array([[0.0, -2.0, 0.0, 5.0], [1.5, 0.0, 0.0, 1.0], [0.0, 0.0, 3.0, -2.0], [0, 0, 0, 1]])
    u = torch.from_numpy(rng.standard_normal((1, 3, 5, 6, 4)).astype(np.float32))
    for kind in ("voxel", "itk"):
        path = tmp_path / f"{kind}.nii.gz"
        path.write_bytes(displacement_bytes(u, a, path, kind))
        stage = read_displacement(path)
        assert np.allclose(stage.affine, a) and torch.allclose(stage.u.float(), u, atol=1e-5)
    w = np.eye(4)
    w[:3, :3] = [[0.9, 0.1, 0.0], [-0.1, 1.1, 0.05], [0.0, 0.02, 0.95]]
    w[:3, 3] = [3.0, -2.0, 1.0]
    (tmp_path / "a.txt").write_text(itk_affine_text(w))
    assert np.allclose(read_affine(tmp_path / "a.txt").matrix, w)


@pytest.mark.skipif(not HAS_SITK, reason="SimpleITK is not installed (pip install -r requirements-baselines.txt)")
def test_apply_composes_an_affine_and_a_deformable_stage_as_itk_does(tmp_path):
    """transform=[warp, affine]: p -> affine(warp(p)), as antsApplyTransforms -t warp -t affine and
    SimpleITK's CompositeTransform (the last added acts first); the affine file is ours (ITK text),
    read by SimpleITK and ANTs too."""
    import SimpleITK as sitk

    rng = np.random.default_rng(2)
    shape = (20, 22, 18)
    a_f = np.diag([-1.8, 1.8, 1.8, 1.0])
    a_f[:3, 3] = [18, -20, -16]
    a_m = np.diag([1.5, 1.5, 1.5, 1.0])
    a_m[:3, 3] = [-15, -18, -14]
    g = np.stack(np.meshgrid(*[np.arange(s) for s in (24, 26, 22)], indexing="ij"))
    r = np.sqrt(((g - np.array([12, 13, 11])[:, None, None, None]) ** 2).sum(0))
    label = ((r < 9).astype(np.int16) + (r < 5) + (g[0] > 14) * (r < 9)).astype(np.int16)
    write_nifti(tmp_path / "m.nii.gz", label)
    nib.save(nib.Nifti1Image(label, a_m), str(tmp_path / "m.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), a_f), str(tmp_path / "f.nii.gz"))
    u = gaussian_blur(torch.from_numpy(rng.standard_normal((1, 3, *shape)).astype(np.float32)) * 5, 2.0)
    (tmp_path / "w.nii.gz").write_bytes(displacement_bytes(u, a_f, "w.nii.gz", "itk"))
    w = np.eye(4)
    th = 0.1
    w[:3, :3] = [[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.05]]
    w[:3, 3] = [2.0, -1.5, 1.0]
    (tmp_path / "a.txt").write_text(itk_affine_text(w))
    _apply([f"transform=[{tmp_path / 'w.nii.gz'},{tmp_path / 'a.txt'}]", f"image={tmp_path / 'm.nii.gz'}",
            "label=true", f"out={tmp_path / 'out.nii.gz'}"])  # reference: the warp's lattice
    ours = _load(tmp_path / "out.nii.gz")[0]
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(sitk.ReadTransform(str(tmp_path / "a.txt")))  # ITK: the last added acts first
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "w.nii.gz"),
                                                                           sitk.sitkVectorFloat64)))
    itk = sitk.Resample(sitk.ReadImage(str(tmp_path / "m.nii.gz")), sitk.ReadImage(str(tmp_path / "f.nii.gz")),
                        composite, sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0)), ours)
    assert len(np.unique(ours)) == 4
    if HAS_ANTS:
        import ants

        warped = ants.apply_transforms(ants.image_read(str(tmp_path / "f.nii.gz")), ants.image_read(str(tmp_path / "m.nii.gz")),
                                       [str(tmp_path / "w.nii.gz"), str(tmp_path / "a.txt")], interpolator="nearestNeighbor")
        assert np.array_equal(np.round(warped.numpy()).astype(np.int64), ours)
    # the same chain through the library, and the order matters
    chain = transform_volume([FieldStage(u, a_f), AffineStage(w)], label, a_m, shape, a_f, "label")
    other = transform_volume([AffineStage(w), FieldStage(u, a_f)], label, a_m, shape, a_f, "label")
    assert np.array_equal(chain, ours) and not np.array_equal(other, ours)


@pytest.mark.skipif(not HAS_ANTS, reason="antspyx is not installed (pip install -r requirements-baselines.txt)")
def test_an_ants_mat_affine_reads_as_ants_applies_it(tmp_path):
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=np.array([[1.02, 0.05, 0.0], [-0.04, 0.98, 0.02], [0.0, 0.01, 1.0]]),
                                    translation=(1.5, -2.0, 0.5), center=(3.0, 1.0, -2.0))
    ants.write_transform(tx, str(tmp_path / "a.mat"))
    stage = read_affine(tmp_path / "a.mat")
    lps = np.array([[10.0, -4.0, 3.0], [0.0, 0.0, 0.0], [-7.0, 2.0, 11.0]])
    expected = np.array([tx.apply_to_point(tuple(p)) for p in lps])
    ras = lps * np.array([-1, -1, 1])
    got = (stage.matrix[:3, :3] @ ras.T + stage.matrix[:3, 3:]).T * np.array([-1, -1, 1])
    assert np.allclose(got, expected, atol=1e-9)


# --------------------------------------------------------------------------- pairs CSV
def test_pairs_csv_resample_fixed_loads_the_moving_image_on_the_fixed_grid(pair, tmp_path):
    from data.pairs_csv import PairsCSVDataset

    csv = tmp_path / "pairs.csv"
    csv.write_text("fixed,moving,fixed_label,moving_label\n"
                   f"{pair['fixed']},{pair['moving']},{pair['fixed_seg']},{pair['moving_seg']}\n")
    with pytest.raises(DataError, match="moving.nii.gz has shape .*data.resample=fixed"):
        PairsCSVDataset(csv)
    (tmp_path / "m.nii.gz").write_bytes(pair["moving"].read_bytes())
    flipped = tmp_path / "flipped.csv"  # the fixed image stored LAS: same shape, another grid
    img = nib.load(str(pair["fixed"]))
    las = img.affine @ np.array([[-1, 0, 0, 39], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), las), str(tmp_path / "las.nii.gz"))
    flipped.write_text(f"fixed,moving\n{pair['fixed']},{tmp_path / 'las.nii.gz'}\n")
    with pytest.raises(DataError, match="not on one grid in world space .orientation RAS vs LAS.*data.resample=fixed"):
        PairsCSVDataset(flipped)
    item = PairsCSVDataset(flipped, resample="fixed")[0]  # resampled back: the fixed image itself
    assert torch.allclose(item["moving"], item["fixed"], atol=1e-6)
    ds = PairsCSVDataset(csv, resample="fixed")
    item = ds[0]
    fixed_shape = nib.load(str(pair["fixed"])).shape
    assert tuple(item["moving"].shape) == (1, *fixed_shape) == tuple(item["moving_label"].shape)
    a_f, a_m = nib.load(str(pair["fixed"])).affine, nib.load(str(pair["moving"])).affine
    expected = resample_to_grid(_load(pair["moving_seg"])[0], a_m, fixed_shape, a_f, kind="label")
    assert np.array_equal(item["moving_label"][0].numpy(), expected)
    assert float(item["moving"].max()) <= 1.0 and float(item["moving"].max()) > 0.9  # normalised, then resampled
    # the setting is part of the signature (a results folder recomputes the pair when it changes)
    same = tmp_path / "same.csv"
    same.write_text(f"fixed,moving\n{pair['fixed']},{pair['fixed']}\n")
    assert PairsCSVDataset(same).pair_signature(0) != PairsCSVDataset(same, resample="fixed").pair_signature(0)


def test_pairs_csv_resample_refuses_a_moving_image_outside_the_fixed_grid(pair, tmp_path):
    from data.pairs_csv import PairsCSVDataset

    img = nib.load(str(pair["moving"]))
    far = img.affine.copy()
    far[:3, 3] += 1000.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), str(tmp_path / "far.nii.gz"))
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"fixed,moving\n{pair['fixed']},{tmp_path / 'far.nii.gz'}\n")
    with pytest.raises(DataError, match=r"row 1 .*column 'moving'.*far.nii.gz: no voxel of it lies on the grid"):
        PairsCSVDataset(csv, resample="fixed")


def test_eval_save_outputs_writes_vector_displacements_ours_and_itk(pairs_csv, tmp_path):
    import eval as eval_entry

    out = tmp_path / "ev"
    eval_entry.evaluate(compose("eval", [f"paths.output_dir={out}", "trainer.accelerator=cpu",
                                         "trainer.enable_progress_bar=false", "model=identity", "data=pairs_csv",
                                         f"data.csv={pairs_csv}", "save_outputs=true"]))
    ours, itk = out / "moved" / "f0__m0_disp.nii.gz", out / "moved" / "f0__m0_disp_itk.nii.gz"
    assert nib.load(str(ours)).shape == (32, 32, 32, 1, 3) and nib.load(str(ours)).header.get_intent()[0] == "vector"
    assert nib.load(str(itk)).header.get_intent()[2] == ITK_INTENT
    assert torch.equal(read_displacement(ours).u, torch.zeros(1, 3, 32, 32, 32, dtype=torch.float64))


# --------------------------------------------------------------------------- bad input: one line, nothing written
def test_register_missing_file_and_missing_key(pair, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        _register({"fixed": pair["fixed"], "moving": tmp_path / "nope.nii.gz"}, out, ["model=identity"])
    _one_error(capsys, "nope.nii.gz", "file not found")
    with pytest.raises(SystemExit):
        register_entry.register(compose("register", [f"fixed={pair['fixed']}", f"out={out}"]))
    _one_error(capsys, "moving is not set")
    with pytest.raises(SystemExit):
        _register(pair, out, ["model=identity", f"fixed_label={pair['fixed_seg']}"])
    _one_error(capsys, "fixed_label=", "needs moving_label")
    assert not out.exists()


def test_register_refuses_a_label_map_off_its_image_grid(pair, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):  # the fixed label map given as the moving one: another grid
        _register(pair, out, ["model=identity", f"moving_label={pair['fixed_seg']}"])
    _one_error(capsys, "fixed_seg.nii.gz", "moving_label", "moving.nii.gz", "not on the grid of its image")
    assert not out.exists()


def test_register_refuses_an_image_whose_affine_cannot_be_resampled(pair, tmp_path, capsys):
    img = nib.load(str(pair["moving"]))
    flat = img.affine.copy()
    flat[:3, 2] = flat[:3, 0]  # axes 0 and 2 point the same way: no world position for a voxel
    bad = nib.Nifti1Image(np.asarray(img.dataobj), flat)
    bad.header.set_zooms((2.5, 2.5, 2.5))
    nib.save(bad, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(SystemExit):
        _register({"fixed": pair["fixed"], "moving": tmp_path / "flat.nii.gz"}, tmp_path / "out", ["model=identity"])
    _one_error(capsys, "flat.nii.gz", "cannot be resampled")
    assert not (tmp_path / "out").exists()


def test_register_writes_all_or_nothing(pair, tmp_path, monkeypatch, capsys):
    real = os.replace

    def failing(src, dst, *a, **k):
        if str(dst).endswith("jacobian_det.nii.gz"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        _register(pair, out, ["model=identity", f"moving_label={pair['moving_seg']}"])
    _one_error(capsys, "jacobian_det.nii.gz", "No space left on device")
    assert not out.exists() or not any(out.iterdir())


def test_apply_inverts_an_affine_entry_as_ants_does(tmp_path, capsys):
    """invert=[...] (antspyx's whichtoinvert, antsApplyTransforms -t [T,1]): an affine entry is
    inverted exactly: [A, A] with invert=[false, true] maps every point back onto itself (the label
    map comes back unchanged), A inverted equals the file of A^-1, and SimpleITK's inverse of the
    same file resamples to the same labels. A displacement entry is not inverted (named), and a
    flag list of the wrong length is one error naming invert."""
    shape = (14, 12, 10)
    a_img = np.diag([1.5, 1.5, 2.0, 1.0])
    a_img[:3, 3] = [-10, -9, -8]
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    r = np.sqrt(((g - np.array([7, 6, 5])[:, None, None, None]) ** 2).sum(0))
    label = ((r < 5).astype(np.int16) + (r < 3) + (g[0] > 8) * (r < 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(label, a_img), str(tmp_path / "m.nii.gz"))
    w = np.eye(4)
    th = 0.2
    w[:3, :3] = [[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.1]]
    w[:3, 3] = [1.5, -2.0, 0.5]
    (tmp_path / "a.txt").write_text(itk_affine_text(w))
    (tmp_path / "a_inv.txt").write_text(itk_affine_text(np.linalg.inv(w)))
    common = [f"image={tmp_path / 'm.nii.gz'}", "label=true", f"reference={tmp_path / 'm.nii.gz'}"]
    _apply([f"transform=[{tmp_path / 'a.txt'},{tmp_path / 'a.txt'}]", "invert=[false,true]", *common,
            f"out={tmp_path / 'round.nii.gz'}"])
    assert np.array_equal(_load(tmp_path / "round.nii.gz")[0], label)
    _apply([f"transform=[{tmp_path / 'a.txt'}]", "invert=[true]", *common, f"out={tmp_path / 'inv.nii.gz'}"])
    _apply([f"transform={tmp_path / 'a_inv.txt'}", *common, f"out={tmp_path / 'file.nii.gz'}"])
    inverted = _load(tmp_path / "inv.nii.gz")[0]
    assert np.array_equal(inverted, _load(tmp_path / "file.nii.gz")[0]) and not np.array_equal(inverted, label)
    if HAS_SITK:
        import SimpleITK as sitk

        image = sitk.ReadImage(str(tmp_path / "m.nii.gz"))
        itk = sitk.Resample(image, image, sitk.ReadTransform(str(tmp_path / "a.txt")).GetInverse(),
                            sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0)), inverted)
    field = tmp_path / "w.nii.gz"
    field.write_bytes(displacement_bytes(torch.zeros(1, 3, *shape), a_img, field.name, "itk"))
    cases = [([f"transform=[{tmp_path / 'a.txt'},{field}]", "invert=[false,true]"], ("w.nii.gz", "displacement field")),
             ([f"transform=[{tmp_path / 'a.txt'},{field}]", "invert=[true]"], ("invert", "one per transform entry")),
             ([f"transform=[{tmp_path / 'a.txt'}]", "invert=[yes]"], ("invert", "true/false"))]
    for overrides, words in cases:
        with pytest.raises(SystemExit):
            _apply([*overrides, *common, f"out={tmp_path / 'bad.nii.gz'}"])
        _one_error(capsys, *words)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_apply_bad_transforms_name_the_folder_and_file(pair, greedy_run, tmp_path, capsys):
    out, _ = greedy_run
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "transform.json").write_text((out / "transform.json").read_text())
    target = tmp_path / "y.nii.gz"
    cases = [
        ([f"transform={broken}"], ("broken", "missing disp.nii.gz")),
        ([f"transform={tmp_path}"], (str(tmp_path), "transform.json is missing")),
        ([f"transform={out}", "inverse=true"], ("greedy computed no inverse",)),
        ([f"transform={tmp_path / 'none.nii.gz'}"], ("none.nii.gz", "not found")),
        ([f"transform={out}", f"out={tmp_path / 'y.txt'}"], ("out=", "must name a NIfTI file")),
    ]
    for overrides, words in cases:
        args = [f"image={pair['moving']}", f"out={target}"] + overrides
        with pytest.raises(SystemExit):
            _apply(args)
        _one_error(capsys, *words)
    with pytest.raises(SystemExit):  # label=true on an intensity image: refused, named
        _apply([f"transform={out}", f"image={pair['moving']}", "label=true", f"out={target}"])
    _one_error(capsys, "moving.nii.gz", "non-integer")
    assert not target.exists()


def test_cli_apply_end_to_end(pair, greedy_run, tmp_path):
    """Through the real command line (Hydra): only the output is written, no run folder."""
    import subprocess

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out, _ = greedy_run
    r = subprocess.run([sys.executable, str(ROOT / "apply.py"), f"transform={out}", f"image={pair['moving_seg']}",
                        "label=true", "out=y.nii.gz"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.nii.gz"]
    assert np.array_equal(_load(tmp_path / "y.nii.gz")[0], _load(out / "moved_label.nii.gz")[0])


@pytest.mark.parametrize("intent, sign", [("vector", -1.0), ("displacement vector", 1.0)])
def test_a_foreign_field_is_read_in_the_frame_its_intent_names(intent, sign, tmp_path):
    """ITK/ANTs write displacements as NIfTI 'vector' (1007) in LPS mm; NIfTI's own
    'displacement vector' (1006) is RAS mm (ITK 5.4 reads it so): +3 mm along the first world axis
    of a RAS 1 mm grid is u = -3 voxels along axis 0 in the first case, +3 in the second."""
    from data.transforms import read_displacement

    d = np.zeros((6, 6, 6, 1, 3), np.float32)
    d[..., 0] = 3.0
    img = nib.Nifti1Image(d, np.eye(4))
    img.header.set_intent(intent, ())
    nib.save(img, str(tmp_path / "f.nii.gz"))
    u = read_displacement(tmp_path / "f.nii.gz").u
    assert torch.allclose(u[0, 0], torch.full((6, 6, 6), 3.0 * sign, dtype=u.dtype)) and u[0, 1:].abs().max() == 0


def test_apply_reproduces_moved_label_with_the_folders_label_interp(pair, tmp_path):
    """register.py with model.label_interp=linear: apply.py label=true on the folder reads the same
    interpolation from transform.json and reproduces moved_label exactly (nearest differed)."""
    out = tmp_path / "lin"
    _register(pair, out, GREEDY_SHORT + ["model.label_interp=linear", f"moving_label={pair['moving_seg']}"])
    _apply([f"transform={out}", f"image={pair['moving_seg']}", "label=true", f"out={tmp_path / 'a.nii.gz'}"])
    moved = _load(out / "moved_label.nii.gz")[0]
    assert np.array_equal(_load(tmp_path / "a.nii.gz")[0], moved)
    _apply([f"transform={out}", f"image={pair['moving_seg']}", "label=true", "label_interp=nearest",
            f"out={tmp_path / 'n.nii.gz'}"])
    assert not np.array_equal(_load(tmp_path / "n.nii.gz")[0], moved)  # the case tells the two apart


def test_linear_label_resampling_reads_zero_outside_a_map_without_background(tmp_path):
    """A label map with ids 1 and 2 only, read onto a larger grid: outside it, 0 (as nearest), not
    its smallest id."""
    from data.transforms import resample_to_grid, transform_volume

    lab = np.ones((8, 8, 8), np.int64)
    lab[4:] = 2
    big = np.eye(4)
    big[:3, 3] = -4.0
    nearest = resample_to_grid(lab, np.eye(4), (16, 16, 16), big, kind="label")
    linear = transform_volume((), lab, np.eye(4), (16, 16, 16), big, kind="label", interp="linear")
    assert nearest[0, 0, 0] == 0 and linear[0, 0, 0] == 0
    assert np.array_equal(nearest, linear)  # integer shift: both read the same voxels


def test_a_reference_with_a_singular_affine_is_named(pair, tmp_path, capsys):
    ref = tmp_path / "flat.nii.gz"
    img = nib.Nifti1Image(np.zeros((6, 6, 6), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)
    img.set_qform(None, code=0)
    nib.save(img, str(ref))
    from data.transforms import itk_affine_text

    (tmp_path / "id.txt").write_text(itk_affine_text(np.eye(4)))
    with pytest.raises(SystemExit):
        _apply([f"transform={tmp_path / 'id.txt'}", f"image={pair['moving']}", f"reference={ref}",
                f"out={tmp_path / 'x.nii.gz'}"])
    _one_error(capsys, str(ref), "affine")
    assert not (tmp_path / "x.nii.gz").exists()


def test_an_input_whose_sform_and_qform_disagree_is_refused(pair, tmp_path, capsys):
    """sform (code 2) rotated 15 degrees, qform (code 1) not: nibabel places the image by the
    sform, ITK/ANTs by the qform, so the ITK exports would act on another image: refused by name."""
    array, img = _load(pair["moving"])
    th = np.deg2rad(15)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    both = nib.Nifti1Image(array, img.affine)
    both.set_qform(img.affine, code=1)
    both.set_sform(rot @ img.affine, code=2)
    path = tmp_path / "both.nii.gz"
    nib.save(both, str(path))
    with pytest.raises(SystemExit):
        _register({**pair, "moving": path}, tmp_path / "out", GREEDY_SHORT)
    _one_error(capsys, str(path), "sform (code 2) and qform (code 1) describe different grids")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    both.set_qform(rot @ img.affine, code=1)  # agreeing: accepted
    nib.save(both, str(path))
    from data.io import check_itk_header

    check_itk_header(path)


def test_an_image_placed_nowhere_in_world_space_is_refused(pair, tmp_path, capsys):
    """A NIfTI with sform and qform codes 0 (or an Analyze file) has no world position: nibabel
    guesses one, ITK another, so registering it in world space or exporting for ITK would be
    silently wrong. register.py, apply.py and a pairs CSV that resamples refuse it, named."""
    array, img = _load(pair["fixed"])
    nowhere = nib.Nifti1Image(array, img.affine)
    nowhere.set_sform(None, code=0)
    nowhere.set_qform(None, code=0)
    path = tmp_path / "nowhere.nii.gz"
    nib.save(nowhere, str(path))
    analyze = tmp_path / "analyze.img"
    nib.save(nib.AnalyzeImage(array, img.affine), str(analyze))
    from data.transforms import itk_affine_text

    (tmp_path / "id.txt").write_text(itk_affine_text(np.eye(4)))
    for bad in (path, analyze):
        with pytest.raises(SystemExit):
            _register({**pair, "fixed": bad}, tmp_path / "out", GREEDY_SHORT)
        _one_error(capsys, str(bad), "no position in world space", "qform/sform")
        assert not (tmp_path / "out").exists()
        with pytest.raises(SystemExit):
            _apply([f"transform={tmp_path / 'id.txt'}", f"image={pair['moving']}", f"reference={bad}",
                    f"out={tmp_path / 'x.nii.gz'}"])
        _one_error(capsys, str(bad), "no position in world space")
        assert not (tmp_path / "x.nii.gz").exists()
    # a pairs CSV: on one grid, voxel space is all it needs (accepted); resampled across, refused
    from data.pairs_csv import PairsCSVDataset

    csv = tmp_path / "pairs.csv"
    csv.write_text(f"fixed,moving\n{path},{path}\n")
    PairsCSVDataset(csv, resample="fixed").validate()
    csv.write_text(f"fixed,moving\n{pair['fixed']},{analyze}\n")
    from data.io import DataError

    with pytest.raises(DataError, match=f"{analyze}: it has an Analyze header.*cannot be resampled"):
        ds = PairsCSVDataset(csv, resample="fixed")
        ds.validate()


def test_apply_refuses_an_empty_result_and_overwriting_its_reference(pair, greedy_run, tmp_path, capsys):
    """An image in another world space than the transform's (here: its origin moved 500 mm) would
    come out all background, an 'empty segmentation' passed off as a result: refused, named. The
    output may not overwrite the reference image either."""
    out, _ = greedy_run
    for key, kind in (("moving_seg", ["label=true"]), ("moving", [])):
        array, img = _load(pair[key])
        far = img.affine.copy()
        far[:3, 3] += 500.0
        moved = tmp_path / f"far_{key}.nii.gz"
        nib.save(nib.Nifti1Image(array, far), str(moved))
        with pytest.raises(SystemExit):
            _apply([f"transform={out}", f"image={moved}", *kind, f"out={tmp_path / 'y.nii.gz'}"])
        _one_error(capsys, str(moved), "no voxel of it lies on the output grid")
        assert not (tmp_path / "y.nii.gz").exists()
    ref = tmp_path / "ref.nii.gz"
    ref.write_bytes(Path(pair["fixed"]).read_bytes())
    with pytest.raises(SystemExit):
        _apply([f"transform={out}", f"image={pair['moving']}", f"reference={ref}", f"out={ref}"])
    _one_error(capsys, "would overwrite an input")
    assert ref.read_bytes() == Path(pair["fixed"]).read_bytes()


def test_an_inverse_that_does_not_undo_the_field_is_not_written(pair, tmp_path, monkeypatch, capsys):
    """A method's inverse is checked (spatial.inverse_residual): one that leaves more than half a
    voxel (here: the forward field itself, the wrong way round) is not written; transform.json and
    the console say why."""
    from classical.module import InstanceOptimisationModule

    def wrong_inverse(self, batch):
        u = self.register(batch)
        return u, u  # not the inverse

    monkeypatch.setattr(InstanceOptimisationModule, "register_with_inverse", wrong_inverse)
    out = tmp_path / "out"
    record = _register(pair, out, ["model=greedy", "model.scales=[1]", "model.iterations=[5]", "device=cpu"])
    assert record["inverse"] is None and not (out / "inverse_disp.nii.gz").exists()
    assert record["inverse_residual"]["max_voxels"] > 0.5
    assert record["inverse_residual"]["note"].startswith("inverse not written")
    assert "inverse not written" in capsys.readouterr().out


def test_a_clapirn_checkpoint_registers_at_the_code_asked_and_records_it(pair, tmp_path, capsys):
    """register.py reg_code=... tests a cLapIRN checkpoint at that code (record.json names it; another
    code gives another field); a method that is not conditional refuses the key, named."""
    from test_app import _save

    from app import build_model

    model = build_model(compose("register", ["model=clapirn", "model.net.channels=4", "model.net.n_res_blocks=1"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.net.parameters():  # a visible field from an untrained net
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    ckpt = _save(model, tmp_path / "clapirn.ckpt")
    fields = {}
    for code in (0.0, 1.0):
        out = tmp_path / f"out{code}"
        record = _register(pair, out, [f"ckpt_path={ckpt}", "device=cpu", f"reg_code={code}"])
        assert record["model"]["reg_code"] == code
        fields[code] = read_displacement(out / "disp.nii.gz").u.float()
    assert (fields[0.0] - fields[1.0]).abs().max() > 1e-3
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _register(pair, tmp_path / "bad", GREEDY_SHORT + ["device=cpu", "reg_code=0.5"])
    _one_error(capsys, "reg_code=0.5", "not a conditional network")
    assert not (tmp_path / "bad").exists()


def test_headers_itk_would_read_otherwise_are_refused(pair, tmp_path, capsys):
    """Two headers nibabel and ITK/ANTs read differently (found by a review: ANTs then gave another
    moved image than moved.nii.gz, silently): voxel sizes in microns (ITK scales them by 1e-3; this
    project reads every file in mm), and pixdim 1.0009 against an affine of 1.0, within the per-voxel
    tolerance but 0.14 mm apart across 160 voxels (ITK spaces voxels by pixdim). Both refused by
    name; a float32-level difference passes."""
    from data.io import check_itk_header, read_grid

    array, img = _load(pair["moving"])
    micron = nib.Nifti1Image(array, img.affine)
    micron.header.set_xyzt_units("micron")
    nib.save(micron, str(tmp_path / "micron.nii.gz"))
    with pytest.raises(SystemExit):
        _register({**pair, "moving": tmp_path / "micron.nii.gz"}, tmp_path / "out", GREEDY_SHORT)
    _one_error(capsys, "micron.nii.gz", "micron", "mm")
    assert not (tmp_path / "out").exists()
    for unit in ("mm", "unknown"):
        micron.header.set_xyzt_units(unit)
        nib.save(micron, str(tmp_path / "ok.nii.gz"))
        read_grid(tmp_path / "ok.nii.gz")

    stripe = np.zeros((160, 12, 12), np.float32)
    stripe[::8] = 1.0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for zoom, refused in ((1.0009, True), (1.0 + 1e-6, False)):
        out = nib.Nifti1Image(stripe, affine)
        out.set_sform(affine, code=1)
        out.set_qform(affine, code=1)
        out.header.set_zooms((zoom, 1.0, 1.0))  # pixdim only: the sform keeps 1.0
        path = tmp_path / f"pixdim_{zoom}.nii.gz"
        nib.save(out, str(path))
        assert read_grid(path).spacing[0] == pytest.approx(zoom, abs=1e-6)  # each voxel within SPACING_TOLERANCE
        if refused:
            with pytest.raises(DataError, match="across axis 0"):
                check_itk_header(path)
        else:
            check_itk_header(path)


def _fine_moving_pair(folder: Path) -> dict[str, Path]:
    """A 2 mm fixed grid and a 1 mm moving grid over the same world; label 9 is one 1 mm voxel of the
    moving map at odd indices (no 2 mm voxel centre is nearest to it), and one 2 mm voxel of the
    fixed map: present in both maps as stored, gone once the moving map is resampled onto the fixed grid."""
    rng = np.random.default_rng(0)
    small = ndimage.gaussian_filter(rng.random((16, 16, 16)), 2.0)
    fine = ndimage.zoom(small, 2, order=1)
    a_f, a_m = np.diag([2.0, 2.0, 2.0, 1.0]), np.eye(4)
    # fixed voxel i is centred at world 2i, on moving voxel 2i: moving voxel 21 is nobody's nearest
    f_lab = np.zeros((16, 16, 16), np.int16)
    f_lab[2:14, 2:14, 2:8] = 1
    f_lab[10, 10, 10] = 9
    m_lab = np.zeros((32, 32, 32), np.int16)
    m_lab[4:28, 4:28, 4:16] = 1
    m_lab[21, 21, 21] = 9
    out = {}
    for name, (array, affine) in {"fixed": (small.astype(np.float32), a_f), "moving": (fine.astype(np.float32), a_m),
                                  "fixed_seg": (f_lab, a_f), "moving_seg": (m_lab, a_m)}.items():
        out[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(out[name]))
    return out


def test_a_label_lost_when_the_moving_map_is_resampled_is_scored_not_skipped(tmp_path, capsys):
    """register.py scores the labels of both maps as stored (label 9: erased, Dice 0), before and after;
    a pairs CSV that would carry such a map onto the fixed grid refuses it by name in validate()."""
    from data.pairs_csv import PairsCSVDataset

    files = _fine_moving_pair(tmp_path)
    a_f, a_m = nib.load(str(files["fixed"])).affine, nib.load(str(files["moving"])).affine
    on_fixed = resample_to_grid(_load(files["moving_seg"])[0], a_m, (16, 16, 16), a_f, kind="label")
    assert 9 not in np.unique(on_fixed) and 1 in np.unique(on_fixed)  # the premise: the resampling loses it
    _register(files, tmp_path / "out", ["model=identity", f"fixed_label={files['fixed_seg']}",
                                        f"moving_label={files['moving_seg']}"])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(metrics["dice_per_label"]) == ["1", "9"] and metrics["dice_per_label"]["9"] == 0.0
    assert metrics["erased_labels"] == [9] and metrics["n_erased"] == 1
    assert metrics["dice"] == pytest.approx((metrics["dice_per_label"]["1"] + 0.0) / 2)
    assert metrics["dice_identity"] == pytest.approx(metrics["dice"])  # identity: the same labels, the same maps
    csv = tmp_path / "pairs.csv"
    csv.write_text("fixed,moving,fixed_label,moving_label\n"
                   f"{files['fixed']},{files['moving']},{files['fixed_seg']},{files['moving_seg']}\n")
    with pytest.raises(DataError, match=r"row 1.*column 'moving_label'.*moving_seg.nii.gz: label\(s\) 9 vanish "
                                        r"when this label map is resampled .*fixed_seg.nii.gz"):
        PairsCSVDataset(csv, resample="fixed").validate()
