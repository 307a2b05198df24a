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

The network is the user's: ``net(x, t, context=None)`` with ``x`` of shape
``(B, *event_shape)`` and ``t`` a ``(B,)`` tensor, returning ``(B, *event_shape)``
(checked at every call: a wrong shape names the network and both shapes). When
none is given, :func:`default_net` builds :class:`~pyprobtf.nn.TimeMLP` for
vectors and :class:`~pyprobtf.nn.UNet` for ``(C, H, W)`` images. With
``context_dropout = p > 0`` (classifier-free guidance, Ho & Salimans 2022) the
loss replaces the context of a share ``p`` of the rows by a null context -- the
label ``num_classes`` for class labels (so the network must embed
``num_classes + 1`` labels; the defaults do), zeros for a context tensor -- and
sampling with ``guidance=w`` evaluates ``out_uncond + w (out_cond - out_uncond)``
on the network's output (``w = 1``: the conditional model; ``w = 0``: the
unconditional one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyprobtf import _checks, solvers
from pyprobtf.nn.mlp import FourierFeatures, TimeMLP, check_activation, check_hidden
from pyprobtf.nn.unet import UNet
from pyprobtf.transform import FlatDistribution, ProbabilityTransform, Trajectory, check_net_output

ODE_METHODS = ("euler", "heun", "midpoint", "rk4")
DIVERGENCES = ("auto", "exact", "hutchinson")


def is_image(event_shape) -> bool:
    """Whether ``event_shape`` is an image shape ``(C, H, W)`` (the UNet default applies)."""
    return len(event_shape) == 3


def default_net(owner: str, model: ProbabilityTransform, hidden, activation: str, x_frequencies: int,
                unet_channels, extra_labels: int) -> nn.Module:
    """The default ``net(x, t, context)`` of an ODE family: a :class:`~pyprobtf.nn.UNet` with ``unet_channels``
    for image shapes, else a :class:`~pyprobtf.nn.TimeMLP` on the flattened event. ``extra_labels``: 1 when a
    null label is needed for classifier-free guidance."""
    num_classes = model.num_classes + extra_labels if model.num_classes else 0
    context_dim = 0 if model.num_classes else model.dim_of_context
    if is_image(model.event_shape):
        return UNet(model.event_shape[0], channels=unet_channels, num_classes=num_classes,
                    context_dim=context_dim)
    return TimeMLP(model.event_shape, check_hidden(owner, hidden), context_dim=context_dim,
                   num_classes=num_classes, activation=check_activation(owner, activation),
                   x_frequencies=x_frequencies)


