"""Local normalised cross-correlation (LNCC) by separable box filtering.

``lncc(fixed, moving, window)`` and its module :class:`LNCC`; see :func:`lncc` for the exact
definition (squared form, clipped border windows, flat windows score 1).
"""

from __future__ import annotations

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


def _box_sum_conv(x: torch.Tensor, window: int, channels_last: bool | None = None) -> torch.Tensor:
    """Separable box sum with zero padding to 'same' size: ``(B, K, *S) -> (B, K, *S)``.

    ``out[x] = sum_{|y - x|_inf <= window // 2, y inside the image} x[y]``: one 1-D all-ones
    kernel per axis through :func:`spatial.filters.separable_filter`, i.e. ``D * window``
    additions per voxel instead of ``window ** D``.
    """
    ones = x.new_ones(window)
    return separable_filter(x, [ones] * (x.dim() - 2), padding="zeros", channels_last=channels_last)


class _BoxSum(torch.autograd.Function):
    """The box sum is self-adjoint (symmetric kernel, zero padding, 'same' size), so its
    backward pass is the same box sum of the incoming gradient. This halves the cost of the
    backward pass compared with autograd through ``conv`` (which on CPU is slower than the
    forward) and stays differentiable for double backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, window: int) -> torch.Tensor:  # noqa: D102
        ctx.window = window
        return _box_sum_conv(x, window)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return _BoxSum.apply(grad, ctx.window), None


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Differentiable separable box sum, ``(B, K, *S) -> (B, K, *S)``; see :func:`_box_sum_conv`."""
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


@_full_precision
def _lncc_map(fixed: torch.Tensor, moving: torch.Tensor, window: int, eps: float) -> torch.Tensor:
    """Voxel-wise squared local correlation ``cc(x)``: ``(B, C, *S) -> (B, C, *S)``.

    See :func:`lncc` for the definition; no argument checks here.
    """
    ndim = fixed.dim() - 2
    c = fixed.shape[1]
    spatial = tuple(range(2, 2 + ndim))
    # Global centring changes no window statistic (they are shift invariant) but removes most
    # of the cancellation in E[I^2] - E[I]^2; it also fixes the scale of the noise floor below.
    i = fixed - fixed.detach().mean(dim=spatial, keepdim=True)
    j = moving - moving.detach().mean(dim=spatial, keepdim=True)
    stacked = torch.cat([i, j, i * i, j * j, i * j], dim=1)  # (B, 5C, *S)
    means = _box_sum(stacked, window) / _window_count(fixed.shape[2:], window, fixed)
    mu_i, mu_j, m_ii, m_jj, m_ij = torch.split(means, c, dim=1)
    tau = _VAR_FLOOR_EPS * torch.finfo(means.dtype).eps
    var_i = m_ii - mu_i * mu_i
    var_j = m_jj - mu_j * mu_j
    live_i = var_i > tau * m_ii  # False where the window is constant up to rounding
    live_j = var_j > tau * m_jj
    zero = means.new_zeros(())
    var_i = torch.where(live_i, var_i, zero)
    var_j = torch.where(live_j, var_j, zero)
    cov = torch.where(live_i & live_j, m_ij - mu_i * mu_j, zero)
    return (cov * cov + eps) / (var_i * var_j + eps)


def lncc(fixed: torch.Tensor, moving: torch.Tensor, window: int = 9, eps: float = 1e-10) -> torch.Tensor:
    """Local normalised cross-correlation loss (squared form): ``-mean_x cc(x)``.

    ``cc(x) = (cov(x)^2 + eps) / (var_I(x) * var_J(x) + eps)`` with ``cov``/``var`` the
    covariance and variances of ``I = fixed`` and ``J = moving`` over the cubic box window of
    side ``window`` centred at ``x``.

    * **Squared** correlation (VoxelMorph/MONAI/FireANTs style): ``cc`` lies in ``[0, 1]`` and is
      blind to the sign of the correlation, so ``lncc(x, -x) == lncc(x, x) == -1``; it is
      invariant to ``moving -> a * moving + b`` for any ``a != 0``.
    * **Border**: windows are clipped to the image. Box sums are taken with zero padding to the
      'same' size and divided by the number of in-image voxels of each clipped window (not by
      ``window ** D``), so every statistic is the exact mean over the voxels the window actually
      covers; the mean of ``cc`` runs over all voxels, border ones included.
    * **eps** is added to the numerator and the denominator of the window-*mean* statistics
      (not window sums as in VoxelMorph), so a window constant in both images scores exactly 1
      and ``lncc(x, x) == -1`` even where ``x`` is locally flat. The default ``1e-10`` equals
      ``var_I var_J`` for two local standard deviations of ~3e-3 (one grey level of 8-bit data
      in [0, 1]): it damps the large gradients of sub-grey-level windows and leaves real texture
      untouched (<1e-3 change of ``cc`` where both local stds exceed 1e-2). VoxelMorph's
      ``1e-5`` on window sums is ``1e-5 / window**(2D)`` ~ 2e-11 on means for a 9^3 window.
    * **Constant windows**: each image is first centred by its global mean (no effect on any
      window statistic); a local variance ``var <= 200 * finfo(dtype).eps * E_w[I^2]`` (the
      rounding noise of ``E_w[I^2] - E_w[I]^2``; ``E_w[I^2]`` of the centred image) is set to 0,
      and ``cov`` to 0 where either variance is 0. A window constant in either image then scores
      exactly ``eps / eps = 1`` with zero gradient, instead of a ratio of rounding noise (about
      0.9 in float32 without the floor). MONAI's form scores such windows ~0 instead, so on a
      [0, 1] brain template with background its ``lncc(x, x)`` is about -0.36, not -1.
    * Float16/bfloat16 inputs are computed in float32 with autocast disabled.
    * Box sums use separable filtering: one grouped 1-D convolution per axis on the five stacked
      maps ``I, J, I^2, J^2, IJ``; the box sum being self-adjoint, its backward pass is the same
      filter.

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
    return -_lncc_map(fixed, moving, window, float(eps)).mean()


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

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}"
