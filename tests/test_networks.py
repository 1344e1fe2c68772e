"""The registration networks (VoxelMorph, LKU-Net, TransMorph): shapes, learning, checkpoints,
shape errors, and the exactness of their fast paths."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from conftest import make_blob_pair
from models import RegistrationModule
from models.networks import LapIRN, LKBlock, LKUNet, TransMorph, VoxelMorphUNet, pad_to_multiple
from models.networks.blocks import conv_nd, upsample_conv

# Small members of each family (the paper's LKU-Net(8, 5), TransMorph-tiny) so the file stays fast.
NETS = {
    "voxelmorph": lambda ndim: VoxelMorphUNet(ndim=ndim, variant="vxm1"),
    "lkunet": lambda ndim: LKUNet(ndim=ndim, start_channels=8, kernel_size=5),
    "transmorph": lambda ndim: TransMorph(ndim=ndim, size="tiny"),
}
SHAPES = {2: (32, 32), 3: (32, 32, 32)}
LR = {"voxelmorph": 3e-3, "lkunet": 3e-4, "transmorph": 3e-3}  # LKU-Net (2 M parameters) diverges at 3e-3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _blob_batch(shape=(32, 32, 32), shift=2, device="cpu"):
    fixed, _, moving, _ = make_blob_pair(shape=shape, shift=shift)
    return {"fixed": torch.from_numpy(fixed)[None, None].to(device), "moving": torch.from_numpy(moving)[None, None].to(device)}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(NETS))
def test_output_is_one_float32_channel_per_axis_near_identity(name, ndim, device):
    torch.manual_seed(0)
    net = NETS[name](ndim).to(device)
    x = torch.rand(2, 1, *SHAPES[ndim]).to(device)
    out = net(x, x.flip(2))
    assert out.shape == (2, ndim, *SHAPES[ndim]) and out.device == device
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all() and out.abs().max() < 0.05  # small-initialised final conv


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_few_training_steps_reduce_the_loss_on_a_shifted_blob_pair(name, device):
    torch.manual_seed(0)
    batch = _blob_batch(device=device)
    module = RegistrationModule(net=NETS[name](3), loss={"sim": "mse", "reg_weight": 0.01}).to(device)
    opt = torch.optim.Adam(module.parameters(), lr=LR[name])
    losses = []
    for _ in range(12):
        loss = module.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", sorted(NETS))
def test_state_dict_round_trip_gives_identical_outputs(name, tmp_path, device):
    torch.manual_seed(0)
    module = RegistrationModule(net=NETS[name](3), field="velocity", integration_steps=4).to(device)
    with torch.no_grad():  # leave the near-zero init so the comparison means something
        for p in module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(module.state_dict(), tmp_path / "net.pt")
    torch.manual_seed(1)
    restored = RegistrationModule(net=NETS[name](3), field="velocity", integration_steps=4).to(device)
    restored.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    module.eval(), restored.eval()
    batch = _blob_batch(device=device)
    with torch.no_grad():
        u0, u1 = module.register(batch), restored.register(batch)
    assert u0.abs().max() > 1e-3
    assert torch.equal(u0, u1)


# Number of entries and sha256 (first 16 hex digits) of "key shape" lines of each default 3-D
# network's state_dict, as checkpoints written before models/networks/blocks.py hold them. A change
# here means old checkpoints no longer load: rename keys on load, or say so, before updating.
STATE_DICT_KEYS = {
    "voxelmorph": (lambda: VoxelMorphUNet(3, "vxm1"), 20, "b06eba193cb6bb17"),
    "lkunet": (lambda: LKUNet(3, start_channels=8), 84, "d5bd02bccf8885d7"),
    "transmorph": (lambda: TransMorph(3, "tiny"), 165, "a4182a6deb353c7b"),
    "lapirn": (lambda: LapIRN(3), 72, "6e2d8f91673e45a3"),
}


@pytest.mark.parametrize("name", sorted(STATE_DICT_KEYS))
def test_state_dict_keys_and_shapes_are_those_old_checkpoints_hold(name):
    make, count, digest = STATE_DICT_KEYS[name]
    sd = make().state_dict()
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    assert (len(sd), hashlib.sha256(text.encode()).hexdigest()[:16]) == (count, digest), text

@pytest.mark.parametrize("name,multiple", [("voxelmorph", 16), ("lkunet", 16), ("transmorph", 32)])
def test_shape_not_divisible_is_a_clear_error_naming_shape_and_multiple(name, multiple):
    net = NETS[name](3)
    assert net.multiple == multiple
    bad = (multiple + 4, multiple, multiple)
    with pytest.raises(ValueError, match=rf"divisible by {multiple}, got \({bad[0]}, {bad[1]}, {bad[2]}\)"):
        net(torch.rand(1, 1, *bad), torch.rand(1, 1, *bad))
    # padding up to the multiple is the documented way out
    x, crop = pad_to_multiple(torch.rand(1, 1, *bad), net.multiple)
    assert x.shape[2:] == (2 * multiple, multiple, multiple)
    assert net(x, x)[crop].shape == (1, 3, *bad)


@pytest.mark.parametrize("net_ndim,image_shape", [(3, (32, 32)), (2, (16, 16, 16))])
def test_network_and_image_dimensions_that_differ_are_one_error_naming_the_key(net_ndim, image_shape):
    model = RegistrationModule(net=NETS["voxelmorph"](net_ndim), downsize=1)
    x = torch.rand(1, 1, *image_shape)
    with pytest.raises(ValueError, match=rf"model.net.ndim={net_ndim}: .* {len(image_shape)}-D"):
        model.register({"fixed": x, "moving": x})


# ------------------------------------------------------------------------------- fast paths
@pytest.mark.parametrize("ndim,shape", [(2, (5, 7)), (3, (4, 5, 6))])
def test_upsample_conv_equals_conv_of_nearest_upsampled_input(ndim, shape, device):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *shape, dtype=torch.float64).to(device).requires_grad_(True)
    w = torch.randn(4, 3, *([3] * ndim), dtype=torch.float64).to(device).requires_grad_(True)
    conv = F.conv3d if ndim == 3 else F.conv2d
    ref = conv(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
    assert torch.allclose(upsample_conv(x, w), ref, atol=1e-12)
    grads = torch.autograd.grad(upsample_conv(x, w).square().sum(), (x, w))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (x, w))):
        assert torch.allclose(g, r, atol=1e-10)
    small = (x[:1, :2, :3, :3].detach().requires_grad_(), w[:2, :2].detach().requires_grad_())
    assert torch.autograd.gradcheck(upsample_conv, small)  # the custom backward of the interleave
    fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
    assert torch.allclose(upsample_conv(x.contiguous(memory_format=fmt), w), ref, atol=1e-12)


@pytest.mark.parametrize("variant", ["vxm1", "vxm1_paper", "vxm2"])
@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (16, 32, 16))])
def test_voxelmorph_fast_forward_equals_layer_by_layer_network(variant, ndim, shape, device):
    torch.manual_seed(0)
    net = VoxelMorphUNet(ndim=ndim, variant=variant).double()
    with torch.no_grad():
        net.flow.weight.normal_(std=0.1)
    net.to(device)
    a, b = torch.rand(2, 2, 1, *shape, dtype=torch.float64).to(device)
    fast, ref = net(a, b), net.forward_reference(a, b)
    assert torch.allclose(fast, ref, atol=1e-10)
    g_fast = torch.autograd.grad(fast.square().sum(), list(net.parameters()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    for x, y in zip(g_fast, g_ref):
        assert torch.allclose(x, y, atol=1e-8)


def test_conv_nd_padding_channels_for_onednn_gives_the_same_convolution():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 48, 48, 4, requires_grad=True)  # 1*8*48*48 <= 20480: padded to 9 channels
    w = torch.randn(5, 8, 3, 3, 3, requires_grad=True)
    out, ref = conv_nd(x, w, None, padding=1), F.conv3d(x, w, None, padding=1)
    assert torch.allclose(out, ref, atol=1e-4)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    rx, rw = torch.autograd.grad(ref.sum(), (x, w))
    assert torch.allclose(gx, rx, atol=1e-4) and torch.allclose(gw, rw, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("ndim,kernel", [(2, 7), (3, 5)])
def test_lk_block_runs_as_one_convolution_with_the_same_result(ndim, kernel, device):
    torch.manual_seed(0)
    block = LKBlock(ndim, 4, kernel).double().to(device)
    x = torch.randn(2, 4, *([9] * ndim), dtype=torch.float64).to(device)
    assert torch.allclose(block(x), block.forward_reference(x), atol=1e-12)


def test_cpu_channel_padding_of_conv_nd_never_runs_off_the_cpu(monkeypatch):
    """conv_nd's extra zero channel is a oneDNN (CPU) fast path; on another device (a fake one:
    meta tensors) the plain convolution runs with the weight as given."""
    from models.networks import blocks

    seen = []
    real = F.conv3d
    monkeypatch.setattr(blocks.F, "conv3d", lambda x, w, *a, **k: seen.append(w.shape[1]) or real(x, w, *a, **k))
    x, w = torch.randn(1, 8, 48, 48, 4), torch.randn(5, 8, 3, 3, 3)
    conv_nd(x, w, None, padding=1)
    conv_nd(x.to("meta"), w.to("meta"), None, padding=1)
    assert seen == [9, 8]  # padded to 9 channels on the CPU only


NETWORK_STEPS = {**NETS, "lapirn": lambda ndim: LapIRN(ndim)}


@pytest.mark.parametrize("name", sorted(NETWORK_STEPS))
@pytest.mark.parametrize("field,downsize", [("displacement", 1), ("velocity", 2)])
def test_a_training_step_reads_nothing_on_the_host(name, field, downsize):
    """A training step without labels (forward, LNCC, regulariser, backward) on meta tensors:
    a tensor made on the CPU inside a network or the loss, or a value read on the host, raises,
    as it would cost a copy or a wait on a GPU. (A Dice loss reads the label ids once a step:
    :func:`losses.compact_labels` sizes its channels from them.)"""
    module = RegistrationModule(net=NETWORK_STEPS[name](3), field=field, downsize=downsize,
                                loss={"sim": "lncc", "reg": "diffusion"}).to("meta")
    batch = {"fixed": torch.zeros(1, 1, 32, 32, 32, device="meta"), "moving": torch.zeros(1, 1, 32, 32, 32, device="meta")}
    parts = module.compute_loss(batch)
    parts["loss"].backward()
    assert all(v.device.type == "meta" for v in parts.values())
    assert all(p.grad.device.type == "meta" for p in module.parameters() if p.grad is not None)


def test_parameter_counts():
    """TransMorph's table: tiny 0.24 M, small 11.76 M, base 46.77 M. LKU-Net(8, 5): 2.09 M, the
    count this layout gives (kept here so a change to the architecture is noticed)."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert round(count(TransMorph(3, "tiny")) / 1e6, 2) == 0.24
    assert round(count(TransMorph(3, "small")) / 1e6, 2) == 11.76
    assert round(count(TransMorph(3, "base")) / 1e6, 2) == 46.77
    assert round(count(LKUNet(3, start_channels=8, kernel_size=5)) / 1e6, 2) == 2.09


