"""The batch contract, written once: what every dataset item holds, and the one function that builds it.

An item (one image pair; a DataLoader stacks items into a batch with a leading ``B`` axis):

==================  ========  ===========  ================================================
key                 dtype     shape        meaning
==================  ========  ===========  ================================================
``fixed``           float32   ``(1, *S)``  fixed image, intensities in [0, 1]
``moving``          float32   ``(1, *S)``  moving image on the fixed image's grid, in [0, 1]
``fixed_label``     int64     ``(1, *S)``  fixed label map (optional: both labels or neither)
``moving_label``    int64     ``(1, *S)``  moving label map
``spacing``         float32   ``(D,)``     voxel size (mm) of the fixed grid, array-axis order
``fixed_affine``    float64   ``(4, 4)``   voxel-to-world matrix of the fixed grid
``fixed_id``        str                    id of the fixed volume (unique within its dataset)
``moving_id``       str                    id of the moving volume
``pair_signature``  str                    signature of the pair's inputs (:mod:`data.signature`)
==================  ========  ===========  ================================================

``S`` is the spatial shape, ``D = len(S)`` (2 or 3); a 2-D pair still carries a ``(4, 4)``
affine (the slice's voxel ``(i, j)`` to world mm). Fixed and moving share one grid: the
datasets refuse a pair whose grids differ before building an item. Images lie in [0, 1]
by construction of each dataset (normalisation, clipping); :func:`pair_item` checks only
what is cheap (types, dtypes and shapes), never voxel values.
"""

from __future__ import annotations

from typing import Any, Sequence, TypedDict

import numpy as np
import torch

from data.errors import DataError

__all__ = ["PairItem", "CONTRACT_KEYS", "LABEL_KEYS", "pair_item"]


class PairItem(TypedDict, total=False):
    """One item of the batch contract (module docstring). ``fixed_label``/``moving_label`` are
    optional (both or neither); every other key is always present."""

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_label: torch.Tensor
    moving_label: torch.Tensor
    spacing: torch.Tensor
    fixed_affine: torch.Tensor
    fixed_id: str
    moving_id: str
    pair_signature: str


LABEL_KEYS = ("fixed_label", "moving_label")
CONTRACT_KEYS = tuple(PairItem.__annotations__)  # every key, in the order items hold them


def _tensor(value: Any, key: str, dtype: torch.dtype, where: str) -> torch.Tensor:
    """``value`` (tensor or numpy array) as a tensor of ``dtype``: a float image may be cast to
    float32 and an integer label map to int64; any other kind of dtype is refused."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{where}: '{key}' must be a tensor or numpy array, got {type(value).__name__}")
    if value.dtype == dtype:
        return value
    same_kind = value.dtype.is_floating_point if dtype.is_floating_point else (
        not value.dtype.is_floating_point and not value.dtype.is_complex and value.dtype != torch.bool)
    if not same_kind:
        raise DataError(f"{where}: '{key}' must be {str(dtype).replace('torch.', '')}, got {value.dtype}")
    return value.to(dtype)


def pair_item(
    fixed: torch.Tensor | np.ndarray,
    moving: torch.Tensor | np.ndarray,
    *,
    spacing: Sequence[float] | np.ndarray | torch.Tensor,
    fixed_affine: np.ndarray | torch.Tensor,
    fixed_id: str,
    moving_id: str,
    pair_signature: str,
    fixed_label: torch.Tensor | np.ndarray | None = None,
    moving_label: torch.Tensor | np.ndarray | None = None,
) -> PairItem:
    """One batch-contract item from its parts (module docstring), the only place items are built.

    Images and label maps come channel first, ``(1, *S)``, as tensors or numpy arrays (numpy is
    converted; a float image of another precision is cast to float32, an integer label map to
    int64). ``spacing`` is any sequence of ``D`` numbers, ``fixed_affine`` a ``(4, 4)`` matrix.

    Raises:
        DataError: naming the pair (``fixed_id <- moving_id``) and the key, when a part has the
            wrong type, dtype kind or shape, or only one label map is given.
    """
    where = f"pair {fixed_id} <- {moving_id}"
    if not all(isinstance(v, str) for v in (fixed_id, moving_id, pair_signature)):
        raise DataError(f"{where}: 'fixed_id', 'moving_id' and 'pair_signature' must be str")
    if (fixed_label is None) != (moving_label is None):
        raise DataError(f"{where}: give both 'fixed_label' and 'moving_label' or neither")
    item: dict[str, Any] = {"fixed": _tensor(fixed, "fixed", torch.float32, where),
                            "moving": _tensor(moving, "moving", torch.float32, where)}
    if fixed_label is not None:
        item["fixed_label"] = _tensor(fixed_label, "fixed_label", torch.int64, where)
        item["moving_label"] = _tensor(moving_label, "moving_label", torch.int64, where)
    shape = tuple(item["fixed"].shape)
    if len(shape) not in (3, 4) or shape[0] != 1:
        raise DataError(f"{where}: 'fixed' must have shape (1, *S) with 2 or 3 spatial axes, got {shape}")
    for key in ("moving", *LABEL_KEYS):
        if key in item and tuple(item[key].shape) != shape:
            raise DataError(f"{where}: '{key}' has shape {tuple(item[key].shape)}, expected {shape} as 'fixed'")
    item["spacing"] = torch.as_tensor(np.asarray(spacing, dtype=np.float32).copy())
    if tuple(item["spacing"].shape) != (len(shape) - 1,):
        raise DataError(f"{where}: 'spacing' must hold {len(shape) - 1} numbers, got {list(np.ravel(spacing))}")
    item["fixed_affine"] = torch.as_tensor(np.asarray(fixed_affine, dtype=np.float64).copy())
    if tuple(item["fixed_affine"].shape) != (4, 4):
        raise DataError(f"{where}: 'fixed_affine' must be 4x4, got shape {tuple(item['fixed_affine'].shape)}")
    item["fixed_id"], item["moving_id"], item["pair_signature"] = fixed_id, moving_id, pair_signature
    return item  # type: ignore[return-value]
