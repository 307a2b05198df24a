"""k-diffusion's samplers with fused updates: a drop-in for ``k_diffusion.sampling.sample_*``.

Swap one import::

    # from k_diffusion.sampling import sample_dpmpp_2m
    from pyprobtf.integrations.k_diffusion import sample_dpmpp_2m
    x = sample_dpmpp_2m(model, x, sigmas, extra_args={"cond": c}, callback=cb)

Same names, positional order, keyword arguments and defaults as k-diffusion; the model
is called as ``model(x, sigma * s_in, **extra_args)`` (a ``(B,)`` sigma) and returns the
denoised ``D(x, sigma)``; ``callback`` gets k-diffusion's dict ``{'x', 'i', 'sigma',
'sigma_hat', 'denoised'}``. Every state update is one :func:`~pyprobtf.ops.lincomb`
pass over the state (k-diffusion's Euler step makes about 6, its LMS step about 10),
with the conversion ``d = (x - D) / sigma`` folded into it.

Noise (``s_churn``, ancestral and SDE steps) is drawn inside the kernel from the Philox
stream of the extra keyword ``seed``: an int, or a ``(B,)`` integer tensor of per-sample
seeds, which makes each sample's path depend only on its own seed, whatever the batch
(batch-invariant). ``seed=None`` draws one int seed from torch's default generator, so
``torch.manual_seed`` makes a run reproducible (with a different stream than k-diffusion's
``randn_like``: the same distribution, not the same numbers). A ``noise_sampler`` passed
explicitly (e.g. k-diffusion's ``BrownianTreeNoiseSampler``) is used instead, as in
k-diffusion; ``sample_dpmpp_2m_sde``'s default is the in-kernel stream, not a Brownian tree.

This module needs neither k-diffusion nor scipy: sigmas are read once to the host and
every coefficient (LMS's integrals included, by exact Gauss-Legendre quadrature of the
Lagrange polynomials) is a Python float.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from pyprobtf.integrations import _noise
from pyprobtf.ops import lincomb

__all__ = [
    "get_ancestral_step",
    "sample_dpm_2",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
]


def _trange(n: int, disable):
    try:
        from tqdm.auto import trange
    except ImportError:
        return range(n)
    return trange(n, disable=disable)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` as k-diffusion's ``get_ancestral_step``, on Python floats."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


class _Loop:
    """What every sampler shares: host sigmas, the model call, the callback and the noise stream."""

    def __init__(self, fn, model, x, sigmas, extra_args, callback, seed):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{fn}: `x` must be a tensor; got {type(x).__name__}")
        if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < 2:
            raise ValueError(f"{fn}: `sigmas` must be a 1-D tensor of at least 2 noise levels")
        self.fn, self.model, self.x0 = fn, model, x
        self.sigmas = sigmas
        self.s = sigmas.detach().double().cpu().tolist()
        self.extra_args = {} if extra_args is None else extra_args
        self.callback = callback
        self.s_in = x.new_ones([x.shape[0]])
        self.seed_arg = seed
        self.seed = None
        self.counter = None

    def denoise(self, x, sigma):
        """``model(x, sigma * s_in, **extra_args)``; ``sigma`` a 0-d tensor or a float."""
        return self.model(x, sigma * self.s_in, **self.extra_args)

    def report(self, x, i, sigma_hat, denoised):
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": self.sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})

    def noise(self):
        """(seed, offset) of the next state-sized draw of the in-kernel stream."""
        if self.counter is None:
            self.seed = _noise.check_seed(self.fn, self.seed_arg, self.x0)
            self.counter = _noise.Counter(self.seed, self.x0)
        return self.seed, self.counter.next()

    def churn(self, x, i, s_churn, s_tmin, s_tmax, s_noise):
        """Karras et al.'s churn: ``(x, sigma_hat as a float, sigma_hat as k-diffusion's tensor)``."""
        sigma = self.s[i]
        gamma = min(s_churn / (len(self.s) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        if gamma > 0:
            sigma_hat = sigma * (gamma + 1)
            seed, offset = self.noise()
            x = lincomb((x,), (1.0,), noise_std=s_noise * (sigma_hat**2 - sigma**2) ** 0.5, seed=seed, offset=offset)
            return x, sigma_hat, self.sigmas[i] * (gamma + 1)
        return x, sigma, self.sigmas[i] * (gamma + 1)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float("inf"), s_noise=1., *, seed=None):
    """Algorithm 2 (Euler steps) of Karras et al. (2022), as k-diffusion's ``sample_euler``.

    Example:
        >>> x = sample_euler(denoiser, sigmas[0] * torch.randn(4, 3, 32, 32), sigmas)
    """
    loop = _Loop("sample_euler", model, x, sigmas, extra_args, callback, seed)
    for i in _trange(len(loop.s) - 1, disable):
        x, sigma_hat, sigma_hat_t = loop.churn(x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat_t)
        loop.report(x, i, sigma_hat_t, denoised)
        r = (loop.s[i + 1] - sigma_hat) / sigma_hat  # x + dt (x - D) / sigma_hat
        x = lincomb((x, denoised), (1.0 + r, -r))
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None, *, seed=None):
    """Ancestral sampling with Euler steps, as k-diffusion's ``sample_euler_ancestral`` (noise in the update pass)."""
    loop = _Loop("sample_euler_ancestral", model, x, sigmas, extra_args, callback, seed)
    for i in _trange(len(loop.s) - 1, disable):
        sigma, sigma_next = loop.s[i], loop.s[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        loop.report(x, i, loop.sigmas[i], denoised)
        r = (sigma_down - sigma) / sigma
        if sigma_next > 0 and noise_sampler is not None:
            noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1])
            x = lincomb((x, denoised, noise), (1.0 + r, -r, s_noise * sigma_up))
        elif sigma_next > 0:
            seed_, offset = loop.noise()
            x = lincomb((x, denoised), (1.0 + r, -r), noise_std=s_noise * sigma_up, seed=seed_, offset=offset)
        else:
            x = lincomb((x, denoised), (1.0 + r, -r))
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                s_tmax=float("inf"), s_noise=1., *, seed=None):
    """Algorithm 2 (Heun steps) of Karras et al. (2022), as k-diffusion's ``sample_heun``."""
    loop = _Loop("sample_heun", model, x, sigmas, extra_args, callback, seed)
    for i in _trange(len(loop.s) - 1, disable):
        x, sigma_hat, sigma_hat_t = loop.churn(x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat_t)
        loop.report(x, i, sigma_hat_t, denoised)
        sigma_next = loop.s[i + 1]
        dt = sigma_next - sigma_hat
        r = dt / sigma_hat
        if sigma_next == 0:
            x = lincomb((x, denoised), (1.0 + r, -r))
        else:
            x_2 = lincomb((x, denoised), (1.0 + r, -r))
            denoised_2 = loop.denoise(x_2, loop.sigmas[i + 1])
            # x + dt/2 ((x - D) / sigma_hat + (x_2 - D_2) / sigma_next)
            a, b = 0.5 * dt / sigma_hat, 0.5 * dt / sigma_next
            x = lincomb((x, denoised, x_2, denoised_2), (1.0 + a, -a, b, -b))
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float("inf"), s_noise=1., *, seed=None):
    """DPM-Solver-2 steps with Karras et al.'s churn, as k-diffusion's ``sample_dpm_2``."""
    loop = _Loop("sample_dpm_2", model, x, sigmas, extra_args, callback, seed)
    for i in _trange(len(loop.s) - 1, disable):
        x, sigma_hat, sigma_hat_t = loop.churn(x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat_t)
        loop.report(x, i, sigma_hat_t, denoised)
        sigma_next = loop.s[i + 1]
        if sigma_next == 0:
            r = (sigma_next - sigma_hat) / sigma_hat
            x = lincomb((x, denoised), (1.0 + r, -r))
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigma_next)))
            r1 = (sigma_mid - sigma_hat) / sigma_hat
            x_2 = lincomb((x, denoised), (1.0 + r1, -r1))
            denoised_2 = loop.denoise(x_2, torch.tensor(sigma_mid, dtype=loop.sigmas.dtype))
            r2 = (sigma_next - sigma_hat) / sigma_mid  # x + dt_2 (x_2 - D_2) / sigma_mid
            x = lincomb((x, x_2, denoised_2), (1.0, r2, -r2))
    return x


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of ``n``-point Gauss-Legendre quadrature on [-1, 1] (an eigenproblem: computed once per n)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(nodes.tolist()), tuple(weights.tolist())


