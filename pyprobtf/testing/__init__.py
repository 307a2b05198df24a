"""Numerical verification helpers, for pyprobtf's own tests and for users.

- :mod:`pyprobtf.testing.strategies`: hypothesis strategies for shapes, dtypes
  and strided tensors (odd sizes, sizes 0 and 1, non-contiguous views).
- :mod:`pyprobtf.testing.checks`: tolerances per dtype and an ``assert_close``
  that says where and by how much a result is off.
- :mod:`pyprobtf.testing.transforms`: checks users run on their own
  probability transforms (invertibility, log-determinants against the
  autograd Jacobian, density normalisation by quadrature, seeded sampling, an
  op against its reference) and a hypothesis strategy of input batches.
- :mod:`pyprobtf.testing.adapters` and :mod:`pyprobtf.testing.verification`: the same
  properties for flows, distributions and transforms from any library (zuko,
  nflows, normflows, torch.distributions, a bare callable), and for ODE/SDE
  step functions, each returning a measured error and a verdict
  (:func:`verify` runs them all; ``pyprobtf verify`` on the command line).
"""

from pyprobtf.testing.checks import TOLERANCES, assert_close, tolerance
from pyprobtf.testing.strategies import DTYPES, LAYOUTS, batch_shapes, make_tensor, model_inputs, support_values

__all__ = ["DTYPES", "LAYOUTS", "TOLERANCES", "assert_close", "batch_shapes", "make_tensor", "model_inputs",
           "support_values", "tolerance"]

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

from pyprobtf.testing.adapters import Subject, as_subject  # noqa: E402
from pyprobtf.testing.verification import (  # noqa: E402
    CHECKS,
    CheckResult,
    Report,
    VerificationError,
    assert_batch_invariant,
    assert_dtypes_agree,
    assert_finite_gradients,
    assert_invertible,
    assert_log_det_correct,
    assert_normalized,
    assert_ode_order,
    assert_reproducible,
    assert_samples_match_log_prob,
    assert_sde_stationary,
    assert_sde_weak_order,
    verify,
    verify_batch_invariance,
    verify_density_normalization,
    verify_dtype_agreement,
    verify_finite_gradients,
    verify_invertibility,
    verify_log_det,
    verify_ode_order,
    verify_reproducibility,
    verify_sample_log_prob,
    verify_sde_stationary,
    verify_sde_weak_order,
)

__all__ += [
    "CHECKS", "CheckResult", "Report", "Subject", "VerificationError", "as_subject", "assert_batch_invariant",
    "assert_dtypes_agree", "assert_finite_gradients", "assert_invertible", "assert_log_det_correct",
    "assert_normalized", "assert_ode_order", "assert_reproducible", "assert_samples_match_log_prob",
    "assert_sde_stationary", "assert_sde_weak_order", "verify", "verify_batch_invariance",
    "verify_density_normalization", "verify_dtype_agreement", "verify_finite_gradients", "verify_invertibility",
    "verify_log_det", "verify_ode_order", "verify_reproducibility", "verify_sample_log_prob",
    "verify_sde_stationary", "verify_sde_weak_order",
]
