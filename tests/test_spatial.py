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
    warp,
)


def _translation(shape, shift):
    u = torch.zeros(1, len(shape), *shape, dtype=torch.float64)
    for i, s in enumerate(shift):
        u[:, i] = s
    return u


@pytest.mark.parametrize("shape,shift", [((9, 10, 11), (2, -1, 3)), ((12, 13), (-3, 2))])
def test_integer_translation_warps_exactly_in_interior(shape, shift):
    torch.manual_seed(0)
    img = torch.rand(1, 1, *shape, dtype=torch.float64)
    out = warp(img, _translation(shape, shift))
    # out(x) = img(x + shift) wherever x + shift is inside the grid
    dst = tuple(slice(max(0, -s), n - max(0, s)) for n, s in zip(shape, shift))
    src = tuple(slice(max(0, s), n - max(0, -s)) for n, s in zip(shape, shift))
    assert torch.allclose(out[0, 0][dst], img[0, 0][src], atol=1e-12)


def test_subvoxel_translation_is_linear_interpolation():
    img = identity_grid((8, 9, 10), dtype=torch.float64)[2:3].unsqueeze(0)  # img(x) = x_2
    out = warp(img, _translation((8, 9, 10), (0.0, 0.0, 0.25)))
    assert torch.allclose(out[0, 0, :, :, :-1], img[0, 0, :, :, :-1] + 0.25, atol=1e-12)


def test_channel_i_moves_along_axis_i():
    img = torch.zeros(1, 1, 7, 8, 9)
    img[0, 0, 3, 4, 5] = 1.0
    for axis in range(3):
        shift = [0, 0, 0]
        shift[axis] = 1
        out = warp(img, _translation((7, 8, 9), shift).float())
        idx = [3, 4, 5]
        idx[axis] -= 1  # out(x) = img(x + e_axis): the bright voxel appears one step earlier
        assert out[0, 0][tuple(idx)] == pytest.approx(1.0)


def test_translation_composed_with_negative_is_identity():
    u = _translation((8, 9, 10), (1.5, -0.5, 2.0))
    w = compose(u, -u)
    assert w.abs().max() < 1e-12


def test_compose_matches_sequential_warps_for_smooth_fields():
    torch.manual_seed(1)
    shape = (16, 18, 20)
    u1 = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, dtype=torch.float64), size=shape,
                                         mode="trilinear", align_corners=True)
    u2 = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 4, 4, dtype=torch.float64), size=shape,
                                         mode="trilinear", align_corners=True)
    img = identity_grid(shape, dtype=torch.float64).sum(0, keepdim=True).unsqueeze(0)  # linear image
    seq = warp(warp(img, u1), u2)
    once = warp(img, compose(u1, u2))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert torch.allclose(seq[inner], once[inner], atol=1e-9)


def test_integrate_zero_is_zero_and_constant_is_constant():
    assert integrate(torch.zeros(1, 3, 6, 7, 8)).abs().max() == 0
    v = _translation((6, 7, 8), (0.7, -1.2, 0.3))
    assert torch.allclose(integrate(v, steps=7), v, atol=1e-10)


def test_integrate_is_invertible_by_negation():
    torch.manual_seed(2)
    shape = (20, 20, 20)
    v = 2.0 * torch.nn.functional.interpolate(torch.randn(1, 3, 3, 3, 3, dtype=torch.float64), size=shape,
                                              mode="trilinear", align_corners=True)
    fwd, inv = integrate(v), integrate(-v)
    err = compose(fwd, inv)[..., 5:-5, 5:-5, 5:-5].abs()
    assert err.mean() < 0.02 and err.max() < 0.15


def test_integrate_rejects_bad_steps():
    with pytest.raises(ValueError, match="integrate\\(\\) 'steps'"):
        integrate(torch.zeros(1, 2, 5, 5), steps=-1)


def test_jacobian_identity_and_scaling():
    assert torch.allclose(jacobian_determinant(torch.zeros(1, 3, 5, 6, 7)), torch.ones(1, 5, 6, 7))
    x = identity_grid((5, 6, 7)).unsqueeze(0)  # u(x) = x  ->  map 2x
    assert torch.allclose(jacobian_determinant(x), torch.full((1, 5, 6, 7), 8.0))
    x2 = identity_grid((5, 6)).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(x2), torch.full((1, 5, 6), 4.0))


def test_jacobian_of_rotation_is_one():
    theta = 0.3
    g = identity_grid((9, 9), dtype=torch.float64)
    rot = torch.stack([math.cos(theta) * g[0] - math.sin(theta) * g[1],
                       math.sin(theta) * g[0] + math.cos(theta) * g[1]])
    det = jacobian_determinant((rot - g).unsqueeze(0))
    assert torch.allclose(det, torch.ones_like(det), atol=1e-12)


def test_resize_field_rescales_magnitudes():
    # u(x) = x on a 5-grid is the map 2x; on a 9-grid spanning the same extent it is still 2x
    u = identity_grid((5, 5, 5), dtype=torch.float64).unsqueeze(0)
    big = resize_field(u, (9, 9, 9))
    assert torch.allclose(big, identity_grid((9, 9, 9), dtype=torch.float64).unsqueeze(0), atol=1e-12)
    t = _translation((5, 6, 7), (1.0, 1.0, 1.0))
    assert torch.allclose(resize_field(t, (9, 11, 13))[:, 0], torch.full((1, 9, 11, 13), 2.0, dtype=torch.float64))


def test_warp_nearest_keeps_integer_labels():
    lab = torch.randint(0, 5, (1, 1, 6, 7, 8))
    out = warp(lab, _translation((6, 7, 8), (0.4, 0, 0)).float(), mode="nearest")
    assert out.dtype == torch.int64
    assert torch.equal(out, lab)


@pytest.mark.parametrize("bad", [torch.zeros(1, 2, 4, 4, 4), torch.zeros(3, 4, 4), torch.zeros(1, 3, 4, 4, 4).long()])
def test_bad_fields_raise_naming_the_function(bad):
    with pytest.raises(ValueError, match="warp\\(\\) 'u'"):
        warp(torch.zeros(1, 1, 4, 4, 4), bad)


def test_follows_dtype_and_device_of_input():
    u = torch.zeros(1, 3, 4, 4, 4, dtype=torch.float64)
    assert integrate(u).dtype == torch.float64
    assert warp(torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64), u).dtype == torch.float64


@pytest.mark.parametrize("shape", [(7, 8, 9), (9, 10)])
def test_jacobian_matches_numpy_gradient_and_linalg_det(shape):
    import numpy as np

    torch.manual_seed(3)
    u = torch.randn(1, len(shape), *shape, dtype=torch.float64)
    jm = __import__("spatial").jacobian_matrix(u)
    for i in range(len(shape)):
        grads = np.gradient(u[0, i].numpy())
        for j in range(len(shape)):
            expected = grads[j] + (1.0 if i == j else 0.0)
            assert np.allclose(jm[0, i, j].numpy(), expected, atol=1e-12)
    det = torch.linalg.det(jm[0].movedim((0, 1), (-2, -1)))
    assert torch.allclose(jacobian_determinant(u)[0], det, atol=1e-10)
