"""Functional core for dense spatial transforms.

The one displacement convention of the project (see README, "Conventions"):

* ``u`` has shape ``(B, D, *S)`` with ``D = len(S)`` (2 or 3), in **voxel units**;
  channel ``i`` is the displacement along spatial axis ``i`` (the axis of ``S[i]``).
* ``warp(img, u)(x) = img(x + u(x))`` — a pull-back from the fixed image's grid,
  sampled with ``align_corners=True`` (voxel centres at integer coordinates).
* ``compose(u1, u2) = u2 + warp(u1, u2)`` — the displacement of the map
  ``x -> x + u2(x) -> (x + u2(x)) + u1(x + u2(x))``: "apply u2's map, then u1's".

Every function follows its input's device and dtype; no device is ever chosen here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


# the one displacement convention, as recorded in results and checkpoints (they refuse another)
DISPLACEMENT_CONVENTION = (
    "u(B,D,*S) voxel units, channel i along array axis i; moved(x)=moving(x+u(x)); fixed->moving"
)

__all__ = [
    "DISPLACEMENT_CONVENTION",
    "identity_grid",
    "warp",
    "compose",
    "integrate",
    "invert",
    "inverse_residual",
    "resize_field",
    "check_field",
]

_MODES = {"bilinear", "nearest"}
_PADDING = {"zeros", "border", "reflection", "half_voxel"}


def check_field(u: torch.Tensor, name: str = "u", fn: str = "spatial") -> int:
    """Validate a displacement field ``(B, D, *S)`` and return its dimension ``D``.

    Raises ``ValueError`` naming the function and argument when the shape is not
    ``(B, D, *S)`` with ``D == len(S)`` in (2, 3), or the dtype is not floating point.
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{fn}() '{name}' must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() not in (4, 5):
        raise ValueError(
            f"{fn}() '{name}' must have shape (B, D, *spatial) with 2 or 3 spatial dims, "
            f"got shape {tuple(u.shape)}"
        )
    ndim = u.dim() - 2
    if u.shape[1] != ndim:
        raise ValueError(
            f"{fn}() '{name}' has {u.shape[1]} channels but {ndim} spatial dims; a displacement "
            f"field needs one channel per spatial axis, got shape {tuple(u.shape)}"
        )
    if not u.is_floating_point():
        raise ValueError(f"{fn}() '{name}' must be floating point, got {u.dtype}")
    return ndim


