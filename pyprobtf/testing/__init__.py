"""Numerical verification helpers, for pyprobtf's own tests and for users.

- :mod:`pyprobtf.testing.strategies`: hypothesis strategies for shapes, dtypes
  and strided tensors (odd sizes, sizes 0 and 1, non-contiguous views).
- :mod:`pyprobtf.testing.checks`: tolerances per dtype and an ``assert_close``
  that says where and by how much a result is off.
"""

from pyprobtf.testing.checks import TOLERANCES, assert_close, tolerance
from pyprobtf.testing.strategies import DTYPES, LAYOUTS, batch_shapes, make_tensor

__all__ = ["DTYPES", "LAYOUTS", "TOLERANCES", "assert_close", "batch_shapes", "make_tensor", "tolerance"]
