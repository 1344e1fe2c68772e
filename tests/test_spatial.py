"""Analytic tests of the displacement convention (spatial/)."""

import math

import pytest
import torch

from spatial import (
    compose,
    identity_grid,
    integrate,
    jacobian_determinant,
    resize_field,
    resize_image,
    warp,
)


def _translation(shape, shift, device="cpu"):
    u = torch.zeros(1, len(shape), *shape, dtype=torch.float64, device=device)
    for i, s in enumerate(shift):
        u[:, i] = s
    return u


@pytest.mark.parametrize("shape,shift", [((9, 10, 11), (2, -1, 3)), ((12, 13), (-3, 2))])
def test_integer_translation_warps_exactly_in_interior(shape, shift, device):
    torch.manual_seed(0)
    img = torch.rand(1, 1, *shape, dtype=torch.float64).to(device)
    out = warp(img, _translation(shape, shift, device))
    assert out.device == img.device and out.dtype == torch.float64
    # out(x) = img(x + shift) wherever x + shift is inside the grid
    dst = tuple(slice(max(0, -s), n - max(0, s)) for n, s in zip(shape, shift))
    src = tuple(slice(max(0, s), n - max(0, -s)) for n, s in zip(shape, shift))
    assert torch.allclose(out[0, 0][dst], img[0, 0][src], atol=1e-12)


def test_subvoxel_translation_is_linear_interpolation(device):
    img = identity_grid((8, 9, 10), device=device, dtype=torch.float64)[2:3].unsqueeze(0)  # img(x) = x_2
    out = warp(img, _translation((8, 9, 10), (0.0, 0.0, 0.25), device))
    assert torch.allclose(out[0, 0, :, :, :-1], img[0, 0, :, :, :-1] + 0.25, atol=1e-12)


def test_channel_i_moves_along_axis_i(device):
    img = torch.zeros(1, 1, 7, 8, 9, device=device)
    img[0, 0, 3, 4, 5] = 1.0
    for axis in range(3):
        shift = [0, 0, 0]
        shift[axis] = 1
        out = warp(img, _translation((7, 8, 9), shift, device).float())
        idx = [3, 4, 5]
        idx[axis] -= 1  # out(x) = img(x + e_axis): the bright voxel appears one step earlier
        assert out[0, 0][tuple(idx)].item() == pytest.approx(1.0)


def test_translation_composed_with_negative_is_identity(device):
    u = _translation((8, 9, 10), (1.5, -0.5, 2.0), device)
    w = compose(u, -u)
    assert w.abs().max() < 1e-12


def test_compose_matches_sequential_warps_for_smooth_fields(device):
    torch.manual_seed(1)
    shape = (16, 18, 20)
    u1 = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, dtype=torch.float64).to(device), size=shape,
                                         mode="trilinear", align_corners=True)
    u2 = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, dtype=torch.float64).to(device), size=shape,
                                         mode="trilinear", align_corners=True)
    img = identity_grid(shape, device, torch.float64).sum(0, keepdim=True).unsqueeze(0)  # linear image
    seq = warp(warp(img, u1), u2)
    once = warp(img, compose(u1, u2))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert torch.allclose(seq[inner], once[inner], atol=1e-9)


def test_integrate_zero_is_zero_and_constant_is_constant(device):
    assert integrate(torch.zeros(1, 3, 6, 7, 8, device=device)).abs().max() == 0
    v = _translation((6, 7, 8), (0.7, -1.2, 0.3), device)
    assert torch.allclose(integrate(v, steps=7), v, atol=1e-10)


def test_integrate_is_invertible_by_negation(device):
    torch.manual_seed(2)
    shape = (20, 20, 20)
    v = 2.0 * torch.nn.functional.interpolate(torch.randn(1, 3, 3, 3, 3, dtype=torch.float64).to(device), size=shape,
                                              mode="trilinear", align_corners=True)
    fwd, inv = integrate(v), integrate(-v)
    err = compose(fwd, inv)[..., 5:-5, 5:-5, 5:-5].abs()
    assert err.mean() < 0.02 and err.max() < 0.15


def test_integrate_rejects_bad_steps():
    with pytest.raises(ValueError, match="integrate\\(\\) 'steps'"):
        integrate(torch.zeros(1, 2, 5, 5), steps=-1)


