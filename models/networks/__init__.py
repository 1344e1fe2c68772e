"""Registration networks: plain ``nn.Module``s mapping ``(moving, fixed)`` to a field."""

from models.networks.voxelmorph import VXM_WIDTHS, VoxelMorphUNet

__all__ = ["VoxelMorphUNet", "VXM_WIDTHS"]
