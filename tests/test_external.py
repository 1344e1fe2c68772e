"""classical/external.py: ANTs SyN and SimpleITK demons through the project's eval path.

* converters (analytic): a known translation / smooth field, on grids with non-uniform spacing
  and a flipped, permuted affine, applied by ANTs or SimpleITK themselves warps an image exactly
  as :func:`spatial.warp` does with the converted voxel-unit field;
* a real registration of a small MNI-derived pair raises Dice (ANTs ``fast``, demons);
* ``eval.py model=demons`` writes the results contract; a missing optional package ends in one
  line naming ``requirements-baselines.txt``.

Tests needing antspyx or SimpleITK skip when the package is missing.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import ROOT, compose

sys.path.insert(0, str(ROOT))
from classical.external import AntsSyNRegistration, DemonsRegistration  # noqa: E402
from classical.itk_bridge import (  # noqa: E402
    INSTALL_HINT,
    ants_to_voxel_displacement,
    ants_transforms_to_voxel_displacement,
    itk_displacement_to_voxel,
    itk_geometry,
    missing_requirement,
    to_ants_image,
    to_sitk_image,
    voxel_to_physical_displacement,
)
from spatial import warp  # noqa: E402

SHAPE = (20, 24, 18)
# name -> (spacing, affine): the geometry of the fixed grid as a batch would give it
GEOMETRIES = {
    "unit": ((1.0, 1.0, 1.0), None),
    "anisotropic": ((1.0, 1.5, 2.0), None),
    # axes permuted, axis 2 flipped, non-uniform spacing, origin off zero
    "flipped_affine": (None, np.array([[0.0, 0.0, -1.5, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 1.0, 0.0, 3.0],
                                       [0.0, 0.0, 0.0, 1.0]])),
}
INTERIOR = (slice(3, -3),) * 3
SHIFT = (1.5, -2.0, 0.75)  # voxels along array axes 0, 1, 2


def _importorskip(module):
    """pytest.importorskip through classical.external (ANTs: sets its thread count first)."""
    from classical.itk_bridge import import_ants, import_sitk

    target = {"ants": "AntsSyNRegistration", "SimpleITK": "DemonsRegistration"}[module]
    reason = missing_requirement(target)
    if reason:
        pytest.skip(reason)
    return import_ants() if module == "ants" else import_sitk()


def _geometry(name):
    spacing, affine = GEOMETRIES[name]
    return itk_geometry(3, spacing, affine)


def _moving(shape=SHAPE, seed=0):
    img = gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _constant(u, shape=SHAPE):
    return torch.tensor(u, dtype=torch.float32).view(1, len(shape), *([1] * len(shape))).expand(1, len(shape), *shape)


def _smooth_field(shape=SHAPE, amplitude=2.0, seed=1):
    rng = np.random.default_rng(seed)
    u = np.stack([gaussian_filter(rng.standard_normal(shape), 3.0) for _ in shape])
    return torch.from_numpy((amplitude * u / np.abs(u).max()).astype(np.float32))[None]


def _ours(moving, u):
    return warp(torch.from_numpy(moving)[None, None], u.float())[0, 0].numpy()


# --------------------------------------------------------------------------- geometry
def test_itk_geometry_matches_nifti_affine_in_lps():
    """Index -> physical of the built ITK images is the NIfTI affine with x, y negated (LPS)."""
    ants = _importorskip("ants")
    _importorskip("SimpleITK")
    _, affine = GEOMETRIES["flipped_affine"]
    g = _geometry("flipped_affine")
    idx = (1, 2, 3)
    want = np.diag([-1.0, -1.0, 1.0]) @ (affine[:3, :3] @ np.array(idx) + affine[:3, 3])
    a = to_ants_image(np.zeros(SHAPE, np.float32), g)
    s = to_sitk_image(np.zeros(SHAPE, np.float32), g)
    assert np.allclose(ants.transform_index_to_physical_point(a, idx), want)
    assert np.allclose(s.TransformIndexToPhysicalPoint(idx), want)
    assert s.GetSize() == SHAPE and a.shape == SHAPE


# --------------------------------------------------------------------------- ANTs converters
@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
def test_ants_translation_transform_file_is_converted_exactly(geom, tmp_path):
    """An ANTs translation p -> p + t (a .mat file) becomes u = M^-1 t, and ANTs' own warp of the
    moving image equals spatial.warp with that u."""
    ants = _importorskip("ants")
    g = _geometry(geom)
    t = g.matrix @ np.array(SHIFT)  # physical translation of SHIFT voxels
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=tuple(t))
    path = str(tmp_path / "t.mat")
    ants.write_transform(tx, path)
    fixed = to_ants_image(np.zeros(SHAPE, np.float32), g)
    u = ants_transforms_to_voxel_displacement([path], fixed)
    assert u.shape == (1, 3, *SHAPE)
    assert torch.allclose(u, _constant(SHIFT), atol=1e-4)
    moving = _moving()
    theirs = ants.apply_transforms(fixed, to_ants_image(moving, g), [path]).numpy()
    assert np.abs(theirs - _ours(moving, u))[INTERIOR].max() < 1e-4


@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
def test_ants_displacement_field_matches_spatial_warp(geom, tmp_path):
    """A smooth field written as an ANTs warp: antsApplyTransforms == spatial.warp(converted)."""
    ants = _importorskip("ants")
    g = _geometry(geom)
    u_true = _smooth_field()
    field = to_ants_image(voxel_to_physical_displacement(u_true, g), g, components=True)
    assert torch.allclose(ants_to_voxel_displacement(field), u_true, atol=1e-5)
    path = str(tmp_path / "warp.nii.gz")
    ants.image_write(field, path)
    fixed = to_ants_image(np.zeros(SHAPE, np.float32), g)
    moving = _moving()
    theirs = ants.apply_transforms(fixed, to_ants_image(moving, g), [path]).numpy()
    assert np.abs(theirs - _ours(moving, u_true))[INTERIOR].max() < 1e-4
    assert torch.allclose(ants_transforms_to_voxel_displacement([path], fixed), u_true, atol=1e-4)


def test_ants_paper_path_orders_initial_translation_and_warp():
    """The 'paper' preset with 0 SyN iterations is its centre-of-mass start alone: moving = fixed
    shifted by whole voxels (on a flipped, anisotropic grid) gives u = the shift."""
    _importorskip("ants")
    g = _geometry("flipped_affine")
    fixed = np.zeros((24, 28, 22), np.float32)
    fixed[6:16, 8:20, 5:15] = _moving((10, 12, 10))
    moving = np.roll(fixed, (2, -3, 1), axis=(0, 1, 2))  # moving(x + s) = fixed(x): u = s
    u = AntsSyNRegistration(preset="paper", reg_iterations=[0, 0, 0, 0]).register_arrays(fixed, moving, g)
    assert torch.allclose(u, _constant((2.0, -3.0, 1.0), fixed.shape), atol=1e-3)


def test_ants_inverse_of_the_initial_translation_is_its_negative():
    """The 'paper' preset's inverse takes the centre-of-mass affine inverted (antspyx's
    invtransforms order): with 0 SyN iterations, u = the shift and its inverse = minus it."""
    _importorskip("ants")
    g = _geometry("flipped_affine")
    fixed = np.zeros((24, 28, 22), np.float32)
    fixed[6:16, 8:20, 5:15] = _moving((10, 12, 10))
    moving = np.roll(fixed, (2, -3, 1), axis=(0, 1, 2))
    u, inv = AntsSyNRegistration(preset="paper", reg_iterations=[0, 0, 0, 0]).register_arrays(
        fixed, moving, g, inverse=True)
    assert torch.allclose(u, _constant((2.0, -3.0, 1.0), fixed.shape), atol=1e-3)
    assert torch.allclose(inv, _constant((-2.0, 3.0, -1.0), fixed.shape), atol=1e-3)


def test_ants_syn_inverse_undoes_its_forward_field(mni_pair):
    """register_with_inverse (register.py's path): ANTs' inverse warp composed after the forward
    field leaves under a twentieth of the field's size in the interior; register() alone asks for none."""
    from spatial import compose

    _importorskip("ants")
    model = AntsSyNRegistration(preset="fast")
    batch = mni_pair[0]
    u, inv = model.register_with_inverse(batch)
    assert inv is not None and inv.shape == u.shape and inv.dtype == u.dtype
    core = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    residual = compose(inv, u)[core].abs()  # x -> x + u(x) -> back by inv
    assert residual.mean() < 0.05 * u[core].abs().mean(), (residual.mean(), u[core].abs().mean())


# --------------------------------------------------------------------------- SimpleITK converters
@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
def test_sitk_translation_and_field_match_spatial_warp(geom):
    sitk = _importorskip("SimpleITK")
    g = _geometry(geom)
    fixed = to_sitk_image(np.zeros(SHAPE, np.float32), g)
    moving = _moving()
    # a translation transform turned into a field by ITK itself -> u = M^-1 t
    t = g.matrix @ np.array(SHIFT)
    field = sitk.TransformToDisplacementField(sitk.TranslationTransform(3, tuple(t)), sitk.sitkVectorFloat64,
                                              fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
                                              fixed.GetDirection())
    assert torch.allclose(itk_displacement_to_voxel(field), _constant(SHIFT), atol=1e-5)
    # a smooth field applied by SimpleITK's resampler == spatial.warp
    u_true = _smooth_field()
    field = to_sitk_image(voxel_to_physical_displacement(u_true, g), g, vector=True)
    assert torch.allclose(itk_displacement_to_voxel(field), u_true, atol=1e-5)
    tx = sitk.DisplacementFieldTransform(sitk.Image(field))  # the transform takes its image's buffer
    theirs = sitk.Resample(to_sitk_image(moving, g), fixed, tx, sitk.sitkLinear, 0.0)
    theirs = np.transpose(sitk.GetArrayFromImage(theirs), (2, 1, 0))
    assert np.abs(theirs - _ours(moving, u_true))[INTERIOR].max() < 1e-4


# --------------------------------------------------------------------------- real registrations
@pytest.fixture(scope="module")
def mni_pair():
    """A small MNI-derived pair (2 mm, 48x56x48 crop, larger deformations so registration
    has something to recover): the batch, the fixed and moving labels, Dice before."""
    from data import MNISubjects
    from metrics import dice

    subjects = MNISubjects(resolution=2, shape=(48, 56, 48), deformation_scale=2.0)
    a, b = subjects[0], subjects[1]
    batch = {"fixed": a["image"][None], "moving": b["image"][None],
             "spacing": torch.tensor([subjects.spacing]),
             "fixed_affine": torch.from_numpy(np.array(subjects.template.affine))[None]}
    return batch, a["label"], b["label"], dice(a["label"], b["label"], b["label"]).mean


def _dice_after(pair, u):
    from metrics import dice

    _, fixed_label, moving_label, _ = pair
    return dice(fixed_label, moving_label, warp(moving_label[None], u, mode="nearest")[0]).mean


@pytest.mark.parametrize("name", ["ants_fast", "demons"])
def test_real_registration_raises_dice(name, mni_pair):
    from spatial import jacobian_determinant

    _importorskip("ants" if name.startswith("ants") else "SimpleITK")
    model = AntsSyNRegistration(preset="fast") if name == "ants_fast" else DemonsRegistration()
    batch, _, _, before = mni_pair
    u = model.register(batch)
    assert u.shape == (1, 3, 48, 56, 48) and u.dtype == torch.float32
    after = _dice_after(mni_pair, u)
    assert before < 0.72 and after > before + 0.04, (before, after)
    assert (jacobian_determinant(u) <= 0).float().mean().item() < 0.005


def test_threads_follow_torch():
    sitk = _importorskip("SimpleITK")
    _importorskip("ants")
    assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == str(torch.get_num_threads())
    img = _moving((12, 12, 12))
    DemonsRegistration(num_iterations=1).register_arrays(img, img, itk_geometry(3))
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == torch.get_num_threads()


# --------------------------------------------------------------------------- eval.py path
def _eval(overrides, out_dir):
    import eval as eval_entry

    cfg = compose("eval", [f"paths.output_dir={out_dir}", "trainer.accelerator=cpu",
                           "trainer.enable_progress_bar=false"] + overrides)
    return eval_entry.evaluate(cfg)


def test_eval_demons_writes_results_contract(pairs_csv, tmp_path):
    _importorskip("SimpleITK")
    out = tmp_path / "out"
    summary = _eval(["model=demons", "data=pairs_csv", f"data.csv={pairs_csv}"], out)
    assert summary["method"] == "demons" and summary["n_pairs"] == 2
    assert summary["dice_mean"] > summary["dice_identity_mean"] + 0.05, summary
    with open(out / "pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["demons", "demons"]
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert json.loads((out / "summary.json").read_text())["n_pairs"] == 2


@pytest.mark.parametrize("model,module", [("ants_syn", "ants"), ("demons", "SimpleITK")])
def test_missing_package_is_one_clear_line(model, module, pairs_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # "import <module>" now fails
    target = {"ants_syn": "classical.external.AntsSyNRegistration",
              "demons": "classical.external.DemonsRegistration"}[model]
    assert INSTALL_HINT in missing_requirement(target)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _eval([f"model={model}", "data=pairs_csv", f"data.csv={pairs_csv}"], out)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and INSTALL_HINT in err[0], err
    assert not out.exists()


def test_bad_preset_names_the_key(pairs_csv, tmp_path, capsys):
    _importorskip("ants")
    with pytest.raises(SystemExit):
        _eval(["model=ants_syn", "model.preset=slow", "data=pairs_csv", f"data.csv={pairs_csv}"], tmp_path / "o")
    err = capsys.readouterr().err
    assert "model.preset" in err and "slow" in err and err.count("\n") == 1
