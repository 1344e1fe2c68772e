"""LapIRN and its coarse-to-fine LapIRNModule: shapes and the displacement convention, how levels
combine, the stage schedule and freezing, the stage loss grid, learning, checkpoints (resume
included), eval.py on a checkpoint, and clear errors."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_blob_pair
from models import LapIRNModule
from models.networks import LapIRN
from spatial import integrate, warp

SHAPES = {2: (32, 32), 3: (16, 16, 16)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _small_net(ndim=3, field="velocity", **kw):
    return LapIRN(ndim=ndim, channels=kw.pop("channels", 4), n_res_blocks=kw.pop("n_res_blocks", 1), field=field,
                  integration_steps=kw.pop("integration_steps", 4), **kw)


def _module(ndim=3, net_field="velocity", net_kw=None, **kw):
    kw.setdefault("loss", {"sim": "mse", "reg_weight": 0.01})
    return LapIRNModule(net=_small_net(ndim, net_field, **(net_kw or {})), **kw)


def _blob3d(shape=(32, 32, 32), shift=2, labels=False):
    fi, fl, mi, ml = make_blob_pair(shape=shape, shift=shift)
    b = {"fixed": torch.from_numpy(fi)[None, None], "moving": torch.from_numpy(mi)[None, None]}
    if labels:
        b["fixed_label"] = torch.from_numpy(fl.astype("int64"))[None, None]
        b["moving_label"] = torch.from_numpy(ml.astype("int64"))[None, None]
    return b


def _blob2d(shape=(64, 64), shift=3.0, sigma=9.0):
    """A smooth 2-D blob and the same blob moved by ``+shift`` along axis 0: moving(x) = fixed(x - shift e0)."""
    x = torch.arange(shape[0], dtype=torch.float32)[:, None]
    y = torch.arange(shape[1], dtype=torch.float32)[None, :]
    c0, c1 = shape[0] / 2, shape[1] / 2

    def blob(s):
        return torch.exp(-((x - c0 - s) ** 2 + (y - c1) ** 2) / (2 * sigma**2))

    return {"fixed": blob(0.0)[None, None], "moving": blob(shift)[None, None]}


def _perturb(module, scale=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # leave the near-zero init so comparisons mean something
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _train(module, batch, steps, lr, stage=None):
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = module.compute_loss(batch, stage=stage)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("field", ["velocity", "displacement"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_output_is_one_channel_per_axis_at_every_active_level(ndim, field):
    torch.manual_seed(0)
    net = _small_net(ndim, field)
    shape = SHAPES[ndim]
    x = torch.rand(2, 1, *shape)
    out = net(x, x.flip(2))
    assert out.shape == (2, ndim, *shape) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all() and out.abs().max() < 0.05  # near-zero final convs: near identity
    for levels, factor in ((1, 4), (2, 2), (3, 1)):
        coarse = net(x, x, active_levels=levels, upsample=False)
        assert coarse.shape == (2, ndim, *(s // factor for s in shape))
        assert net(x, x, active_levels=levels).shape == (2, ndim, *shape)  # upsampled to the input grid


def test_levels_combine_in_the_project_convention():
    """Stub levels returning constant residuals: the finer level sees the moving image warped by the
    upsampled coarser field (spatial.warp) and that field; displacements compose (constants add,
    magnitudes rescaled to each grid), velocities add and the module integrates them."""

    class Const(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value, self.inputs = value, []

        def forward(self, x, feat):
            self.inputs.append(x)
            r = x.new_zeros(x.shape[0], 2, *x.shape[2:])
            r[:, 0] = self.value
            return r, x[:, :1]

    shape = (32, 48)
    for field in ("displacement", "velocity"):
        net = LapIRN(ndim=2, field=field, integration_steps=5)
        net.level_nets = nn.ModuleList([Const(1.0), Const(0.5), Const(0.25)])
        moving, fixed = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
        out = net(moving, fixed)
        # level grids 8x12, 16x24, 32x48; axis-0 magnitudes rescale by (n_fine - 1) / (n_coarse - 1)
        expected = 0.25 + (0.5 + 1.0 * 15 / 7) * 31 / 15
        assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], expected), atol=1e-5)
        assert out[:, 1].abs().max() < 1e-6
        prev = torch.zeros(1, 2, 16, 24)
        prev[:, 0] = 1.0 * 15 / 7
        m1 = F.interpolate(moving, size=(16, 24), mode="bilinear", align_corners=True)
        u_prev = integrate(prev, 5) if field == "velocity" else prev
        x1 = net.level_nets[1].inputs[0]
        assert torch.allclose(x1[:, :1], warp(m1, u_prev), atol=1e-6)
        assert torch.allclose(x1[:, 1:2], F.interpolate(fixed, size=(16, 24), mode="bilinear", align_corners=True))
        assert torch.allclose(x1[:, 2:], prev, atol=1e-6)
        module = LapIRNModule(net=net, integration_steps=5)
        u = module.register({"moving": moving, "fixed": fixed})
        assert torch.allclose(u, integrate(out, 5) if field == "velocity" else out)


@pytest.mark.parametrize("field", ["displacement", "velocity"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_translation_pair_gives_a_field_pointing_the_right_way(stage, field):
    """moving(x) = fixed(x - 3 e0), so warp(moving, u) = fixed needs u ~ +3 along axis 0; training
    only the first ``stage`` levels (at that stage's grid), the whole pyramid's field already does it."""
    torch.manual_seed(0)
    batch = _blob2d()
    module = _module(ndim=2, net_field=field, net_kw={"channels": 8}, loss={"sim": "mse", "reg_weight": 0.01})
    mse_before = F.mse_loss(batch["moving"], batch["fixed"]).item()
    _train(module, batch, steps=25, lr=3e-3, stage=stage)
    with torch.no_grad():
        u = module.register(batch)
    mask = batch["fixed"][0, 0] > 0.3
    assert abs(u[0, 0][mask].mean() - 3.0) < 1.0, u[0, 0][mask].mean()  # 2.5-2.9 when written
    assert u[0, 0][mask].mean() > 3 * u[0, 1][mask].abs().mean()
    mse_after = F.mse_loss(warp(batch["moving"], u), batch["fixed"]).item()
    assert mse_after < 0.5 * mse_before, (mse_before, mse_after)


@pytest.mark.parametrize("bad,match", [
    ({"shape": (1, 1, 20, 32, 32)}, "divisible by 8"),
    ({"shape": (1, 1, 32, 32)}, "'moving' must be"),
    ({"active_levels": 4}, "'active_levels' must be"),
])
def test_bad_input_is_a_clear_error(bad, match):
    net = _small_net(3)
    x = torch.rand(*bad.get("shape", (1, 1, 16, 16, 16)))
    with pytest.raises(ValueError, match=match):
        net(x, x, active_levels=bad.get("active_levels"))


def test_divisibility_multiple_follows_the_levels():
    assert _small_net(3).multiple == 8 and _small_net(3, levels=4).multiple == 16
    with pytest.raises(ValueError, match="divisible by 16"):
        x = torch.rand(1, 1, 24, 24)
        _small_net(2, levels=4)(x, x)


def test_the_oasis_recipe_builds_the_widths_of_the_authors_code():
    """LapIRN's code (start_channel 7): 28 channels in each level's encoder, decoder and 5 residual
    blocks, 3x3x3 convolutions, no biases, 2 input channels at level 1 and 5 above: 923,748 weights.
    Ours adds biases and feeds every level 5 channels; the oasis_* recipe must land within 1 %."""
    from hydra.utils import instantiate

    from conftest import compose

    cfg = compose("train", ["experiment=oasis_sup_lapirn"])
    net = instantiate(cfg.model.net)
    assert (net.level_nets[0].res[0].conv1.out_channels, len(net.level_nets[0].res)) == (28, 5)
    c, k = 28, 27
    level = k * c * c * (1 + 1 + 10) + 8 * c * c + k * 2 * c * c + k * c * 3
    authors = k * 2 * c + level + 2 * (k * 5 * c + level)
    assert authors == 923_748
    ours = sum(p.numel() for p in net.parameters())
    assert abs(ours - authors) / authors < 0.01, ours
    assert _small_net(3, res_channels=3).level_nets[0].res[0].conv1.out_channels == 3  # default 2C = 8
    with pytest.raises(ValueError, match="LapIRN 'res_channels'"):
        LapIRN(3, res_channels=0)


@pytest.mark.parametrize("bad,match", [
    ({"stage_epochs": [4]}, "model.stage_epochs"),
    ({"stage_epochs": [5, 2]}, "model.stage_epochs"),
    ({"freeze_epochs": -1}, "model.freeze_epochs"),
    ({"field": "displacement"}, "model.net.field"),
])
def test_bad_module_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        _module(3, "velocity", **bad)
    with pytest.raises(ValueError, match="model.bidirectional"):
        _module(3, "displacement", bidirectional=True)


def test_module_pads_a_grid_not_divisible_by_the_multiple():
    module = _module(3)
    b = {"fixed": torch.rand(1, 1, 20, 16, 12), "moving": torch.rand(1, 1, 20, 16, 12)}
    with torch.no_grad():
        assert module.register(b).shape == (1, 3, 20, 16, 12)
        assert module.stage_output(b["moving"], b["fixed"], 1).shape == (1, 3, 5, 4, 3)


# ---------------------------------------------------------------------------------------------- schedule
def test_stage_schedule_and_frozen_levels_follow_the_epoch():
    module = _module(3, stage_epochs=[2, 5], freeze_epochs=2)
    assert [module.stage_at(e) for e in range(8)] == [1, 1, 2, 2, 2, 3, 3, 3]
    assert [module.frozen_levels_at(e) for e in range(8)] == [[], [], [0], [0], [], [0, 1], [0, 1], []]
    for epoch in range(8):
        module.apply_schedule(epoch)
        frozen = set(module.frozen_levels_at(epoch))
        for k, level in enumerate(module.net.level_nets):
            assert all(p.requires_grad == (k not in frozen) for p in level.parameters()), (epoch, k)
    assert module.stage == 1  # no trainer: epoch 0


def test_frozen_levels_keep_their_weights_while_the_new_level_learns():
    torch.manual_seed(0)
    module = _module(3, stage_epochs=[1, 3], freeze_epochs=1)
    batch = _blob3d((16, 16, 16))
    opt = module.configure_optimizers()
    snap = lambda k: [p.detach().clone() for p in module.net.level_nets[k].parameters()]  # noqa: E731

    def steps(epoch, n=2):
        module.apply_schedule(epoch)
        for _ in range(n):
            loss = module.compute_loss(batch, stage=module.stage_at(epoch))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps(0)  # stage 1: level 0 learns (and has Adam state from now on)
    before = [snap(k) for k in range(3)]
    steps(1)  # stage 2, level 0 frozen
    after = [snap(k) for k in range(3)]
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(before[0], after[0]), "frozen level 0 changed"
    assert not same(before[1], after[1]), "the new level 1 did not learn"
    assert same(before[2], after[2]), "inactive level 2 changed"
    steps(2)  # stage 2 after the freeze: levels 0 and 1 train jointly
    assert not same(after[0], snap(0)) and not same(after[1], snap(1))


# ---------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("downsize", [1, 2])
def test_stage_loss_is_the_shared_loss_on_the_stage_grid(downsize):
    torch.manual_seed(0)
    module = _module(3, downsize=downsize, loss={"sim": "mse", "reg_weight": 0.5, "dice_weight": 1.0})
    _perturb(module)
    b = _blob3d((32, 32, 32), labels=True)
    with torch.no_grad():
        for stage in (1, 2):
            parts = module.compute_loss(b, stage=stage)
            factor = downsize * 2 ** (3 - stage)
            grid = tuple(32 // factor for _ in range(3))
            down = lambda t: F.interpolate(t, size=grid, mode="trilinear", align_corners=True)  # noqa: E731
            net_in = lambda t: F.interpolate(t, size=(32 // downsize,) * 3, mode="trilinear",  # noqa: E731
                                             align_corners=True) if downsize > 1 else t
            out = module.net(net_in(b["moving"]), net_in(b["fixed"]), active_levels=stage, upsample=False)
            assert out.shape[2:] == grid
            u = integrate(out, module.integration_steps)
            sim = F.mse_loss(warp(down(b["moving"]), u), down(b["fixed"]))
            assert torch.allclose(parts["sim"], sim, rtol=1e-3, atol=1e-6), (stage, parts["sim"], sim)
            assert torch.allclose(parts["reg"], module.regulariser(out))
            assert torch.allclose(parts["loss"], parts["sim"] + 0.5 * parts["reg"] + parts["dice_loss"])
        # the last stage is RegistrationModule's own loss, at full resolution
        full = module.compute_loss(b, stage=3)
        ref = module._loss_parts(b, module(b["moving"], b["fixed"]))
        assert all(torch.allclose(full[k], ref[k]) for k in ref)
    assert module.downsize == downsize and module.loss_grid == "full"  # restored after the stage losses


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_few_training_steps_reduce_the_loss_at_every_stage(stage):
    torch.manual_seed(0)
    module = _module(3, net_kw={"channels": 8})
    losses = _train(module, _blob3d((24, 24, 24), shift=2), steps=10, lr=3e-3, stage=stage)
    assert min(losses[-3:]) < 0.8 * losses[0], losses


# ---------------------------------------------------------------------------------------------- checkpoints
class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n=2, shape=(32, 32)):
        g = torch.Generator().manual_seed(0)
        self.items = [{"fixed": torch.rand(1, *shape, generator=g), "moving": torch.rand(1, *shape, generator=g)}
                      for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Record(L.Callback):
    """Records, at each train epoch's end, the epoch, the module's stage and which levels are
    trainable (the module's own epoch-start hook runs after the callbacks' one)."""

    def __init__(self):
        self.rows = []

    def on_train_epoch_end(self, trainer, module):
        grads = [all(p.requires_grad for p in lv.parameters()) for lv in module.net.level_nets]
        self.rows.append((trainer.current_epoch, module.stage, grads))


def _trainer(max_epochs, callbacks=()):
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     callbacks=list(callbacks))


def test_checkpoint_resumes_the_stage_and_restores_identical_outputs(tmp_path):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_Pairs(), batch_size=1)
    make = lambda: _module(2, stage_epochs=[1, 2], freeze_epochs=1,  # noqa: E731
                           optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    module, rec = make(), _Record()
    trainer = _trainer(2, [rec])
    trainer.fit(module, loader)
    assert rec.rows == [(0, 1, [True, True, True]), (1, 2, [False, True, True])]
    ckpt = tmp_path / "lapirn.ckpt"
    trainer.save_checkpoint(ckpt)
    # resume: the stage comes from the restored epoch (2 -> stage 3, levels 0-1 frozen), not from state
    resumed, rec2 = make(), _Record()
    _trainer(3, [rec2]).fit(resumed, loader, ckpt_path=ckpt)
    assert rec2.rows == [(2, 3, [False, False, True])]
    # weights restored exactly: identical outputs
    restored = make()
    restored.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    b = {"fixed": torch.rand(1, 1, 32, 32), "moving": torch.rand(1, 1, 32, 32)}
    module.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(module.register(b), restored.register(b))


def test_eval_py_evaluates_a_lapirn_checkpoint(pairs_csv, tmp_path):
    from conftest import compose

    import eval as eval_entry
    from app import build_model, load_model_from_checkpoint

    cfg = compose("train", ["model=lapirn", "model.net.channels=4", "model.net.n_res_blocks=1",
                            "model.integration_steps=4", "data=pairs_csv", f"data.csv={pairs_csv}"])
    model = build_model(cfg)
    assert isinstance(model, LapIRNModule) and model.net.field == model.field == "velocity"
    _perturb(model, 0.005)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    path = tmp_path / "lapirn.ckpt"
    torch.save(ckpt, path)
    loaded = load_model_from_checkpoint(path)
    b = {"fixed": torch.rand(1, 1, 32, 32, 32), "moving": torch.rand(1, 1, 32, 32, 32)}
    with torch.no_grad():
        assert torch.equal(model.register(b), loaded.register(b))
    out = tmp_path / "eval"
    ecfg = compose("eval", [f"ckpt_path={path}", "data=pairs_csv", f"data.csv={pairs_csv}",
                            f"paths.output_dir={out}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])
    summary = eval_entry.evaluate(ecfg)
    assert summary["method"] == "lapirn" and summary["n_pairs"] == 2
    assert summary["paradigm"] == "unsupervised" and math.isfinite(summary["dice_mean"])
    assert (out / "pairs.csv").exists()


# ---------------------------------------------------------------------------------------------- cLapIRN
def _clapirn(ndim=2, reg_code=0.3, reg_weight=2.0, **net_kw):
    net = _small_net(ndim, "displacement", conditional=True, **net_kw)
    return LapIRNModule(net=net, reg_code=reg_code, loss={"sim": "mse", "reg_weight": reg_weight})


def test_clapirn_is_conditioned_on_its_code():
    """The conditional blocks make the field a function of the code lambda; a plain net refuses one,
    a conditional one needs one in [0, 1]."""
    torch.manual_seed(0)
    net = _small_net(2, "displacement", conditional=True)
    _perturb(net, 0.05)  # fields of about 2 voxels
    b = _blob2d()
    with torch.no_grad():
        low, high = net(b["moving"], b["fixed"], reg_code=0.0), net(b["moving"], b["fixed"], reg_code=1.0)
        both = net(torch.cat([b["moving"]] * 2), torch.cat([b["fixed"]] * 2), reg_code=torch.tensor([0.0, 1.0]))
    assert (low - high).abs().max() > 1e-2 * low.abs().max()
    torch.testing.assert_close(both, torch.cat([low, high]), rtol=0, atol=1e-4)
    for bad, match in ((None, "needs 'reg_code'"), (1.5, r"in \[0, 1\]"), (torch.zeros(3), "one per batch item")):
        with pytest.raises(ValueError, match=match):
            net(b["moving"], b["fixed"], reg_code=bad)
    with pytest.raises(ValueError, match="not"):
        _small_net(2)(b["moving"], b["fixed"], reg_code=0.5)


def test_clapirn_draws_one_code_per_training_step_and_weighs_the_smoothness_by_it(monkeypatch):
    """Training: each step draws lambda ~ U(0, 1), feeds it to the net and uses lambda x reg_weight;
    evaluation uses model.reg_code. The loss parts must add up with the code the net saw."""
    torch.manual_seed(0)
    module = _clapirn()
    _perturb(module, 0.05)
    seen = []
    forward = module.net.forward
    monkeypatch.setattr(module.net, "forward", lambda *a, **k: seen.append(k["reg_code"]) or forward(*a, **k))
    b = _blob2d()
    module.train()
    codes = []
    for stage in (1, 3, 3):
        seen.clear()
        parts = module.compute_loss(b, stage=stage)
        code = float(parts["reg_code"])
        assert seen and all(c == code for c in seen) and 0.0 <= code <= 1.0
        torch.testing.assert_close(parts["loss"], parts["sim"] + 2.0 * code * parts["reg"])
        codes.append(code)
    assert len(set(codes)) == 3
    module.eval()
    seen.clear()
    parts = module.compute_loss(b)
    assert float(parts["reg_code"]) == 0.3 and seen == [0.3]
    torch.testing.assert_close(parts["loss"], parts["sim"] + 0.6 * parts["reg"])
    assert module.test_settings() == {"reg_code": 0.3} and module.hparams["reg_code"] == 0.3


@pytest.mark.parametrize("net_kw,reg_code,match", [
    ({"conditional": True}, None, "model.reg_code must be a number"),
    ({"conditional": True}, 1.5, "model.reg_code must be a number"),
    ({}, 0.4, "not conditional"),
])
def test_clapirn_bad_codes_are_named(net_kw, reg_code, match):
    with pytest.raises(ValueError, match=match):
        LapIRNModule(net=_small_net(2, "displacement", **net_kw), reg_code=reg_code)


def test_a_trained_clapirn_gives_smoother_fields_at_larger_codes():
    """The point of cLapIRN: one network, a range of smoothness chosen at test time. Trained 150 steps
    on one 2-D pair whose moving image is the fixed one under a random non-affine warp (about 2 voxels),
    lambda = 1 gives a field of much lower smoothness energy than lambda = 0, at a worse image match.
    Measured over seeds 0-5: energy ratio 0.22-0.35 (bar 0.6), MSE 0.0027 vs 0.0046."""
    import torch.nn.functional as F

    from losses import diffusion

    g = torch.Generator().manual_seed(100)
    img = F.avg_pool2d(torch.rand(1, 1, 64, 64, generator=g), 5, 1, 2)
    img = (img - img.min()) / (img.max() - img.min())
    warp_field = F.interpolate(torch.randn(1, 2, 8, 8, generator=g) * 2.0, size=(64, 64), mode="bilinear",
                               align_corners=True)
    b = {"fixed": img, "moving": warp(img, warp_field)}
    torch.manual_seed(0)
    module = LapIRNModule(net=_small_net(2, "displacement", conditional=True, channels=8), reg_code=0.5,
                          loss={"sim": "mse", "reg_weight": 0.05}, stage_epochs=[0, 0])
    _train(module, b, steps=150, lr=3e-3)
    module.eval()
    with torch.no_grad():
        u = {c: module.net(b["moving"], b["fixed"], reg_code=c) for c in (0.0, 1.0)}
    energy = {c: float(diffusion(v)) for c, v in u.items()}
    mse = {c: float((warp(b["moving"], v) - b["fixed"]).pow(2).mean()) for c, v in u.items()}
    assert energy[1.0] < 0.6 * energy[0.0], energy
    assert mse[0.0] < mse[1.0] < float((b["moving"] - b["fixed"]).pow(2).mean()), mse


def test_eval_py_tests_a_clapirn_checkpoint_at_any_code(pairs_csv, tmp_path, capsys):
    """eval.py reg_code=... re-tests one cLapIRN checkpoint at another smoothness: summary.json records
    the code, and results of one code are never reused as another's; a plain method refuses the key."""
    from conftest import compose

    import eval as eval_entry
    from app import build_model

    cfg = compose("train", ["model=clapirn", "model.net.channels=4", "model.net.n_res_blocks=1",
                            "data=pairs_csv", f"data.csv={pairs_csv}"])
    model = build_model(cfg)
    assert model.conditional and model.reg_code == 0.4 and model.method == "clapirn"
    _perturb(model, 0.02)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    path = tmp_path / "clapirn.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "eval"
    common = [f"ckpt_path={path}", "data=pairs_csv", f"data.csv={pairs_csv}", f"paths.output_dir={out}",
              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    stored = eval_entry.evaluate(compose("eval", common))
    smooth = eval_entry.evaluate(compose("eval", common + ["reg_code=1.0"]))
    assert stored["reg_code"] == 0.4 and smooth["reg_code"] == 1.0
    assert "reused" not in capsys.readouterr().out
    assert smooth["sdlogj_mean"] != stored["sdlogj_mean"]
    for bad in (["reg_code=1.5"], ["model=greedy", "reg_code=0.5"]):
        args = common[1:] + [f"paths.output_dir={tmp_path / 'bad'}"] + bad
        if "model=greedy" not in bad:
            args = common + bad
        with pytest.raises(SystemExit):
            eval_entry.evaluate(compose("eval", args))
        assert "reg_code" in capsys.readouterr().err


def test_clapirn_weight_is_the_authors_range_in_our_units():
    """The authors' cLapIRN weighs ``smoothloss(F * (n - 1))`` by ``10 * lambda``, with ``F`` the flow
    in grid_sample's [-1, 1] units (a voxel displacement ``d`` is ``F (n - 1) / 2``) and smoothloss the
    mean over 3 axes of the mean over channels and voxels of squared forward differences. Our
    ``reg_weight * diffusion(d)`` must equal it: 4.44 (1.11, a quarter, until 2026-12-04)."""
    from conftest import compose

    from losses import diffusion

    g = torch.Generator().manual_seed(0)
    d = torch.randn(1, 3, 12, 10, 14, generator=g, dtype=torch.float64)  # voxel units, axis i = channel i
    n = torch.tensor(d.shape[2:], dtype=torch.float64).view(1, 3, 1, 1, 1)
    flow_unit = d * 2 / (n - 1)

    def smoothloss(y):
        return sum((torch.diff(y, dim=a) ** 2).mean() for a in (2, 3, 4)) / 3.0

    theirs = 10.0 * smoothloss(flow_unit * (n - 1))
    for cfg in (compose("train", ["model=clapirn"]), compose("train", ["experiment=mni_unsup_clapirn"]),
                compose("train", ["experiment=oasis_unsup_clapirn"])):
        ours = float(cfg.model.loss.reg_weight) * diffusion(d)
        assert float(ours) == pytest.approx(float(theirs), rel=2e-3), cfg.model.loss.reg_weight