def identity_grid(
    shape: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Voxel coordinates of a grid: returns ``(D, *shape)`` with ``grid[i][x] = x_i``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _sampling_grid(u: torch.Tensor, img_shape: Sequence[int], nearest: bool = False) -> torch.Tensor:
    """``(B, D, *S)`` voxel displacement -> ``(B, *S, D)`` grid_sample coordinates in [-1, 1].

    Output voxel ``x`` of ``u``'s grid samples the image at ``x * (S_img - 1) / (S - 1) + u(x)``
    (voxel units of the image; both grids span the same extent, align_corners=True; the ratio
    is 1 when the grids match). grid_sample wants the last axis ordered (x, y, z) = (last
    spatial axis, ..., first), so the channels are reversed after normalising.

    ``nearest``: the position is rounded to the nearest voxel first, exact ties up (ITK's rule,
    ``floor(p + 0.5)``, in float64): grid_sample's own nearest mode rounds ties to even, which
    maps a half-voxel shift onto every other voxel twice and drops the labels in between.
    """
    shape = u.shape[2:]
    ndim = len(shape)
    coords = []
    for axis in reversed(range(ndim)):
        n, n_img = shape[axis], img_shape[axis]
        scale = 2.0 / max(n_img - 1, 1)
        step = scale * (n_img - 1) / max(n - 1, 1) if n != n_img else scale
        view = [1] * ndim
        view[axis] = n
        if nearest:
            ratio = (n_img - 1) / max(n - 1, 1) if n != n_img else 1.0
            pos = torch.arange(n, device=u.device, dtype=torch.float64).view(1, *view) * ratio + u[:, axis].double()
            coords.append((torch.floor(pos + 0.5) * scale - 1.0).to(u.dtype))
            continue
        base = (torch.arange(n, device=u.device, dtype=u.dtype) * step - 1.0).view(1, *view)
        coords.append(torch.add(base, u[:, axis], alpha=scale))  # one pass per channel
    return torch.stack(coords, dim=-1)


def warp(
    img: torch.Tensor,
    u: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Pull-back warp: ``out(x) = img(x + u(x))``.

    Args:
        img: ``(B, C, *S_in)`` image (any C); labels should be warped as one-hot with
            ``bilinear`` or directly with ``nearest``.
        u: ``(B, D, *S)`` displacement in voxel units of ``img``'s grid; ``S`` may differ
            from ``S_in`` only if the caller knows what it does (voxel units are ``img``'s).
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_mode: ``"border"`` (default), ``"zeros"``, ``"reflection"`` or ``"half_voxel"``:
            ITK's rule (:mod:`spatial.world`, ``ResampleImageFilter``), the border value within
            half a voxel outside the grid and 0 beyond it: how label maps are scored, so that
            ``eval.py`` and ``register.py`` read the same moved labels at the field-of-view edge.

    Returns:
        ``(B, C, *S)`` warped image, same dtype as ``img`` for floating inputs; integer
        inputs are only allowed with ``mode="nearest"`` and keep their dtype.
    """
    ndim = check_field(u, "u", "warp")
    if mode not in _MODES:
        raise ValueError(f"warp() 'mode' must be one of {sorted(_MODES)}, got {mode!r}")
    if padding_mode not in _PADDING:
        raise ValueError(f"warp() 'padding_mode' must be one of {sorted(_PADDING)}, got {padding_mode!r}")
    if img.dim() != ndim + 2:
        raise ValueError(
            f"warp() 'img' must be (B, C, *spatial) with {ndim} spatial dims to match 'u' "
            f"{tuple(u.shape)}, got {tuple(img.shape)}"
        )
    if img.shape[0] != u.shape[0] and img.shape[0] != 1 and u.shape[0] != 1:
        raise ValueError(f"warp() batch sizes differ: img {tuple(img.shape)} vs u {tuple(u.shape)}")
    integer = not img.is_floating_point()
    if integer and mode != "nearest":
        raise ValueError("warp() integer images (labels) need mode='nearest' or a one-hot float input")
    batch = max(img.shape[0], u.shape[0])
    grid = _sampling_grid(u, img.shape[2:], nearest=mode == "nearest")
    # label ids are sampled as floats: float32 holds integers exactly up to 2^24 only, so an integer
    # map is sampled in float64 (exact to 2^53; deciding from its values would read them on the host)
    src, grid = (img.to(torch.float64), grid.to(torch.float64)) if integer else (img, grid)
    if src.shape[0] != batch:
        src = src.expand(batch, *src.shape[1:])
    if grid.shape[0] != batch:
        grid = grid.expand(batch, *grid.shape[1:])
    out = _grid_sample(src, grid, mode, "border" if padding_mode == "half_voxel" else padding_mode)
    if padding_mode == "half_voxel":
        out = out * _within_half_voxel(grid, img.shape[2:]).to(out.dtype)
    return out.round().to(img.dtype) if integer else out


def _within_half_voxel(grid: torch.Tensor, img_shape: Sequence[int]) -> torch.Tensor:
    """``(B, 1, *S)`` bool: every coordinate of a grid_sample grid ``(B, *S, D)`` within half a
    voxel of the image grid ``img_shape`` (ITK's buffer; a nearest grid is already rounded)."""
    ndim = len(img_shape)
    ok = torch.ones(grid.shape[:-1], dtype=torch.bool, device=grid.device)
    for k in range(ndim):  # grid channel k is spatial axis ndim - 1 - k
        n = img_shape[ndim - 1 - k]
        half = 1.0 / max(n - 1, 1)  # half a voxel in [-1, 1] coordinates
        ok &= grid[..., k].abs() <= 1.0 + half * (1 + 1e-6)
    return ok.unsqueeze(1)


def _slab_count(src: torch.Tensor, grid: torch.Tensor) -> int:
    """How many slabs :func:`_grid_sample` cuts a sampling grid into: 1 (the plain call) unless
    both tensors are on the CPU, the grid is 3-D and the batch holds one item."""
    if src.device.type != "cpu" or grid.device.type != "cpu" or grid.dim() != 5 or grid.shape[0] != 1:
        return 1
    return max((k for k in range(1, torch.get_num_threads() + 1) if grid.shape[1] % k == 0), default=1)


def _grid_sample(src: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``F.grid_sample(src, grid, align_corners=True)``, the same values, faster on CPU in 3-D.

    PyTorch's 3-D CPU sampler parallelises over the batch only, so a single pair uses one core.
    For a batch of one on CPU the output grid is cut into ``n`` slabs along its first axis
    (``n``: the largest divisor of that axis not above the thread count) that run as ``n`` batch
    items against the same input (expanded, not copied): 1.8x faster forward and backward with
    2 threads at 96x112x96. Gradients reach ``src`` and ``grid`` as before. Off the CPU (a GPU
    samples every voxel in parallel already) the plain call runs (:func:`_slab_count`).
    """
    n = _slab_count(src, grid)
    if n == 1:
        return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    slabs = grid.reshape(n, grid.shape[1] // n, *grid.shape[2:])
    out = F.grid_sample(src.expand(n, *src.shape[1:]), slabs, mode=mode, padding_mode=padding_mode,
                        align_corners=True)  # (n, C, S0 / n, S1, S2)
    return out.transpose(0, 1).reshape(1, src.shape[1], *grid.shape[1:-1])


def compose(u1: torch.Tensor, u2: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Compose two displacements: ``w = u2 + u1 o (x + u2)`` — apply u2's map, then u1's.

    ``warp(warp(img, u1), u2) == warp(img, compose(u1, u2))`` up to interpolation.
    Both are ``(B, D, *S)`` on the same grid.
    """
    check_field(u1, "u1", "compose")
    check_field(u2, "u2", "compose")
    if u1.shape[1:] != u2.shape[1:]:
        raise ValueError(f"compose() fields differ in shape: u1 {tuple(u1.shape)} vs u2 {tuple(u2.shape)}")
    return u2 + warp(u1, u2, padding_mode=padding_mode)


def integrate(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: displacement of ``exp(v)`` for a stationary velocity ``v``.

    ``u_0 = v / 2**steps``; ``u_{k+1} = compose(u_k, u_k)``; returns ``u_steps``, ``(B, D, *S)``.
    ``steps=0`` returns ``v`` itself (the small-deformation approximation).
    """
    check_field(v, "v", "integrate")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"integrate() 'steps' must be a non-negative int, got {steps!r}")
    u = v / (2.0**steps)
    for _ in range(steps):
        u = u + warp(u, u, padding_mode="border")
    return u


def invert(u: torch.Tensor, iterations: int = 30, padding_mode: str = "border") -> torch.Tensor:
    """Numerical inverse of a displacement by damped fixed-point iteration: ``(B, D, *S) -> (B, D, *S)``.

    Finds ``w`` with ``compose(u, w) = w + u o (x + w) = 0`` (apply w, then u: identity) by
    ``w_{k+1} = (w_k - u o (x + w_k)) / 2``, ``w_0 = -u``. Each voxel's equation is its own; the
    iteration contracts where the eigenvalues ``mu`` of ``grad u`` (at ``x + w``) satisfy
    ``|1 - (1 + mu) / 2| < 1``: any compression and local stretches up to 4x, by a factor 1/2 per
    step where the field is locally a translation. (The undamped ``w_{k+1} = -u o (x + w_k)``
    needs ``|mu| < 1``: it oscillates, never converging, wherever a fold-free field stretches more
    than 2x, as the half fields of SyN with small smoothing do.) Where ``u`` folds there is no
    inverse; :func:`inverse_residual` measures what is left. ``compose(w, u)`` is ~0 as well.
    ``padding_mode``: how ``u`` is read outside its grid (as :func:`warp`); ``"zeros"`` for a
    field that is the identity outside the grid (the classical optimisers' fields).
    """
    check_field(u, "u", "invert")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"invert() 'iterations' must be a positive int, got {iterations!r}")
    w = -u
    for _ in range(iterations):
        w = 0.5 * (w - warp(u, w, padding_mode=padding_mode))
    return w


def inverse_residual(u: torch.Tensor, inverse: torch.Tensor, margin: int = 2) -> tuple[float, float, int]:
    """How far ``inverse`` is from undoing ``u`` (both ``(1, D, *S)`` on one grid, voxel units):
    ``|compose(inverse, u)(x)|`` (go by ``u``, come back by ``inverse``) over the voxels ``x`` whose
    image ``x + u(x)`` lies at least ``margin`` voxels inside the grid (near the border the inverse
    is not defined by the data). Returns ``(mean, max, number of voxels counted)``; ``(0, 0, 0)``
    when none is."""
    check_field(u, "u", "inverse_residual")
    if inverse.shape != u.shape or u.shape[0] != 1:
        raise ValueError(f"inverse_residual() 'u' and 'inverse' must be one (1, D, *S) shape, got "
                         f"{tuple(u.shape)} and {tuple(inverse.shape)}")
    ndim = u.shape[1]
    r = compose(inverse, u).norm(dim=1)[0]
    inside = torch.ones_like(r, dtype=torch.bool)
    for axis, n in enumerate(u.shape[2:]):
        view = [1] * ndim
        view[axis] = n
        dest = torch.arange(n, device=u.device, dtype=u.dtype).view(view) + u[0, axis]
        inside &= (dest >= margin) & (dest <= n - 1 - margin)
    values = r[inside]
    if values.numel() == 0:
        return 0.0, 0.0, 0
    return float(values.mean()), float(values.max()), int(values.numel())


def resize_image(img: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S) -> (B, C, *shape)`` by linear interpolation on grids that span the same extent
    (``align_corners=True``: voxel ``0`` and voxel ``S - 1`` stay where they were), the grid
    convention of :func:`resize_field` and of every coarse grid in the project; the input itself
    when ``S == shape``. Point sampling: no anti-aliasing (blur first for that)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != img.dim() - 2 or len(shape) not in (2, 3):
        raise ValueError(f"resize_image() 'shape' must have one entry per spatial axis of the (B, C, *S) input "
                         f"{tuple(img.shape)} (2 or 3), got {shape}")
    if tuple(img.shape[2:]) == shape:
        return img
    return F.interpolate(img, size=shape, mode="trilinear" if len(shape) == 3 else "bilinear", align_corners=True)


def resize_field(u: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel-unit displacement to grid ``shape`` and rescale its magnitudes.

    Channel ``i`` is multiplied by ``(shape[i] - 1) / (S[i] - 1)`` so that the field keeps
    describing the same physical map (align_corners=True grids spanning the same extent).
    Returns ``(B, D, *shape)``.
    """
    ndim = check_field(u, "u", "resize_field")
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise ValueError(f"resize_field() 'shape' must have {ndim} entries, got {shape}")
    if shape == tuple(u.shape[2:]):
        return u
    out = resize_image(u, shape)
    # channel by channel with Python scalars: no tensor of factors copied to the device (a copy from
    # the host waits for a GPU's queue); in place on the fresh output, which autograd allows
    for i, (n, o) in enumerate(zip(shape, u.shape[2:])):
        factor = (n - 1) / max(o - 1, 1)
        if factor != 1:
            out.select(1, i).mul_(factor)
    return out
