"""Thin ``nn.Module`` wrappers over :mod:`spatial.functional` (no state besides options)."""

from __future__ import annotations

import torch
from torch import nn

from spatial.functional import integrate, warp


class SpatialTransformer(nn.Module):
    """``forward(img, u) = warp(img, u)``: ``(B, C, *S), (B, D, *S) -> (B, C, *S)``."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, img: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return warp(img, u, mode=self.mode, padding_mode=self.padding_mode)


class IntegrateVelocity(nn.Module):
    """``forward(v) = integrate(v, steps)``: stationary velocity -> displacement, ``(B, D, *S)``."""

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return integrate(v, self.steps)
