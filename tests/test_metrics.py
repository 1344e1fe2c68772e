"""Tests of metrics/: hand-computed cases, agreement with MONAI, conventions, input errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

import metrics
from metrics import (
    LABEL_METRICS,
    TOTAL_METRICS,
    LabelScores,
    dice,
    evaluate_pair,
    folding_pct,
    hd95,
    jacobian_metrics,
    klein_overlaps,
    sdlogj,
    sdlogj_l2r,
)
from spatial import identity_grid, jacobian_determinant


# ----------------------------------------------------------------------------- helpers
def smooth_labels(shape, n_labels, seed, coarse=3):
    """Random multi-label map: argmax of smoothed noise (curved, touching the border)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, n_labels, *[max(s // coarse, 2) for s in shape], generator=g)
    noise = F.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=True)
    return noise.argmax(1)[0]


def smooth_field(shape, amplitude, seed, coarse=(4, 4, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, len(shape), *coarse, generator=g, dtype=dtype)
    u = F.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=True)
    return u * (amplitude / u.abs().amax())


def onehot(x, n):
    return F.one_hot(x, n).movedim(-1, 0)[None].float()


def monai_hd95(fixed, moved, spacing, n):
    from monai.metrics import HausdorffDistanceMetric

    metric = HausdorffDistanceMetric(percentile=95, include_background=False, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(y_pred=onehot(moved, n), y=onehot(fixed, n), spacing=list(spacing))[0]


def brute_force_hd95(f, m, label, spacing):
    """Full-image (no crop) reference: scipy erosion surfaces, all-pairs distances."""
    a = f.numpy() == label
    b = m.numpy() == label
    ea = a & ~ndi.binary_erosion(a)
    eb = b & ~ndi.binary_erosion(b)
    pa = np.argwhere(ea) * np.asarray(spacing)
    pb = np.argwhere(eb) * np.asarray(spacing)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


# ----------------------------------------------------------------------------- Dice
FIXED = torch.tensor([[[1, 1, 2], [2, 0, 3]], [[0, 0, 0], [0, 0, 0]]])
MOVED = torch.tensor([[[1, 2, 2], [2, 0, 0]], [[0, 4, 0], [0, 0, 0]]])


def test_dice_hand_computed():
    # label 1: |F|=2 |M|=1 |F∩M|=1 -> 2/3; label 2: |F|=2 |M|=3 |F∩M|=2 -> 4/5;
    # label 3 only in fixed, label 4 only in moving (here moving = moved): skipped; background
    # never scored
    out = dice(FIXED, MOVED, MOVED)
    assert isinstance(out, LabelScores)
    assert out.per_label == pytest.approx({1: 2 / 3, 2: 4 / 5})
    assert out.mean == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out.skipped == (3, 4)


def test_dice_subset_and_nan_when_nothing_scorable():
    out = dice(FIXED, MOVED, MOVED, labels=[3, 2])
    assert out.per_label == pytest.approx({2: 0.8}) and out.mean == pytest.approx(0.8)
    assert out.skipped == (3,)
    none = dice(FIXED, MOVED, MOVED, labels=[3, 7])
    assert none.per_label == {} and math.isnan(none.mean) and none.skipped == (3, 7)
    with pytest.raises(ValueError, match=r"dice\(\) 'labels'.*background"):
        dice(FIXED, MOVED, MOVED, labels=[0, 1])


def test_dice_accepts_leading_singletons_numpy_and_integral_floats():
    ref = dice(FIXED, MOVED, MOVED)
    assert dice(FIXED[None, None], MOVED[None], MOVED).per_label == ref.per_label
    assert dice(FIXED.numpy().astype(np.float64), MOVED.to(torch.int16), MOVED.numpy()).per_label == ref.per_label
    # huge label values take the compacting path, same result
    big = dice(FIXED * 10**8, MOVED * 10**8, MOVED * 10**8)
    assert big.per_label == pytest.approx({k * 10**8: v for k, v in ref.per_label.items()})


def test_dice_matches_monai_on_labels_present_in_both():
    from monai.metrics import DiceMetric

    n = 7
    f = smooth_labels((20, 24, 18), n, seed=0)
    m = smooth_labels((20, 24, 18), n, seed=1)
    m[m == 6] = 5  # label 6 absent from moving (= moved): skipped by us (MONAI would score it 0)
    ours = dice(f, m, m)
    ref = DiceMetric(include_background=False, reduction="none")(onehot(m, n), onehot(f, n))[0]
    assert 6 in ours.skipped and 6 not in ours.per_label
    assert set(ours.per_label) == {1, 2, 3, 4, 5}
    for lab, v in ours.per_label.items():
        assert v == pytest.approx(float(ref[lab - 1]), abs=1e-6)


# ----------------------------------------------------------------------------- HD95
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("method", ["edt", "kdtree"])
def test_hd95_cubes_offset_anisotropic(axis, method):
    # 2x2x2 cubes offset by k voxels along `axis`: directed distances are 4x (k-1)s and
    # 4x k*s, so the 95th percentile (and HD95) is k * spacing[axis], in mm.
    spacing = (2.5, 0.7, 1.3)
    k = 3
    f = torch.zeros(12, 12, 12, dtype=torch.int64)
    m = torch.zeros_like(f)
    f[2:4, 5:7, 4:6] = 1
    sl = [slice(2, 4), slice(5, 7), slice(4, 6)]
    sl[axis] = slice(sl[axis].start + k, sl[axis].stop + k)
    m[tuple(sl)] = 1
    f[9:11, 0:3, 8:12] = 2  # only in fixed: skipped
    out = hd95(f, m, m, spacing, method=method)
    assert out.per_label == pytest.approx({1: k * spacing[axis]})
    assert out.skipped == (2,)
    assert hd95(f, f, f, spacing, method=method).per_label == {1: 0.0, 2: 0.0}


def test_hd95_percentile_interpolation_and_max_of_directed_2d():
    # 2-D: fixed label is a row of 20 voxels, moved the first 10 of them. Directed
    # fixed->moved: ten 0s and 1..10 voxels; P95 of 20 values (linear) = 9.05 voxels along
    # axis 1; moved->fixed: all 0. HD95 = max = 9.05 * 1.3 mm. (The percentile of the pooled
    # distances would give a different value.)
    f = torch.zeros(3, 24, dtype=torch.int64)
    m = torch.zeros_like(f)
    f[1, 2:22] = 1
    m[1, 2:12] = 1
    for method in ("edt", "kdtree"):
        out = hd95(f, m, m, (0.7, 1.3), method=method)
        assert out.per_label[1] == pytest.approx(9.05 * 1.3)
        assert out.mean == pytest.approx(9.05 * 1.3)


@pytest.mark.parametrize(
    "seed, spacing, shifted",
    [(0, (1.0, 1.0, 1.0), True), (1, (0.8, 1.5, 2.2), False), (2, (1.2, 0.9, 3.0), True)],
)
def test_hd95_matches_monai(seed, spacing, shifted):
    n = 6
    shape = (22, 26, 19)
    f = smooth_labels(shape, n, seed)
    if shifted:
        m = torch.roll(f, shifts=(1, -2, 1), dims=(0, 1, 2))
    else:
        m = smooth_labels(shape, n, seed + 100)
    ref = monai_hd95(f, m, spacing, n)
    for method in ("edt", "kdtree"):
        ours = hd95(f, m, m, spacing, method=method)
        assert set(ours.per_label) == {lab for lab in range(1, n) if (f == lab).any() and (m == lab).any()}
        for lab, v in ours.per_label.items():
            assert v == pytest.approx(float(ref[lab - 1]), abs=0.01)


@pytest.mark.parametrize("method", ["kdtree", "edt"])
def test_hd95_crop_is_exact_against_full_image_brute_force(method):
    spacing = (1.0, 2.0, 0.6)
    f = smooth_labels((16, 14, 18), 5, seed=3)
    m = smooth_labels((16, 14, 18), 5, seed=4)
    ours = hd95(f, m, m, spacing, method=method)
    assert len(ours.per_label) >= 3
    for lab, v in ours.per_label.items():
        assert v == pytest.approx(brute_force_hd95(f, m, lab, spacing), abs=1e-9)


def test_hd95_subset_threads_and_spacing_forms():
    f = smooth_labels((16, 14, 18), 5, seed=5)
    m = smooth_labels((16, 14, 18), 5, seed=6)
    full = hd95(f, m, m, (1.0, 1.0, 1.0))
    assert hd95(f, m, m, 1.0, workers=1).per_label == full.per_label
    assert hd95(f, m, m, torch.tensor([[1.0, 1.0, 1.0]])).per_label == full.per_label
    sub = hd95(f[None, None], m[None], m, [1, 1, 1], labels=[2, 9])
    assert sub.per_label == {2: full.per_label[2]} and sub.skipped == (9,)
    # huge label values (relabelled internally) give the same scores under their own names
    big = hd95(f * 10**8, m * 10**8, m * 10**8, 1.0)
    assert big.per_label == {k * 10**8: v for k, v in full.per_label.items()}
    assert hd95(f * 10**8, m * 10**8, m * 10**8, 1.0, labels=[2 * 10**8, 7]).per_label == {2 * 10**8: full.per_label[2]}


# ----------------------------------------------------------------------------- Jacobian
def l2r_scorer_reference(u):
    """numpy re-statement of the Learn2Reg scorer's definition: central differences with
    zero padding, Jacobian cropped [2:-2], std(log(clip(J + 3, 1e-9, 1e9)))."""
    u = np.asarray(u, dtype=np.float64)  # (3, *S)
    grads = np.empty((3, 3) + u.shape[1:])
    for i in range(3):
        p = np.pad(u[i], 1)
        for j in range(3):
            hi = [slice(1, -1)] * 3
            lo = [slice(1, -1)] * 3
            hi[j], lo[j] = slice(2, None), slice(None, -2)
            grads[i, j] = 0.5 * (p[tuple(hi)] - p[tuple(lo)])
    jac = grads + np.eye(3).reshape(3, 3, 1, 1, 1)
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(np.moveaxis(jac.reshape(3, 3, -1), -1, 0))
    return np.log(np.clip(det + 3, 1e-9, 1e9)).std()


def test_identity_field():
    u = torch.zeros(1, 3, 10, 11, 12)
    assert folding_pct(u) == 0.0
    assert sdlogj(u) == 0.0
    assert sdlogj_l2r(u) == 0.0


def test_uniform_scaling_has_zero_sdlogj_and_mean_log8():
    u = identity_grid((9, 10, 11), dtype=torch.float64)  # x -> 2x, J = 8
    out = jacobian_metrics(u)
    assert out["sdlogj"] == pytest.approx(0.0, abs=1e-12)
    assert out["sdlogj_l2r"] == pytest.approx(0.0, abs=1e-12)
    assert out["logj_mean"] == pytest.approx(math.log(8.0))
    assert out["folding_pct"] == 0.0
    assert sdlogj(u[None]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_folding_pct_of_a_folded_slab(ndim):
    # u_0 = g(x_0) with slope -3 on x_0 in [a, b]: central differences give J = -2 inside and
    # J = 1 - 1.5 = -0.5 at x_0 = a and b, J = 1 elsewhere: folded slab = b - a + 1 slices.
    shape = (20, 9, 7)[:ndim]
    a, b = 6, 11
    x0 = torch.arange(shape[0], dtype=torch.float64)
    g = -3.0 * (x0.clamp(a, b) - a)
    u = torch.zeros(ndim, *shape, dtype=torch.float64)
    u[0] = g.view(-1, *([1] * (ndim - 1)))
    expected = 100.0 * (b - a + 1) / shape[0]
    assert folding_pct(u) == pytest.approx(expected)
    assert jacobian_metrics(u)["folding_pct"] == pytest.approx(expected)
    # folded voxels are clipped to 1e-9 in sdlogj: std of a two-valued log-J distribution
    frac = (b - a + 1) / shape[0]
    assert sdlogj(u) == pytest.approx(abs(math.log(1e-9)) * math.sqrt(frac * (1 - frac)))


def test_sdlogj_and_l2r_match_numpy_definitions():
    u = smooth_field((18, 20, 16), amplitude=8.0, seed=7, coarse=(6, 6, 6))[0]
    j = jacobian_determinant(u[None])[0].numpy()
    # the field folds, even below J = -3, so both clips are exercised
    assert (j <= 0).any() and (j[2:-2, 2:-2, 2:-2] < -3).any()
    # sdlogj: numpy.gradient Jacobian, std of log(clip(J)) over the whole field
    grads = np.stack([np.stack(np.gradient(c), 0) for c in u.numpy()], 0) + np.eye(3).reshape(3, 3, 1, 1, 1)
    det = np.linalg.det(np.moveaxis(grads.reshape(3, 3, -1), -1, 0))
    assert sdlogj(u) == pytest.approx(np.log(np.clip(det, 1e-9, 1e9)).std(), rel=1e-10)
    assert folding_pct(u) == pytest.approx(100.0 * (det <= 0).mean())
    # sdlogj_l2r: the official scorer's definition with its [2:-2] crop
    assert sdlogj_l2r(u) == pytest.approx(l2r_scorer_reference(u.numpy()), rel=1e-10)
    assert sdlogj_l2r(u, crop=0) == pytest.approx(np.log(np.clip(det + 3, 1e-9, 1e9)).std(), rel=1e-10)
    jm = jacobian_metrics(u)
    assert jm["sdlogj"] == sdlogj(u) and jm["sdlogj_l2r"] == sdlogj_l2r(u)
    assert jm["folding_pct"] == folding_pct(u)


def test_jacobian_input_checks():
    u = torch.zeros(2, 3, 8, 8, 8)
    with pytest.raises(ValueError, match=r"sdlogj\(\) 'u' must hold one pair"):
        sdlogj(u)
    with pytest.raises(ValueError, match=r"folding_pct\(\)"):
        folding_pct(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"sdlogj_l2r\(\) 'crop'"):
        sdlogj_l2r(torch.zeros(3, 4, 4, 4))


# ----------------------------------------------------------------------------- evaluate_pair
def test_evaluate_pair_is_the_individual_metrics():
    f = smooth_labels((16, 18, 14), 5, seed=9)
    m = smooth_labels((16, 18, 14), 5, seed=10)
    u = smooth_field((16, 18, 14), amplitude=2.0, seed=11, dtype=torch.float32)
    sp = (1.0, 1.2, 0.9)
    out = evaluate_pair(f[None, None], m[None, None], m[None, None], u, torch.tensor(sp)[None])
    keys = {"dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "dice_per_label", "hd95_per_label",
            "label_metrics", "n_erased", "erased_labels", *TOTAL_METRICS}
    assert set(out) == keys
    d, h, k = dice(f, m, m), hd95(f, m, m, sp), klein_overlaps(f, m, m)
    assert {name: out[f"total_{name}"] for name in k.total} == k.total
    assert set(out["label_metrics"]) == set(d.per_label)
    for lab, values in out["label_metrics"].items():
        assert values == {"dice": d.per_label[lab], **{n: k.per_label[lab][n] for n in LABEL_METRICS[1:]}}
    assert out["n_erased"] == 0 and out["erased_labels"] == ()
    assert out["dice"] == d.mean and out["dice_per_label"] == d.per_label
    assert out["hd95"] == pytest.approx(h.mean) and out["hd95_per_label"] == pytest.approx(h.per_label)
    assert out["sdlogj"] == sdlogj(u) and out["sdlogj_l2r"] == sdlogj_l2r(u)
    assert out["folding_pct"] == folding_pct(u)
    assert all(isinstance(out[k], float) for k in ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct"))
    sub = evaluate_pair(f, m, m, u, sp, labels=[1, 3], hd95_enabled=False)
    assert set(sub["dice_per_label"]) <= {1, 3} and math.isnan(sub["hd95"])


def test_evaluate_pair_without_labels_or_field():
    u = identity_grid((8, 9, 10), dtype=torch.float64)[None]
    out = evaluate_pair(None, None, None, u, None)
    assert math.isnan(out["dice"]) and math.isnan(out["hd95"]) and out["dice_per_label"] == {}
    assert out["sdlogj"] == pytest.approx(0.0, abs=1e-12) and out["folding_pct"] == 0.0
    f = smooth_labels((8, 9, 10), 3, seed=12)
    no_field = evaluate_pair(f, f, f, None, 1.0)
    assert no_field["dice"] == 1.0 and no_field["hd95"] == 0.0 and math.isnan(no_field["sdlogj"])


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda f, m: dice(f, m, m), "dice"),
        (lambda f, m: hd95(f, m, m, (1, 1, 1)), "hd95"),
        (lambda f, m: evaluate_pair(f, m, m, None, (1, 1, 1)), "evaluate_pair"),
    ],
)
def test_shape_mismatch_names_function_and_both_shapes(call, name):
    f = torch.zeros(1, 1, 8, 9, 10, dtype=torch.int64)
    m = torch.zeros(8, 9, 11, dtype=torch.int64)
    with pytest.raises(ValueError) as err:
        call(f, m)
    msg = str(err.value)
    assert f"{name}()" in msg and "(1, 1, 8, 9, 10)" in msg and "(8, 9, 11)" in msg


@pytest.mark.parametrize("fn", [lambda f, m: dice(f, m, m), lambda f, m: hd95(f, m, m, 1.0)])
def test_bad_label_maps(fn):
    f = torch.zeros(6, 6, 6, dtype=torch.int64)
    with pytest.raises(ValueError, match="non-integer"):
        fn(f.double() + 0.5, f)
    with pytest.raises(ValueError, match="negative"):
        fn(f - 1, f)
    with pytest.raises(ValueError, match="one pair at a time"):
        fn(torch.zeros(2, 1, 6, 6, 6, dtype=torch.int64), torch.zeros(2, 1, 6, 6, 6, dtype=torch.int64))


def test_evaluate_pair_bad_inputs():
    f = torch.ones(8, 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'disp' spatial shape"):
        evaluate_pair(f, f, f, torch.zeros(1, 3, 8, 8, 9), 1.0)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'spacing' is required"):
        evaluate_pair(f, f, f, torch.zeros(1, 3, 8, 8, 8), None)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'moving_label' is None"):
        evaluate_pair(f, None, f, None, 1.0)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'moved_label' is None"):
        evaluate_pair(f, f, None, None, 1.0)


def test_public_api():
    for name in ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "evaluate_pair", "LabelScores"):
        assert name in metrics.__all__ and hasattr(metrics, name)