def test_jacobian_identity_and_scaling(device):
    one = jacobian_determinant(torch.zeros(1, 3, 5, 6, 7, device=device))
    assert one.device == torch.device(device) and torch.allclose(one.cpu(), torch.ones(1, 5, 6, 7))
    x = identity_grid((5, 6, 7), device).unsqueeze(0)  # u(x) = x  ->  map 2x
    assert torch.allclose(jacobian_determinant(x).cpu(), torch.full((1, 5, 6, 7), 8.0))
    x2 = identity_grid((5, 6), device).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(x2).cpu(), torch.full((1, 5, 6), 4.0))


def test_jacobian_of_rotation_is_one(device):
    theta = 0.3
    g = identity_grid((9, 9), device, torch.float64)
    rot = torch.stack([math.cos(theta) * g[0] - math.sin(theta) * g[1],
                       math.sin(theta) * g[0] + math.cos(theta) * g[1]])
    det = jacobian_determinant((rot - g).unsqueeze(0))
    assert torch.allclose(det, torch.ones_like(det), atol=1e-12)


def test_resize_field_rescales_magnitudes(device):
    # u(x) = x on a 5-grid is the map 2x; on a 9-grid spanning the same extent it is still 2x
    u = identity_grid((5, 5, 5), device, torch.float64).unsqueeze(0)
    big = resize_field(u, (9, 9, 9))
    assert big.device == u.device and big.dtype == torch.float64
    assert torch.allclose(big, identity_grid((9, 9, 9), device, torch.float64).unsqueeze(0), atol=1e-12)
    t = _translation((5, 6, 7), (1.0, 1.0, 1.0), device)
    resized = resize_field(t, (9, 11, 13))  # channel i scaled by (9 - 1) / (5 - 1), (11 - 1) / (6 - 1), ...
    for i in range(3):
        assert torch.allclose(resized[:, i].cpu(), torch.full((1, 9, 11, 13), 2.0, dtype=torch.float64))


def test_resize_image_keeps_the_extent_and_a_linear_ramp(device):
    """Grids spanning the same extent: voxel i of a 9-grid sits at 0.5 i of a 5-grid, so a ramp
    f(x) = 3 x + 1 becomes 1.5 i + 1 exactly, end voxels kept; same shape returns the input."""
    ramp = (3.0 * identity_grid((5, 6), device, torch.float64)[0] + 1.0)[None, None].repeat(2, 3, 1, 1)
    out = resize_image(ramp, (9, 11))
    assert out.shape == (2, 3, 9, 11) and out.device == ramp.device and out.dtype == torch.float64
    want = 1.5 * identity_grid((9, 11), device, torch.float64)[0] + 1.0
    assert torch.allclose(out, want.expand_as(out), atol=1e-12)
    assert resize_image(ramp, (5, 6)) is ramp
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        resize_image(ramp, (9, 11, 3))


def test_warp_nearest_keeps_integer_labels(device):
    lab = torch.randint(0, 5, (1, 1, 6, 7, 8)).to(device)
    out = warp(lab, _translation((6, 7, 8), (0.4, 0, 0), device).float(), mode="nearest")
    assert out.dtype == torch.int64
    assert torch.equal(out, lab)


@pytest.mark.parametrize("bad", [torch.zeros(1, 2, 4, 4, 4), torch.zeros(3, 4, 4), torch.zeros(1, 3, 4, 4, 4).long()])
def test_bad_fields_raise_naming_the_function(bad):
    with pytest.raises(ValueError, match="warp\\(\\) 'u'"):
        warp(torch.zeros(1, 1, 4, 4, 4), bad)