def test_bad_network_arguments_are_named():
    with pytest.raises(ValueError, match="TransMorph 'size'"):
        TransMorph(3, size="huge")
    with pytest.raises(ValueError, match="num_heads"):
        TransMorph(3, size="tiny", num_heads=(4, 4, 8, 8))  # 6 channels / 4 heads
    with pytest.raises(ValueError, match="LKUNet 'kernel_size'"):
        LKUNet(3, kernel_size=4)
    with pytest.raises(ValueError, match="ndim"):
        LKUNet(4)


def test_voxelmorph_variants_have_the_papers_widths():
    """VoxelMorph-1 and -2 of the paper (TMI 2019 and its reference code's unet_core): 259,675 and
    300,547 parameters in 3-D, with dec_nf[3] and dec_nf[4] at half resolution (32 -> 8, or 32 -> 32)
    and the first full-resolution conv reading that plus the input pair (10 or 34 channels); vxm1,
    the narrower VoxelMorph-1 (221,627), has no half-resolution conv after its levels."""
    count = {v: sum(p.numel() for p in VoxelMorphUNet(3, v).parameters()) for v in ("vxm1", "vxm1_paper", "vxm2")}
    assert (count["vxm1"], count["vxm1_paper"], count["vxm2"]) == (221_627, 259_675, 300_547), count
    layout = {}
    for v in ("vxm1", "vxm1_paper", "vxm2"):
        net = VoxelMorphUNet(3, v)
        layout[v] = ([(m.conv.in_channels, m.conv.out_channels) for m in net.half_convs],
                     [(m.conv.in_channels, m.conv.out_channels) for m in net.extra])
    assert layout["vxm1_paper"] == ([(32, 8)], [(10, 8)])
    assert layout["vxm2"] == ([(32, 32)], [(34, 16), (16, 16)])
    assert layout["vxm1"] == ([], [(10, 8)])



def test_the_oasis_lkunet_recipe_has_the_authors_oasis_width():
    """The authors' OASIS runs of LKU-Net use start_channel 32 (kernel 5): 33,347,542 weights in
    their code; ours adds the flow head's 3 biases. The default LKU-Net(8, 5) stays 2.1 M."""
    from hydra.utils import instantiate

    from conftest import compose

    for supervision in ("sup", "unsup"):
        net = instantiate(compose("train", [f"experiment=oasis_{supervision}_lkunet"]).model.net)
        assert sum(p.numel() for p in net.parameters()) == 33_347_542 + 3
    assert sum(p.numel() for p in LKUNet(3).parameters()) == 2_086_345
