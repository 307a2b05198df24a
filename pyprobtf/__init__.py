"""pyprobtf: every deep generative model as a probability transformation function x = F(z).

The hot pieces inside those models are fast ops in :mod:`pyprobtf.ops`, each
with a pure-PyTorch reference (:mod:`pyprobtf.reference`) that is its spec.
"""

from pyprobtf import nn, ops, reference

__version__ = "0.1.0"
__all__ = ["nn", "ops", "reference", "__version__"]

# The probability-transformation API (issue 6): the protocol, the training loop, toy data and metrics.
from pyprobtf import data, families, metrics  # noqa: E402
from pyprobtf.training import FitResult, fit  # noqa: E402
from pyprobtf.transform import Chain, ProbabilityTransform, Trajectory  # noqa: E402

__all__ += ["Chain", "FitResult", "ProbabilityTransform", "Trajectory", "data", "families", "fit", "metrics"]
