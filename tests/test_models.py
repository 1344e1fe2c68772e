"""RegistrationModule and VoxelMorph: shapes, field conventions, losses, clear errors."""

from __future__ import annotations

import pytest
import torch

from models import IdentityRegistration, RegistrationModule
from models.networks import VoxelMorphUNet
from spatial import integrate


def _batch(shape=(32, 32, 32), labels=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {
        "fixed": torch.rand(1, 1, *shape, generator=g),
        "moving": torch.rand(1, 1, *shape, generator=g),
        "spacing": torch.ones(1, len(shape)),
        "fixed_id": ["f"],
        "moving_id": ["m"],
    }
    if labels:
        b["fixed_label"] = torch.randint(0, 3, (1, 1, *shape), generator=g)
        b["moving_label"] = torch.randint(0, 3, (1, 1, *shape), generator=g)
    return b


@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (16, 32, 16))])
@pytest.mark.parametrize("variant", ["vxm1", "vxm2"])
def test_voxelmorph_output_is_one_channel_per_axis(ndim, shape, variant):
    net = VoxelMorphUNet(ndim=ndim, variant=variant)
    x = torch.rand(2, 1, *shape)
    out = net(x, x)
    assert out.shape == (2, ndim, *shape)
    assert out.abs().max() < 1e-2  # tiny-normal init of the flow layer: starts near identity


def test_voxelmorph_shape_not_divisible_names_the_multiple():
    net = VoxelMorphUNet(ndim=3)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.rand(1, 1, 20, 32, 32), torch.rand(1, 1, 20, 32, 32))


def test_velocity_field_is_integrated_before_anyone_sees_it():
    torch.manual_seed(0)
    module = RegistrationModule(net=VoxelMorphUNet(ndim=3), field="velocity", integration_steps=5)
    with torch.no_grad():
        module.net.flow.weight.normal_(std=0.05)
    b = _batch((16, 16, 16))
    with torch.no_grad():
        v = module(b["moving"], b["fixed"])
        u = module.register(b)
    assert torch.allclose(u, integrate(v, 5))
    assert not torch.allclose(u, v)


def test_downsize_runs_the_net_on_a_coarse_grid_and_returns_a_full_field():
    module = RegistrationModule(net=VoxelMorphUNet(ndim=3), downsize=2)
    b = _batch((32, 32, 64))
    with torch.no_grad():
        out = module(b["moving"], b["fixed"])
        u = module.register(b)
    assert out.shape == (1, 3, 16, 16, 32) and u.shape == (1, 3, 32, 32, 64)


def test_loss_parts_are_named_and_dice_only_when_supervised():
    b = _batch((16, 16, 16))
    unsup = RegistrationModule(net=VoxelMorphUNet(ndim=3))
    parts = unsup.compute_loss(b)
    assert set(parts) == {"loss", "sim", "reg"}
    sup = RegistrationModule(net=VoxelMorphUNet(ndim=3), loss={"dice_weight": 1.0})
    parts = sup.compute_loss(b)
    assert set(parts) == {"loss", "sim", "reg", "dice_loss"}
    assert torch.isclose(parts["loss"], parts["sim"] + parts["reg"] + parts["dice_loss"])


def test_dice_weight_without_labels_is_a_clear_error():
    sup = RegistrationModule(net=VoxelMorphUNet(ndim=3), loss={"dice_weight": 1.0})
    with pytest.raises(ValueError, match="dice_weight > 0 needs labels"):
        sup.compute_loss(_batch((16, 16, 16), labels=False))


@pytest.mark.parametrize("bad,match", [
    ({"field": "flow"}, "model.field"),
    ({"label_interp": "cubic"}, "model.label_interp"),
    ({"loss": {"simm": "lncc"}}, "unknown key"),
    ({"loss": {"sim": "ncc"}}, "lncc"),
    ({"downsize": 0}, "model.downsize"),
])
def test_bad_module_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        RegistrationModule(net=VoxelMorphUNet(ndim=3), **bad)


