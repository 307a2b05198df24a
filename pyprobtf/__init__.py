"""pyprobtf: every deep generative model as a probability transformation function x = F(z).

The hot pieces inside those models are fast ops in :mod:`pyprobtf.ops`, each
with a pure-PyTorch reference (:mod:`pyprobtf.reference`) that is its spec.
"""

import os
import sys

import torch

# Triton compiles for GPUs only: on a machine without one its kernels can run
# only in Triton's interpreter, and that must be chosen before triton is
# imported. Choose it here, unless the user already chose (TRITON_INTERPRET set
# to anything) or triton is already loaded.
if "TRITON_INTERPRET" not in os.environ and "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from pyprobtf import ops, reference  # noqa: E402
from pyprobtf import nn  # noqa: E402

__version__ = "0.1.0"
__all__ = ["nn", "ops", "reference", "__version__"]

# The probability-transformation API (issue 6): the protocol, the training loop, toy data and metrics.
from pyprobtf import data, families, metrics  # noqa: E402
from pyprobtf.training import FitResult, fit  # noqa: E402
from pyprobtf.transform import Chain, ProbabilityTransform, Trajectory  # noqa: E402

__all__ += ["Chain", "FitResult", "ProbabilityTransform", "Trajectory", "data", "families", "fit", "metrics"]
