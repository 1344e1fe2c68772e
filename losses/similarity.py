"""Image similarity losses: LNCC, MSE, Parzen-window mutual information, and none.

All functions take a ``fixed`` and a ``moving`` image of the same shape ``(B, C, *S)`` with
2 or 3 spatial dims (``C`` is usually 1), follow the inputs' device and dtype, and return a
scalar **loss** (lower is better): ``lncc`` and ``mutual_information`` are negated similarities.
"""

from __future__ import annotations

import torch
from torch import nn

from losses._common import _check_pair, _full_precision
from losses.lncc import LNCC, lncc

__all__ = [
    "lncc",
    "mse",
    "mutual_information",
    "LNCC",
    "MSE",
    "MutualInformation",
    "NoSimilarity",
]


# ----------------------------------------------------------------------------------------------
# MSE
# ----------------------------------------------------------------------------------------------


def mse(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Mean squared error: ``mean_{b, c, x} (fixed - moving)^2``; ``(B, C, *S)`` pair -> scalar."""
    _check_pair(fixed, moving, "mse")
    return torch.mean((fixed - moving) ** 2)


# ----------------------------------------------------------------------------------------------
# Mutual information
# ----------------------------------------------------------------------------------------------


def _parzen_weights(x: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised Gaussian bin memberships: ``(B, N) -> (B, N, bins)``, each row sums to 1."""
    logits = -((x.unsqueeze(-1) - centres) ** 2) / (2.0 * sigma * sigma)
    return torch.softmax(logits, dim=-1)


def mutual_information(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    bins: int = 32,
    sigma: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Global mutual information loss with Parzen (Gaussian) windowing: ``-mean_b MI_b`` (nats).

    ``MI = sum_{a,b} p(a,b) log(p(a,b) / (p(a) p(b)))`` with the joint histogram
    ``p(a,b) = sum_x m(x) w_a(I(x)) w_b(J(x)) / sum_x m(x)``, where ``w_k(v)`` is a Gaussian of
    width ``sigma`` around bin centre ``c_k = k / (bins - 1)`` normalised over ``k`` (each voxel
    carries mass 1) and ``p(a)``, ``p(b)`` are the joint's marginals.

    Intensities are assumed in ``[0, 1]`` and clamped to it (no gradient flows through clamped
    voxels). Differentiable with respect to both images. All channels of a sample are pooled
    into one histogram.

    Args:
        fixed, moving: ``(B, C, *S)`` floating images, 2 or 3 spatial dims, same shape.
        bins: number of histogram bins, ``>= 2``.
        sigma: Parzen window width in intensity units; default half the bin spacing,
            ``0.5 / (bins - 1)``.
        mask: optional ``(B, 1, *S)`` or ``(B, C, *S)`` weights (bool or float in ``[0, 1]``)
            selecting the voxels that enter the histogram; a sample whose mask selects nothing
            has MI 0.

    The joint histogram is a ``(B, N, bins)^T (B, N, bins)`` batched product: memory grows as
    ``2 * N * bins`` values per sample (about 256 MB for ``N = 96*112*96``, 32 bins, float32, plus
    the same again for the backward pass). Float16/bfloat16 inputs are computed in float32 with
    autocast disabled.

    Returns:
        Scalar tensor: minus the mutual information, averaged over the batch.
    """
    _check_pair(fixed, moving, "mutual_information")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"mutual_information() 'bins' must be an int >= 2, got {bins!r}")
    if sigma is None:
        sigma = 0.5 / (bins - 1)
    if not float(sigma) > 0.0:
        raise ValueError(f"mutual_information() 'sigma' must be > 0, got {sigma!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != fixed.dim():
            raise ValueError(
                f"mutual_information() 'mask' must be a tensor (B, 1 or C, *spatial) matching "
                f"{tuple(fixed.shape)}, got {getattr(mask, 'shape', type(mask).__name__)}"
            )
        if (
            mask.shape[0] != fixed.shape[0]
            or mask.shape[2:] != fixed.shape[2:]
            or mask.shape[1] not in (1, fixed.shape[1])
        ):
            raise ValueError(
                f"mutual_information() 'mask' shape {tuple(mask.shape)} does not match images "
                f"{tuple(fixed.shape)}"
            )
    return -_mutual_information(fixed, moving, bins, float(sigma), mask).mean()


@_full_precision
def _mutual_information(
    fixed: torch.Tensor, moving: torch.Tensor, bins: int, sigma: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample Parzen mutual information ``(B,)`` in nats; see :func:`mutual_information`."""
    b = fixed.shape[0]
    centres = torch.linspace(0.0, 1.0, bins, device=fixed.device, dtype=fixed.dtype)
    w_i = _parzen_weights(fixed.clamp(0.0, 1.0).reshape(b, -1), centres, sigma)  # (B, N, bins)
    w_j = _parzen_weights(moving.clamp(0.0, 1.0).reshape(b, -1), centres, sigma)
    if mask is None:
        total = torch.full((b,), float(w_i.shape[1]), device=fixed.device, dtype=fixed.dtype)
    else:
        m = mask.to(fixed.dtype).expand(fixed.shape).reshape(b, -1)
        total = m.sum(dim=1)
        w_j = w_j * m.unsqueeze(-1)
        total = total.clamp_min(torch.finfo(fixed.dtype).tiny)  # empty mask: MI = 0
    joint = torch.bmm(w_i.transpose(1, 2), w_j) / total.view(b, 1, 1)  # (B, bins, bins)
    p_i = joint.sum(dim=2, keepdim=True)
    p_j = joint.sum(dim=1, keepdim=True)
    tiny = torch.finfo(joint.dtype).tiny ** 0.5  # keeps log finite where a bin is empty
    mi = (joint * (torch.log(joint + tiny) - torch.log(p_i * p_j + tiny))).sum(dim=(1, 2))
    return mi


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class MSE(nn.Module):
    """``forward(fixed, moving) = mse(fixed, moving)``: ``(B, C, *S)`` pair -> scalar."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return mse(fixed, moving)


class MutualInformation(nn.Module):
    """``forward(fixed, moving, mask=None) = mutual_information(...)`` (= -MI): pair -> scalar."""

    def __init__(self, bins: int = 32, sigma: float | None = None) -> None:
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"MutualInformation() 'bins' must be an int >= 2, got {bins!r}")
        self.bins = bins
        self.sigma = sigma

    def forward(
        self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return mutual_information(fixed, moving, self.bins, self.sigma, mask)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, sigma={self.sigma}"


class NoSimilarity(nn.Module):
    """``forward(fixed, moving) = 0``: no image term (the registry's ``"none"``).

    For training on labels only, SynthMorph-style (``model.loss.sim=none
    model.loss.dice_weight=1``): the loss is then ``reg_weight * reg + dice_weight * Dice``.
    Returns a scalar zero in the inputs' dtype on their device. Like ``NoRegulariser`` it is a
    constant, not connected to the inputs' graph: adding it to a loss changes neither the value
    nor the gradients and costs no backward pass (another term must carry the gradient).
    """

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        _check_pair(fixed, moving, "NoSimilarity")
        return fixed.new_zeros(())
