"""Stochastic samplers: Euler-Maruyama for Ito SDEs, Euler-ancestral (EDM sigmas) and DDIM (VP, with eta).

Each step is ONE :func:`~pyprobtf.ops.lincomb` pass with the Gaussian noise drawn
inside the kernel from the counter-based Philox stream (never materialised).
Draw ``k`` of a loop uses the counters ``[k n, (k + 1) n)`` of its seed, ``n`` the
state's size (one integer seed) or row size (a ``(B,)`` tensor of per-row seeds:
each row's path then depends only on its own seed, whatever the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyprobtf.ops import lincomb
from pyprobtf import _checks
from pyprobtf.solvers import _common
from pyprobtf.solvers.predictions import PREDICTIONS, EDMField

SDE_METHODS = ("euler_maruyama",)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _noise_scale(g, x: torch.Tensor, sqrt_h: float):
    """(noise_std for lincomb: a number or per-row (B,) tensor, or None) and (a full diffusion tensor, or None).

    ``g dW`` and ``|g| dW`` have the same law (the noise is symmetric), so the sign of ``g`` is dropped.
    """
    if _checks.is_real(g):
        return abs(float(g)) * sqrt_h, None
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"sample_sde: `diffusion` must return a real number or a tensor; got {type(g).__name__}")
    batch = x.shape[0]
    if g.numel() == 1 and g.dim() <= x.dim():
        return (g.reshape(1).to(_compute_dtype(x)).abs() * sqrt_h).expand(batch), None
    if g.dim() == x.dim() and g.shape[0] == batch and all(s == 1 for s in g.shape[1:]):
        return g.reshape(batch).to(_compute_dtype(x)).abs() * sqrt_h, None
    try:
        shape = torch.broadcast_shapes(g.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"sample_sde: `diffusion` must return a number or a tensor broadcastable to the state "
                         f"{tuple(x.shape)}; got shape {tuple(g.shape)}")
    return None, g


def euler_maruyama_step(drift: Callable, diffusion: Callable, x: torch.Tensor, t: float, t_next: float, *,
                        seed=0, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """``x + f(x, t) h + g(x, t) sqrt(|h|) eps`` (strong order 1/2, weak order 1), one fused pass.

    ``diffusion`` may return a number or a tensor of shape ``(B, 1, ..., 1)`` (per-row
    noise scale, fused), or any tensor broadcastable to ``x`` (diagonal noise; the
    normals are then materialised once and multiplied).
    """
    h = t_next - t
    sqrt_h = math.sqrt(abs(h))
    f = drift(x, t)
    noise_std, g_full = _noise_scale(diffusion(x, t), x, sqrt_h)
    if g_full is None:
        return lincomb((x, f), (1.0, h), noise_std=noise_std, seed=seed, offset=offset, backend=backend)
    eps = lincomb((torch.zeros_like(x),), (0.0,), noise_std=1.0, seed=seed, offset=offset, backend=backend)
    return lincomb((x, f, (g_full.abs() * eps).to(x.dtype)), (1.0, h, sqrt_h), backend=backend)


def sample_sde(drift: Callable, diffusion: Callable, x0: torch.Tensor, times, *, seed=0,
               method: str = "euler_maruyama", return_trajectory: bool = False, backend: str = "auto",
               callback=None, progress: bool = False):
    """Integrate the Ito SDE ``dx = drift(x, t) dt + diffusion(x, t) dW`` along ``times`` from ``x0``.

    Args:
        drift: ``drift(x, t) -> Tensor`` like ``x``; ``t`` a Python float.
        diffusion: ``diffusion(x, t)``: a number, or a tensor broadcastable to ``x``
            (``(B, 1, ..., 1)`` per-row scales stay fused).
        x0: the state at ``times[0]``, shape ``(B, ...)``.
        times: 1-D, strictly monotone, at least 2 entries; decreasing times integrate a
            reverse-time SDE (``h < 0``; the noise variance is ``|h|``).
        seed: an integer, or a ``(B,)`` integer tensor of per-row seeds (batch-invariant paths).
        method: ``"euler_maruyama"``.
        return_trajectory: also return the states at every entry of ``times`` (``x0`` first).
        backend: lincomb's backend.
        callback: ``callback(i, t_next, x)`` after each step.
        progress: show a progress bar on stderr.

    Example:
        >>> # Ornstein-Uhlenbeck: dx = -x dt + sqrt(2) dW, stationary N(0, 1)
        >>> x = sample_sde(lambda x, t: -x, lambda x, t: 2**0.5, torch.zeros(1000, 1),
        ...                uniform_times(200, 0.0, 5.0), seed=1)
    """
    fn = "sample_sde"
    _checks.callable_(fn, "drift", drift, "f(x, t)")
    _checks.callable_(fn, "diffusion", diffusion, "f(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    ts = _common.time_grid(fn, times)
    seed = _common.check_seed(fn, seed, x0)
    _checks.choice(fn, "method", method, SDE_METHODS)
    counter = _common.NoiseCounter(seed, x0)

    def step(x, t, t_next):
        return euler_maruyama_step(drift, diffusion, x, t, t_next, seed=seed, offset=counter.next(), backend=backend)
    return _common.integrate(fn, x0, ts, step, return_trajectory=return_trajectory, callback=callback,
                             progress=progress)


# ----------------------------------------------------------------------------- Euler-ancestral (EDM)


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)``: k-diffusion's split of a step from ``sigma`` to ``sigma_next``."""
    if sigma_next == 0.0:
        return 0.0, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def euler_ancestral_step(field: Callable, x: torch.Tensor, sigma: float, sigma_next: float, *, eta: float = 1.0,
                         s_noise: float = 1.0, seed=0, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """An Euler step down to ``sigma_down`` plus fresh noise of scale ``sigma_up``, one pass.

    ``field(x, sigma) = (x - D(x, sigma)) / sigma`` (EDM convention, see
    :func:`~pyprobtf.solvers.edm_field`); as k-diffusion's ``sample_euler_ancestral``.
    """
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    if isinstance(field, EDMField):  # x + (down - sigma) (x - D) / sigma, on the denoiser's output
        r = (down - sigma) / sigma
        return lincomb((x, field.denoiser(x, sigma)), (1.0 + r, -r), noise_std=s_noise * up, seed=seed,
                       offset=offset, backend=backend)
    return lincomb((x, field(x, sigma)), (1.0, down - sigma), noise_std=s_noise * up, seed=seed, offset=offset,
                   backend=backend)


def _check_sigmas(fn: str, sigmas) -> list[float]:
    values = _common.time_grid(fn, sigmas, name="sigmas")
    if not (values[1] < values[0] and values[-1] >= 0):
        raise ValueError(f"{fn}: `sigmas` must be decreasing noise levels >= 0; got {values[:3]}...{values[-1:]}")
    return values


def sample_euler_ancestral(field: Callable, x0: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                           seed=0, return_trajectory: bool = False, backend: str = "auto", callback=None,
                           progress: bool = False):
    """Euler-ancestral sampling on decreasing EDM noise levels (k-diffusion's ``sample_euler_ancestral``).

    Args:
        field: ``(x - D(x, sigma)) / sigma`` (see :func:`~pyprobtf.solvers.edm_field`).
        x0: noise at ``sigmas[0]``: ``sigmas[0] * randn``.
        sigmas: decreasing noise levels, e.g. :func:`~pyprobtf.solvers.karras_sigmas`.
        eta: 0 gives the Euler ODE step, 1 ancestral sampling.
        s_noise: scale of the fresh noise.
        seed, return_trajectory, backend, callback, progress: as :func:`sample_sde`.
    """
    fn = "sample_euler_ancestral"
    _checks.callable_(fn, "field", field, "f(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    ts = _check_sigmas(fn, sigmas)
    eta = _checks.real(fn, "eta", eta, 0)
    s_noise = _checks.real(fn, "s_noise", s_noise, 0)
    seed = _common.check_seed(fn, seed, x0)
    counter = _common.NoiseCounter(seed, x0)

    def step(x, sigma, sigma_next):
        return euler_ancestral_step(field, x, sigma, sigma_next, eta=eta, s_noise=s_noise, seed=seed,
                                    offset=counter.next(), backend=backend)
    return _common.integrate(fn, x0, ts, step, return_trajectory=return_trajectory, callback=callback,
                             progress=progress)


# ----------------------------------------------------------------------------- DDIM (VP)


def ddim_coefficients(alpha_bar: float, alpha_bar_next: float, eta: float) -> tuple[float, float, float]:
    """``(c_x, c_eps, noise_std)`` of DDIM's update ``x_next = c_x x + c_eps eps_hat + noise_std z``.

    From ``x0_hat = (x - sqrt(1 - ab) eps_hat) / sqrt(ab)`` and
    ``x_next = sqrt(ab_next) x0_hat + sqrt(1 - ab_next - s^2) eps_hat + s z`` with
    ``s = eta sqrt((1 - ab_next) / (1 - ab)) sqrt(1 - ab / ab_next)`` (Song et al. 2021, eq. 12 and 16).
    """
    s = eta * math.sqrt((1.0 - alpha_bar_next) / (1.0 - alpha_bar) * max(1.0 - alpha_bar / alpha_bar_next, 0.0))
    c_x = math.sqrt(alpha_bar_next / alpha_bar)
    c_eps = math.sqrt(max(1.0 - alpha_bar_next - s * s, 0.0)) - c_x * math.sqrt(1.0 - alpha_bar)
    return c_x, c_eps, s


def ddim_step(eps_model: Callable, x: torch.Tensor, t: float, t_next: float, schedule, *, eta: float = 0.0,
              seed=0, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """One DDIM step from VP time ``t`` to ``t_next < t`` for a noise-predicting model, one pass.

    ``eps_model(x, t)`` predicts the noise; ``schedule`` is a VP schedule
    (:func:`~pyprobtf.solvers.vp_linear`, :func:`~pyprobtf.solvers.vp_cosine`).
    ``eta = 0`` is deterministic DDIM, ``eta = 1`` DDPM-like ancestral sampling.
    """
    c_x, c_eps, s = ddim_coefficients(schedule.alpha_bar(t), schedule.alpha_bar(t_next), eta)
    return lincomb((x, eps_model(x, t)), (c_x, c_eps), noise_std=s, seed=seed, offset=offset, backend=backend)


def sample_ddim(model: Callable, x0: torch.Tensor, times, schedule, *, eta: float = 0.0, prediction: str = "epsilon",
                seed=0, return_trajectory: bool = False, backend: str = "auto", callback=None,
                progress: bool = False):
    """DDIM sampling (Song, Meng & Ermon 2021) on decreasing VP times, as diffusers' ``DDIMScheduler`` steps.

    Args:
        model: ``model(x, t)`` predicting ``prediction`` (``"epsilon"``, ``"denoised"``,
            ``"score"`` or ``"velocity"``) at VP time ``t``.
        x0: the state at ``times[0]`` (standard normal noise for t near 1).
        times: decreasing VP times in ``[0, 1]``, e.g. ``uniform_times(50, 1.0, 0.0)``; a
            last time of 0 returns the final denoised estimate.
        schedule: the VP schedule the model was trained with.
        eta: 0 (deterministic) ... 1 (ancestral); any value >= 0.
        seed, return_trajectory, backend, callback, progress: as :func:`sample_sde`.
    """
    fn = "sample_ddim"
    _checks.callable_(fn, "model", model, "model(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    ts = _common.time_grid(fn, times)
    if not ts[1] < ts[0]:
        raise ValueError(f"{fn}: `times` must decrease (from noise to data); got {ts[:3]}...")
    eta = _checks.real(fn, "eta", eta, 0)
    _checks.choice(fn, "prediction", prediction, PREDICTIONS)
    seed = _common.check_seed(fn, seed, x0)
    eps_model = schedule._epsilon(model, prediction, backend)
    counter = _common.NoiseCounter(seed, x0)

    def step(x, t, t_next):
        return ddim_step(eps_model, x, t, t_next, schedule, eta=eta, seed=seed, offset=counter.next(),
                         backend=backend)
    return _common.integrate(fn, x0, ts, step, return_trajectory=return_trajectory, callback=callback,
                             progress=progress)
