"""The metric label rule is the official Learn2Reg 2021 scorer's, and no non-finite metric is
ever reported: regression tests against a literal re-statement of the scorer's rule, the HD95
penalty of an erased label, the "no label in common" error, non-finite displacements, and the
pair named by :meth:`models.module.RegistrationModule._evaluate_batch`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metrics
from metrics import (
    MetricError,
    dice,
    erased_penalty,
    evaluate_pair,
    folding_pct,
    hd95,
    jacobian_metrics,
    sdlogj,
    sdlogj_l2r,
)


# ----------------------------------------------------------------------------- the scorer's rule
def scorer_dice(fixed, moving, moving_warped, labels):
    """Literal numpy re-statement of the Learn2Reg scorer's Dice: per label, NaN when the label
    is absent from the fixed or the UN-WARPED moving map, else 2|F∩W| / (|F| + |W|); nanmean."""
    fixed, moving, moving_warped = (np.asarray(x) for x in (fixed, moving, moving_warped))
    per = []
    for i in labels:
        if (fixed == i).sum() == 0 or (moving == i).sum() == 0:
            per.append(np.nan)
        else:
            f, w = fixed == i, moving_warped == i
            per.append(2.0 * (f & w).sum() / (f.sum() + w.sum()))
    per = np.array(per, dtype=np.float64)
    mean = np.nanmean(per) if np.isfinite(per).any() else np.nan
    return per, mean


def toy_maps():
    """6x6x6 maps covering every case of the rule:
    label 1: in all three maps (partial overlap) -> scored;
    label 2: in fixed and moving, erased by the warp -> scored 0, erased;
    label 3: only in fixed (absent from moving) -> skipped;
    label 4: only in moving (absent from fixed) -> skipped;
    label 5: in all three -> scored;
    label 6: only in the warped map -> skipped."""
    fixed = np.zeros((6, 6, 6), dtype=np.int64)
    fixed[0:2] = 1
    fixed[2] = 2
    fixed[3, :3] = 3
    fixed[4:6, :3] = 5
    moving = np.zeros_like(fixed)
    moving[1:3] = 1
    moving[3] = 2
    moving[4] = 4
    moving[5] = 5
    moved = np.zeros_like(fixed)
    moved[0:3] = 1
    moved[4:6, :4] = 5
    moved[3, :2] = 6
    return fixed, moving, moved


def assert_matches_scorer(ours, ref_per, ref_mean, labels):
    for lab, ref in zip(labels, ref_per):
        if np.isnan(ref):
            assert lab not in ours.per_label, lab
        else:
            assert ours.per_label[lab] == pytest.approx(ref, abs=1e-12), lab
    assert set(ours.per_label) == {lab for lab, ref in zip(labels, ref_per) if not np.isnan(ref)}
    assert ours.mean == pytest.approx(ref_mean, abs=1e-12, nan_ok=True)


def test_dice_matches_the_scorer_rule_on_every_case():
    fixed, moving, moved = toy_maps()
    labels = list(range(1, 8))
    ref_per, ref_mean = scorer_dice(fixed, moving, moved, labels)
    ours = dice(torch.from_numpy(fixed), torch.from_numpy(moving), torch.from_numpy(moved))
    assert_matches_scorer(ours, ref_per, ref_mean, labels)
    # hand values: label 1 |F|=72 |W|=108 |F∩W|=72; label 2 erased; label 5 |F|=36 |W|=48 |F∩W|=36
    assert ours.per_label == pytest.approx({1: 144 / 180, 2: 0.0, 5: 72 / 84})
    assert ours.skipped == (3, 4, 6) and ours.erased == (2,)
    # the warped map alone would have hidden the erased label (old rule: mean over 1 and 5)
    assert ours.mean == pytest.approx((144 / 180 + 0.0 + 72 / 84) / 3)


@pytest.mark.parametrize("labels", [[2, 3, 6, 7], [1, 4, 5], [3, 4, 6]])
def test_dice_labels_subset_matches_the_scorer(labels):
    fixed, moving, moved = toy_maps()
    ref_per, ref_mean = scorer_dice(fixed, moving, moved, labels)
    ours = dice(fixed, moving, moved, labels=labels)
    assert_matches_scorer(ours, ref_per, ref_mean, labels)
    assert ours.skipped == tuple(lab for lab, r in zip(labels, ref_per) if np.isnan(r))
    assert ours.erased == tuple(lab for lab in labels if lab == 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_the_scorer_on_random_maps_with_erasures(seed):
    rng = np.random.default_rng(seed)
    fixed = rng.integers(0, 9, (7, 8, 6))
    moving = rng.integers(0, 9, (7, 8, 6))
    fixed[fixed == 7] = 0  # absent from fixed
    moving[moving == 8] = 0  # absent from moving
    moved = np.roll(moving, 1, axis=0)
    moved[(moved == 3) | (moved == 5)] = 0  # erased by the warp
    moved[0, 0, 0] = 11  # only in the warped map
    labels = list(range(1, 12))
    ref_per, ref_mean = scorer_dice(fixed, moving, moved, labels)
    ours = dice(fixed, moving, moved)
    assert_matches_scorer(ours, ref_per, ref_mean, labels)
    assert ours.erased == (3, 5) and ours.per_label[3] == 0.0 and ours.per_label[5] == 0.0
    assert {7, 8, 11} <= set(ours.skipped)
    # huge label values take the compacting path: same scores under their own names
    big = dice(fixed * 10**8, moving * 10**8, moved * 10**8)
    assert big.per_label == pytest.approx({k * 10**8: v for k, v in ours.per_label.items()})
    assert big.erased == (3 * 10**8, 5 * 10**8)


# ----------------------------------------------------------------------------- HD95 of an erased label
@pytest.mark.parametrize("method", ["kdtree", "edt"])
def test_hd95_erased_label_scores_the_grid_diagonal(method):
    fixed, moving, moved = toy_maps()
    spacing = (1.5, 1.0, 2.0)
    diag = math.sqrt((6 * 1.5) ** 2 + (6 * 1.0) ** 2 + (6 * 2.0) ** 2)
    assert erased_penalty((6, 6, 6), spacing) == pytest.approx(diag)
    out = hd95(fixed, moving, moved, spacing, method=method)
    assert set(out.per_label) == {1, 2, 5} and out.skipped == (3, 4, 6) and out.erased == (2,)
    assert out.per_label[2] == pytest.approx(diag)
    # the other labels keep their surface distance (same value as scoring them alone)
    alone = hd95(fixed, moving, moved, spacing, labels=[1, 5], method=method)
    assert out.per_label[1] == alone.per_label[1] and out.per_label[5] == alone.per_label[5]
    assert out.mean == pytest.approx((alone.per_label[1] + diag + alone.per_label[5]) / 3)
    assert math.isfinite(out.mean)
    # compacting path (huge label values) maps erased / skipped labels back to their names
    big = hd95(fixed * 10**8, moving * 10**8, moved * 10**8, spacing, method=method)
    assert big.per_label == {k * 10**8: v for k, v in out.per_label.items()}
    assert big.erased == (2 * 10**8,) and big.skipped == (3 * 10**8, 4 * 10**8, 6 * 10**8)
    sub = hd95(fixed * 10**8, moving * 10**8, moved * 10**8, spacing, labels=[2 * 10**8, 7], method=method)
    assert sub.per_label == {2 * 10**8: pytest.approx(diag)} and sub.skipped == (7,)


def test_hd95_every_label_erased_does_not_crash():
    fixed, moving, _ = toy_maps()
    out = hd95(fixed, moving, np.zeros_like(fixed), 1.0)
    assert out.per_label == {lab: pytest.approx(math.sqrt(3 * 36)) for lab in (1, 2, 5)}
    assert out.erased == (1, 2, 5)


def test_evaluate_pair_reports_erased_labels():
    fixed, moving, moved = toy_maps()
    u = torch.zeros(1, 3, 6, 6, 6)
    out = evaluate_pair(fixed, moving, moved, u, (1.0, 1.0, 1.0))
    assert out["n_erased"] == 1 and out["erased_labels"] == (2,)
    assert out["dice_per_label"][2] == 0.0 and out["hd95_per_label"][2] == pytest.approx(math.sqrt(108))
    _, ref_mean = scorer_dice(fixed, moving, moved, range(1, 8))
    assert out["dice"] == pytest.approx(ref_mean)
    assert all(math.isfinite(out[k]) for k in ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct"))


def test_un_warped_moving_map_is_required():
    fixed, moving, moved = toy_maps()
    with pytest.raises(TypeError):
        dice(fixed, moved)  # the old two-map call
    with pytest.raises(TypeError):
        hd95(fixed, moved, 1.0)
    with pytest.raises(TypeError):
        evaluate_pair(fixed, moved, torch.zeros(1, 3, 6, 6, 6), 1.0)
    with pytest.raises(ValueError, match=r"dice\(\) label maps differ in shape: .*moving_label \(6, 6, 5\)"):
        dice(fixed, moving[..., :5], moved)


# ----------------------------------------------------------------------------- no label in common
def test_no_common_label_is_an_error_not_a_nan():
    fixed = np.zeros((6, 6, 6), dtype=np.int64)
    moving = np.zeros_like(fixed)
    fixed[:3] = 1
    moving[3:] = 2
    u = torch.zeros(1, 3, 6, 6, 6)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) no foreground label in common between "
                                         r"fixed_label \[1\] \(1\) and moving_label \[2\] \(1\)"):
        evaluate_pair(fixed, moving, moving, u, 1.0)
    with pytest.raises(ValueError, match="no foreground label in common"):
        evaluate_pair(fixed, moving, fixed, None, 1.0, hd95_enabled=False)  # warped map irrelevant
    with pytest.raises(ValueError, match=r"within labels=\[3\]"):
        evaluate_pair(fixed, fixed, fixed, u, 1.0, labels=[3])
    with pytest.raises(ValueError, match="no foreground label in common"):
        evaluate_pair(np.zeros_like(fixed), np.zeros_like(fixed), np.zeros_like(fixed), u, 1.0)
    # a pair without labels at all is legitimate: NaN label metrics, finite Jacobian metrics
    out = evaluate_pair(None, None, None, u, None)
    assert math.isnan(out["dice"]) and math.isnan(out["hd95"]) and out["n_erased"] == 0
    assert out["folding_pct"] == 0.0


# ----------------------------------------------------------------------------- non-finite fields
def nan_field():
    u = torch.zeros(1, 3, 8, 8, 8)
    u[0, 0, 1, 2, 3] = float("nan")
    u[0, 1, 4, 4, 4] = float("nan")
    u[0, 2, 5, 5, 5] = float("inf")
    return u


@pytest.mark.parametrize(
    "call, name",
    [(sdlogj, "sdlogj"), (sdlogj_l2r, "sdlogj_l2r"), (folding_pct, "folding_pct"), (jacobian_metrics, "jacobian_metrics")],
)
def test_non_finite_displacement_is_an_error(call, name):
    with pytest.raises(ValueError, match=rf"{name}\(\) 'u' has 3 non-finite values \(2 NaN, 1 inf\) of 1536"):
        call(nan_field())
    half = torch.zeros(3, 6, 6, 6, dtype=torch.float16)  # (D, *S), half precision
    half[1, 2, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=rf"{name}\(\) 'u' has 1 non-finite value \(1 NaN, 0 inf\) of 648"):
        call(half)


def test_evaluate_pair_refuses_non_finite_fields_and_results():
    lab = torch.zeros(8, 8, 8, dtype=torch.int64)
    lab[2:6, 2:6, 2:6] = 1
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'u' has 3 non-finite values"):
        evaluate_pair(lab, lab, lab, nan_field(), 1.0)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'u' has 3 non-finite values"):
        evaluate_pair(None, None, None, nan_field(), None)
    # finite but overflowing float32 values: the Jacobian itself is inf / NaN -> an error
    u = torch.zeros(1, 3, 8, 8, 8)
    u[0, 0, ::2] = 3e38
    u[0, 0, 1::2] = -3e38
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) the Jacobian determinant of 'u' has 128 non-finite"):
        evaluate_pair(lab, lab, lab, u, 1.0)
    with pytest.raises(ValueError, match=r"folding_pct\(\) the Jacobian determinant of 'u' has 128 non-finite"):
        folding_pct(u)  # would otherwise count the -inf voxels as folded (25 %)


def test_evaluate_pair_never_returns_a_non_finite_metric(monkeypatch):
    """The last guard of the one metric path: a NaN that slips through any computation is an
    error naming the metric (here the Jacobian statistics are forced to NaN)."""
    import metrics.evaluate as ev

    lab = torch.zeros(8, 8, 8, dtype=torch.int64)
    lab[2:6, 2:6, 2:6] = 1
    forced = {"sdlogj": math.nan, "sdlogj_l2r": 0.0, "folding_pct": 0.0}
    monkeypatch.setattr(ev, "_metrics_from_det", lambda *a: forced)
    with pytest.raises(ValueError, match=r"evaluate_pair\(\) 'sdlogj' is nan \(not finite\)"):
        evaluate_pair(lab, lab, lab, torch.zeros(1, 3, 8, 8, 8), 1.0)


# ----------------------------------------------------------------------------- the module names the pair
def _batch(u_nan: bool):
    fixed_label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.int64)
    fixed_label[:, :, 0:2] = 2
    fixed_label[:, :, 4:8] = 1
    moving_label = fixed_label.clone()
    moving_label[1, :, 4:8] = 3  # pair 1: label 1 only in fixed, label 3 only in moving
    moving_label[1, :, 0:2] = 0
    batch = {
        "fixed": torch.rand(2, 1, 8, 8, 8),
        "moving": torch.rand(2, 1, 8, 8, 8),
        "fixed_label": fixed_label,
        "moving_label": moving_label,
        "spacing": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
        "fixed_id": ["f0", "f1"],
        "moving_id": ["m0", "m1"],
    }
    u = torch.zeros(2, 3, 8, 8, 8)
    if u_nan:
        u[0, 1, 3, 3, 3] = float("nan")
    return batch, u


def test_evaluate_batch_names_the_pair_of_a_nan_field():
    from models.module import IdentityRegistration

    module = IdentityRegistration()
    batch, u = _batch(u_nan=True)
    with pytest.raises(MetricError, match=r"^pair f0 <- m0: evaluate_pair\(\) 'u' has 1 non-finite value") as err:
        module._evaluate_batch(batch, u, with_hd95=True)
    assert isinstance(err.value, ValueError) and err.value.__cause__ is None


def test_evaluate_batch_names_the_pair_without_common_label():
    from models.module import IdentityRegistration

    module = IdentityRegistration()
    batch, u = _batch(u_nan=False)
    with pytest.raises(MetricError, match=r"^pair f1 <- m1: evaluate_pair\(\) no foreground label in common"):
        module._evaluate_batch(batch, u, with_hd95=False)
    # pair 0 alone is fine: identity keeps every label
    one = {k: v[:1] for k, v in batch.items()}
    rows = module._evaluate_batch(one, u[:1], with_hd95=True)
    assert rows[0]["dice"] == 1.0 and rows[0]["n_erased"] == 0 and rows[0]["dice_identity"] == 1.0


def test_evaluate_batch_scores_a_label_the_warp_erases():
    from models.module import IdentityRegistration

    module = IdentityRegistration()
    batch, u = _batch(u_nan=False)
    one = {k: v[:1] for k, v in batch.items()}
    shift = torch.zeros(1, 3, 8, 8, 8)
    shift[:, 0] = 3.0  # moved(x) = moving(x + 3 along axis 0): the slab of label 2 (x < 2) is erased
    (row,) = module._evaluate_batch(one, shift, with_hd95=True)
    assert row["n_erased"] == 1 and row["erased_labels"] == (2,)
    assert row["dice_per_label"][2] == 0.0 and row["hd95_per_label"][2] == pytest.approx(math.sqrt(3 * 64))
    f, m = one["fixed_label"][0, 0].numpy(), one["moving_label"][0, 0].numpy()
    _, ref_mean = scorer_dice(f, m, row["moved_label"][0].numpy(), [1, 2])
    assert row["dice"] == pytest.approx(ref_mean) and row["dice_identity"] == 1.0


def test_metric_error_is_the_reported_line():
    from app.errors import user_error_line as _user_error_line

    inner = ValueError("evaluate_pair() 'u' has 1 non-finite values")
    err = MetricError("pair f0 <- m0: evaluate_pair() 'u' has 1 non-finite values")
    err.__cause__ = inner  # even with a cause, the line names the pair
    assert _user_error_line(err) == "pair f0 <- m0: evaluate_pair() 'u' has 1 non-finite values"
    outer = RuntimeError("wrapped")
    outer.__cause__ = err
    assert _user_error_line(outer).startswith("pair f0 <- m0:")


def test_public_api():
    for name in ("MetricError", "erased_penalty", "dice", "hd95", "evaluate_pair"):
        assert name in metrics.__all__ and hasattr(metrics, name)
    assert issubclass(MetricError, ValueError)


def test_ambiguous_shapes_are_refused_not_guessed():
    """A batch of three 2-D fields (3, 2, H, W) reads like one 3-D field two voxels deep, and a 2-D
    map given as (1, H, W) with a scalar spacing like a one-voxel-thick 3-D slab whose every voxel
    is surface (HD95 1.0 mm instead of 2.0): both are refused with what to pass instead."""
    from metrics import folding_pct, hd95, sdlogj

    u = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    for fn in (folding_pct, sdlogj):
        with pytest.raises(ValueError, match=r"ambiguous.*\(1, D, \*S\)"):
            fn(u)
    assert folding_pct(torch.zeros(1, 2, 16, 16)) == 0.0  # one 2-D pair, unambiguous
    a = torch.zeros(40, 40, dtype=torch.long)
    a[5:35, 5:35] = 1
    b = torch.zeros_like(a)
    b[5:35, 7:35] = 1
    assert hd95(a, a, b, spacing=1.0).mean == pytest.approx(2.0)
    assert hd95(a[None], a[None], b[None], spacing=(1.0, 1.0)).mean == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one-voxel axis"):
        hd95(a[None], a[None], b[None], spacing=1.0)
    # the one metric path, with no displacement: the same refusal, not a silent 3-D reading (was 1.0)
    from metrics import evaluate_pair

    with pytest.raises(ValueError, match="one-voxel axis"):
        evaluate_pair(a[None, None], a[None, None], b[None, None], None, 1.0)
    assert evaluate_pair(a[None, None], a[None, None], b[None, None], None, (1.0, 1.0))["hd95"] == pytest.approx(2.0)
    assert evaluate_pair(a, a, b, None, 1.0)["hd95"] == pytest.approx(2.0)
    assert evaluate_pair(a[None, None], a[None, None], b[None, None], None, 1.0, hd95_enabled=False)["dice"] > 0.9


@pytest.mark.parametrize("offset", [0, 70000])  # small label values, and the sparse path of HD95
def test_moving_present_scores_a_label_the_resampled_map_lost(offset):
    """``moving_present`` (the moving map's labels as stored) makes a label missing from the resampled
    un-warped map scored: Dice 0, the HD95 penalty, Klein's erased values; the same as when the
    un-warped map holds it. A set lacking a label of the map is refused."""
    f = torch.zeros(12, 12, 12, dtype=torch.long)
    f[2:8, 2:8, 2:8] = 1 + offset
    f[10, 10, 10] = 5 + offset
    mv = f.clone()
    mv[10, 10, 10] = 0  # label 5 lost on the fixed grid
    moved = mv.clone()
    u = torch.zeros(1, 3, 12, 12, 12)
    skipped = evaluate_pair(f, mv, moved, u, 1.0)
    assert sorted(skipped["dice_per_label"]) == [1 + offset]
    res = evaluate_pair(f, mv, moved, u, 1.0, moving_present={1 + offset, 5 + offset})
    holding = f.clone()  # an un-warped map that kept the label: the same scores
    ref = evaluate_pair(f, holding, moved, u, 1.0)
    assert res["dice_per_label"] == ref["dice_per_label"] == {1 + offset: 1.0, 5 + offset: 0.0}
    assert res["hd95_per_label"] == ref["hd95_per_label"]
    assert res["hd95_per_label"][5 + offset] == pytest.approx(erased_penalty((12, 12, 12), (1.0, 1.0, 1.0)))
    assert res["erased_labels"] == (5 + offset,) and res["label_metrics"] == ref["label_metrics"]
    assert all(res[k] == ref[k] for k in metrics.PAIR_METRICS)
    assert dice(f, mv, moved, moving_present=[1 + offset, 5 + offset]).per_label == ref["dice_per_label"]
    with pytest.raises(ValueError, match="'moving_present' .* lacks labels of moving_label"):
        evaluate_pair(f, mv, moved, u, 1.0, moving_present={5 + offset})