def test_a_few_training_steps_reduce_the_loss_on_one_pair():
    torch.manual_seed(0)
    from data.mni import MNISubjects

    subjects = MNISubjects(resolution=2, shape=(48, 64, 48))
    b = {"fixed": subjects[0]["image"][None], "moving": subjects[1]["image"][None]}
    module = RegistrationModule(net=VoxelMorphUNet(ndim=3), loss={"reg_weight": 0.1})
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = module.compute_loss(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < losses[0] - 1e-3, losses


def test_identity_registration_is_zero_and_has_no_parameters():
    b = _batch((8, 8, 8))
    module = IdentityRegistration()
    u = module.register(b)
    assert u.shape == (1, 3, 8, 8, 8) and u.abs().max() == 0
    assert module.configure_optimizers() is None


@pytest.mark.parametrize("reg", ["bending", "diffusion"])
def test_one_reg_weight_regularises_one_physical_field_alike_on_any_grid(reg):
    """The field ``u_0 = a x_0**2`` (bending) or ``a x_0`` (diffusion) in full-resolution voxels, given
    on the grid 2x coarser in that grid's voxels (``u_c(y) = u(2y) / 2``), as the loss sees a
    ``downsize=2`` network's output or a coarse stage's: the loss's ``reg`` part equals the
    full-resolution one. (Bending energy alone grows 4x on the coarser grid; without the
    rescaling this fails by that factor.)"""
    from losses import bending_energy, diffusion

    a = 0.01
    power = 2 if reg == "bending" else 1

    def field(n: int, scale: float) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64).view(n, 1, 1).expand(n, n, n)
        u = torch.zeros(1, 3, n, n, n, dtype=torch.float64)
        u[:, 0] = (scale * x) ** power * a / scale
        return u

    full, coarse = field(32, 1.0), field(16, 2.0)
    raw = bending_energy if reg == "bending" else diffusion
    assert float(raw(coarse) / raw(full)) == pytest.approx(4.0 if reg == "bending" else 1.0, rel=1e-9)
    model = RegistrationModule(net=VoxelMorphUNet(3, "vxm1"), loss={"reg": reg, "sim": "mse"}, downsize=2)
    img = torch.rand(1, 1, 32, 32, 32)
    batch = {"fixed": img, "moving": img}
    parts = model._loss_parts(batch, coarse.float(), grid_factor=2)
    assert float(parts["reg"]) == pytest.approx(float(raw(full)), rel=1e-5)
    assert float(model.regularise(full, 1)) == pytest.approx(float(raw(full)), rel=1e-12)


def test_validation_loss_is_kept_per_pair_so_padded_repeats_drop_out():
    """A validation batch of two pairs gives one loss row per pair, each the pair's own loss; a
    repeat of one pair in another batch (DDP pads so) is dropped with its metrics, and the epoch's
    loss is the mean over the distinct pairs. (Batch rows could not drop a repeat inside a batch.)"""
    from models.evaluation import each_pair_once
    from models.evaluation_steps import _means

    torch.manual_seed(0)
    model = RegistrationModule(net=VoxelMorphUNet(3, "vxm1"), loss={"sim": "mse"}).eval()
    with torch.no_grad():  # a net that moves something, so each pair has its own loss
        model.net.flow.weight.normal_(0.0, 0.05)
    imgs = torch.rand(3, 1, 16, 16, 16)

    def batch(idx):
        return {"fixed": imgs[[0] * len(idx)], "moving": imgs[idx], "fixed_id": ["f"] * len(idx),
                "moving_id": [f"m{i}" for i in idx], "spacing": torch.ones(len(idx), 3),
                "fixed_affine": torch.eye(4, dtype=torch.float64).expand(len(idx), 4, 4)}

    def loss_of(idx):
        with torch.no_grad():
            b = batch(idx)
            return float(model.compute_loss(b)["loss"])

    model._val_rows = []
    with torch.no_grad():
        model.validation_step(batch([1, 2]), 1)
        model.validation_step(batch([2]), 2)  # the padded repeat of pair (f, m2)
    loss_rows = [r for r in model._val_rows if "loss/loss" in r]
    assert [r["n"] for r in loss_rows] == [1, 1, 1]
    assert loss_rows[0]["loss/loss"] == pytest.approx(loss_of([1]), rel=1e-5)
    assert loss_rows[1]["loss/loss"] == pytest.approx(loss_of([2]), rel=1e-5)
    assert loss_of([1]) != pytest.approx(loss_of([2]), rel=1e-3)
    means = _means(each_pair_once(None, model._val_rows))
    assert means["loss"] == pytest.approx((loss_of([1]) + loss_of([2])) / 2, rel=1e-5)
