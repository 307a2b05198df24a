"""Numerical verification helpers, for pyprobtf's own tests and for users.

- :mod:`pyprobtf.testing.strategies`: hypothesis strategies for shapes, dtypes
  and strided tensors (odd sizes, sizes 0 and 1, non-contiguous views).
- :mod:`pyprobtf.testing.checks`: tolerances per dtype and an ``assert_close``
  that says where and by how much a result is off.
- :mod:`pyprobtf.testing.transforms`: checks users run on their own
  probability transforms (invertibility, log-determinants against the
  autograd Jacobian, density normalisation by quadrature, seeded sampling, an
  op against its reference) and a hypothesis strategy of input batches.
"""

from pyprobtf.testing.checks import TOLERANCES, assert_close, tolerance
from pyprobtf.testing.strategies import DTYPES, LAYOUTS, batch_shapes, make_tensor

__all__ = ["DTYPES", "LAYOUTS", "TOLERANCES", "assert_close", "batch_shapes", "make_tensor", "tolerance"]

from pyprobtf.testing.transforms import (  # noqa: E402
    check_density_normalization,
    check_invertibility,
    check_log_det,
    check_op_against_reference,
    check_sample_reproducible,
    check_transform,
    jacobian_log_det,
    points,
)

__all__ += [
    "check_density_normalization", "check_invertibility", "check_log_det", "check_op_against_reference",
    "check_sample_reproducible", "check_transform", "jacobian_log_det", "points",
]
