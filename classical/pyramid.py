"""Image pyramids and the small numerical pieces the optimisers share."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from spatial.filters import gaussian_blur
from spatial.functional import resize_image

__all__ = ["level_shape", "level_need", "min_input_size", "downsample", "check_pair", "ConvergenceMonitor",
           "MIN_LEVEL_VOXELS", "SYNC_EVERY", "sync_interval", "Adam", "level_line"]

# The fewest voxels per axis of any pyramid level: an affine (12 parameters in 3-D) and a smooth
# field are both determined on 4^3 = 64 voxels, not on 2 or 3 per axis.
MIN_LEVEL_VOXELS = 4


def level_shape(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """Grid of a pyramid level: ``round(n / scale)`` per axis, at least 8 voxels."""
    return tuple(max(int(round(n / scale)), min(8, n)) for n in shape)


def level_need(sim: str, sim_kwargs: dict | None, sigmas: Sequence[float] = ()) -> int:
    """Fewest voxels per axis a pyramid level needs: the largest of :data:`MIN_LEVEL_VOXELS`;
    the LNCC window (``sim == "lncc"``: ``sim_kwargs["window"]``, default 9), which must fit in
    the level, else every window is clipped to the whole axis and the "local" correlation is
    global along it; and ``2 * ceil(2 sigma) + 1`` for each Gaussian smoothing ``sigma`` (the
    gradient's and the field's, in voxels of the level), the kernel's ±2 sigma core (95 % of its
    weight), without which smoothing flattens the field to a translation along that axis."""
    need = MIN_LEVEL_VOXELS
    if sim == "lncc":
        need = max(need, int((sim_kwargs or {}).get("window", 9)))
    for sigma in sigmas:
        if sigma > 0:
            need = max(need, 2 * math.ceil(2 * float(sigma)) + 1)
    return need


def min_input_size(scales: Sequence[float], need: int) -> int:
    """The smallest axis length ``n`` whose every pyramid level (:func:`level_shape` at each of
    ``scales``) has at least ``need`` voxels. :func:`level_shape` keeps ``min(8, n)`` voxels at
    any scale, so for ``need <= 8`` this is ``need`` itself; beyond 8 the largest scale sets it
    (about ``need * max(scales)``)."""
    n = 1
    while any(level_shape((n,), s)[0] < need for s in scales):
        n += 1
    return n


def downsample(img: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, C, *S)`` -> the pyramid level ``scale``: Gaussian blur (std ``scale / 2`` voxels,
    the usual anti-aliasing choice), then linear resampling with ``align_corners=True``.
    ``scale == 1`` returns the input."""
    if scale == 1:
        return img
    return resize_image(gaussian_blur(img, 0.5 * scale), level_shape(img.shape[2:], scale))


def check_pair(fixed: torch.Tensor, moving: torch.Tensor, fn: str) -> int:
    """Validate a pair ``(B, 1, *S)``: same shape, finite, not constant. Returns ``D``."""
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not torch.is_tensor(t) or t.dim() not in (4, 5) or t.shape[1] != 1:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{fn}: '{name}' must be a (B, 1, *S) tensor with 2 or 3 spatial dims, got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"{fn}: '{name}' must be floating point, got {t.dtype}")
    if fixed.shape != moving.shape:
        raise ValueError(
            f"{fn}: fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} differ in shape; "
            "resample both to one grid first"
        )
    if fixed.dtype != moving.dtype:
        raise ValueError(f"{fn}: fixed is {fixed.dtype} but moving is {moving.dtype}; give both in one dtype")
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{fn}: '{name}' has NaN or infinite voxels")
        flat = t.flatten(1)
        if (flat.amax(dim=1) == flat.amin(dim=1)).any():
            raise ValueError(f"{fn}: '{name}' is constant: there is nothing to register (similarity undefined)")
    return fixed.dim() - 2


# How often an optimiser reads its stop test on the host (the one synchronising read of its
# loop): every iteration on the CPU, where a read costs nothing and an iteration run past the stop
# would cost time; every SYNC_EVERY iterations on other devices, where a read waits for the
# GPU's queue to drain. Updates after a stop are masked on the device, so the result is the same
# for every interval (tests/test_classical.py checks it).
SYNC_EVERY = 16


def sync_interval(device: torch.device | str) -> int:
    """Iterations between two host reads of the stop test on ``device`` (:data:`SYNC_EVERY`)."""
    return 1 if torch.device(device).type == "cpu" else SYNC_EVERY


