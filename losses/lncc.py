"""Local normalised cross-correlation (LNCC) by separable box filtering.

``lncc(fixed, moving, window)`` and its module :class:`LNCC`; see :func:`lncc` for the exact
definition (squared form, clipped border windows, flat windows score 1).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from losses._common import _check_pair, _full_precision
from spatial.filters import separable_filter

__all__ = ["lncc", "LNCC"]


# ----------------------------------------------------------------------------------------------
# LNCC
# ----------------------------------------------------------------------------------------------


def _check_window(window: int, fn: str) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"{fn}() 'window' must be a positive odd int, got {window!r}")
    return window


def _box_sum_direct(x: torch.Tensor, window: int) -> torch.Tensor:
    """Separable box sum with zero padding to 'same' size: ``(B, K, *S) -> (B, K, *S)``.

    ``out[x] = sum_{|y - x|_inf <= window // 2, y inside the image} x[y]``: one 1-D all-ones
    kernel per axis through :func:`spatial.filters.separable_filter`, i.e. ``D * window``
    additions per voxel instead of ``window ** D``.
    """
    return separable_filter(x, [[1.0] * window] * (x.dim() - 2), padding="zeros")


class _BoxSum(torch.autograd.Function):
    """The box sum is self-adjoint (symmetric kernel, zero padding, 'same' size), so its
    backward pass is the same box sum of the incoming gradient. This halves the cost of the
    backward pass compared with autograd through ``conv`` (which on CPU is slower than the
    forward) and stays differentiable for double backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, window: int) -> torch.Tensor:  # noqa: D102
        ctx.window = window
        return _box_sum_direct(x, window)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return _BoxSum.apply(grad, ctx.window), None


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Differentiable separable box sum, ``(B, K, *S) -> (B, K, *S)``; see :func:`_box_sum_direct`."""
    return _BoxSum.apply(x, window)


def _window_count(shape: torch.Size, window: int, like: torch.Tensor) -> torch.Tensor:
    """Number of in-image voxels in each clipped window: ``(1, 1, *S)``, a product of 1-D counts."""
    r = window // 2
    count = None
    ndim = len(shape)
    for axis, n in enumerate(shape):
        pos = torch.arange(n, device=like.device)
        c = (torch.clamp(pos + r, max=n - 1) - torch.clamp(pos - r, min=0) + 1).to(like.dtype)
        view = [1] * ndim
        view[axis] = n
        c = c.view(*view)
        count = c if count is None else count * c
    return count.view(1, 1, *shape)


# Relative noise floor of the local variance, in units of machine epsilon of the computation
# dtype. In float32 the box-filter variance E[I^2] - E[I]^2 carries a rounding error of up to
# ~15 eps * E[I^2] (measured for windows up to 21); 200 eps leaves a >10x margin.
_VAR_FLOOR_EPS = 200.0


class _FixedStats(NamedTuple):
    """Window statistics of one image of the pair: the globally centred image ``i``, its window
    mean ``mu``, floored window variance ``var`` and where that variance is real (``live``);
    ``count``: the in-image voxels of each clipped window."""

    i: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor
    live: torch.Tensor
    count: torch.Tensor


def _centred(x: torch.Tensor) -> torch.Tensor:
    # Global centring changes no window statistic (they are shift invariant) but removes most
    # of the cancellation in E[I^2] - E[I]^2; it also fixes the scale of the noise floor below.
    # The mean is accumulated in float64: a float32 sum's rounding depends on how the threads
    # split it, and the variance floor below turns such a last-bit change into a different
    # gradient, so results would depend on the thread count.
    mean = x.detach().mean(dim=tuple(range(2, x.dim())), keepdim=True, dtype=torch.float64)
    return x - mean.to(x.dtype)


def _floored(var: torch.Tensor, second_moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var, live)``: the variance set to 0 where it is rounding noise of ``E[x^2] - E[x]^2``."""
    tau = _VAR_FLOOR_EPS * torch.finfo(var.dtype).eps
    live = var > tau * second_moment  # False where the window is constant up to rounding
    return torch.where(live, var, var.new_zeros(())), live


