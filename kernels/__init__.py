"""Triton kernels of pyprobtf, one module per op, each with plain launch functions.

Shipped inside the wheel as ``pyprobtf.kernels`` (from the top-level kernels/
folder). Launch functions take preallocated torch tensors and fill them; all
argument checking happens earlier, in ``pyprobtf.ops``. On CPU tensors the
kernels run only under Triton's interpreter, which pyprobtf chooses for them
on a machine without CUDA (``pyprobtf.ops._backends.triton_interpreter``).
"""

from pyprobtf.kernels import affine_coupling

__all__ = ["affine_coupling"]

from pyprobtf.kernels import lincomb  # noqa: E402

__all__ += ["lincomb"]

from pyprobtf.kernels import sampling  # noqa: E402

__all__ += ["sampling"]
from pyprobtf.kernels import vq_nearest  # noqa: E402

__all__ += ["vq_nearest"]
