"""LapIRN (Mok & Chung, "Large Deformation Diffeomorphic Image Registration with Laplacian
Pyramid Networks", MICCAI 2020), written from the paper's description.

A coarse-to-fine pyramid of small CNNs. With ``L`` levels (the paper: 3), level ``k``
(``k = 0`` coarsest) works on the images resampled to ``S / 2**(L - 1 - k)`` (linear,
align_corners=True: 1/4, 1/2 and full resolution). Its input is the concatenation of

* the moving image of that level warped by the coarser level's field brought to this grid
  (:func:`spatial.resize_field`; a velocity is integrated first, :func:`spatial.integrate`),
* the fixed image of that level,
* that upsampled field itself (zeros at the coarsest level);

it predicts a residual field ``r_k`` that updates the coarser one, ``f_k = up(f_{k-1}) (+) r_k``:

* ``field="velocity"`` (the paper's diffeomorphic variant): stationary velocities add,
  ``v_k = up(v_{k-1}) + r_k``; the returned field is the total velocity, which the caller
  integrates (``RegistrationModule(field="velocity")``);
* ``field="displacement"``: ``u_k = compose(up(u_{k-1}), r_k)``, i.e. the residual acts on the
  already warped moving image (``warp(warp(m, up u), r) = warp(m, u_k)``).

Each level's CNN is an encoder (two 3×3 convolutions at the level's grid, one stride-2
convolution), ``n_res_blocks`` pre-activation residual blocks at half the level's grid, and a
decoder (2×2 transposed convolution back to the level's grid, concatenation with the encoder
feature, a 3×3 convolution, a 3×3 convolution to ``D`` channels initialised near zero). With
``feature_passing`` the residual-block input of level ``k`` also receives the residual-block
output of level ``k - 1``, upsampled ×2 (the paper's feature map passed up the pyramid).

Fields are in voxel units of the grid they live on (the project convention).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from models.networks.blocks import ConvAct, apply_conv, check_divisible, check_net_args, checkpointed, concat_skip, \
    conv_class, feature_format, flow_conv, up_conv
from spatial import as_float32, compose, float32_region, integrate, resize_field, resize_image, warp

__all__ = ["LapIRN", "LAPIRN_FIELDS"]

LAPIRN_FIELDS = ("displacement", "velocity")


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(act(conv(act(x))))``, same width in and out.

    The second convolution starts at a tenth of its He initialisation, so a stack of blocks
    starts close to the identity and keeps the signal's scale.
    """

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        conv = conv_class(ndim)
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        for c, gain in ((self.conv1, 1.0), (self.conv2, 0.1)):
            nn.init.kaiming_normal_(c.weight, a=0.2, nonlinearity="leaky_relu")
            with torch.no_grad():
                c.weight.mul_(gain)
            nn.init.zeros_(c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = apply_conv(self.conv1, self.act(x))
        h = apply_conv(self.conv2, self.act(h))
        return x + h


class ConditionalResBlock(nn.Module):
    """:class:`ResBlock` with conditional instance normalisation (cLapIRN: Mok & Chung, "Conditional
    Deformable Image Registration with Convolutional Neural Networks", MICCAI 2021):
    ``x + conv2(act(CIN2(conv1(act(CIN1(x))))))`` where ``CIN(h) = (1 + γ(λ)) · IN(h) + β(λ)``,
    ``IN`` an instance normalisation without its own affine, and ``γ``, ``β`` (one value per channel)
    a linear map of a latent code computed from the scalar regularisation code ``λ`` by this block's
    mapping network (four linear layers of width ``latent``, each followed by a leaky ReLU). The
    linear maps' biases start at zero, so ``γ`` and ``β`` start small.

    ``forward(x, code)``: ``code`` ``(B, 1)``, one ``λ`` per batch item.
    """

    def __init__(self, ndim: int, channels: int, latent: int = 64) -> None:
        super().__init__()
        self.res = ResBlock(ndim, channels)
        layers: list[nn.Module] = []
        for k in range(4):
            layers += [nn.Linear(1 if k == 0 else latent, latent), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.style1 = nn.Linear(latent, 2 * channels)
        self.style2 = nn.Linear(latent, 2 * channels)
        for style in (self.style1, self.style2):
            nn.init.zeros_(style.bias)

    @staticmethod
    def _cin(h: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = style.reshape(*style.shape, *([1] * (h.dim() - 2))).chunk(2, dim=1)
        return (1.0 + gamma) * F.instance_norm(h) + beta

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        latent = self.mapping(code.to(x.dtype))
        h = apply_conv(self.res.conv1, self.res.act(self._cin(x, self.style1(latent))))
        h = apply_conv(self.res.conv2, self.res.act(self._cin(h, self.style2(latent))))
        return x + h


class LevelNet(nn.Module):
    """One pyramid level: ``forward(x, coarse_feat) -> (residual field, feature)``.

    ``x`` ``(B, cin, *n)`` (``n`` even); returns the residual ``(B, D, *n)`` and the
    residual-block output ``(B, R, *n/2)`` (``R = res_channels``) that the next finer level may
    receive as ``coarse_feat`` (``(B, R, *n/4)``, upsampled ×2 here and added).
    """

    def __init__(self, ndim: int, cin: int, channels: int, n_res_blocks: int, res_channels: int,
                 conditional: bool = False) -> None:
        super().__init__()
        c, r = channels, res_channels
        self.ndim = ndim
        self.conditional = conditional
        self.enc = nn.Sequential(ConvAct(ndim, cin, c), ConvAct(ndim, c, c))
        self.down = ConvAct(ndim, c, r, stride=2)
        block = ConditionalResBlock if conditional else ResBlock
        blocks = [block(ndim, r) for _ in range(n_res_blocks)]
        self.res = nn.ModuleList(blocks) if conditional else nn.Sequential(*blocks)
        self.up = nn.Sequential(up_conv(ndim, r, c, slope=0.2), nn.LeakyReLU(0.2))
        self.dec = ConvAct(ndim, 2 * c, c)
        self.flow = flow_conv(ndim, c)

    def forward(self, x: torch.Tensor, coarse_feat: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.enc(x)
        h = self.down(skip)
        if coarse_feat is not None:
            mode = "trilinear" if h.dim() == 5 else "bilinear"
            h = h + F.interpolate(coarse_feat, size=h.shape[2:], mode=mode, align_corners=True)
        if self.conditional:
            feat = h
            for block in self.res:
                feat = block(feat, code)
        else:
            feat = self.res(h)
        y = self.up(feat)
        y = self.dec(concat_skip(y, skip))
        return apply_conv(self.flow, y).contiguous(), feat


class LapIRN(nn.Module):
    """Laplacian-pyramid registration network: ``forward(moving, fixed) -> field``,
    ``(B,C,*S)×2 -> (B,D,*S)`` (see the module docstring for the pyramid).

    Args:
        ndim: 2 or 3.
        levels: pyramid levels ``L`` (the paper: 3); level ``k`` runs on ``S / 2**(L-1-k)``.
        channels: ``C``, width of every level's encoder/decoder; 16 by default so that CPU
            training is feasible. The paper's code: 28 (``4 × start_channel``, start_channel 7).
        n_res_blocks: residual blocks per level (the paper: 5).
        res_channels: width ``R`` of the residual blocks at half the level's grid; ``None``
            (default) = ``2C``. The paper keeps the encoder's width there (``R = C = 28``).
        conditional: cLapIRN (Mok & Chung, MICCAI 2021): the residual blocks are
            :class:`ConditionalResBlock` s conditioned on a regularisation code ``λ`` in [0, 1]
            that :meth:`forward` takes (``reg_code``); :class:`~models.lapirn.LapIRNModule` draws
            ``λ ~ U(0, 1)`` per training step and weighs the smoothness term by it, so one network
            serves every regularisation weight, chosen at test time.
        field: ``"velocity"`` (diffeomorphic: velocities add, the caller integrates the returned
            total velocity) or ``"displacement"`` (residual displacements compose).
        integration_steps: scaling-and-squaring steps used to warp the moving image of a finer
            level by a coarser velocity (match the RegistrationModule's).
        feature_passing: pass each level's residual-block feature up to the next level.
        in_channels: channels of each image.
        channels_last: run features in channels-last layout; ``None`` (default) = on CPU only.
        checkpoint: activation checkpointing in training (see
            :func:`models.networks.blocks.checkpointed`): each level's CNN keeps only its
            inputs and is recomputed in the backward pass. Same outputs and gradients; no effect
            in eval or under ``no_grad``.

    Spatial sizes must be divisible by :attr:`multiple` ``= 2**levels`` (the coarsest level is at
    ``S / 2**(L-1)`` and halves it once more); a ``ValueError`` names the shape otherwise.
    """

    def __init__(
        self,
        ndim: int = 3,
        levels: int = 3,
        channels: int = 16,
        n_res_blocks: int = 3,
        res_channels: int | None = None,
        conditional: bool = False,
        field: str = "velocity",
        integration_steps: int = 7,
        feature_passing: bool = True,
        in_channels: int = 1,
        channels_last: bool | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        res_channels = 2 * channels if res_channels is None else res_channels
        check_net_args("LapIRN", ndim, levels=(levels, 1), channels=(channels, 1), n_res_blocks=(n_res_blocks, 0),
                       res_channels=(res_channels, 1), integration_steps=(integration_steps, 0),
                       in_channels=(in_channels, 1))
        if not isinstance(conditional, bool):
            raise ValueError(f"LapIRN 'conditional' must be a bool (true/false), got {conditional!r}")
        if field not in LAPIRN_FIELDS:
            raise ValueError(f"LapIRN 'field' must be one of {list(LAPIRN_FIELDS)}, got {field!r}")
        self.ndim = ndim
        self.levels = levels
        self.field = field
        self.integration_steps = integration_steps
        self.feature_passing = bool(feature_passing)
        self.in_channels = in_channels
        self.channels_last = channels_last
        self.checkpoint = bool(checkpoint)
        cin = 2 * in_channels + ndim  # warped moving, fixed, upsampled coarser field
        self.conditional = conditional
        self.level_nets = nn.ModuleList(LevelNet(ndim, cin, channels, n_res_blocks, res_channels, conditional)
                                        for _ in range(levels))

    @property
    def multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (the total stride)."""
        return 2**self.levels

    def level_shape(self, shape: Sequence[int], level: int) -> tuple[int, ...]:
        """Grid of level ``level`` (0 = coarsest) for an input grid ``shape``: ``shape / 2**(L-1-level)``."""
        f = 2 ** (self.levels - 1 - level)
        return tuple(int(s) // f for s in shape)

    def to_displacement(self, f: torch.Tensor) -> torch.Tensor:
        """A field of this network -> its displacement (integrates a velocity)."""
        return integrate(f, self.integration_steps) if self.field == "velocity" else f

    def _check(self, moving: torch.Tensor, fixed: torch.Tensor, active_levels: int | None) -> int:
        want = f"(B, {self.in_channels}, *S) with {self.ndim} spatial dims"
        for name, t in (("moving", moving), ("fixed", fixed)):
            if not isinstance(t, torch.Tensor) or t.dim() != self.ndim + 2 or t.shape[1] != self.in_channels:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"LapIRN '{name}' must be {want}, got {got}")
        if moving.shape != fixed.shape:
            raise ValueError(f"LapIRN 'moving' {tuple(moving.shape)} and 'fixed' {tuple(fixed.shape)} differ in shape")
        check_divisible("LapIRN", moving.shape[2:], self.multiple)
        if active_levels is None:
            return self.levels
        if isinstance(active_levels, bool) or not isinstance(active_levels, int) or not 1 <= active_levels <= self.levels:
            raise ValueError(f"LapIRN 'active_levels' must be an int in [1, {self.levels}] or None, got {active_levels!r}")
        return active_levels

    def _code(self, reg_code: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | None:
        """``reg_code`` as a float32 ``(B, 1)`` tensor on ``like``'s device (None for a plain net)."""
        if not self.conditional:
            if reg_code is not None:
                raise ValueError("LapIRN 'reg_code' is for a conditional net (conditional=true); this one is not")
            return None
        if reg_code is None:
            raise ValueError("a conditional LapIRN (cLapIRN) needs 'reg_code': the regularisation code in [0, 1]")
        code = torch.as_tensor(reg_code, dtype=torch.float32, device=like.device).reshape(-1, 1)
        batch = like.shape[0]
        if code.shape[0] == 1:
            code = code.expand(batch, 1)
        if code.shape[0] != batch:
            raise ValueError(f"LapIRN 'reg_code' must hold one value or one per batch item ({batch}), "
                             f"got {tuple(code.shape)}")
        if not isinstance(reg_code, torch.Tensor) and not 0.0 <= float(reg_code) <= 1.0:  # a tensor: no host sync
            raise ValueError(f"LapIRN 'reg_code' must lie in [0, 1], got {reg_code!r}")
        return code

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        active_levels: int | None = None,
        upsample: bool = True,
        reg_code: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """The total field (velocity or displacement, see ``field``) of the first ``active_levels``
        levels (``None``: all). A ``conditional`` net needs ``reg_code``: ``λ`` in [0, 1], a number
        or a tensor of one value per batch item (``(B,)`` or ``(B, 1)``); other nets refuse one.

        Returns ``(B, D, *S)`` on the input grid when ``upsample`` (a coarser result is brought
        there by :func:`spatial.resize_field`), else ``(B, D, *level_shape(S, active_levels-1))``
        on the grid of the finest active level.
        """
        n = self._check(moving, fixed, active_levels)
        code = self._code(reg_code, moving)
        shape = tuple(moving.shape[2:])
        fmt = feature_format(self, moving.device)
        total: torch.Tensor | None = None
        feat: torch.Tensor | None = None
        for k in range(n):
            grid = self.level_shape(shape, k)
            m, f = resize_image(moving, grid), resize_image(fixed, grid)
            with float32_region(moving):  # fields between levels: float32 under mixed precision too
                if total is None:
                    prev = m.new_zeros(m.shape[0], self.ndim, *grid)
                else:
                    prev = resize_field(total, grid)
                    m = warp(m, self.to_displacement(prev))
            x = torch.cat([m, f, prev.to(m.dtype)], dim=1).contiguous(memory_format=fmt)
            args = (x, feat if self.feature_passing else None) + ((code,) if self.conditional else ())
            r, feat = checkpointed(self, self.level_nets[k], *args)
            r = as_float32(r)  # a bfloat16 level output (autocast) joins the float32 total
            with float32_region(r):
                if total is None:
                    total = r
                elif self.field == "velocity":
                    total = prev + r
                else:
                    total = compose(prev, r)
        assert total is not None
        if upsample and tuple(total.shape[2:]) != shape:
            with float32_region(total):
                total = resize_field(total, shape)
        return total
