"""Drop-in fast ops. Each takes ``backend="auto"`` or a named backend.

See :func:`available_backends` for what runs on this machine. Every op is
declared once in :mod:`pyprobtf.ops._registry`; the backends register their
kernels from their own modules (``_native`` for ``cpp`` and ``cuda``, ``_triton``, ``_fast_torch``).
"""

from pyprobtf.ops._backends import BackendStatus, BackendUnavailableError, available_backends
from pyprobtf.ops.affine_coupling import affine_coupling
from pyprobtf.ops.lincomb import lincomb
from pyprobtf.ops.sampling import filter_logits, sample_logits
from pyprobtf.ops.vq_nearest import vq_nearest
from pyprobtf.ops import _fast_torch, _native, _triton  # noqa: E402,F401  (register their kernels)

__all__ = ["BackendStatus", "BackendUnavailableError", "affine_coupling", "available_backends", "filter_logits",
           "lincomb", "sample_logits", "vq_nearest"]
