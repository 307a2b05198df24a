"""ODE solvers: steps of one or two fused lincomb passes each, and the sampling loop.

A field is a callable ``field(x, t) -> dx/dt`` with ``t`` a Python float. Steps
go from ``t`` to ``t_next`` (either direction); each is a short function of the
field and the two times, written the k-diffusion way, with every state update a
single :func:`~pyprobtf.ops.lincomb` pass (k-diffusion's Euler step makes about
13 passes over the state, torchdiffeq's RK4 about 58; here they make 3 and 14).

The field's outputs are kept between its calls within a step (and by
``dpmpp_2m`` across steps): it must return a new tensor each call, not a buffer
it overwrites. A field made by :func:`~pyprobtf.solvers.edm_field` is stepped on
its denoiser's outputs directly, with the conversion ``(x - D) / sigma`` folded
into the update (as k-diffusion's samplers do, but in one pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyprobtf.ops import lincomb
from pyprobtf import _checks
from pyprobtf.solvers import _common
from pyprobtf.solvers.predictions import EDMField

Field = Callable[[torch.Tensor, float], torch.Tensor]


def _denoiser(field):
    """The denoiser behind an :class:`EDMField`, whose steps are taken on its outputs directly; else None."""
    return field.denoiser if isinstance(field, EDMField) else None


def _check_sigma(sigma: float) -> None:
    if sigma == 0:
        raise ValueError("edm_field: the EDM field (x - D(x, sigma)) / sigma is undefined at sigma = 0 "
                         "(sample_ode with euler_at_zero=True never evaluates it there)")


def euler_step(field: Field, x: torch.Tensor, t: float, t_next: float, *, backend: str = "auto") -> torch.Tensor:
    """``x + h f(x, t)`` with ``h = t_next - t`` (first order)."""
    denoiser = _denoiser(field)
    if denoiser is not None:  # x + h (x - D) / sigma
        _check_sigma(t)
        r = (t_next - t) / t
        return lincomb((x, denoiser(x, t)), (1.0 + r, -r), backend=backend)
    return lincomb((x, field(x, t)), (1.0, t_next - t), backend=backend)


def heun_step(field: Field, x: torch.Tensor, t: float, t_next: float, *, backend: str = "auto") -> torch.Tensor:
    """Heun's method (explicit trapezoid, second order): two field calls, two passes."""
    h = t_next - t
    denoiser = _denoiser(field)
    if denoiser is not None:  # k-diffusion's sample_heun, with d = (x - D) / sigma folded into the updates
        _check_sigma(t)
        _check_sigma(t_next)
        d0 = denoiser(x, t)
        x_pred = lincomb((x, d0), (1.0 + h / t, -h / t), backend=backend)
        d1 = denoiser(x_pred, t_next)
        a, b = 0.5 * h / t, 0.5 * h / t_next
        return lincomb((x, d0, x_pred, d1), (1.0 + a, -a, b, -b), backend=backend)
    d = field(x, t)
    x_pred = lincomb((x, d), (1.0, h), backend=backend)
    d_pred = field(x_pred, t_next)
    return lincomb((x, d, d_pred), (1.0, 0.5 * h, 0.5 * h), backend=backend)


def midpoint_step(field: Field, x: torch.Tensor, t: float, t_next: float, *, backend: str = "auto") -> torch.Tensor:
    """The explicit midpoint method (second order): two field calls, two passes."""
    h = t_next - t
    t_mid = t + 0.5 * h
    denoiser = _denoiser(field)
    if denoiser is not None:
        _check_sigma(t)
        _check_sigma(t_mid)
        x_mid = lincomb((x, denoiser(x, t)), (1.0 + 0.5 * h / t, -0.5 * h / t), backend=backend)
        return lincomb((x, x_mid, denoiser(x_mid, t_mid)), (1.0, h / t_mid, -h / t_mid), backend=backend)
    x_mid = lincomb((x, field(x, t)), (1.0, 0.5 * h), backend=backend)
    return lincomb((x, field(x_mid, t_mid)), (1.0, h), backend=backend)