class ConvergenceMonitor:
    """Stops a pyramid level when the loss improved by less than ``tolerance`` (relative)
    over the last ``patience`` iterations. ``tolerance == 0`` never stops early.

    The losses and the stop test stay on ``like``'s device (float64, so the test is the same
    arithmetic as on Python floats); the host reads the test every ``sync_every`` iterations
    (default :func:`sync_interval`). An optimiser asks :meth:`live` before each update: ``None``
    when every update applies (the stop is read at once), else a device boolean that is False
    once the level has stopped, with which it keeps its state unchanged (``torch.where``), so the
    iterations run between the stop and its read change nothing. :attr:`trace` (read once, at the
    end of the level) holds the losses of the iterations that counted; :attr:`count` their number.
    """

    def __init__(self, tolerance: float, patience: int, iterations: int, like: torch.Tensor,
                 sync_every: int | None = None) -> None:
        self.tolerance = float(tolerance)
        self.patience = int(patience)
        self.sync_every = sync_interval(like.device) if sync_every is None else max(int(sync_every), 1)
        dtype = torch.float32 if like.device.type == "mps" else torch.float64  # MPS has no float64
        self._losses = torch.zeros(max(int(iterations), 1), device=like.device, dtype=dtype)
        self._stopped = torch.zeros((), dtype=torch.bool, device=like.device)
        self._count = torch.zeros((), dtype=torch.int64, device=like.device)
        self._i = 0

    def live(self) -> torch.Tensor | None:
        """``None`` (every update applies), or the device boolean "not stopped yet" that masks
        this iteration's update when stops are read every few iterations."""
        return None if self.sync_every == 1 or self.tolerance <= 0 else ~self._stopped

    def update(self, loss: torch.Tensor | float) -> bool:
        """Record this iteration's loss (taken before its update); True when the level ends now.
        Reads the device only every ``sync_every`` iterations, and never when ``tolerance == 0``."""
        i = self._i
        self._i += 1
        self._losses[i] = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
        if self.tolerance <= 0:
            return False
        self._count += ~self._stopped
        if i >= self.patience:
            before, now = self._losses[i - self.patience], self._losses[i]
            self._stopped |= (before - now) < self.tolerance * before.abs().clamp_min(1e-12)
        return (i + 1) % self.sync_every == 0 and bool(self._stopped)

    @property
    def count(self) -> int:
        """Iterations that counted: up to and including the stopping one (one host read)."""
        return self._i if self.tolerance <= 0 else int(self._count)

    @property
    def trace(self) -> list[float]:
        """The losses of the iterations that counted (one host read)."""
        return self._losses[: self.count].tolist()


class Adam:
    """Adam's moment estimates for one tensor (a field, or an affine stage's parameters);
    ``direction(g)`` is the bias-corrected step ``m_hat / (sqrt(v_hat) + eps)`` (the update is
    the caller's: ``-lr`` times it, applied additively or compositively). With ``live`` (a device
    boolean, :meth:`ConvergenceMonitor.live`) the moments stay as they were where it is False;
    :attr:`t`, the step count, is the caller's to set back (:meth:`ConvergenceMonitor.count`)."""

    def __init__(self, like: torch.Tensor, betas: Sequence[float], eps: float = 1e-8) -> None:
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = eps
        self.t = 0

    def direction(self, g: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        self.t += 1
        if live is None:
            self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        else:  # the same operations, kept only where live
            self.m = torch.where(live, self.m.mul(self.b1).add_(g, alpha=1 - self.b1), self.m)
            self.v = torch.where(live, self.v.mul(self.b2).addcmul_(g, g, value=1 - self.b2), self.v)
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return m_hat / (v_hat.sqrt_().add_(self.eps))


def level_line(stage: str, index: int, n_levels: int, scale: float, shape: Sequence[int], trace: Sequence[float],
               iterations: int, seconds: float) -> str:
    """What a verbose run reports when a pyramid level ends: ``"greedy level 2/3 (scale 2, grid
    48x56x48): 87/200 iterations (converged), loss -0.4123, 1.93 s"``; ``trace`` is the level's loss
    trace (:attr:`ConvergenceMonitor.trace`: one value per iteration run), ``iterations`` the
    level's budget (fewer run: the level converged)."""
    ran = len(trace)
    loss = f"loss {trace[-1]:.6g}" if trace else "no loss (no iteration)"
    return (f"{stage} level {index + 1}/{n_levels} (scale {scale:g}, grid {'x'.join(str(n) for n in shape)}): "
            f"{ran}/{iterations} iterations{' (converged)' if ran < iterations else ''}, {loss}, {seconds:.2f} s")