def _spatial_ops(u, img):
    """Every spatial operation on a field ``u`` ``(1, 3, *S)`` and an image ``img`` ``(1, 1, *S)``."""
    from spatial import gaussian_blur, invert, jacobian_matrix

    return {
        "warp": warp(img, u),
        "warp_nearest": warp(img, u, mode="nearest"),
        "compose": compose(u, u),
        "integrate": integrate(u, 3),
        "invert": invert(u, 2),
        "resize_field": resize_field(u, (5, 6, 7)),
        "jacobian_matrix": jacobian_matrix(u),
        "jacobian_determinant": jacobian_determinant(u),
        "gaussian_blur": gaussian_blur(img, 1.0),
        "identity_grid": identity_grid((4, 5), u.device, u.dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_follows_dtype_and_device_of_input(dtype, device):
    u = (0.3 * torch.randn(1, 3, 6, 7, 8, generator=torch.Generator().manual_seed(0))).to(device, dtype)
    img = torch.rand(1, 1, 6, 7, 8, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    for name, out in _spatial_ops(u, img).items():
        assert (out.device, out.dtype) == (u.device, dtype), name


def test_no_host_tensor_or_host_read_inside_the_spatial_ops(monkeypatch):
    """On the meta device (shapes without data) mixing in a CPU tensor raises, and so does any
    host read (``.item()``, ``float()``, ``.cpu()``, ``.tolist()``): every op must build its
    tensors on the input's device and never look at values, as on a GPU. Nor may an op copy
    Python values to the device (``torch.tensor(values, device=...)``: a blocking copy on a GPU)."""
    copies = []
    real_tensor = torch.tensor

    def tensor(data, *args, **kwargs):
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type != "cpu":
            copies.append(data)
        return real_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    u = torch.zeros(1, 3, 6, 7, 8, device="meta")
    img = torch.zeros(1, 1, 6, 7, 8, device="meta")
    for name, out in _spatial_ops(u, img).items():
        assert out.device.type == "meta", name
    assert copies == []
    labels = torch.zeros(1, 1, 6, 7, 8, dtype=torch.int64, device="meta")
    assert warp(labels, u, mode="nearest").dtype == torch.int64


@pytest.mark.parametrize("shape", [(7, 8, 9), (9, 10)])
def test_jacobian_matches_numpy_gradient_and_linalg_det(shape, device):
    import numpy as np

    torch.manual_seed(3)
    u = torch.randn(1, len(shape), *shape, dtype=torch.float64).to(device)
    jm = __import__("spatial").jacobian_matrix(u)
    assert jm.device == u.device
    for i in range(len(shape)):
        grads = np.gradient(u[0, i].cpu().numpy())
        for j in range(len(shape)):
            expected = grads[j] + (1.0 if i == j else 0.0)
            assert np.allclose(jm[0, i, j].cpu().numpy(), expected, atol=1e-12)
    det = torch.linalg.det(jm[0].movedim((0, 1), (-2, -1)))
    assert torch.allclose(jacobian_determinant(u)[0], det, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Separable filtering (LNCC box sums and Gaussian smoothing share it)
# ----------------------------------------------------------------------------------------------


def _filter_reference(x, kernels, padding):
    """Direct dense correlation with the outer product of the 1-D kernels on a padded copy."""
    import torch.nn.functional as F

    ndim = x.dim() - 2
    dense = kernels[0]
    for k in kernels[1:]:
        dense = dense[..., None] * k
    radii = [k.numel() // 2 for k in kernels]
    pad = [p for r in reversed(radii) for p in (r, r)]
    xp = F.pad(x, pad, mode="replicate") if padding == "replicate" else F.pad(x, pad)
    c = x.shape[1]
    weight = dense.expand(c, 1, *dense.shape)
    conv = F.conv3d if ndim == 3 else F.conv2d
    return conv(xp, weight.to(x), groups=c)


@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 8), (1, 2, 12, 5), (1, 1, 4, 3, 6)])
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize("sigmas", [(1.0, 1.0, 1.0), (0.7, 1.5, 2.5)])  # 2.5: radius 8, longer than axes
def test_separable_filter_equals_dense_correlation(shape, padding, sigmas, device):
    from spatial.filters import gaussian_kernel1d, separable_filter

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    ndim = len(shape) - 2
    # asymmetric kernels too: correlation, not convolution, along every axis
    kernels = [gaussian_kernel1d(s, dtype=torch.float64, device=device) for s in sigmas[:ndim]]
    kernels[0] = kernels[0] * torch.linspace(0.5, 1.5, kernels[0].numel(), dtype=torch.float64, device=device)
    out = separable_filter(x, kernels, padding=padding)
    torch.testing.assert_close(out, _filter_reference(x, kernels, padding))


def test_gaussian_blur_keeps_constants_and_linear_ramps_and_is_differentiable(device):
    from spatial import gaussian_blur

    const = torch.full((1, 3, 6, 7, 8), 2.5, dtype=torch.float64, device=device)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)  # replicate padding: no edge loss
    ramp = torch.arange(20, dtype=torch.float64, device=device).view(1, 1, 20, 1).expand(1, 1, 20, 5).contiguous()
    out = gaussian_blur(ramp, 1.0)  # radius 3: symmetric kernel keeps a ramp away from the edges
    torch.testing.assert_close(out[..., 3:-3, :], ramp[..., 3:-3, :])
    x = torch.rand(1, 2, 5, 4, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, 0.8), (x,))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(const, [1.0, 1.0])


