"""Pure-PyTorch implementations of every op: the executable spec.

Each function here is the contract of docs/ARCHITECTURE.md written as
plainly as possible. They run on any device and dtype, are exact in float64,
and every other backend is tested against them.
"""

from pyprobtf.reference.affine_coupling import affine_coupling, affine_coupling_backward

__all__ = ["affine_coupling", "affine_coupling_backward"]

from pyprobtf.reference.lincomb import lincomb  # noqa: E402

__all__ += ["lincomb"]

from pyprobtf.reference.sampling import filter_logits, sample_logits  # noqa: E402

__all__ += ["filter_logits", "sample_logits"]
from pyprobtf.reference.vq_nearest import vq_distances, vq_nearest  # noqa: E402

__all__ += ["vq_distances", "vq_nearest"]
