"""Drop-in fast ops. Each takes ``backend="auto"`` or a named backend.

See :func:`available_backends` for what runs on this machine.
"""

from pyprobtf.ops._backends import BackendStatus, BackendUnavailableError, available_backends
from pyprobtf.ops.affine_coupling import affine_coupling

__all__ = ["BackendStatus", "BackendUnavailableError", "affine_coupling", "available_backends"]

from pyprobtf.ops.lincomb import lincomb  # noqa: E402

__all__ += ["lincomb"]

from pyprobtf.ops.sampling import filter_logits, sample_logits  # noqa: E402

__all__ += ["filter_logits", "sample_logits"]
from pyprobtf.ops.vq_nearest import vq_nearest  # noqa: E402

__all__ += ["vq_nearest"]
