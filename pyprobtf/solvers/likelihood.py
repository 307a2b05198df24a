"""Exact likelihoods of ODE flows by the instantaneous change of variables (Chen et al. 2018).

Along ``dx/dt = f(x, t)``, ``d/dt log p_t(x_t) = -div f(x_t, t)``, so integrating from
the data end ``t0`` to the base end ``t1`` gives

    log p_data(x) = log p_base(z) + int_{t0}^{t1} div f(x_t, t) dt,    z = x_{t1}.

The state and the divergence integral are advanced together, in one pass, by the
same Runge-Kutta method (the divergence at each stage weighted by the method's
Butcher weights).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyprobtf.ops import lincomb
from pyprobtf import _checks
from pyprobtf.solvers import _common
from pyprobtf.solvers.ode import STEPS, WEIGHTS

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def exact_divergence(f: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """``sum_i d f_i / d x_i`` per row, by one backward pass per dimension (rows must not interact)."""
    batch = x.shape[0]
    flat = f.reshape(batch, -1)
    total = torch.zeros(batch, dtype=f.dtype, device=f.device)
    if not f.requires_grad:  # f does not depend on x
        return total
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True,
                                   allow_unused=True)
        if g is not None:
            total = total + g.reshape(batch, -1)[:, i]
    return total


def hutchinson_divergence(f: torch.Tensor, x: torch.Tensor, probes, *, create_graph: bool = False) -> torch.Tensor:
    """The unbiased estimate ``mean_k v_k^T (df/dx) v_k`` per row, one backward pass per probe ``v_k``."""
    batch = x.shape[0]
    total = torch.zeros(batch, dtype=f.dtype, device=f.device)
    if not f.requires_grad:
        return total
    for v in probes:
        (g,) = torch.autograd.grad(f, x, grad_outputs=v, create_graph=create_graph, retain_graph=True,
                                   allow_unused=True)
        if g is not None:
            total = total + (g * v).reshape(batch, -1).sum(1)
    return total / len(probes)


def _probes(x, n_probes: int, kind: str, seed, backend: str) -> list[torch.Tensor]:
    """Fixed probes for the whole integration, from lincomb's noise stream (per-row seeds: batch-invariant)."""
    counter = _common.NoiseCounter(seed, x)
    zeros = torch.zeros_like(x)
    probes = []
    for _ in range(n_probes):
        v = lincomb((zeros,), (0.0,), noise_std=1.0, seed=seed, offset=counter.next(), backend=backend)
        if kind == "rademacher":
            v = torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
        probes.append(v)
    return probes


def _base_log_prob(fn: str, base, z: torch.Tensor) -> torch.Tensor:
    lp = base.log_prob(z)
    batch = z.shape[0]
    if lp.shape == (batch,):
        return lp
    if lp.shape == z.shape:  # an elementwise distribution (e.g. Normal): independent dimensions
        return lp.reshape(batch, -1).sum(1)
    raise ValueError(f"{fn}: `base.log_prob(z)` must have shape (B,) = ({batch},) or the state's shape "
                     f"{tuple(z.shape)}; got {tuple(lp.shape)} (wrap the base in torch.distributions.Independent)")


def log_prob_ode(field: Callable, x: torch.Tensor, times, base, *, divergence: str = "exact", n_probes: int = 1,
                 method: str = "rk4", seed=0, probe: str = "rademacher", backend: str = "auto",
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``x`` under the flow ``dx/dt = field(x, t)`` with base distribution ``base``.

    Args:
        field: ``field(x, t) -> dx/dt``; must treat rows independently (the divergence is
            taken per row through autograd).
        x: data, shape ``(B, ...)``.
        times: from the data end to the base end (either direction), strictly monotone.
        base: a ``torch.distributions.Distribution`` over the latent with event shape
            ``x.shape[1:]`` (e.g. ``Independent(Normal(0, 1), n)``); an elementwise one is
            summed over the state's dimensions.
        divergence: ``"exact"`` (one backward pass per dimension) or ``"hutchinson"``
            (``n_probes`` random probes per evaluation: unbiased, for large states).
        n_probes: Hutchinson probes, fixed for the whole integration (FFJORD's estimator).
        method: ``"euler"``, ``"heun"``, ``"midpoint"`` or ``"rk4"``.
        seed: the probes' seed (integer or ``(B,)`` tensor of per-row seeds).
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        backend: lincomb's backend.
        progress: show a progress bar on stderr.

    Returns:
        ``(log_prob, z)``: the log-density, shape ``(B,)`` (float64 for float64 data, else
        float32), and the latent at the base end. Under ``torch.no_grad()`` nothing is
        kept for backward; otherwise the result is differentiable (e.g. in the field's
        parameters, for maximum-likelihood training).

    Example:
        >>> base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> log_prob, z = log_prob_ode(flow_field, x, uniform_times(20, 0.0, 1.0), base)
    """
    fn = "log_prob_ode"
    _checks.callable_(fn, "field", field, "f(x, t)")
    _checks.tensor(fn, "x", x, min_dim=1)
    ts = _common.time_grid(fn, times)
    _checks.choice(fn, "divergence", divergence, DIVERGENCES)
    _checks.choice(fn, "method", method, tuple(STEPS))
    _checks.choice(fn, "probe", probe, PROBES)
    n_probes = _checks.integer(fn, "n_probes", n_probes, 1)
    seed = _common.check_seed(fn, seed, x)
    if not isinstance(base, torch.distributions.Distribution):
        raise TypeError(f"{fn}: `base` must be a torch.distributions.Distribution; got {type(base).__name__}")

    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.shape[0] == 0:  # nothing to integrate (and the divergence's per-row reshapes need a row)
        return x.new_zeros(0, dtype=compute), x.clone()
    train = torch.is_grad_enabled()
    probes = _probes(x, n_probes, probe, seed, backend) if divergence == "hutchinson" else None
    stage_divergences: list[torch.Tensor] = []

    def augmented(xs, t):
        """The field, recording its divergence at (xs, t) for the log-density integral."""
        with torch.enable_grad():
            xg = xs if xs.requires_grad else xs.detach().requires_grad_(True)
            f = field(xg, t)
            if probes is None:
                div = exact_divergence(f, xg, create_graph=train)
            else:
                div = hutchinson_divergence(f, xg, probes, create_graph=train)
        if not train:
            f, div = f.detach(), div.detach()
        stage_divergences.append(div.to(compute))
        return f

    integral = torch.zeros(x.shape[0], dtype=compute, device=x.device)

    def step(xs, t, t_next):
        nonlocal integral
        stage_divergences.clear()
        xs = STEPS[method](augmented, xs, t, t_next, backend=backend)
        weighted = sum(w * d for w, d in zip(WEIGHTS[method], stage_divergences) if w != 0.0)
        integral = integral + (t_next - t) * weighted
        return xs

    z = _common.integrate(fn, x, ts, step, return_trajectory=False, callback=None, progress=progress)
    log_prob = _base_log_prob(fn, base, z.to(compute)) + integral
    return log_prob, z