def _fixed_stats(fixed: torch.Tensor, window: int) -> _FixedStats:
    """The window statistics of ``fixed`` that :func:`_lncc_from_stats` needs (differentiable)."""
    i = _centred(fixed)
    count = _window_count(fixed.shape[2:], window, fixed)
    mu, m_ii = torch.split(_box_sum(torch.cat([i, i * i], dim=1), window) / count, fixed.shape[1], dim=1)
    var, live = _floored(m_ii - mu * mu, m_ii)
    return _FixedStats(i, mu, var, live, count)


def _lncc_from_stats(stats: _FixedStats, moving: torch.Tensor, window: int, eps: float) -> torch.Tensor:
    """Voxel-wise squared local correlation ``cc(x)`` of ``moving`` against a fixed image given by
    its window statistics: ``(B, C, *S)``. Box sums of ``J, J^2, IJ`` (three maps) only."""
    j = _centred(moving)
    c = moving.shape[1]
    means = _box_sum(torch.cat([j, j * j, stats.i * j], dim=1), window) / stats.count
    mu_j, m_jj, m_ij = torch.split(means, c, dim=1)
    var_j, live_j = _floored(m_jj - mu_j * mu_j, m_jj)
    cov = torch.where(stats.live & live_j, m_ij - stats.mu * mu_j, means.new_zeros(()))
    # eps on each variance: a window flat in both images scores 1, flat in one only ~0 (eps over the
    # other's variance), textured in both the squared correlation
    return (cov * cov + eps * eps) / ((stats.var + eps) * (var_j + eps))


def _voxel_mean(cc: torch.Tensor) -> torch.Tensor:
    """Mean of the map, accumulated in float64 so that its value does not depend on how the
    threads split the sum (an optimiser's convergence test compares it across iterations)."""
    return cc.mean(dtype=torch.float64).to(cc.dtype)


@_full_precision
def _lncc_map(fixed: torch.Tensor, moving: torch.Tensor, window: int, eps: float) -> torch.Tensor:
    """Voxel-wise squared local correlation ``cc(x)``: ``(B, C, *S) -> (B, C, *S)``.

    See :func:`lncc` for the definition; no argument checks here.
    """
    return _lncc_from_stats(_fixed_stats(fixed, window), moving, window, eps)


