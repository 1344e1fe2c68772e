"""Activation checkpointing of the registration networks (``checkpoint=True``): the same outputs
and parameter gradients as without it, only in training with gradients enabled, and less
memory for a training step."""

from __future__ import annotations

import pytest
import torch

from models.networks import LapIRN, LKUNet, TransMorph, VoxelMorphUNet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread

# name -> (constructor taking checkpoint=..., input shape); tiny members and inputs, float64
NETS = {
    "vxm1-3d": (lambda ck: VoxelMorphUNet(3, "vxm1", checkpoint=ck), (16, 16, 16)),
    "vxm2-2d": (lambda ck: VoxelMorphUNet(2, "vxm2", checkpoint=ck), (32, 16)),
    # no extra full-resolution convs: the flow layer itself reads cat([up2(x), skip])
    "vxm-noextra-2d": (lambda ck: VoxelMorphUNet(2, enc=[4, 8], dec=[8, 4], checkpoint=ck), (8, 12)),
    "lkunet-3d": (lambda ck: LKUNet(3, start_channels=2, kernel_size=3, checkpoint=ck), (16, 16, 16)),
    "lkunet-2d": (lambda ck: LKUNet(2, start_channels=4, kernel_size=5, checkpoint=ck), (32, 16)),
    # stochastic depth on: the recomputation must replay the same random draws
    "transmorph-2d": (lambda ck: TransMorph(2, "tiny", window_size=4, drop_path_rate=0.3, checkpoint=ck), (64, 32)),
    "transmorph-3d": (lambda ck: TransMorph(3, "tiny", window_size=2, checkpoint=ck), (32, 32, 32)),
    "lapirn-velocity-3d": (lambda ck: LapIRN(3, channels=4, n_res_blocks=1, integration_steps=3, checkpoint=ck),
                           (16, 16, 16)),
    "lapirn-displacement-2d": (lambda ck: LapIRN(2, channels=4, n_res_blocks=2, field="displacement",
                                                 checkpoint=ck), (32, 24)),
}


def _pair(name: str, seed: int = 0):
    """The network built without and with checkpointing, identical float64 weights (perturbed
    so that the near-zero final convolutions do not hide differences)."""
    make, shape = NETS[name]
    torch.manual_seed(seed)
    plain = make(False).double()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ck = make(True).double()
    ck.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    moving, fixed = torch.rand(2, 2, 1, *shape, dtype=torch.float64, generator=g)
    weight = torch.randn(2, len(shape), *shape, dtype=torch.float64, generator=g)
    return plain, ck, moving, fixed, weight


def _count_calls(module: torch.nn.Module) -> list[int]:
    """A counter of the calls of ``module``."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _first_segment_module(net: torch.nn.Module) -> torch.nn.Module:
    """A submodule that runs inside the network's first checkpointed segment."""
    for attr in ("down", "stem", "patch_embed", "level_nets"):
        if hasattr(net, attr):
            m = getattr(net, attr)
            return m[0] if attr in ("down", "level_nets") else m
    raise AssertionError(type(net).__name__)


def _run(net, moving, fixed, weight):
    torch.manual_seed(123)  # same stochastic-depth draws for both networks
    out = net(moving, fixed)
    loss = (out * weight[: out.shape[0]]).sum() + out.square().sum()
    grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])
    return out.detach(), grads


@pytest.mark.parametrize("name", sorted(NETS))
def test_checkpointing_gives_the_same_outputs_and_parameter_gradients(name):
    plain, ck, moving, fixed, weight = _pair(name)
    assert not plain.checkpoint and ck.checkpoint
    plain.train(), ck.train()
    calls0, calls1 = _count_calls(_first_segment_module(plain)), _count_calls(_first_segment_module(ck))
    out0, grads0 = _run(plain, moving, fixed, weight)
    out1, grads1 = _run(ck, moving, fixed, weight)
    assert (calls0[0], calls1[0]) == (1, 2)  # checkpointed: recomputed in the backward pass
    assert out0.abs().max() > 1e-3  # the comparison means something
    torch.testing.assert_close(out1, out0)
    assert len(grads0) == len(grads1) == len(list(plain.parameters()))
    assert sum(bool(g.abs().max() > 0) for g in grads0) > len(grads0) // 2
    for (pname, _), g0, g1 in zip(plain.named_parameters(), grads0, grads1):
        torch.testing.assert_close(g1, g0, msg=lambda m: f"{name} {pname}: {m}")


def test_checkpointed_segments_are_recomputed_in_training_only():
    """Training with gradients: each checkpointed segment runs again in the backward pass;
    eval mode or ``no_grad``: a plain forward, nothing recomputed, the same field."""
    plain, ck, moving, fixed, weight = _pair("vxm1-3d")
    calls = _count_calls(ck.down[0])  # the first encoder level
    ck.train()
    ck(moving, fixed).square().sum().backward()
    assert calls[0] == 2  # forward + recomputation
    for mode, grad in (("eval", True), ("train", False), ("eval", False)):
        getattr(ck, mode)(), getattr(plain, mode)()
        calls[0] = 0
        with torch.set_grad_enabled(grad):
            out, ref = ck(moving, fixed), plain(moving, fixed)
            if grad:
                out.square().sum().backward()
        assert calls[0] == 1, (mode, grad)
        assert torch.equal(out, ref), (mode, grad)


@pytest.mark.parametrize("name", ["lkunet-2d", "transmorph-3d", "lapirn-velocity-3d"])
def test_eval_and_no_grad_outputs_equal_with_and_without_checkpointing(name):
    plain, ck, moving, fixed, _ = _pair(name)
    plain.eval(), ck.eval()
    with torch.no_grad():
        assert torch.equal(ck(moving, fixed), plain(moving, fixed))
    plain.train(), ck.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = ck(moving, fixed)
        torch.manual_seed(0)
        assert torch.equal(a, plain(moving, fixed))


def test_checkpoint_option_reaches_the_networks_from_the_model_configs(compose_cfg):
    from hydra.utils import instantiate

    for model, extra in (("voxelmorph", []), ("lkunet", []), ("transmorph", ["model.net.size=tiny"]),
                         ("lapirn", ["model.net.channels=4", "model.net.n_res_blocks=1"])):
        cfg = compose_cfg("train", [f"model={model}", *extra])
        assert cfg.model.net.checkpoint is False
        net = instantiate(compose_cfg("train", [f"model={model}", "model.net.checkpoint=true", *extra]).model.net)
        assert net.checkpoint is True, model


@pytest.mark.slow
def test_checkpointing_lowers_the_memory_a_training_step_adds():
    """Through the benchmark's own measurement (a fresh subprocess per network, VmHWM over two
    training steps minus the resident set before them): LKU-Net(8, 5) at 96^3 (~30 s).

    At 64^3 the one-time cost of the first step (oneDNN primitives, lazily loaded code) hides the
    difference; VoxelMorph gains little at any size (its backward peak sits in the
    full-resolution decoder level, which checkpointing recomputes rather than removes)."""
    from experiments.bench_training import memory_of

    shape = (96, 96, 96)
    plain = memory_of("lkunet", shape, "displacement", "tiny", threads=1, checkpoint=False)
    ck = memory_of("lkunet", shape, "displacement", "tiny", threads=1, checkpoint=True)
    assert ck["step_peak_mb"] < 0.9 * plain["step_peak_mb"], (plain, ck)