def rk4_step(field: Field, x: torch.Tensor, t: float, t_next: float, *, backend: str = "auto") -> torch.Tensor:
    """The classical Runge-Kutta method (fourth order): four field calls, four passes.

    ``x + h/6 (k1 + 2 k2 + 2 k3 + k4)`` is formed from ``h k2 = 2 (x3 - x)`` and
    ``h k3 = x4 - x`` as ``h/6 k1 + 2/3 x3 + 1/3 x4 + h/6 k4``: the intermediate
    states already hold ``k2`` and ``k3``, so the last pass reads four tensors.
    """
    h = t_next - t
    k1 = field(x, t)
    x2 = lincomb((x, k1), (1.0, 0.5 * h), backend=backend)
    k2 = field(x2, t + 0.5 * h)
    x3 = lincomb((x, k2), (1.0, 0.5 * h), backend=backend)
    k3 = field(x3, t + 0.5 * h)
    x4 = lincomb((x, k3), (1.0, h), backend=backend)
    k4 = field(x4, t_next)
    return lincomb((k1, x3, x4, k4), (h / 6.0, 2.0 / 3.0, 1.0 / 3.0, h / 6.0), backend=backend)


def dpmpp_2m_step(field: Field, x: torch.Tensor, sigma: float, sigma_next: float, previous=None, *,
                  backend: str = "auto"):
    """One step of DPM-Solver++(2M) (Lu et al. 2022) in the EDM convention; returns ``(x_next, history)``.

    ``field(x, sigma) = (x - D(x, sigma)) / sigma`` (see :func:`~pyprobtf.solvers.edm_field`),
    so the denoiser is ``D = x - sigma d``. With ``lambda = -log sigma``, ``h = lambda_next - lambda``
    and ``r = h_last / h``, k-diffusion's update

        x_next = (sigma_next / sigma) x - expm1(-h) ((1 + 1/(2r)) D - 1/(2r) D_prev)

    is one lincomb: of ``x``, ``D`` and ``D_prev`` for an :class:`EDMField`, else of ``x``,
    ``d`` and the previous step's ``x`` and ``d`` (so ``D`` is never stored). The first step
    (``previous=None``) and a step to ``sigma_next = 0`` are first order (the latter returns
    ``D``). Pass the returned ``history`` (opaque) to the next step.
    """
    _check_sigma(sigma)
    denoiser = _denoiser(field)
    if sigma_next != 0.0:
        h = math.log(sigma / sigma_next)
        ratio = sigma_next / sigma  # exp(-h)
        w = -math.expm1(-h)  # 1 - exp(-h)
    if denoiser is not None:
        d = denoiser(x, sigma)
        if sigma_next == 0.0:
            x_next = lincomb((d,), (1.0,), backend=backend)
        elif previous is None:
            x_next = lincomb((x, d), (ratio, w), backend=backend)
        else:
            d_prev, sigma_prev = previous
            r = math.log(sigma_prev / sigma) / h
            a, b = 1.0 + 0.5 / r, 0.5 / r  # D_d = a D - b D_prev
            x_next = lincomb((x, d, d_prev), (ratio, w * a, -w * b), backend=backend)
        return x_next, (d, sigma)
    d = field(x, sigma)
    if sigma_next == 0.0:
        x_next = lincomb((x, d), (1.0, -sigma), backend=backend)
    elif previous is None:
        x_next = lincomb((x, d), (1.0, sigma_next - sigma), backend=backend)  # = DDIM = Euler in sigma
    else:
        x_prev, d_prev, sigma_prev = previous
        r = math.log(sigma_prev / sigma) / h
        a, b = 1.0 + 0.5 / r, 0.5 / r
        x_next = lincomb(
            (x, d, x_prev, d_prev), (ratio + w * a, -w * a * sigma, -w * b, w * b * sigma_prev), backend=backend
        )
    return x_next, (x, d, sigma)


