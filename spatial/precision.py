"""Float32 regions under mixed precision (``trainer.precision=bf16-mixed`` / ``16-mixed``).

Autocast runs convolutions and matrix products in bfloat16/float16; the registration arithmetic
after a network must not: a bfloat16 sampling coordinate has 8 significant bits, so a voxel
coordinate near 200 is off by up to half a voxel, and scaling and squaring compounds the error
seven times. The rule (one place): a network's output leaves it as float32
(:func:`as_float32`), and integration, warping, similarities, regularisers, the Dice loss and the
metrics run inside :func:`float32_region`, where autocast is off and float32 inputs stay float32.
The classical optimiser runs there as a whole.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["HALF_DTYPES", "as_float32", "float32_region"]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 when it is float16/bfloat16; any other tensor unchanged (float64 stays)."""
    return t.float() if t.dtype in HALF_DTYPES else t


def float32_region(device: torch.device | str | torch.Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device``'s type (a tensor: its device); a device type
    without autocast support gets a no-op context. Outside any autocast it changes nothing."""
    if isinstance(device, torch.Tensor):
        device = device.device
    device_type = torch.device(device).type
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast (e.g. meta)
        return contextlib.nullcontext()