class ODEFamily(ProbabilityTransform):
    """Base of the ODE-based families (see the module docstring).

    Subclasses set ``t_base``, ``t_data`` and implement ``velocity(x, t, context, guidance)``; they call
    ``net_output`` for the network.
    """

    capabilities = frozenset({"inverse", "ladj", "log_prob"})
    t_base: float = 0.0
    t_data: float = 1.0

    def __init__(self, dim: int | None = None, *, event_shape=None, ode_steps: int, ode_method: str,
                 log_prob_steps: int, divergence: str, n_probes: int = 1, base=None, context_dim: int = 0,
                 context_shape=None, num_classes: int = 0, context_dropout: float = 0.0):
        super().__init__(dim, event_shape=event_shape, base=base, context_dim=context_dim,
                         context_shape=context_shape, num_classes=num_classes)
        name = type(self).__name__
        context_dropout = _checks.real(name, "context_dropout", context_dropout, 0, 1, high_open=True)
        if context_dropout and not self.conditional:
            raise ValueError(f"{name}: `context_dropout` needs a conditional model (context_dim, context_shape "
                             f"or num_classes)")
        self.context_dropout = context_dropout
        self.ode_steps = _checks.integer(name, "ode_steps", ode_steps, 1)
        self.log_prob_steps = _checks.integer(name, "log_prob_steps", log_prob_steps, 1)
        self.n_probes = _checks.integer(name, "n_probes", n_probes, 1)
        self.ode_method = _checks.choice(name, "ode_method", ode_method, ODE_METHODS)
        _checks.choice(name, "divergence", divergence, DIVERGENCES)
        # Exact divergence costs one backward pass per dimension: cheap for small dim only.
        self.divergence = ("exact" if self.dim <= 16 else "hutchinson") if divergence == "auto" else divergence

    @property
    def dim_of_context(self) -> int:
        """The number of elements of a floating context per row (0 for none or class labels)."""
        return 0 if self.num_classes or not self.context_shape else math.prod(self.context_shape)

    def set_net(self, net, hidden, activation, x_frequencies, unet_channels) -> None:
        """``self.net``: the user's ``net``, or the default one (see :func:`default_net`)."""
        name = type(self).__name__
        _checks.optional(_checks.callable_, name, "net", net, "net(x, t, context=None) (an nn.Module)")
        self.net = net if net is not None else default_net(
            name, self, hidden, activation, x_frequencies, unet_channels, 1 if self.context_dropout else 0)

    # -------------------------------------------------------------- the network and guidance
    def null_context(self, context: torch.Tensor) -> torch.Tensor:
        """The context that stands for "no context" (classifier-free guidance): the label ``num_classes``
        for class labels, zeros for a context tensor."""
        if self.num_classes:
            return torch.full_like(context, self.num_classes)
        return torch.zeros_like(context)

    def drop_context(self, context):
        """``context`` with a share ``context_dropout`` of its rows replaced by the null context (training)."""
        if context is None or not self.context_dropout:
            return context
        drop = torch.rand(context.shape[0], device=context.device) < self.context_dropout
        null = self.null_context(context)
        return torch.where(drop.reshape(-1, *[1] * (context.dim() - 1)), null, context)

    def net_output(self, x: torch.Tensor, t, context=None, guidance=None) -> torch.Tensor:
        """``net(x, t, context)`` with ``t`` as a ``(B,)`` tensor, its shape checked; with ``guidance=w``
        (not None or 1) the classifier-free mix ``out(null) + w (out(context) - out(null))``."""
        t = t.to(x.dtype).expand(x.shape[0]) if isinstance(t, torch.Tensor) and t.dim() == 0 else (
            t if isinstance(t, torch.Tensor) else x.new_full((x.shape[0],), float(t)))
        owner = type(self).__name__
        if context is None or guidance is None or guidance == 1:
            out = self.net(x, t, context) if context is not None else self.net(x, t)
            return check_net_output(owner, "net", out, tuple(x.shape))
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, self.null_context(context)]))
        both = check_net_output(owner, "net", both, (2 * x.shape[0], *x.shape[1:]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """A ``(B,)`` tensor shaped ``(B, 1, ..., 1)`` to broadcast over the event."""
        return t.reshape(-1, *[1] * len(self.event_shape))

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Set the default MLP's input scale (``net.x_features.scale``) to the data's std."""
        x, _ = self.split_batch(batch, "initialize")
        features = getattr(getattr(self, "net", None), "x_features", None)
        if isinstance(features, FourierFeatures) and x.shape[0] > 1:
            features.scale.fill_(float(x.flatten(1).std(0).mean().clamp_min(1e-3)))

    # -------------------------------------------------------------- to implement
    def velocity(self, x: torch.Tensor, t, context=None, guidance=None) -> torch.Tensor:
        raise NotImplementedError

    def times(self, n_steps: int, towards_data: bool) -> list[float]:
        """The solver's time grid from the base end to the data end (or back)."""
        a, b = (self.t_base, self.t_data) if towards_data else (self.t_data, self.t_base)
        return solvers.uniform_times(n_steps, a, b)

    # -------------------------------------------------------------- the protocol
    def _field(self, context, guidance=None):
        if context is None:
            return lambda x, t: self.velocity(x, t)
        return lambda x, t: self.velocity(x, t, context, guidance)

    def _prep(self, v, method, name="x", context=None):
        v = self.check_x(v, method, name)
        return v, self.check_context(context, v.shape[0], method, like=v)

    def _steps(self, steps, default):
        return default if steps is None else _checks.integer(type(self).__name__, "steps", steps, 1)

    def transform(self, z, context=None, *, steps: int | None = None, method: str | None = None,
                  guidance: float | None = None):
        """``x = F(z)``: the ODE from the base end to the data end (``steps`` and ``method`` override the
        defaults; ``guidance=w``: classifier-free guidance, see the module docstring)."""
        z, context = self._prep(z, "transform", "z", context)
        guidance = self._check_guidance(guidance, context)
        return solvers.sample_ode(self._field(context, guidance), z,
                                  self.times(self._steps(steps, self.ode_steps), True),
                                  method=method or self.ode_method)

    def inverse(self, x, context=None, *, steps: int | None = None, method: str | None = None,
                guidance: float | None = None):
        """``z = F^-1(x)``: the same ODE from the data end back to the base end."""
        x, context = self._prep(x, "inverse", "x", context)
        guidance = self._check_guidance(guidance, context)
        return solvers.sample_ode(self._field(context, guidance), x,
                                  self.times(self._steps(steps, self.ode_steps), False),
                                  method=method or self.ode_method)

    def _check_guidance(self, guidance, context):
        if guidance is None:
            return None
        name = type(self).__name__
        guidance = _checks.real(name, "guidance", guidance)
        if context is None:
            raise ValueError(f"{name}: `guidance` needs a conditional model and a `context`")
        if guidance != 1 and not self.context_dropout:
            raise ValueError(f"{name}: `guidance` other than 1 needs a model trained with context_dropout > 0 "
                             f"(it has learned no unconditional output)")
        return guidance

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
            FlatDistribution(self.event_shape), divergence=self.divergence, n_probes=self.n_probes, method="rk4",
            seed=seed,
        )
        return x, ladj

    def inverse_and_ladj(self, x, context=None, *, steps: int | None = None, seed: int = 0):
        """``(F^-1(x), log|det dF^-1/dx|)``."""
        x, context = self._prep(x, "inverse_and_ladj", "x", context)
        ladj, z = self._ladj(x, context, False, steps, seed, FlatDistribution(self.event_shape))
        return z, ladj

    def log_prob(self, x, context=None, *, steps: int | None = None, seed: int = 0):
        """``log p(x)`` by the instantaneous change of variables (``log_prob_steps`` RK4 steps; the divergence
        exact for ``dim <= 16``, else a seeded Hutchinson estimate)."""
        x, context = self._prep(x, "log_prob", "x", context)
        return self._ladj(x, context, False, steps, seed, self.base)[0]

    def trajectory(self, z, context=None, *, steps: int | None = None, method: str | None = None,
                   guidance: float | None = None):
        """The ODE state at every solver time from ``z`` (base end) to ``x`` (data end)."""
        z, context = self._prep(z, "trajectory", "z", context)
        guidance = self._check_guidance(guidance, context)
        times = self.times(self._steps(steps, self.ode_steps), True)
        with torch.no_grad():
            _, states = solvers.sample_ode(self._field(context, guidance), z, times,
                                           method=method or self.ode_method, return_trajectory=True)
        # The first state is z itself (labelled "z", as in every family's trajectory).
        return Trajectory(list(states), ["z"] + [f"{self.clock}={t:.4g}" for t in times[1:]])

    clock = "t"
