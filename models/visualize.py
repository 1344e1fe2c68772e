"""Pictures of one registered pair for the dashboard: slices, a warped grid, the Jacobian map.

:func:`pair_figure` takes tensors of ONE pair and returns a matplotlib figure (Agg backend),
rows = the three mid-planes (2-D input: one row), columns = fixed, moving, moved, |fixed - moved|,
the deformed grid (lines of the fixed grid pulled through ``u``) and det(J) of ``x + u(x)``
(blue < 1 < red; folds, det <= 0, in black). :func:`log_figure` sends it to every logger that
takes images (W&B) and otherwise saves a PNG.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["pair_figure", "log_figure"]


def _planes(volume: np.ndarray) -> list[np.ndarray]:
    """Mid-planes of a ``(*S)`` array: one for 2-D, three (axis 0, 1, 2 fixed) for 3-D."""
    if volume.ndim == 2:
        return [volume]
    return [np.take(volume, volume.shape[a] // 2, axis=a) for a in range(3)]


def _grid_lines(u: np.ndarray, axis: int, spacing: int = 4):
    """Polylines of the deformed grid in the mid-plane orthogonal to ``axis`` (3-D) or the image (2-D).

    ``u``: ``(D, *S)`` voxel displacement. Returns two lists of (rows, cols) arrays."""
    if u.shape[0] == 3:
        keep = [d for d in range(3) if d != axis]
        field = np.take(u, u.shape[1 + axis] // 2, axis=1 + axis)[keep]
    else:
        field = u
    h, w = field.shape[1:]
    rows = np.arange(h)[:, None] + field[0]
    cols = np.arange(w)[None, :] + field[1]
    lines_r = [(rows[i], cols[i]) for i in range(0, h, spacing)]
    lines_c = [(rows[:, j], cols[:, j]) for j in range(0, w, spacing)]
    return lines_r, lines_c


def pair_figure(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    moved: torch.Tensor,
    displacement: torch.Tensor,
    title: str = "",
):
    """Figure of one pair. ``fixed``, ``moving``, ``moved``: ``(*S)`` (or ``(1, *S)``, ``(1, 1, *S)``);
    ``displacement``: ``(D, *S)`` or ``(1, D, *S)`` voxel units (this project's convention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spatial.jacobian import jacobian_determinant

    u = displacement.detach().float().cpu()
    if u.dim() == u.shape[1] + 2 and u.shape[0] == 1:  # (1, D, *S) -> (D, *S)
        u = u[0]
    ndim = u.shape[0]
    if u.dim() != ndim + 1 or ndim not in (2, 3):
        raise ValueError(f"pair_figure() 'displacement' must be (D, *S) or (1, D, *S), got {tuple(displacement.shape)}")
    imgs = [t.detach().float().cpu().reshape(u.shape[1:]).numpy() for t in (fixed, moving, moved)]
    jac = jacobian_determinant(u.unsqueeze(0))[0].numpy()
    un = u.numpy()
    planes = [_planes(x) for x in imgs]
    jac_planes = _planes(jac)
    n_rows = 1 if ndim == 2 else 3
    fig, axes = plt.subplots(n_rows, 6, figsize=(13, 2.3 * n_rows + 0.4), squeeze=False)
    cmap_jac = plt.get_cmap("coolwarm").copy()
    cmap_jac.set_under("black")
    for r in range(n_rows):
        f, m, w = planes[0][r], planes[1][r], planes[2][r]
        for c, (img, name) in enumerate(((f, "fixed"), (m, "moving"), (w, "moved"))):
            axes[r][c].imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=max(float(imgs[0].max()), 1e-6))
            axes[r][c].set_title(name if r == 0 else "", fontsize=8)
        axes[r][3].imshow(np.abs(f - w).T, cmap="magma", origin="lower")
        axes[r][3].set_title("|fixed - moved|" if r == 0 else "", fontsize=8)
        lines_r, lines_c = _grid_lines(un, r)
        ax = axes[r][4]
        for rr, cc in lines_r + lines_c:
            ax.plot(rr, cc, color="k", lw=0.4)
        ax.set_xlim(0, f.shape[0] - 1)
        ax.set_ylim(0, f.shape[1] - 1)
        ax.set_aspect("equal")
        ax.set_title("deformed grid" if r == 0 else "", fontsize=8)
        im = axes[r][5].imshow(jac_planes[r].T, cmap=cmap_jac, origin="lower", vmin=1e-6, vmax=2.0)
        axes[r][5].set_title("det J (black: folds)" if r == 0 else "", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, 5].tolist(), fraction=0.05)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def log_figure(fig, key: str, loggers: Iterable[Any], step: int) -> None:
    """Send ``fig`` to the loggers that take images (W&B ``log_image``) and close it. (Saving a
    figure to a file is the application's: :func:`app.loggers.save_figure`.)"""
    import matplotlib.pyplot as plt

    try:
        for logger in loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[fig], step=step)
    finally:
        plt.close(fig)