def test_integrated_gaussian_taps_are_the_mass_of_each_voxel():
    """``kind="integrated"``: tap t = Phi((t + 1/2) / sigma) - Phi((t - 1/2) / sigma), normalised. At
    sigma 0.25 it still smooths (neighbour 0.0228, the sampled kernel's 3.4e-4: the identity); at
    sigma 3 both have the Gaussian's variance, the integrated one plus a bin's 1/12."""
    import numpy as np
    from scipy.stats import norm

    from spatial.filters import gaussian_kernel1d

    def variance(k):
        t = torch.arange(k.numel(), dtype=torch.float64) - k.numel() // 2
        return float((k * t**2).sum())

    k = gaussian_kernel1d(0.25, dtype=torch.float64, kind="integrated")
    mass = norm.cdf(np.array([-1.5, -0.5, 0.5, 1.5]) / 0.25)
    expected = torch.tensor(np.diff(mass) / np.diff(mass).sum(), dtype=torch.float64)
    torch.testing.assert_close(k, expected)
    assert float(k[0]) == pytest.approx(0.0228, abs=1e-4)
    assert float(gaussian_kernel1d(0.25, dtype=torch.float64)[0]) < 4e-4  # sampled: no smoothing left
    assert variance(gaussian_kernel1d(3.0, dtype=torch.float64)) == pytest.approx(9.0, rel=0.02)
    assert variance(gaussian_kernel1d(3.0, dtype=torch.float64, kind="integrated")) == pytest.approx(9 + 1 / 12, rel=0.02)
    with pytest.raises(ValueError, match="'kind' must be one of"):
        gaussian_kernel1d(1.0, kind="box")


def test_cpu_slab_path_never_runs_off_the_cpu(monkeypatch):
    """The slab fast path of ``_grid_sample`` is for PyTorch's CPU sampler (parallel over the batch
    only); on any other device the plain call runs (a fake device: meta tensors)."""
    import torch.nn.functional as F

    from spatial import functional

    calls = []
    real = F.grid_sample
    monkeypatch.setattr(functional.F, "grid_sample", lambda src, grid, **kw: calls.append(grid.shape[0]) or real(src, grid, **kw))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu_src, cpu_grid = torch.rand(1, 1, 4, 5, 6), torch.zeros(1, 6, 5, 4, 3)
    assert functional._slab_count(cpu_src, cpu_grid) == 2
    functional._grid_sample(cpu_src, cpu_grid, "bilinear", "border")
    assert calls == [2]  # the CPU path: two slabs as a batch of two
    meta_src, meta_grid = cpu_src.to("meta"), cpu_grid.to("meta")
    assert functional._slab_count(meta_src, meta_grid) == 1
    calls.clear()
    out = functional._grid_sample(meta_src, meta_grid, "bilinear", "border")
    assert calls == [1] and out.shape == (1, 1, 6, 5, 4)


@pytest.mark.parametrize("first_axis", [6, 7])  # 7: no divisor <= 2 threads but 1, the plain path
def test_cpu_slab_sampling_equals_grid_sample_with_gradients(first_axis):
    import torch.nn.functional as F

    from spatial.functional import _grid_sample

    g = torch.Generator().manual_seed(5)
    src = torch.rand(1, 3, 5, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, first_axis, 4, 5, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for mode, padding in (("bilinear", "border"), ("bilinear", "zeros"), ("nearest", "border")):
            out = _grid_sample(src, grid, mode, padding)
            ref = F.grid_sample(src, grid, mode=mode, padding_mode=padding, align_corners=True)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            if mode == "bilinear":
                w = torch.rand(ref.shape, generator=g, dtype=torch.float64)
                got = torch.autograd.grad((out * w).sum(), (src, grid))
                want = torch.autograd.grad((ref * w).sum(), (src, grid))
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b)
    finally:
        torch.set_num_threads(threads)


