"""Bidirectional training (model.bidirectional) and the SymNet-style symmetric method
(models/symmetric.py): exact known values, inverse consistency, learning, checkpoints, eval, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import compose as compose_cfg
from conftest import make_blob_pair
from losses import build_regulariser, build_similarity
from models import RegistrationModule, SymmetricRegistrationModule
from models.networks import VoxelMorphUNet
from models.symmetric import SymmetricNet, symmetric_maps
from spatial import compose, gaussian_blur, integrate, warp


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _blob_pair(shape, shift, seed):
    """conftest.make_blob_pair for 2-D or 3-D: nested blobs (labels 1..3), moving shifted on axis 0."""
    if len(shape) == 3:
        return make_blob_pair(shape=shape, shift=shift, seed=seed)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(np.float64)
    r = np.sqrt(sum((g - s / 2) ** 2 for g, s in zip(grid, shape)))
    label = np.zeros(shape, np.int16)
    for k, frac in enumerate((0.35, 0.22, 0.1), start=1):
        label[r < shape[0] * frac] = k
    img = np.clip(label / 3 + 0.02 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return img, label, np.roll(img, shift, axis=0), np.roll(label, shift, axis=0)


def _batch(shape=(32, 32), seed=0, labels=True, shift=2):
    fixed, flab, moving, mlab = _blob_pair(shape, shift, seed)
    b = {"fixed": torch.from_numpy(fixed)[None, None], "moving": torch.from_numpy(moving)[None, None]}
    if labels:
        b["fixed_label"] = torch.from_numpy(flab).long()[None, None]
        b["moving_label"] = torch.from_numpy(mlab).long()[None, None]
    return b


def _vxm(ndim=2, std=None, seed=0):
    torch.manual_seed(seed)
    net = VoxelMorphUNet(ndim=ndim, variant="vxm1")
    if std is not None:
        with torch.no_grad():
            net.flow.weight.normal_(std=std)
    return net


def _zero(net):
    with torch.no_grad():
        net.flow.weight.zero_()
        net.flow.bias.zero_()
    return net


class _Blurred(nn.Module):
    """A backbone with smooth output (a blurred VoxelMorph U-Net): moderate, fold-free fields."""

    def __init__(self, net, sigma=3.0, scale=1.0):
        super().__init__()
        self.net, self.sigma, self.scale = net, sigma, scale

    @property
    def multiple(self):
        return self.net.multiple

    def forward(self, moving, fixed):
        return self.scale * gaussian_blur(self.net(moving, fixed), self.sigma)


def _smooth_velocity(shape, amp, seed):
    g = torch.Generator().manual_seed(seed)
    v = gaussian_blur(torch.randn(1, len(shape), *shape, generator=g), 4.0)
    return v / v.abs().max() * amp


def _interior(u, m=4):
    return u[(slice(None), slice(None), *(slice(m, s - m) for s in u.shape[2:]))]


# ---------------------------------------------------------------------------------------------
# A. bidirectional
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["displacement", "velocity"])
@pytest.mark.parametrize("dice_weight", [0.0, 0.5])
def test_bidirectional_off_gives_exactly_the_old_loss(field, dice_weight):
    from losses import dice_loss, one_hot

    b = _batch()
    loss = {"sim": "mse", "reg_weight": 0.3, "dice_weight": dice_weight}
    default = RegistrationModule(net=_vxm(std=0.05), field=field, integration_steps=4, loss=loss)
    off = RegistrationModule(net=_vxm(std=0.05), field=field, integration_steps=4, loss=loss, bidirectional=False)
    with torch.no_grad():
        p_default, p_off = default.compute_loss(b), off.compute_loss(b)
        # the pre-bidirectional formula, written out
        out = default(b["moving"], b["fixed"])
        u = integrate(out, 4) if field == "velocity" else out
        expected = build_similarity("mse")(b["fixed"], warp(b["moving"], u)) + 0.3 * build_regulariser("diffusion")(out)
        if dice_weight:
            n = 4
            expected = expected + dice_weight * dice_loss(warp(one_hot(b["moving_label"], n), u), one_hot(b["fixed_label"], n))
    keys = {"loss", "sim", "reg"} | ({"dice_loss"} if dice_weight else set())
    assert set(p_default) == set(p_off) == keys
    for k in keys:
        assert torch.equal(p_default[k], p_off[k]), k
    assert torch.equal(p_off["loss"], expected)


@pytest.mark.parametrize("grid", [{}, {"downsize": 2, "loss_grid": "coarse"}, {"downsize": 2}])
@pytest.mark.parametrize("field", ["displacement", "velocity"])
def test_bidirectional_adds_named_parts_and_leaves_evaluation_alone(field, grid):
    b = _batch()
    loss = {"sim": "mse", "reg_weight": 0.3, "dice_weight": 0.5, "inverse_consistency_weight": 2.0}
    one = RegistrationModule(net=_vxm(std=0.05), field=field, loss=loss, **grid)
    both = RegistrationModule(net=_vxm(std=0.05), field=field, loss=loss, bidirectional=True, **grid)
    with torch.no_grad():
        p1, p = one.compute_loss(b), both.compute_loss(b)
        assert torch.equal(one.register(b), both.register(b))  # metrics see the forward field only
    extra = {"sim_reverse", "inverse_consistency", "dice_loss_reverse"} | ({"reg_reverse"} if field == "displacement" else set())
    assert set(p) == set(p1) | extra
    for k in p1:
        if k != "loss":
            assert torch.equal(p[k], p1[k]), k
    assert p["inverse_consistency"] > 0  # a random field: not inverse consistent
    # each direction weighs one half (diffeomorphic VoxelMorph's 0.5 / 0.5): one reg_weight means the
    # same smoothness against the image match as without the reverse direction
    reg = p["reg"] if field == "velocity" else 0.5 * (p["reg"] + p["reg_reverse"])
    expected = (0.5 * (p["sim"] + p["sim_reverse"]) + 0.3 * reg + 2.0 * p["inverse_consistency"]
                + 0.5 * 0.5 * (p["dice_loss"] + p["dice_loss_reverse"]))
    assert torch.isclose(p["loss"], expected)
    # velocity: the reverse map is exp(-v), the numerical inverse: small inverse-consistency error
    if field == "velocity":
        assert p["inverse_consistency"] < 1e-2


@pytest.mark.parametrize("field", ["displacement", "velocity"])
def test_zero_field_parts_are_exact_known_values(field):
    b = _batch()
    module = RegistrationModule(net=_zero(_vxm()), field=field, loss={"sim": "mse", "dice_weight": 1.0},
                                bidirectional=True)
    with torch.no_grad():
        p = module.compute_loss(b)
    mse = ((b["fixed"] - b["moving"]) ** 2).mean()
    assert p["sim"] == pytest.approx(mse.item(), abs=1e-6)
    assert p["sim_reverse"] == pytest.approx(mse.item(), abs=1e-6)
    assert p["reg"] == 0 and p["inverse_consistency"] == 0
    assert p["dice_loss"] == pytest.approx(p["dice_loss_reverse"].item(), abs=1e-6)
    assert p["loss"] == pytest.approx((mse + 0.5 * (p["dice_loss"] + p["dice_loss_reverse"])).item(), abs=1e-5)


def test_bidirectional_training_logs_the_new_parts():
    b = _batch()
    module = RegistrationModule(net=_vxm(), field="velocity", loss={"sim": "mse"}, bidirectional=True)
    logged = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, value)
    module.training_step(b, 0)
    names = {"train/sim_reverse", "train/inverse_consistency", "train/loss"}
    assert {f"{n}_step" for n in names} | {f"{n}_epoch" for n in names} <= set(logged)


# ---------------------------------------------------------------------------------------------
# B. symmetric (SymNet-style)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_symmetric_forward_composed_with_its_inverse_is_the_identity(shape):
    v_f, v_m = _smooth_velocity(shape, 2.0, 0), _smooth_velocity(shape, 2.0, 1)
    maps = symmetric_maps(v_f, v_m, 7)
    fwd = maps["forward"]
    inv = compose(integrate(v_f, 7), integrate(-v_m, 7))  # exp of the negated velocities, other order
    assert torch.allclose(inv, maps["backward"])
    assert torch.allclose(fwd, compose(integrate(v_m, 7), integrate(-v_f, 7)))
    assert fwd.abs().max() > 1.0  # a real deformation
    for w in (compose(fwd, inv), compose(inv, fwd)):
        err = _interior(w).norm(dim=1)
        assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())


def _sym_module(ndim=2, scale=1.0, **kw):
    net = _Blurred(_vxm(ndim, std=0.05), sigma=3.0, scale=scale)
    return SymmetricRegistrationModule(net=net, **kw)


def test_symmetric_register_is_integrated_and_swapping_images_gives_the_inverse():
    module = _sym_module(scale=15.0)  # velocities up to ~4 voxels, forward displacement ~1
    b = _batch((64, 64))
    swapped = {"fixed": b["moving"], "moving": b["fixed"]}
    with torch.no_grad():
        out = module(b["moving"], b["fixed"])
        u, u_swap = module.register(b), module.register(swapped)
        out_swap = module(swapped["moving"], swapped["fixed"])
    assert out.shape == (1, 4, 64, 64) and u.shape == (1, 2, 64, 64)
    v_f, v_m = out[:, :2], out[:, 2:]
    assert 0.8 < u.abs().max() < 10  # a moderate deformation, not the identity
    assert torch.allclose(out_swap, torch.cat([v_m, v_f], 1), atol=1e-6)  # swapped velocities
    assert torch.allclose(u, symmetric_maps(v_f, v_m, 7)["forward"], atol=1e-6)  # never a velocity
    assert not torch.allclose(u, v_m - v_f, atol=1e-3)
    # within the interpolation error of scaling and squaring itself (exp(v) o exp(-v) of the
    # same velocities is off by as much): no systematic error
    for w in (compose(u, u_swap), compose(u_swap, u)):
        err = _interior(w).norm(dim=1)
        assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())


def test_symmetric_zero_velocity_parts_are_exact_known_values():
    b = _batch()
    module = SymmetricRegistrationModule(net=_zero(_vxm()), loss={"sim": "mse", "dice_weight": 1.0})
    with torch.no_grad():
        p = module.compute_loss(b)
        u = module.register(b)
    assert u.abs().max() == 0
    mse = ((b["fixed"] - b["moving"]) ** 2).mean().item()
    for k in ("sim", "sim_forward", "sim_backward"):
        assert p[k] == pytest.approx(mse, abs=1e-6), k
    assert p["orientation"] == 0 and p["magnitude"] == 0 and p["reg"] == 0
    assert set(p) == {"loss", "sim", "sim_forward", "sim_backward", "orientation", "magnitude", "reg",
                      "dice_loss", "dice_loss_reverse"}
    assert p["loss"] == pytest.approx(3 * mse + p["dice_loss"].item() + p["dice_loss_reverse"].item(), abs=1e-5)


def test_symmetric_loss_parts_weights_and_orientation_gradient():
    b = _batch()
    loss = {"sim": "mse", "reg_weight": 0.2, "full_sim_weight": 0.5, "orientation_weight": 10.0, "magnitude_weight": 0.3}
    module = SymmetricRegistrationModule(net=_vxm(std=2.0), loss=loss)  # rough, large: folds
    p = module.compute_loss(b)
    assert p["orientation"] > 0 and p["magnitude"] > 0
    expected = (p["sim"] + 0.5 * (p["sim_forward"] + p["sim_backward"]) + 10.0 * p["orientation"]
                + 0.3 * p["magnitude"] + 0.2 * p["reg"])
    assert torch.isclose(p["loss"], expected)
    p["orientation"].backward()
    g = module.net.backbone.flow.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    mid_only = SymmetricRegistrationModule(net=_vxm(std=0.05), loss={"full_sim_weight": 0.0})
    assert "sim_forward" not in mid_only.compute_loss(_batch(labels=False))


@pytest.mark.parametrize("kind", ["symmetric", "bidirectional"])
def test_a_few_training_steps_reduce_the_loss(kind):
    """2-D for speed. The symmetric net learns slower at first than a one-pass net: its shared
    weights see both input orders, whose gradients start out nearly opposite."""
    torch.manual_seed(0)
    b = _batch((64, 64), labels=False, shift=3)
    if kind == "symmetric":
        module = SymmetricRegistrationModule(net=VoxelMorphUNet(ndim=2), loss={"sim": "mse", "reg_weight": 0.01})
    else:
        module = RegistrationModule(net=VoxelMorphUNet(ndim=2), field="velocity", bidirectional=True,
                                    loss={"sim": "mse", "reg_weight": 0.01})
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(24):
        loss = module.compute_loss(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # last 3 of 24 steps over the first, seeds 0-3: symmetric 0.62-0.84, bidirectional 0.04-0.08
    assert min(losses[-3:]) < losses[0] * 0.9, losses


def _symnet_cfg(tmp_path, extra=()):
    return compose_cfg("train", ["model=symnet", "model.loss.sim=mse", f"paths.output_dir={tmp_path}",
                                 "trainer.accelerator=cpu", *extra])


def test_experiment_files_compose_to_the_symmetric_module():
    for name, dice in (("mni_unsup_symnet", 0.0), ("mni_sup_symnet", 1.0)):
        cfg = compose_cfg("train", [f"experiment={name}"])
        assert cfg.model._target_ == "models.symmetric.SymmetricRegistrationModule"
        assert cfg.model.method == "symnet" and cfg.model.loss.dice_weight == dice


def test_checkpoint_round_trip_and_eval_writes_the_results_contract(tmp_path, pairs_csv):
    from app import build_model, load_model_from_checkpoint
    from spatial import DISPLACEMENT_CONVENTION

    import eval as eval_entry

    model = build_model(_symnet_cfg(tmp_path))
    assert isinstance(model, SymmetricRegistrationModule) and model.paradigm == "unsupervised"
    with torch.no_grad():  # a non-trivial network
        model.net.backbone.flow.weight.normal_(std=1e-3)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    assert ckpt["registration"]["displacement_convention"] == DISPLACEMENT_CONVENTION
    path = tmp_path / "symnet.ckpt"
    torch.save(ckpt, path)
    loaded = load_model_from_checkpoint(path)
    assert type(loaded) is SymmetricRegistrationModule
    b = _batch((32, 32, 32))
    with torch.no_grad():
        u, u2 = model.register(b), loaded.register(b)
    assert u.abs().max() > 0 and torch.equal(u, u2)

    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={path}", "data=pairs_csv", f"data.csv={pairs_csv}",
                               f"paths.output_dir={out}", "trainer.accelerator=cpu",
                               "trainer.enable_progress_bar=false"])
    summary = eval_entry.evaluate(cfg)
    assert summary["method"] == "symnet" and summary["n_pairs"] == 2 and summary["paradigm"] == "unsupervised"
    s = json.loads((out / "summary.json").read_text())
    for key in ("n_pairs", "dice_mean", "hd95_mean", "sdlogj_mean", "folding_pct_mean", "seconds_mean"):
        assert key in s
    header = (out / "pairs.csv").read_text().splitlines()[0].split(",")
    for col in ("fixed_id", "moving_id", "method", "dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct"):
        assert col in header
    assert (out / "labels.csv").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"bidirectional": "yes"}, "model.bidirectional"),
    ({"bidirectional": 1}, "model.bidirectional"),
    ({"loss": {"inverse_consistency_weight": -1.0}}, "model.loss.inverse_consistency_weight"),
    ({"loss": {"inverse_consistency_weight": True}}, "model.loss.inverse_consistency_weight"),
])
def test_bad_bidirectional_config_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegistrationModule(net=_vxm(), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": {"orientation_weight": -1}}, "model.loss.orientation_weight"),
    ({"loss": {"magnitude_weight": "big"}}, "model.loss.magnitude_weight"),
    ({"loss": {"full_sim_weight": -0.5}}, "model.loss.full_sim_weight"),
    ({"loss": {"orientation": 1.0}}, "unknown key"),
    ({"loss": {"inverse_consistency_weight": 1.0}}, "model.loss.inverse_consistency_weight"),
    ({"field": "displacement"}, "model.field"),
    ({"bidirectional": True}, "model.bidirectional"),
    ({"bidirectional": "no"}, "model.bidirectional"),
])
def test_bad_symmetric_config_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SymmetricRegistrationModule(net=_vxm(), **kwargs)


def test_bad_config_through_the_entry_point_names_the_key(tmp_path):
    from app import ConfigError, build_model

    with pytest.raises(ConfigError, match="model.bidirectional.*(true or false|must be a bool)"):
        build_model(compose_cfg("train", ["model.bidirectional=maybe", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="model.loss.orientation_weight"):
        build_model(_symnet_cfg(tmp_path, ["model.loss.orientation_weight=-1"]))


def test_symmetric_net_checks_its_backbone():
    with pytest.raises(ValueError, match="backbone"):
        SymmetricNet("not a net")


@pytest.mark.parametrize("grid", ["full", "coarse"])
def test_symmetric_on_a_coarse_network_grid(grid):
    b = _batch((32, 32, 32))
    module = SymmetricRegistrationModule(net=_vxm(3, std=0.05), downsize=2, loss_grid=grid, loss={"dice_weight": 1.0})
    with torch.no_grad():
        out = module(b["moving"], b["fixed"])
        p = module.compute_loss(b)
        u = module.register(b)
    assert out.shape == (1, 6, 16, 16, 16) and u.shape == (1, 3, 32, 32, 32)
    assert all(torch.isfinite(v) for v in p.values())
    assert {"dice_loss", "dice_loss_reverse", "orientation", "magnitude"} <= set(p)