STEPS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step, "rk4": rk4_step}
METHODS = (*STEPS, "dpmpp_2m")
# Butcher weights b_i of each method's field evaluations (log_prob_ode combines divergences with them).
WEIGHTS = {"euler": (1.0,), "heun": (0.5, 0.5), "midpoint": (0.0, 1.0), "rk4": (1 / 6, 1 / 3, 1 / 3, 1 / 6)}
# Methods that evaluate the field at t_next (undefined at sigma = 0 for EDM fields).
_EVALUATE_AT_END = ("heun", "rk4")


def check_dpm_grid(fn: str, times: list[float]) -> None:
    if not (times[1] < times[0] and all(s > 0 for s in times[:-1]) and times[-1] >= 0):
        raise ValueError(f"{fn}: method 'dpmpp_2m' needs `times` to be decreasing noise levels sigma > 0 "
                         f"(the last may be 0); got {times[:3]}...{times[-1:]}")


def sample_ode(field: Field, x0: torch.Tensor, times, *, method: str = "heun", return_trajectory: bool = False,
               euler_at_zero: bool = True, backend: str = "auto", callback=None, progress: bool = False):
    """Integrate ``dx/dt = field(x, t)`` from ``times[0]`` to ``times[-1]`` starting at ``x0``.

    Args:
        field: ``field(x, t) -> dx/dt`` with ``t`` a Python float; must return a new tensor
            each call (not a buffer it overwrites).
        x0: the state at ``times[0]``, shape ``(B, ...)``.
        times: 1-D list/tuple of floats or tensor, strictly monotone in the order of
            integration (increasing or decreasing), at least 2 entries.
        method: ``"euler"`` (1st order), ``"heun"``, ``"midpoint"`` (2nd), ``"rk4"`` (4th) or
            ``"dpmpp_2m"`` (DPM-Solver++(2M), 2nd order; EDM convention: ``times`` are
            decreasing sigmas and ``field(x, sigma) = (x - D(x, sigma)) / sigma``, see
            :func:`edm_field`).
        return_trajectory: also return the list of states at every entry of ``times``
            (``x0`` first).
        euler_at_zero: a Heun or RK4 step that ends exactly at ``t = 0`` is taken with
            Euler (k-diffusion's convention: the EDM field is undefined at sigma = 0; the
            method's global order is kept). Pass False when the field is defined at 0.
        backend: lincomb's backend.
        callback: called as ``callback(i, t_next, x)`` after each step.
        progress: show a progress bar on stderr.

    Returns:
        the state at ``times[-1]``, or ``(x_final, trajectory)``.

    The loop never synchronises with the device (times are host floats), so it can be
    captured in a CUDA graph together with the field.

    Example:
        >>> field = lambda x, t: -x                      # dx/dt = -x
        >>> x1 = sample_ode(field, torch.ones(4, 2), uniform_times(10, 0.0, 1.0), method="rk4")
    """
    fn = "sample_ode"
    _checks.callable_(fn, "field", field, "f(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    ts = _common.time_grid(fn, times)
    _checks.choice(fn, "method", method, METHODS)
    if method == "dpmpp_2m":
        check_dpm_grid(fn, ts)
    history = None

    def step(x, t, t_next):
        nonlocal history
        if method == "dpmpp_2m":
            x, history = dpmpp_2m_step(field, x, t, t_next, history, backend=backend)
            return x
        if t_next == 0.0 and euler_at_zero and method in _EVALUATE_AT_END:
            return euler_step(field, x, t, t_next, backend=backend)
        return STEPS[method](field, x, t, t_next, backend=backend)
    return _common.integrate(fn, x0, ts, step, return_trajectory=return_trajectory, callback=callback,
                             progress=progress)
