"""Tests of losses/: similarity (LNCC, MSE, MI), regularisers, Dice loss and the registries."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losses import (
    LNCC,
    MSE,
    BendingEnergy,
    DiceLoss,
    Diffusion,
    MutualInformation,
    NoRegulariser,
    bending_energy,
    build_regulariser,
    build_similarity,
    dice_loss,
    diffusion,
    lncc,
    mse,
    mutual_information,
    one_hot,
)
from losses.lncc import _VAR_FLOOR_EPS, _box_sum, _box_sum_direct


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread. With 2 OpenMP threads on a loaded 2-core machine, each
    small convolution waits ~40 ms at the OpenMP barrier (measured), which would dominate here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=torch.float32, device="cpu"):
    """Seeded uniform values, drawn on the CPU (the same on every device), then moved to ``device``."""
    return torch.rand(*shape, generator=_gen(seed), dtype=torch.float64).to(device, dtype)


def _grid(shape, dtype=torch.float64, device="cpu"):
    """(D, *shape) voxel coordinates."""
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)


# ----------------------------------------------------------------------------------------------
# LNCC: brute-force reference with explicit loops over voxels and window offsets
# ----------------------------------------------------------------------------------------------


def lncc_reference(fixed: torch.Tensor, moving: torch.Tensor, window: int, eps: float = 1e-10) -> float:
    """The definition of losses.lncc written out voxel by voxel, in float64.

    Windows are clipped to the image (statistics are means over the in-image voxels of the box);
    images are centred by their global mean; a local variance at or below the noise floor
    ``200 * eps64 * E_w[I^2]`` counts as 0, cov is 0 where a variance is 0;
    cc = (cov^2 + eps^2) / ((var_I + eps)(var_J + eps)); loss = -mean cc over batch, channels and voxels.
    """
    tau = _VAR_FLOOR_EPS * torch.finfo(torch.float64).eps
    f = fixed.detach().double()
    m = moving.detach().double()
    ndim = f.dim() - 2
    shape = tuple(f.shape[2:])
    r = window // 2
    total, count = 0.0, 0
    for b in range(f.shape[0]):
        for c in range(f.shape[1]):
            img_i = (f[b, c] - f[b, c].mean()).tolist()
            img_j = (m[b, c] - m[b, c].mean()).tolist()

            def at(img, idx):
                for k in idx:
                    img = img[k]
                return img

            for x in itertools.product(*[range(s) for s in shape]):
                n = s_i = s_j = s_ii = s_jj = s_ij = 0.0
                for off in itertools.product(range(-r, r + 1), repeat=ndim):
                    y = tuple(xi + oi for xi, oi in zip(x, off))
                    if all(0 <= yi < si for yi, si in zip(y, shape)):
                        vi, vj = at(img_i, y), at(img_j, y)
                        n += 1
                        s_i += vi
                        s_j += vj
                        s_ii += vi * vi
                        s_jj += vj * vj
                        s_ij += vi * vj
                mu_i, mu_j = s_i / n, s_j / n
                m_ii, m_jj = s_ii / n, s_jj / n
                var_i = m_ii - mu_i * mu_i
                var_j = m_jj - mu_j * mu_j
                var_i = var_i if var_i > tau * m_ii else 0.0
                var_j = var_j if var_j > tau * m_jj else 0.0
                cov = s_ij / n - mu_i * mu_j if (var_i > 0 and var_j > 0) else 0.0
                total += (cov * cov + eps * eps) / ((var_i + eps) * (var_j + eps))
                count += 1
    return -total / count


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lncc_matches_bruteforce_3d(window, dtype, device):
    fixed = _rand(2, 1, 6, 7, 8, seed=1, dtype=dtype, device=device)
    moving = (0.6 * fixed + 0.4 * _rand(2, 1, 6, 7, 8, seed=2, dtype=dtype, device=device)) ** 2
    got = lncc(fixed, moving, window)
    assert got.dtype == dtype and got.device == device
    assert got.item() == pytest.approx(lncc_reference(fixed, moving, window), abs=1e-5)


@pytest.mark.parametrize("window", [3, 5, 13])  # 13 > every side: all windows clipped
def test_lncc_matches_bruteforce_2d_multichannel(window, device):
    fixed = _rand(2, 2, 9, 11, seed=3, device=device)
    moving = _rand(2, 2, 9, 11, seed=4, device=device) + 0.5 * fixed
    assert lncc(fixed, moving, window).item() == pytest.approx(
        lncc_reference(fixed, moving, window), abs=1e-5
    )


def test_lncc_matches_bruteforce_with_constant_regions(device):
    # fixed constant on a block, moving constant on another: exercises eps and the noise floor
    fixed = _rand(1, 1, 10, 12, seed=5, dtype=torch.float64, device=device)
    moving = _rand(1, 1, 10, 12, seed=6, dtype=torch.float64, device=device)
    fixed[..., :5, :] = 0.3
    moving[..., :, 7:] = 0.0
    for window in (3, 5):
        for eps in (1e-10, 1e-3):
            got = lncc(fixed, moving, window, eps=eps).item()
            assert got == pytest.approx(lncc_reference(fixed, moving, window, eps), abs=1e-6)
    # float32 gives the same value: constant windows score exactly 1 or 0, not a ratio of noise
    assert lncc(fixed.float(), moving.float(), 5).item() == pytest.approx(
        lncc(fixed, moving, 5).item(), abs=1e-5
    )


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 2, 9, 4), (1, 5, 1, 6, 3)])
@pytest.mark.parametrize("window", [1, 3, 5, 11])  # 11: longer than some axes
def test_box_sum_equals_direct_window_sum(shape, window, device):
    x = _rand(*shape, seed=7, dtype=torch.float64, device=device)
    ndim = x.dim() - 2
    r = window // 2
    pad = torch.nn.functional.pad(x, [r] * (2 * ndim))
    direct = sum(
        pad[(..., *[slice(o, o + n) for o, n in zip(off, shape[2:])])]
        for off in itertools.product(range(window), repeat=ndim)
    )
    out = _box_sum_direct(x, window)
    assert out.shape == x.shape
    torch.testing.assert_close(out, direct)


def test_box_sum_is_self_adjoint(device):
    x = _rand(1, 2, 5, 6, 7, seed=7, dtype=torch.float64, device=device)
    # custom backward (the same filter) agrees with finite differences, also twice
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _box_sum(t, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _box_sum(t, 3), (x,))


def test_lncc_window_flat_in_one_image_does_not_match(device):
    """A textured image against a constant one matches nowhere (~0, as VoxelMorph and MONAI score
    it; it scored a perfect -1 until 2026-12-04), and on the MNI template shifted over its empty
    background the loss only worsens with the shift (it improved beyond 4 voxels, to -0.93 at 32;
    now -0.79 at 2 to -0.48 at 32)."""
    x = _rand(1, 1, 12, 14, 16, seed=9, device=device)
    assert abs(lncc(x, torch.full_like(x, 0.3)).item()) < 1e-6
    assert abs(lncc(torch.full_like(x, 0.3), x).item()) < 1e-6
    pytest.importorskip("nilearn", reason="nilearn is not installed: no MNI template")
    from data.mni_template import load_mni_template

    t = torch.from_numpy(load_mni_template(2).image.astype("float32"))[None, None].to(device)
    values = [lncc(t, torch.roll(t, k, dims=2)).item() for k in (0, 2, 4, 8, 16, 32)]
    assert values[0] == pytest.approx(-1.0, abs=1e-6)
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("shape", [(2, 1, 20, 24), (1, 1, 12, 14, 16)])
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_self_is_minus_one(shape, window, device):
    x = _rand(*shape, seed=8, device=device)
    x[..., :5, :] = 0.0  # a flat region: constant windows must still score 1
    assert lncc(x, x, window).item() == pytest.approx(-1.0, abs=1e-4)
    flat = torch.full(shape, 0.7, device=device)
    assert lncc(flat, flat, window).item() == pytest.approx(-1.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(2, 1, 20, 24), (1, 1, 12, 14, 16)])
def test_lncc_affine_intensity_invariance_and_sign(shape, device):
    x = _rand(*shape, seed=9, device=device)
    for a, b in [(2.0, 0.5), (0.3, -1.0), (5.0, 3.0)]:
        assert lncc(x, a * x + b, 5).item() == pytest.approx(-1.0, abs=1e-4)
    # squared correlation: blind to the sign, so an inverted contrast also scores -1 ...
    assert lncc(x, -x, 5).item() == pytest.approx(-1.0, abs=1e-4)
    assert lncc(x, 1.0 - x, 5).item() == pytest.approx(-1.0, abs=1e-4)
    # ... while independent noise is near 0 (E[r^2] ~ 1/window_volume)
    noise = _rand(*shape, seed=10, device=device)
    assert -0.15 < lncc(x, noise, 5).item() < 0.0
    # and a partially related image lies strictly between
    mid = lncc(x, x + 0.5 * noise, 5).item()
    assert -1.0 + 1e-3 < mid < lncc(x, noise, 5).item()


def test_lncc_gradient_flows_to_moving_and_is_correct(device):
    fixed = _rand(1, 1, 5, 6, 7, seed=11, dtype=torch.float64, device=device)
    moving = _rand(1, 1, 5, 6, 7, seed=12, dtype=torch.float64, device=device).requires_grad_(True)
    loss = lncc(fixed, moving, 3)
    loss.backward()
    assert moving.grad is not None and moving.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda m: lncc(fixed, m, 3), (moving.detach().requires_grad_(True),))
    # 2-D, float32: gradient is finite and descends
    f2 = _rand(1, 1, 16, 16, seed=13, device=device)
    m2 = _rand(1, 1, 16, 16, seed=14, device=device).requires_grad_(True)
    l0 = lncc(f2, m2, 5)
    l0.backward()
    assert torch.isfinite(m2.grad).all()
    with torch.no_grad():
        stepped = m2 - 0.05 * m2.grad / m2.grad.abs().max()
    assert lncc(f2, stepped, 5) < l0


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_lncc_half_precision_computed_in_float32(half, device):
    x = _rand(1, 1, 10, 12, seed=15, device=device).to(half)
    loss = lncc(x, x, 5)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(-1.0, abs=1e-4)
    # under autocast too (Lightning's bf16-mixed): window statistics stay float32
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = _rand(1, 1, 10, 12, seed=16, device=device)
        assert lncc(y, y, 5).dtype == torch.float32 and lncc(y, y, 5).item() == pytest.approx(-1.0, abs=1e-4)


def test_lncc_agrees_with_monai_rectangular_in_interior():
    monai_losses = pytest.importorskip("monai.losses")
    from losses.lncc import _lncc_map

    fixed = _rand(1, 1, 14, 15, 16, seed=16)
    moving = 0.5 * fixed + _rand(1, 1, 14, 15, 16, seed=17)
    window, r = 5, 2
    ours = _lncc_map(fixed, moving, window, 0.0)[..., r:-r, r:-r, r:-r]
    ref = monai_losses.LocalNormalizedCrossCorrelationLoss(
        spatial_dims=3, kernel_size=window, kernel_type="rectangular", reduction="none"
    )(moving, fixed).neg()[..., r:-r, r:-r, r:-r]
    # same definition away from the border (MONAI pads with zeros and divides by window**3 there)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# MSE and MI
# ----------------------------------------------------------------------------------------------


def test_mse_value(device):
    a = _rand(2, 1, 4, 5, seed=18, device=device)
    b = _rand(2, 1, 4, 5, seed=19, device=device)
    assert mse(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
    assert mse(a, a).item() == 0.0
    assert MSE()(a, b).item() == pytest.approx(mse(a, b).item())


def _smooth_volume(seed: int, shape=(24, 24, 24), device="cpu") -> torch.Tensor:
    """A smooth image in [0, 1]: a random field blurred by average pooling."""
    x = _rand(1, 1, *shape, seed=seed, device=device)
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(x, 3, 1, 1, count_include_pad=False)
    return (x - x.min()) / (x.max() - x.min())


def test_mi_orders_identical_remapped_and_noise(device):
    x = _smooth_volume(20, device=device)
    noise = _rand(*x.shape, seed=21, device=device)
    mi_self = -mutual_information(x, x).item()
    mi_noise = -mutual_information(x, noise).item()
    assert mi_self > 1.0
    assert 0.0 <= mi_noise < 0.1 * mi_self
    # a monotone remap keeps (nearly) all the information; an inverted contrast too
    for remap in (lambda t: t**2, torch.sqrt, lambda t: 1.0 - t):
        mi_remap = -mutual_information(x, remap(x)).item()
        assert mi_remap > 0.8 * mi_self
        assert mi_remap > 10.0 * mi_noise
    # MI is symmetric
    assert mutual_information(x, noise).item() == pytest.approx(mutual_information(noise, x).item(), rel=1e-5)


def test_mi_module_bins_batch_and_mask(device):
    x = torch.cat([_smooth_volume(22, device=device), _smooth_volume(23, device=device)], 0)
    y = torch.cat([x[:1], _rand(1, 1, 24, 24, 24, seed=24, device=device)], 0)
    batch = mutual_information(x, y, bins=16)
    single = [mutual_information(x[i : i + 1], y[i : i + 1], bins=16) for i in range(2)]
    assert batch.item() == pytest.approx((single[0] + single[1]).item() / 2, rel=1e-5)
    assert MutualInformation(bins=16)(x, y).item() == pytest.approx(batch.item())
    # mask: only the region where moving copies fixed -> more information than the whole image
    moving = _rand(1, 1, 24, 24, 24, seed=25, device=device)
    moving[..., :12] = x[:1, ..., :12]
    mask = torch.zeros(1, 1, 24, 24, 24, dtype=torch.bool, device=device)
    mask[..., :12] = True
    masked = -mutual_information(x[:1], moving, mask=mask).item()
    assert masked == pytest.approx(-mutual_information(x[:1, ..., :12], moving[..., :12]).item(), rel=1e-5)
    assert masked > -mutual_information(x[:1], moving).item()


def test_mi_gradient_flows_and_is_correct(device):
    fixed = _smooth_volume(26, (12, 12, 12), device)
    moving = (0.8 * fixed + 0.1).requires_grad_(True)
    loss = mutual_information(fixed, moving, bins=16)
    loss.backward()
    assert torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0
    f64 = _rand(1, 1, 4, 5, seed=27, dtype=torch.float64, device=device)
    m64 = (0.1 + 0.8 * _rand(1, 1, 4, 5, seed=28, dtype=torch.float64, device=device)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: mutual_information(f64, m, bins=6, sigma=0.2), (m64,))


# ----------------------------------------------------------------------------------------------
# Regularisers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 8), (5, 6, 7)])
def test_regularisers_vanish_on_constant_and_affine(shape, device):
    ndim = len(shape)
    g = torch.Generator().manual_seed(30)
    const = torch.randn(2, ndim, 1, *([1] * (ndim - 1)), generator=g, dtype=torch.float64).to(device).expand(
        2, ndim, *shape
    )
    assert diffusion(const).item() == 0.0
    assert bending_energy(const).item() == 0.0
    a = torch.randn(ndim, ndim, generator=g, dtype=torch.float64)
    t = torch.randn(ndim, generator=g, dtype=torch.float64)
    a, t = a.to(device), t.to(device)
    affine = (torch.einsum("ij,j...->i...", a, _grid(shape, device=device)) + t.view(ndim, *([1] * ndim))).unsqueeze(0)
    assert bending_energy(affine).item() == pytest.approx(0.0, abs=1e-20)
    assert bending_energy(affine.float()).item() == pytest.approx(0.0, abs=1e-9)
    # diffusion of an affine field: sum of squared Jacobian entries, every voxel alike
    assert diffusion(affine).item() == pytest.approx((a**2).sum().item(), rel=1e-12)


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_diffusion_linear_field(shape, device):
    ndim = len(shape)
    x = _grid(shape, device=device)
    c = 0.7
    u = torch.zeros(1, ndim, *shape, dtype=torch.float64, device=device)
    u[0, 0] = c * x[0]
    assert diffusion(u).item() == pytest.approx(c**2)
    u = torch.zeros(1, ndim, *shape, dtype=torch.float64, device=device)
    u[0, 1] = c * x[0]  # off-diagonal Jacobian entry counts the same
    assert diffusion(u).item() == pytest.approx(c**2)
    u = c * x.unsqueeze(0)  # scaling: every diagonal entry, summed over channels and axes
    assert diffusion(u).item() == pytest.approx(ndim * c**2)
    assert Diffusion()(u).item() == pytest.approx(diffusion(u).item())


@pytest.mark.parametrize("shape", [(7, 8), (5, 6, 7)])
def test_bending_energy_quadratic_fields(shape, device):
    ndim = len(shape)
    x = _grid(shape, device=device)
    a = 0.3
    u = torch.zeros(1, ndim, *shape, dtype=torch.float64, device=device)
    u[0, 0] = a * x[1] ** 2  # d_11 u_0 = 2a
    assert bending_energy(u).item() == pytest.approx(4 * a**2)
    u = torch.zeros(1, ndim, *shape, dtype=torch.float64, device=device)
    u[0, 0] = a * x[0] * x[1]  # d_01 u_0 = d_10 u_0 = a: the mixed term counts twice
    assert bending_energy(u).item() == pytest.approx(2 * a**2)
    # general quadratic u_i = sum_jk A_ijk x_j x_k (A symmetric in j, k): Hessian 2 A_i,
    # bending energy = sum_ijk (2 A_ijk)^2
    g = torch.Generator().manual_seed(31)
    coef = torch.randn(ndim, ndim, ndim, generator=g, dtype=torch.float64).to(device)
    coef = 0.5 * (coef + coef.transpose(1, 2))
    u = torch.einsum("ijk,j...,k...->i...", coef, x, x).unsqueeze(0)
    assert bending_energy(u).item() == pytest.approx(4 * (coef**2).sum().item(), rel=1e-9)
    assert BendingEnergy()(u).item() == pytest.approx(bending_energy(u).item())


def test_regularisers_gradient_and_dtype(device):
    u = (0.1 * torch.randn(1, 3, 6, 6, 6, generator=_gen(32))).to(device).requires_grad_(True)
    (diffusion(u) + bending_energy(u)).backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    assert diffusion(u.double()).dtype == torch.float64
    assert NoRegulariser()(u).item() == 0.0


# ----------------------------------------------------------------------------------------------
# Dice
# ----------------------------------------------------------------------------------------------


def test_one_hot(device):
    label = torch.tensor([[[[0, 1], [2, 1]]]]).to(device)  # (1, 1, 2, 2)
    oh = one_hot(label, 4)
    assert oh.shape == (1, 4, 2, 2) and oh.dtype == torch.float32 and oh.device == device
    assert oh[0, :, 1, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert oh[0, 3].sum() == 0
    torch.testing.assert_close(oh.argmax(1, keepdim=True), label)
    assert one_hot(label, 3, dtype=torch.float64).dtype == torch.float64


def _labels3d(device="cpu"):
    lab = torch.zeros(1, 1, 6, 6, 6, dtype=torch.int64, device=device)
    lab[..., :3, :, :] = 1
    lab[..., 3:, :3, :] = 2
    return lab


def test_dice_identical_disjoint_and_soft(device):
    lab = _labels3d(device)
    oh = one_hot(lab, 3)
    assert dice_loss(oh, oh).item() == pytest.approx(0.0, abs=1e-7)
    assert DiceLoss()(oh, oh).item() == pytest.approx(0.0, abs=1e-7)
    # disjoint foreground: class 1 where the target has 2 and vice versa
    swapped = oh[:, [0, 2, 1]]
    other = lab.clone()
    other[lab == 1] = 2
    other[lab == 2] = 1
    assert dice_loss(one_hot(other, 3), oh).item() == pytest.approx(1.0)
    assert dice_loss(swapped, oh).item() == pytest.approx(1.0)
    # soft prediction at half confidence: Dice = 2 * 0.5 / 1.5 = 2/3
    assert dice_loss(0.5 * oh, oh).item() == pytest.approx(1.0 / 3.0, rel=1e-6)
    # background included: its Dice joins the mean
    bg_only_wrong = oh.clone()
    bg_only_wrong[:, 0] = 0.0
    assert dice_loss(bg_only_wrong, oh).item() == pytest.approx(0.0, abs=1e-7)
    assert dice_loss(bg_only_wrong, oh, include_background=True).item() == pytest.approx(1.0 / 3.0)


def test_dice_absent_channels_are_masked_out(device):
    lab = _labels3d(device)
    target = one_hot(lab, 5)  # classes 3 and 4 absent from both images
    pred_lab = lab.clone()
    pred_lab[lab == 2] = 0  # class 2 missed entirely -> Dice 0 (present in target only)
    pred = one_hot(pred_lab, 5)
    # mean over the present classes {1: 1.0, 2: 0.0} -> 0.5; not 1 - (1+0+1+1)/4 nor 1 - 1/4
    assert dice_loss(pred, target).item() == pytest.approx(0.5)
    # a class present in pred only also counts with Dice 0
    pred_lab2 = lab.clone()
    pred_lab2[0, 0, 0, 0, 0] = 3
    expected_c1 = 2 * (108 - 1) / (108 - 1 + 108)
    got = dice_loss(one_hot(pred_lab2, 5), target).item()
    assert got == pytest.approx(1.0 - (expected_c1 + 1.0 + 0.0) / 3.0)
    # per sample: absent in sample 0, present in sample 1 -> only (1, c) counts
    two = torch.cat([one_hot(torch.zeros_like(lab), 3), one_hot(lab, 3)], 0)
    assert dice_loss(two, two).item() == pytest.approx(0.0, abs=1e-7)
    # nothing present at all: loss 0, still differentiable
    bg = one_hot(torch.zeros_like(lab), 3).requires_grad_(True)
    loss = dice_loss(bg, bg.detach())
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(bg.grad).all()


def test_dice_gradient_flows(device):
    lab = _labels3d(device)
    target = one_hot(lab, 3)
    pred = (0.5 * target + 0.25).requires_grad_(True)
    dice_loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_losses_follow_the_device_and_read_nothing_on_the_host():
    """Meta tensors (shapes without data): a CPU tensor mixed in, or a value read on the host,
    raises. The losses a training step or an optimiser iteration computes, and their gradients,
    stay on the input's device. (``one_hot`` reads the label range once: its argument check.)"""
    img = torch.zeros(1, 1, 6, 7, 8, device="meta")
    moving = torch.zeros(1, 1, 6, 7, 8, device="meta", requires_grad=True)
    u = torch.zeros(1, 3, 6, 7, 8, device="meta", requires_grad=True)
    soft = torch.zeros(1, 3, 6, 7, 8, device="meta", requires_grad=True)
    parts = {
        "lncc": lncc(img, moving, 5),
        "lncc_to_fixed": LNCC(window=5).to_fixed(img)(moving),
        "mse": mse(img, moving),
        "mi": mutual_information(img, moving, bins=8),
        "diffusion": diffusion(u),
        "bending": bending_energy(u),
        "dice": dice_loss(soft, torch.zeros(1, 3, 6, 7, 8, device="meta")),
    }
    for name, value in parts.items():
        assert value.device.type == "meta" and value.dim() == 0, name
    grads = torch.autograd.grad(sum(parts.values()), [moving, u, soft])
    assert all(g.device.type == "meta" for g in grads)


