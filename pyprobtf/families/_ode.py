"""Shared machinery of the ODE-based families (FlowMatching, ContinuousFlow, Diffusion's probability-flow ODE).

An :class:`ODEFamily` has a vector field ``velocity(x, t, context)`` that
carries the base (at ``t_base``) to the data (at ``t_data``). Everything else
comes from :mod:`pyprobtf.solvers`:

- ``transform`` / ``inverse``: ``sample_ode`` from one end to the other;
- ``transform_and_ladj`` / ``inverse_and_ladj`` / ``log_prob``: ``log_prob_ode``
  (the instantaneous change of variables ``d log p(x_t)/dt = -div v``,
  integrated jointly with the state) -- with an improper flat base for the
  log-determinants, with the model's base for ``log_prob``;
- ``trajectory``: ``sample_ode(..., return_trajectory=True)``.

The solver's time grid comes from ``times(n_steps, towards_data)``; subclasses
with a non-uniform clock (Diffusion) override it.
"""

from __future__ import annotations

import numbers

import torch

from pyprobtf import solvers
from pyprobtf.transform import FlatDistribution, ProbabilityTransform, Trajectory

ODE_METHODS = ("euler", "heun", "midpoint", "rk4")
DIVERGENCES = ("auto", "exact", "hutchinson")


def check_steps(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int; got {value!r}")
    return int(value)


class ODEFamily(ProbabilityTransform):
    """Base of the ODE-based families (see the module docstring).

    Subclasses set ``t_base``, ``t_data`` and implement ``velocity(x, t, context)``.
    """

    capabilities = frozenset({"inverse", "ladj", "log_prob"})
    t_base: float = 0.0
    t_data: float = 1.0

    def __init__(self, dim: int, *, ode_steps: int, ode_method: str, log_prob_steps: int, divergence: str,
                 n_probes: int = 1, base=None, context_dim: int = 0):
        super().__init__(dim, base=base, context_dim=context_dim)
        name = type(self).__name__
        self.ode_steps = check_steps(name, "ode_steps", ode_steps)
        self.log_prob_steps = check_steps(name, "log_prob_steps", log_prob_steps)
        self.n_probes = check_steps(name, "n_probes", n_probes)
        if ode_method not in ODE_METHODS:
            raise ValueError(f"{name}: `ode_method` must be one of {ODE_METHODS}; got {ode_method!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"{name}: `divergence` must be one of {DIVERGENCES}; got {divergence!r}")
        self.ode_method = ode_method
        # Exact divergence costs one backward pass per dimension: cheap for small dim only.
        self.divergence = ("exact" if dim <= 16 else "hutchinson") if divergence == "auto" else divergence

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Set the network's input scale (``net.x_features.scale``) to the data's std."""
        x, _ = self.split_batch(batch, "initialize")
        features = getattr(getattr(self, "net", None), "x_features", None)
        if features is not None and x.shape[0] > 1:
            features.scale.fill_(float(x.std(0).mean().clamp_min(1e-3)))

    # -------------------------------------------------------------- to implement
    def velocity(self, x: torch.Tensor, t, context=None) -> torch.Tensor:
        raise NotImplementedError

    def times(self, n_steps: int, towards_data: bool) -> list[float]:
        """The solver's time grid from the base end to the data end (or back)."""
        a, b = (self.t_base, self.t_data) if towards_data else (self.t_data, self.t_base)
        return solvers.uniform_times(n_steps, a, b)

    # -------------------------------------------------------------- the protocol
    def _field(self, context):
        if context is None:
            return lambda x, t: self.velocity(x, t)
        return lambda x, t: self.velocity(x, t, context)

    def _prep(self, v, method, name="x", context=None):
        v = self.check_x(v, method, name)
        return v, self.check_context(context, v.shape[0], method, like=v)

    def _steps(self, steps, default):
        return default if steps is None else check_steps(type(self).__name__, "steps", steps)

    def transform(self, z, context=None, *, steps: int | None = None, method: str | None = None):
        """``x = F(z)``: the ODE from the base end to the data end (``steps`` and ``method`` override the defaults)."""
        z, context = self._prep(z, "transform", "z", context)
        return solvers.sample_ode(self._field(context), z, self.times(self._steps(steps, self.ode_steps), True),
                                  method=method or self.ode_method)

    def inverse(self, x, context=None, *, steps: int | None = None, method: str | None = None):
        """``z = F^-1(x)``: the same ODE from the data end back to the base end."""
        x, context = self._prep(x, "inverse", "x", context)
        return solvers.sample_ode(self._field(context), x, self.times(self._steps(steps, self.ode_steps), False),
                                  method=method or self.ode_method)

    def _ladj(self, v, context, towards_data, steps, seed, base):
        return solvers.log_prob_ode(
            self._field(context), v, self.times(self._steps(steps, self.log_prob_steps), towards_data), base,
            divergence=self.divergence, n_probes=self.n_probes, method="rk4", seed=seed,
        )

    def transform_and_ladj(self, z, context=None, *, steps: int | None = None, seed: int = 0):
        """``(F(z), log|det dF/dz|)`` by integrating ``div v`` along the path (``log_prob_steps`` RK4 steps)."""
        z, context = self._prep(z, "transform_and_ladj", "z", context)
        # log_prob_ode integrates towards its "base" end; run it from z to the data end with a flat base.
        ladj, x = solvers.log_prob_ode(
            self._field(context), z, self.times(self._steps(steps, self.log_prob_steps), True),
            FlatDistribution(self.dim), divergence=self.divergence, n_probes=self.n_probes, method="rk4", seed=seed,
        )
        return x, ladj

    def inverse_and_ladj(self, x, context=None, *, steps: int | None = None, seed: int = 0):
        """``(F^-1(x), log|det dF^-1/dx|)``."""
        x, context = self._prep(x, "inverse_and_ladj", "x", context)
        ladj, z = self._ladj(x, context, False, steps, seed, FlatDistribution(self.dim))
        return z, ladj

    def log_prob(self, x, context=None, *, steps: int | None = None, seed: int = 0):
        """``log p(x)`` by the instantaneous change of variables (``log_prob_steps`` RK4 steps; the divergence
        exact for ``dim <= 16``, else a seeded Hutchinson estimate)."""
        x, context = self._prep(x, "log_prob", "x", context)
        return self._ladj(x, context, False, steps, seed, self.base)[0]

    def trajectory(self, z, context=None, *, steps: int | None = None, method: str | None = None):
        """The ODE state at every solver time from ``z`` (base end) to ``x`` (data end)."""
        z, context = self._prep(z, "trajectory", "z", context)
        times = self.times(self._steps(steps, self.ode_steps), True)
        with torch.no_grad():
            _, states = solvers.sample_ode(self._field(context), z, times, method=method or self.ode_method,
                                           return_trajectory=True)
        # The first state is z itself (labelled "z", as in every family's trajectory).
        return Trajectory(list(states), ["z"] + [f"{self.clock}={t:.4g}" for t in times[1:]])

    clock = "t"
