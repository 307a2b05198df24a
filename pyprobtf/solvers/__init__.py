"""ODE/SDE solvers and samplers built on the fused :func:`pyprobtf.ops.lincomb` update.

Every deep generative model that samples by integration (diffusion, flow matching,
continuous flows, score models) uses these. Fields, drifts and scores are callables
``f(x, t)`` with ``t`` a Python float; time grids are host-side lists of floats, so no
loop ever synchronises with the device and a whole loop (with its model) can be
captured in a CUDA graph. Every state update is one ``lincomb`` pass, and the noise of
stochastic samplers is drawn inside that pass from a counter-based stream: reproducible
from the seed on every backend and device, and batch-invariant with per-row seeds.

Loops
    :func:`sample_ode` (euler, heun, midpoint, rk4, dpmpp_2m), :func:`sample_sde`
    (Euler-Maruyama), :func:`sample_euler_ancestral`, :func:`sample_ddim`,
    :func:`langevin`, :func:`annealed_langevin`, :func:`log_prob_ode`.
Steps (k-diffusion style functions of a model and two times)
    :func:`euler_step`, :func:`heun_step`, :func:`midpoint_step`, :func:`rk4_step`,
    :func:`dpmpp_2m_step`, :func:`euler_maruyama_step`, :func:`euler_ancestral_step`,
    :func:`ddim_step`, :func:`langevin_step`.
Schedules
    :func:`karras_sigmas`, :func:`uniform_times`, :func:`vp_linear`, :func:`vp_cosine`.
Predictions
    :func:`convert_prediction` (denoised / epsilon / score / velocity), :func:`edm_field`,
    and a VP schedule's ``probability_flow`` and ``reverse_sde``.
"""

from pyprobtf.solvers.langevin import annealed_langevin, langevin, langevin_step
from pyprobtf.solvers.likelihood import exact_divergence, hutchinson_divergence, log_prob_ode
from pyprobtf.solvers.ode import (
    dpmpp_2m_step,
    euler_step,
    heun_step,
    midpoint_step,
    rk4_step,
    sample_ode,
)
from pyprobtf.solvers.predictions import PREDICTIONS, EDMField, convert_prediction, edm_field
from pyprobtf.solvers.schedules import VPCosine, VPLinear, VPSchedule, karras_sigmas, uniform_times, vp_cosine, vp_linear
from pyprobtf.solvers.sde import (
    ancestral_sigmas,
    ddim_step,
    euler_ancestral_step,
    euler_maruyama_step,
    sample_ddim,
    sample_euler_ancestral,
    sample_sde,
)

__all__ = [
    "EDMField",
    "PREDICTIONS",
    "VPCosine",
    "VPLinear",
    "VPSchedule",
    "ancestral_sigmas",
    "annealed_langevin",
    "convert_prediction",
    "ddim_step",
    "dpmpp_2m_step",
    "edm_field",
    "euler_ancestral_step",
    "euler_maruyama_step",
    "euler_step",
    "exact_divergence",
    "heun_step",
    "hutchinson_divergence",
    "karras_sigmas",
    "langevin",
    "langevin_step",
    "log_prob_ode",
    "midpoint_step",
    "rk4_step",
    "sample_ddim",
    "sample_euler_ancestral",
    "sample_ode",
    "sample_sde",
    "uniform_times",
    "vp_cosine",
    "vp_linear",
]