# ----------------------------------------------------------------------------------------------
# Registries and argument checks
# ----------------------------------------------------------------------------------------------


def test_registries_build_by_name():
    sim = build_similarity("lncc", window=5)
    assert isinstance(sim, LNCC) and sim.window == 5
    assert isinstance(build_similarity("mse"), MSE)
    mi = build_similarity("mi", bins=16)
    assert isinstance(mi, MutualInformation) and mi.bins == 16
    assert isinstance(build_regulariser("diffusion"), Diffusion)
    assert isinstance(build_regulariser("bending"), BendingEnergy)
    u = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    zero = build_regulariser("none")(u)
    assert zero.item() == 0.0 and zero.dtype == torch.float64


def test_registries_reject_unknown_names():
    with pytest.raises(ValueError, match="build_similarity.*'lncc'.*'mi'.*'mse'"):
        build_similarity("ncc")
    with pytest.raises(ValueError, match="build_regulariser.*'bending'.*'diffusion'.*'none'"):
        build_regulariser("l2")
    with pytest.raises(ValueError, match="build_similarity"):
        build_similarity(2)
    with pytest.raises(ValueError, match="build_similarity"):
        build_similarity("mse", window=3)


_IMG = _rand(1, 1, 8, 8, 8, seed=40)


@pytest.mark.parametrize(
    "call, fn",
    [
        (lambda: lncc(_IMG, _IMG, 4), "lncc"),
        (lambda: lncc(_IMG, _IMG, 0), "lncc"),
        (lambda: lncc(_IMG, _IMG, True), "lncc"),
        (lambda: lncc(_IMG, _IMG, 3.0), "lncc"),
        (lambda: lncc(_IMG[0, 0], _IMG[0, 0]), "lncc"),
        (lambda: lncc(_IMG[None], _IMG[None]), "lncc"),
        (lambda: lncc(_IMG, _IMG[..., :7]), "lncc"),
        (lambda: lncc(_IMG, _IMG, 3, eps=-1.0), "lncc"),
        (lambda: lncc(_IMG, _IMG, 3, eps=0.0), "lncc"),
        (lambda: lncc(_IMG, _IMG.double()), "lncc"),
        (lambda: lncc(_IMG.long(), _IMG.long()), "lncc"),
        (lambda: LNCC(window=8), "LNCC"),
        (lambda: mse(_IMG, _IMG[:, :, :4]), "mse"),
        (lambda: mse(_IMG[0, 0], _IMG[0, 0]), "mse"),
        (lambda: mutual_information(_IMG, _IMG, bins=1), "mutual_information"),
        (lambda: mutual_information(_IMG, _IMG, sigma=0.0), "mutual_information"),
        (lambda: mutual_information(_IMG, _IMG[..., 1:]), "mutual_information"),
        (lambda: mutual_information(_IMG, _IMG, mask=torch.ones(1, 1, 8, 8)), "mutual_information"),
        (lambda: MutualInformation(bins=0), "MutualInformation"),
        (lambda: diffusion(torch.zeros(1, 2, 4, 4, 4)), "diffusion"),
        (lambda: diffusion(torch.zeros(1, 3, 4, 4, 1)), "diffusion"),
        (lambda: bending_energy(torch.zeros(1, 2, 2, 5)), "bending_energy"),
        (lambda: bending_energy(torch.zeros(1, 3, 4, 4)), "bending_energy"),
        (lambda: one_hot(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 3), "one_hot"),
        (lambda: one_hot(torch.zeros(1, 1, 4, 4), 3), "one_hot"),
        (lambda: one_hot(torch.full((1, 1, 4, 4), 3), 3), "one_hot"),
        (lambda: one_hot(torch.full((1, 1, 4, 4), -1), 3), "one_hot"),
        (lambda: dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), "dice_loss"),
        (lambda: dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.int64)), "dice_loss"),
        (lambda: dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)), "dice_loss"),
        (lambda: dice_loss(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)), "dice_loss"),
    ],
)
def test_bad_arguments_raise_valueerror_naming_the_function(call, fn):
    with pytest.raises(ValueError, match=rf"^{fn}\(\)"):
        call()


def test_modules_match_functions(device):
    f = _rand(1, 1, 10, 11, seed=41, device=device)
    m = _rand(1, 1, 10, 11, seed=42, device=device)
    assert LNCC(window=5)(f, m).item() == pytest.approx(lncc(f, m, 5).item())
    assert build_similarity("lncc", window=5)(f, m).item() == pytest.approx(lncc(f, m, 5).item())
    assert MutualInformation(bins=8)(f, m).item() == pytest.approx(mutual_information(f, m, bins=8).item())
    assert math.isfinite(build_similarity("mi")(f, m).item())