def test_nearest_rounds_exact_half_voxel_ties_up_and_keeps_every_label():
    """A label map read half a voxel further (a grid whose origin is +0.5 voxel, or u = +0.5):
    every voxel takes the next label, ITK's rule (round half up); grid_sample's own rounding
    (half to even) read labels 2,3,3,5,5,... and dropped every other one."""
    from spatial.world import sample

    labels = torch.arange(1, 13, dtype=torch.int64).view(1, 1, 12, 1, 1).expand(1, 1, 12, 3, 3).contiguous()
    u = torch.zeros(1, 3, 12, 3, 3)
    u[:, 0] = 0.5
    out = warp(labels, u, mode="nearest", padding_mode="border")[0, 0, :, 1, 1]
    assert out.tolist() == list(range(2, 13)) + [12]
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (12, 3, 3)],
                                        indexing="ij"))
    coords[0] += 0.5
    read = sample(labels, coords, mode="nearest")[0, 0, :, 1, 1]
    assert read.tolist() == list(range(2, 13)) + [0]  # the last reads past the half-voxel margin: 0
    # away from ties nothing changes: +0.4 stays, +0.6 moves on
    for shift, want in ((0.4, list(range(1, 13))), (0.6, list(range(2, 13)) + [12])):
        u[:, 0] = shift
        assert warp(labels, u, mode="nearest")[0, 0, :, 1, 1].tolist() == want


def test_nearest_warp_keeps_label_ids_beyond_float32_integers():
    """Label ids >= 2^24 (float32's exact integers end there; pairs CSVs may hold them) survive a
    nearest warp exactly: 20000001 read back as 20000000 scored Dice 0 and counted as erased."""
    big = torch.tensor([20_000_001, 2 ** 31 - 1, 16_777_217], dtype=torch.int64)
    labels = big.view(1, 1, 3, 1, 1).expand(1, 1, 3, 2, 2).contiguous()
    assert torch.equal(warp(labels, torch.zeros(1, 3, 3, 2, 2), mode="nearest"), labels)
    u = torch.zeros(1, 3, 3, 2, 2)
    u[:, 0] = 1.0
    assert warp(labels, u, mode="nearest")[0, 0, :, 0, 0].tolist() == [2 ** 31 - 1, 16_777_217, 16_777_217]


def test_invert_recovers_the_inverse_of_a_strongly_stretching_fold_free_field(device):
    """A translation inverts to its negation. A smooth radial bump u = A (x - c) exp(-r^2 / 2s^2)
    with A = 1.5 does not fold (det J in [0.44, 6.1]) but stretches 2.5x at its centre, where the
    undamped fixed point w <- -u(x + w) oscillates (10 voxels off after any number of steps): the
    damped iteration inverts it to 0.01 voxel, in 2-D and 3-D."""
    from spatial import invert

    t = torch.tensor([1.5, -2.0, 0.5], device=device).view(1, 3, 1, 1, 1).expand(1, 3, 8, 8, 8).contiguous()
    assert torch.allclose(invert(t), -t, atol=1e-5)
    for ndim, n in ((2, 64), (3, 40)):
        g = identity_grid((n,) * ndim, device, torch.float32) - (n - 1) / 2
        u = (1.5 * g * torch.exp(-(g * g).sum(0) / (2 * 6.0 ** 2)))[None]
        det = jacobian_determinant(u)
        assert float(det.min()) > 0.4 and float(det.max()) > 5.0
        w = invert(u, padding_mode="zeros")
        assert float(compose(u, w, padding_mode="zeros").norm(dim=1).max()) < 1e-2, ndim
        assert float(compose(w, u, padding_mode="zeros").norm(dim=1).max()) < 0.5, ndim  # interpolation of w
        plain = -u  # the undamped iteration, for contrast
        for _ in range(60):
            plain = -warp(u, plain, padding_mode="zeros")
        assert float(compose(u, plain, padding_mode="zeros").norm(dim=1).max()) > 1.0, ndim


def test_inverse_residual_measures_how_far_an_inverse_undoes_a_field():
    """A translation by t: its exact inverse -t leaves 0, no inverse leaves |t|, counted only where
    x + t stays 2 voxels inside; a field folded by a 75-degree rotation has no inverse (> 1 voxel)."""
    from spatial import inverse_residual, invert

    t = torch.tensor([1.5, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, 12, 12, 12).contiguous()
    assert inverse_residual(t, -t)[1] < 1e-5
    mean, largest, n = inverse_residual(t, torch.zeros_like(t))
    assert abs(mean - float(t[0, :, 0, 0, 0].norm())) < 1e-5 and abs(largest - mean) < 1e-5
    assert n == 7 * 8 * 7  # x + t inside [2, 9]: x in 1..7, 4..11, 2..8
    g = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 2, indexing="ij")) - 11.5
    th = math.radians(75)
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float32)
    u = (torch.einsum("ij,jxy->ixy", rot, g) - g)[None]
    assert inverse_residual(u, invert(u))[1] > 1.0
