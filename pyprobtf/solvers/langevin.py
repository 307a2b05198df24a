"""Langevin dynamics and annealed Langevin dynamics (Song & Ermon 2019), one fused pass per step.

``x <- x + step * score(x, t) + sqrt(2 step) eps`` (the seed paper's eq. 14, with
``score = grad_x log p``) samples ``p`` as ``step -> 0`` and the number of steps grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyprobtf.ops import lincomb
from pyprobtf import _checks
from pyprobtf.solvers import _common


def langevin_step(score: Callable, x: torch.Tensor, t: float, step_size, *, seed=0, offset: int = 0,
                  backend: str = "auto") -> torch.Tensor:
    """``x + step_size * score(x, t) + sqrt(2 step_size) eps``, one pass (``step_size`` a number or (B,) tensor)."""
    noise = (2.0 * step_size).sqrt() if isinstance(step_size, torch.Tensor) else math.sqrt(2.0 * step_size)
    return lincomb((x, score(x, t)), (1.0, step_size), noise_std=noise, seed=seed, offset=offset, backend=backend)


def _step_size(fn: str, step_size, x: torch.Tensor):
    if isinstance(step_size, torch.Tensor):
        _checks.tensor(fn, "step_size", step_size)
        if step_size.shape != (x.shape[0],):
            raise ValueError(f"{fn}: `step_size` must be a positive number or a floating-point tensor of shape "
                             f"(B,) = ({x.shape[0]},); got shape {tuple(step_size.shape)}")
        return step_size
    return _checks.real(fn, "step_size", step_size, 0, low_open=True)


def langevin(score: Callable, x0: torch.Tensor, *, step_size, n_steps: int, t: float = 0.0, seed=0,
             return_trajectory: bool = False, backend: str = "auto", callback=None, progress: bool = False):
    """``n_steps`` of (unadjusted) Langevin dynamics on ``score(x, t) = grad_x log p(x)``.

    Args:
        score: ``score(x, t) -> Tensor`` like ``x``.
        x0: the initial state ``(B, ...)``.
        step_size: positive number, or a ``(B,)`` tensor of per-row step sizes.
        n_steps: number of steps (>= 0).
        t: passed to ``score`` (e.g. a noise level).
        seed: an integer, or a ``(B,)`` integer tensor of per-row seeds (batch-invariant chains).
        return_trajectory: also return every state (``x0`` first).
        backend, callback, progress: as :func:`~pyprobtf.solvers.sample_sde` (``callback(i, t, x)``).

    Example:
        >>> # N(2, 1): score(x) = -(x - 2)
        >>> x = langevin(lambda x, t: 2.0 - x, torch.zeros(4096, 1), step_size=0.05, n_steps=500, seed=3)
    """
    fn = "langevin"
    _checks.callable_(fn, "score", score, "f(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    step_size = _step_size(fn, step_size, x0)
    n_steps = _checks.integer(fn, "n_steps", n_steps, 0)
    t = _checks.real(fn, "t", t)
    seed = _common.check_seed(fn, seed, x0)
    counter = _common.NoiseCounter(seed, x0)

    def step(x, _, t_now):
        return langevin_step(score, x, t_now, step_size, seed=seed, offset=counter.next(), backend=backend)
    return _common.integrate(fn, x0, [t] * (n_steps + 1), step, return_trajectory=return_trajectory,
                             callback=callback, progress=progress)


def annealed_langevin(score: Callable, x0: torch.Tensor, sigmas, *, n_steps_each: int = 10, eps: float = 2e-5,
                      seed=0, denoise: bool = False, return_trajectory: bool = False, backend: str = "auto",
                      callback=None, progress: bool = False):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a noise-conditional score.

    For each noise level ``sigma_i`` (decreasing), ``n_steps_each`` steps of

        x <- x + alpha_i / 2 * score(x, sigma_i) + sqrt(alpha_i) z,   alpha_i = eps * sigma_i^2 / sigma_L^2

    (Langevin with ``step = alpha_i / 2``), ``sigma_L = sigmas[-1]`` the smallest level. The
    paper used ``eps = 2e-5`` and 100 steps per level for CIFAR-10.

    Args:
        score: ``score(x, sigma) -> Tensor``, the score of the data perturbed with N(0, sigma^2).
        x0: the initial state (e.g. uniform noise), ``(B, ...)``.
        sigmas: decreasing positive noise levels (one or more).
        n_steps_each: steps per level (>= 1).
        eps: the step scale (> 0).
        seed: an integer or a ``(B,)`` tensor of per-row seeds.
        denoise: finish with the Tweedie step ``x + sigma_L^2 score(x, sigma_L)``
            (Jolicoeur-Martineau et al. 2021), which removes the last level's noise.
        return_trajectory: also return every state (``x0`` first; the denoised one last).
        backend, callback, progress: as :func:`langevin` (``callback(i, sigma, x)``).
    """
    fn = "annealed_langevin"
    _checks.callable_(fn, "score", score, "f(x, t)")
    _checks.tensor(fn, "x0", x0, min_dim=1)
    levels = _common.time_grid(fn, sigmas, name="sigmas", min_len=1)
    if (len(levels) > 1 and levels[1] > levels[0]) or levels[-1] <= 0:
        raise ValueError(f"{fn}: `sigmas` must be decreasing and positive; got {levels[:3]}...{levels[-1:]}")
    n_steps_each = _checks.integer(fn, "n_steps_each", n_steps_each, 1)
    eps = _checks.real(fn, "eps", eps, 0, low_open=True)
    _checks.boolean(fn, "denoise", denoise)
    seed = _common.check_seed(fn, seed, x0)
    counter = _common.NoiseCounter(seed, x0)
    sigma_min = levels[-1]

    def step(x, _, sigma):
        alpha = eps * sigma * sigma / (sigma_min * sigma_min)
        return langevin_step(score, x, sigma, 0.5 * alpha, seed=seed, offset=counter.next(), backend=backend)
    schedule = [levels[0]] + [s for s in levels for _ in range(n_steps_each)]  # step i runs at schedule[i + 1]
    result = _common.integrate(fn, x0, schedule, step, return_trajectory=return_trajectory, callback=callback,
                               progress=progress)
    if not denoise:
        return result
    x = result[0] if return_trajectory else result
    x = lincomb((x, score(x, sigma_min)), (1.0, sigma_min * sigma_min), backend=backend)
    if return_trajectory:
        return x, result[1] + [x]
    return x
