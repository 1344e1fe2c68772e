"""Registration networks: plain ``nn.Module``s mapping ``(moving, fixed)`` to a field.

Each has a ``multiple`` property: every spatial size of its input must be divisible by it
(otherwise it raises a ``ValueError`` naming the shape and the multiple);
:func:`pad_to_multiple` pads a batch up to it for callers that prefer padding. The pieces the
networks share (these two among them) live in :mod:`models.networks.blocks`.
"""

from models.networks.blocks import check_divisible, pad_to_multiple
from models.networks.lapirn import LapIRN
from models.networks.lkunet import LKBlock, LKUNet
from models.networks.transmorph import TRANSMORPH_SIZES, TransMorph
from models.networks.voxelmorph import VXM_WIDTHS, VoxelMorphUNet

__all__ = [
    "VoxelMorphUNet",
    "VXM_WIDTHS",
    "LKUNet",
    "LKBlock",
    "LapIRN",
    "TransMorph",
    "TRANSMORPH_SIZES",
    "check_divisible",
    "pad_to_multiple",
]
