"""Soft Dice loss for label supervision and the one-hot encoding it needs.

``pred`` is typically the moving label map as a one-hot ``(B, C, *S)`` warped with linear
interpolation (so probabilistic), ``target`` the fixed one-hot.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["one_hot", "compact_labels", "dice_loss", "DiceLoss"]


def one_hot(label: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encoding of a label map: ``(B, 1, *S)`` integer -> ``(B, num_classes, *S)`` ``dtype``.

    ``out[:, c] = (label[:, 0] == c)``. Labels must lie in ``[0, num_classes)``; map raw label
    values (e.g. FreeSurfer ids) to consecutive indices first.
    """
    if not isinstance(label, torch.Tensor):
        raise TypeError(f"one_hot() 'label' must be a torch.Tensor, got {type(label).__name__}")
    if label.dim() not in (4, 5) or label.shape[1] != 1:
        raise ValueError(
            f"one_hot() 'label' must have shape (B, 1, *spatial) with 2 or 3 spatial dims, "
            f"got {tuple(label.shape)}"
        )
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"one_hot() 'label' must be an integer tensor, got {label.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"one_hot() 'num_classes' must be a positive int, got {num_classes!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"one_hot() 'dtype' must be a floating dtype, got {dtype}")
    if label.numel() > 0:
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"one_hot() 'label' values must lie in [0, {num_classes}), got min {lo} and max {hi}"
            )
    classes = torch.arange(num_classes, device=label.device).view(1, num_classes, *([1] * (label.dim() - 2)))
    return (label.long() == classes).to(dtype)


def compact_labels(*labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Map label maps with sparse ids (e.g. ``{0, 7, 40000}``) to contiguous indices ``0..K``.

    Returns ``(ids, indices)``: ``ids`` the sorted distinct ids over ALL ``labels`` together, 0
    always included (so index 0 is the background); ``indices[i]`` has ``labels[i]``'s shape with
    each voxel's position in ``ids`` (``ids[indices[i]] == labels[i]``). A one-hot of
    ``indices`` has ``K + 1 = len(ids)`` channels instead of ``max id + 1``: the same channels
    minus the ids present nowhere (all-zero channels), in the same order. This is
    ``torch.unique(..., return_inverse=True)``; for ids below ``max(numel, 65536)`` a lookup
    table over ``bincount`` gives the identical result in linear time.
    """
    if not labels:
        raise ValueError("compact_labels() needs at least one label tensor")
    for t in labels:
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"compact_labels() labels must be integer tensors, got {getattr(t, 'dtype', type(t))}")
    device = labels[0].device
    zero = torch.zeros(1, dtype=torch.long, device=device)  # background always gets index 0
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.long) for t in labels] + [zero])
    if int(flat.min()) < 0:
        raise ValueError(f"compact_labels() label ids must be non-negative, got min {int(flat.min())}")
    hi = int(flat.max())
    if hi < max(flat.numel(), 1 << 16):
        present = torch.bincount(flat, minlength=hi + 1) > 0
        ids = present.nonzero().squeeze(1)
        lut = torch.cumsum(present, 0) - 1
        inverse = lut[flat]
    else:
        ids, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    out, start = [], 0
    for t in labels:
        out.append(inverse[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return ids, out


def dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    include_background: bool = False,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice loss: ``1 - mean_{(b,c) present} 2 sum_x p t / max(sum_x p + sum_x t, eps)``.

    Dice is computed per sample ``b`` and channel ``c`` over all voxels, on soft (one-hot or
    probabilistic) maps. Channel 0 is the background and is left out unless
    ``include_background``. **Absent channels**: a ``(b, c)`` whose label is absent from *both*
    images (``sum p + sum t == 0``) is masked out of the mean (neither a perfect 1 nor a 0); a
    label present in only one image counts with Dice 0. The mean runs over all present ``(b, c)``
    of the batch together; if none is present the loss is 0 (still connected to ``pred``'s graph).
    Unlike the evaluation metric (labels present in *both* images), a one-sided label is
    penalised here, as a training loss should.

    Args:
        pred: ``(B, C, *S)`` floating, values in ``[0, 1]`` (e.g. warped one-hot of the moving labels).
        target: ``(B, C, *S)`` floating, same shape (e.g. one-hot of the fixed labels).
        include_background: keep channel 0 in the mean.
        eps: floor of the denominator, ``> 0``.

    Returns:
        Scalar tensor in ``[0, 1]``; 0 for identical maps, 1 for disjoint ones.
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dice_loss() '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (4, 5):
            raise ValueError(
                f"dice_loss() '{name}' must have shape (B, C, *spatial) with 2 or 3 spatial dims, "
                f"got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(
                f"dice_loss() '{name}' must be floating point (one-hot or probabilities; use one_hot()), "
                f"got {t.dtype}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"dice_loss() 'pred' and 'target' must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not include_background and pred.shape[1] < 2:
        raise ValueError(
            f"dice_loss() needs at least 2 channels when include_background=False, got {tuple(pred.shape)}"
        )
    if not float(eps) > 0.0:
        raise ValueError(f"dice_loss() 'eps' must be > 0, got {eps!r}")
    if not include_background:
        pred = pred[:, 1:]
        target = target[:, 1:]
    spatial = tuple(range(2, pred.dim()))
    target = target.to(pred.dtype)
    inter = (pred * target).sum(dim=spatial)  # (B, C')
    denom = pred.sum(dim=spatial) + target.sum(dim=spatial)
    present = denom > 0
    dice = 2.0 * inter / denom.clamp_min(float(eps))
    n = present.sum()
    mean_dice = (dice * present).sum() / n.clamp_min(1)
    # no host sync: with nothing present the loss is 0 (1 - 1), still on pred's graph
    return 1.0 - torch.where(n > 0, mean_dice, mean_dice.detach() * 0.0 + 1.0)


class DiceLoss(nn.Module):
    """``forward(pred, target) = dice_loss(pred, target, include_background, eps)``: pair -> scalar."""

    def __init__(self, include_background: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.include_background = bool(include_background)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(pred, target, self.include_background, self.eps)

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}, eps={self.eps}"
