"""The C++ scan's rounding-error bound where |e|^2 dominates the score.

The scan accumulates each score from en = |e|^2 on, so its rounding error grows
with max |e|^2 as well as with |x| max |e|: codes far from the origin and
closer to each other than float32 resolves (a large common offset, long rows)
must still come back in the float64 order, ties to the lower index, at every
instruction-set level.
"""

from __future__ import annotations

import pytest
import torch

from pyprobtf import reference
from pyprobtf.ops import available_backends, vq_nearest
from pyprobtf.ops._native import forced_vq_isa, vq_isa_levels
from pyprobtf.testing.ops import check_vq_nearest_result

ISA_LEVELS = vq_isa_levels() if available_backends()["cpp"].available else ()
pytestmark = pytest.mark.skipif(not ISA_LEVELS, reason="the C++ backend is not built")


@pytest.mark.parametrize("isa", ISA_LEVELS)
@pytest.mark.parametrize("dim", [1, 16, 17, 300])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_offset_dominated_scores_come_back_in_float64_order(isa, dim, scale):
    g = torch.Generator().manual_seed(dim)
    center = torch.randn(dim, generator=g, dtype=torch.float64) * scale
    spread = scale * 1e-5
    e = (center + spread * torch.randn(150, dim, generator=g, dtype=torch.float64)).float()
    e[70] = e[3]  # an exact tie across codebook panels
    x = (center + spread * torch.randn(97, dim, generator=g, dtype=torch.float64)).float()
    x[0] = e[3]
    want = torch.sort(reference.vq_distances(x, e), dim=1, stable=True).indices
    for k in (1, 3):
        with forced_vq_isa(isa):
            indices, dist = vq_nearest(x, e, k=k, backend="cpp")
        check_vq_nearest_result(x, e, indices, dist, "l2", k)
        assert torch.equal(indices.reshape(-1, k), want[:, :k])
