"""Dense spatial transforms in the project's one displacement convention.

See :mod:`spatial.functional` for the convention; :mod:`spatial.layers` wraps it as modules.
"""

from spatial.functional import (
    DISPLACEMENT_CONVENTION,
    check_field,
    compose,
    identity_grid,
    integrate,
    invert,
    inverse_residual,
    resize_field,
    resize_image,
    warp,
)
from spatial.jacobian import jacobian_determinant, jacobian_matrix
from spatial.filters import gaussian_blur, gaussian_kernel1d, separable_filter
from spatial.layers import IntegrateVelocity, SpatialTransformer
from spatial.precision import as_float32, float32_region

__all__ = [
    "DISPLACEMENT_CONVENTION",
    "check_field",
    "compose",
    "identity_grid",
    "integrate",
    "invert",
    "inverse_residual",
    "jacobian_determinant",
    "jacobian_matrix",
    "resize_field",
    "resize_image",
    "warp",
    "gaussian_blur",
    "gaussian_kernel1d",
    "separable_filter",
    "IntegrateVelocity",
    "SpatialTransformer",
    "as_float32",
    "float32_region",
]