def lncc(fixed: torch.Tensor, moving: torch.Tensor, window: int = 9, eps: float = 1e-10) -> torch.Tensor:
    """Local normalised cross-correlation loss (squared form): ``-mean_x cc(x)``.

    ``cc(x) = (cov(x)^2 + eps^2) / ((var_I(x) + eps) (var_J(x) + eps))`` with ``cov``/``var`` the
    covariance and variances of ``I = fixed`` and ``J = moving`` over the cubic box window of side
    ``window`` centred at ``x``: the squared correlation where both are textured, 1 where the window
    is constant in both images, ``eps / (var + eps)`` ~ 0 where it is constant in one only.

    * **Squared** correlation (VoxelMorph/MONAI/FireANTs style): ``cc`` lies in ``[0, 1]`` and is
      blind to the sign of the correlation, so ``lncc(x, -x) == lncc(x, x) == -1``; it is
      invariant to ``moving -> a * moving + b`` for any ``a != 0``.
    * **Border**: windows are clipped to the image. Box sums are taken with zero padding to the
      'same' size and divided by the number of in-image voxels of each clipped window (not by
      ``window ** D``), so every statistic is the exact mean over the voxels the window actually
      covers; the mean of ``cc`` runs over all voxels, border ones included.
    * **eps** is added to each window-*mean* variance (and ``eps^2`` to the squared covariance), not
      to window sums as in VoxelMorph. The default ``1e-10`` is the variance of a local standard
      deviation of 1e-5, far below one grey level of 8-bit data in [0, 1] (3e-3): it damps the
      large gradients of near-constant windows and leaves real texture untouched. ``cc`` lies in
      ``[0, 1]`` (Cauchy-Schwarz) and is 1 for ``I = J`` unless the window's variance is within a
      few ``eps`` of ``eps`` (then down to 1/2).
    * **Constant windows**: each image is first centred by its global mean (no effect on any
      window statistic); a local variance ``var <= 200 * finfo(dtype).eps * E_w[I^2]`` (the
      rounding noise of ``E_w[I^2] - E_w[I]^2``; ``E_w[I^2]`` of the centred image) is set to 0,
      and ``cov`` to 0 where either variance is 0. A window constant in **both** images scores
      exactly 1 with zero gradient (they agree there), so ``lncc(x, x) == -1`` even where ``x`` is
      locally flat (MONAI's form scores such windows ~0, so on a [0, 1] brain template with
      background its ``lncc(x, x)`` is about -0.36). A window constant in **one** image only
      scores ``eps / (var + eps)`` ~ 0, as in VoxelMorph and MONAI: nothing of the other's texture
      is matched; and where the fixed window is flat, the moving one scores better the flatter it
      stays (no reward for pulling texture into an empty region, which VoxelMorph's
      ``cov^2 / (var_I var_J + eps)`` gives). (Until 2026-12-04 the form was ``(cov^2 + eps) /
      (var_I var_J + eps)``, which scores a window flat in one image a perfect 1: a brain shifted
      over empty background then scored better than a small misalignment, -0.93 at 32 voxels on
      the MNI template against -0.67 at 4, and a warp collapsing the moving image onto a flat
      region a perfect -1.)
    * Float16/bfloat16 inputs are computed in float32 with autocast disabled.
    * Box sums use separable filtering (:func:`spatial.filters.separable_filter`, one 1-D pass
      per axis) on the stacked maps ``I, I^2`` and ``J, J^2, IJ``; the box sum being
      self-adjoint, its backward pass is the same filter. An optimiser comparing many moving
      images with one fixed image computes the fixed image's part once: :meth:`LNCC.to_fixed`.

    Args:
        fixed, moving: ``(B, C, *S)`` floating images, 2 or 3 spatial dims, same shape.
        window: odd side length of the box window (any size; windows larger than the image are
            clipped like the border ones).
        eps: smoothing constant, ``> 0`` (0 would make constant windows 0/0).

    Returns:
        Scalar tensor in ``[-1, 0]``: minus the mean over batch, channels and voxels.
    """
    _check_pair(fixed, moving, "lncc")
    _check_window(window, "lncc")
    if not float(eps) > 0.0:
        raise ValueError(f"lncc() 'eps' must be > 0, got {eps!r}")
    return -_voxel_mean(_lncc_map(fixed, moving, window, float(eps)))


class LNCC(nn.Module):
    """``forward(fixed, moving) = lncc(fixed, moving, window, eps)``: ``(B, C, *S)`` pair -> scalar."""

    def __init__(self, window: int = 9, eps: float = 1e-10) -> None:
        super().__init__()
        self.window = _check_window(window, "LNCC")
        if not float(eps) > 0.0:
            raise ValueError(f"LNCC() 'eps' must be > 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return lncc(fixed, moving, self.window, self.eps)

    def to_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``loss(moving) == self(fixed, moving)`` with ``fixed``'s window statistics computed once
        (no gradient flows to ``fixed``): an instance optimiser evaluates it every iteration."""
        _check_pair(fixed, fixed, "LNCC.to_fixed")
        if fixed.dtype in (torch.float16, torch.bfloat16):
            fixed = fixed.float()
        with torch.no_grad():
            stats = _fixed_stats(fixed, self.window)

        def loss(moving: torch.Tensor) -> torch.Tensor:
            _check_pair(fixed, moving.to(fixed.dtype), "LNCC.to_fixed")
            return -_voxel_mean(_lncc_from_stats(stats, moving.to(fixed.dtype), self.window, self.eps))

        return loss

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}"