def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """k-diffusion's LMS coefficient: the integral over ``[t[i], t[i+1]]`` of the ``j``-th Lagrange basis polynomial.

    Exact (Gauss-Legendre with ``order`` nodes integrates degree ``order - 1`` exactly).
    """
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    nodes, weights = _gauss_legendre(max(order, 1))
    a, b = t[i], t[i + 1]
    total = 0.0
    for node, weight in zip(nodes, weights):
        tau = 0.5 * (b - a) * node + 0.5 * (a + b)
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        total += weight * prod
    return float(0.5 * (b - a) * total)


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep sampling of order ``order``, as k-diffusion's ``sample_lms``."""
    loop = _Loop("sample_lms", model, x, sigmas, extra_args, callback, None)
    ds = []
    for i in _trange(len(loop.s) - 1, disable):
        sigma = loop.s[i]
        denoised = loop.denoise(x, loop.sigmas[i])
        loop.report(x, i, loop.sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, loop.s, i, j) for j in range(cur_order)]
        older = list(reversed(ds[len(ds) - (cur_order - 1):])) if cur_order > 1 else []  # d_{i-1}, d_{i-2}, ...
        if i + 2 < len(loop.s) and order > 1:  # keep d = (x - D) / sigma for the next steps
            d = lincomb((x, denoised), (1.0 / sigma, -1.0 / sigma))
            ds.append(d)
            if len(ds) > order - 1:
                ds.pop(0)
        c0 = coeffs[0] / sigma  # x + c0 (x - D) + sum_j coeffs[j] d_{i-j}
        head, tail = list(zip(older[:2], coeffs[1:3])), list(zip(older[2:], coeffs[3:]))
        x = lincomb((x, denoised, *(d for d, _ in head)), (1.0 + c0, -c0, *(c for _, c in head)))
        for d, c in tail:  # order > 3: the fourth term in a second pass (lincomb reads at most 4 tensors)
            x = lincomb((x, d), (1.0, c))
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M), as k-diffusion's ``sample_dpmpp_2m``: one pass per step."""
    loop = _Loop("sample_dpmpp_2m", model, x, sigmas, extra_args, callback, None)
    old_denoised = None
    for i in _trange(len(loop.s) - 1, disable):
        sigma, sigma_next = loop.s[i], loop.s[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        loop.report(x, i, loop.sigmas[i], denoised)
        if sigma_next == 0:  # (sigma_next / sigma) x - expm1(-inf) D = D
            x = lincomb((denoised,), (1.0,))
        else:
            h = math.log(sigma) - math.log(sigma_next)
            ratio, w = sigma_next / sigma, -math.expm1(-h)
            if old_denoised is None:
                x = lincomb((x, denoised), (ratio, w))
            else:
                r = (math.log(loop.s[i - 1]) - math.log(sigma)) / h
                a, b = 1.0 + 1.0 / (2.0 * r), 1.0 / (2.0 * r)
                x = lincomb((x, denoised, old_denoised), (ratio, w * a, -w * b))
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, solver_type="midpoint", *, seed=None):
    """DPM-Solver++(2M) SDE, as k-diffusion's ``sample_dpmpp_2m_sde``: one pass per step, noise in the kernel.

    k-diffusion's default noise is a Brownian tree (torchsde); here it is the in-kernel
    stream of ``seed`` (independent increments: the same law for a fixed grid). Pass
    ``noise_sampler=BrownianTreeNoiseSampler(...)`` to reproduce k-diffusion's numbers.
    """
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    loop = _Loop("sample_dpmpp_2m_sde", model, x, sigmas, extra_args, callback, seed)
    old_denoised, h_last = None, None
    h = None
    for i in _trange(len(loop.s) - 1, disable):
        sigma, sigma_next = loop.s[i], loop.s[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        loop.report(x, i, loop.sigmas[i], denoised)
        if sigma_next == 0:
            x = lincomb((denoised,), (1.0,))
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            c_x = sigma_next / sigma * math.exp(-eta_h)
            c_d = -math.expm1(-h - eta_h)
            c_diff = 0.0  # coefficient of (denoised - old_denoised)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    c_diff = (c_d / (-h - eta_h) + 1) * (1 / r)
                else:
                    c_diff = 0.5 * c_d * (1 / r)
            tensors, coeffs = [x, denoised], [c_x, c_d + c_diff]
            if old_denoised is not None:
                tensors.append(old_denoised)
                coeffs.append(-c_diff)
            noise_std = sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise if eta else 0.0
            if noise_std and noise_sampler is not None:
                tensors.append(noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]))
                coeffs.append(noise_std)
                x = lincomb(tensors, coeffs)
            elif noise_std:
                seed_, offset = loop.noise()
                x = lincomb(tensors, coeffs, noise_std=noise_std, seed=seed_, offset=offset)
            else:
                x = lincomb(tensors, coeffs)
        old_denoised = denoised
        h_last = h
    return x
