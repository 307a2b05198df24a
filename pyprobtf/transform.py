"""The probability-transformation protocol: one object ``x = F(z)``, ``z ~ base``, for every family.

Every generative family in :mod:`pyprobtf.families` is a
:class:`ProbabilityTransform`, an :class:`torch.nn.Module` with

- ``base``: a :class:`torch.distributions.Distribution` over ``z`` (event shape
  ``(dim,)``; a standard normal unless another base was given);
- ``transform(z, **cond) -> x``: ``F`` itself (also ``model(z)``);
- ``sample(n, *, seed=None, **cond) -> x``: ``F`` applied to ``n`` draws of the
  base (without gradients; ``rsample`` keeps them);
- ``loss(batch) -> scalar``: the family's training objective, what
  :func:`pyprobtf.fit` minimises;
- ``trajectory(z, **cond) -> Trajectory``: the intermediate states of ``F``
  (after every flow layer, or at every ODE/SDE solver time), from ``z`` to ``x``;
- ``as_distribution()``: a :class:`torch.distributions.Distribution` with
  ``sample``, ``rsample`` and (where the family has one) ``log_prob``;

and, where the family allows (listed in ``capabilities``):

- ``inverse(x) -> z`` and ``inverse_and_ladj(x) -> (z, log|det dz/dx|)`` (``"inverse"``);
- ``transform_and_ladj(z) -> (x, log|det dx/dz|)`` (``"ladj"``);
- ``log_prob(x)``: ``log p(x)`` in nats, shape ``(B,)`` (``"log_prob"``).

Conditioning: a family built with ``context_dim=k > 0`` takes ``context=`` (a
``(B, k)`` tensor, or ``(k,)`` shared by all rows) in every method above, and
its ``loss`` takes ``(x, context)`` batches.

Composition: :class:`Chain` runs transforms one after another, and any
family's ``base`` can itself be another ProbabilityTransform (a learned prior):
``RealNVP(dim=2, base=FlowMatching(dim=2))`` samples ``z`` from the flow-matching
model and maps it through the RealNVP layers; its ``log_prob`` uses the prior's.

Example:
    >>> from pyprobtf.families import RealNVP
    >>> model = RealNVP(dim=2)
    >>> x = model.sample(5, seed=0)                      # (5, 2)
    >>> model.log_prob(x).shape
    torch.Size([5])
    >>> states = model.trajectory(model.base.sample((5,)))
    >>> len(states.states) == len(states.labels)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints

CAPABILITIES = ("inverse", "ladj", "log_prob")


@dataclasses.dataclass
class Trajectory:
    """The states of ``F`` from ``z`` (first) to ``x = F(z)`` (last), each ``(B, dim)``, with a label each.

    Labels say what a state is: ``"z"``, ``"layer 3"``, ``"t=0.250"``, ``"sigma=1.2"``, ``"x"``.
    """

    states: list[torch.Tensor]
    labels: list[str]

    def __post_init__(self):
        if len(self.states) != len(self.labels):
            raise ValueError(f"Trajectory: {len(self.states)} states but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(zip(self.labels, self.states))

    def stack(self) -> torch.Tensor:
        """The states as one ``(T, B, dim)`` tensor."""
        return torch.stack(self.states)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu"):
    """Run the block with torch's global RNG seeded by ``seed`` and restored afterwards (nothing when None)."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int or None; got {type(seed).__name__}")
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def draw_seed() -> int:
    """A 62-bit seed drawn from torch's global RNG (so a seeded caller seeds what it starts)."""
    return int(torch.randint(0, 2**62, (1,)).item())


class FlatDistribution(Distribution):
    """The improper density 1 on R^dim: ``log_prob`` is 0. Used to read log-determinants off
    likelihood solvers (``log p(x) = log base(z) + log|det dz/dx|`` with ``log base = 0``)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, dim: int, dtype=torch.float32, device="cpu"):
        self._dtype, self._device = dtype, torch.device(device)
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([dim]), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_zeros(value.shape[:-1])


class TransformDistribution(Distribution):
    """A :class:`ProbabilityTransform` seen as a :class:`torch.distributions.Distribution`.

    ``sample`` draws without gradients, ``rsample`` with (reparameterised through
    ``F``), ``log_prob`` is the family's ``log_prob`` (unavailable for families
    without one). ``cond`` (e.g. ``context=``) is passed to every call.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, model: ProbabilityTransform, **cond):
        self.model, self.cond = model, cond
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([model.dim]), validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        n = shape.numel()
        z = self.model.base.rsample((n,))
        return self.model.transform(z, **self.cond).reshape(*shape, self.model.dim)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = value.shape[:-1]
        return self.model.log_prob(value.reshape(-1, self.model.dim), **self.cond).reshape(batch)


class ProbabilityTransform(nn.Module):
    """Base class of every family: ``x = F(z)`` with ``z ~ base``. See the module docstring.

    Subclasses implement ``transform`` (or ``transform_and_ladj``) and ``loss``,
    and, where they can, ``inverse_and_ladj`` and ``log_prob``; they list what
    they support in ``capabilities`` and their training defaults for
    :func:`pyprobtf.fit` in ``fit_defaults``.

    Args:
        dim: size of a data vector (and of ``z``).
        base: ``None`` (standard normal on R^dim), a ``torch.distributions``
            distribution with event shape ``(dim,)``, or another
            ProbabilityTransform of the same ``dim`` (a learned prior; it
            becomes a submodule).
        context_dim: size of the conditioning vector ``context`` (0: unconditional).
    """

    #: what the family supports beyond transform/sample/loss: a subset of CAPABILITIES
    capabilities: frozenset[str] = frozenset()
    #: what pyprobtf.fit uses when steps/batch_size/lr/... are not given
    fit_defaults: dict = {"steps": 2000, "batch_size": 256, "lr": 1e-3}

    def __init__(self, dim: int, *, base=None, context_dim: int = 0):
        super().__init__()
        name = type(self).__name__
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"{name}: `dim` must be a positive int; got {dim!r}")
        if isinstance(context_dim, bool) or not isinstance(context_dim, numbers.Integral) or context_dim < 0:
            raise ValueError(f"{name}: `context_dim` must be a non-negative int; got {context_dim!r}")
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.prior: ProbabilityTransform | None = None
        self._fixed_base: Distribution | None = None
        if base is None:
            # Buffers, so the base follows the module across .to(device) and .double().
            self.register_buffer("_base_loc", torch.zeros(self.dim), persistent=False)
            self.register_buffer("_base_scale", torch.ones(self.dim), persistent=False)
        elif isinstance(base, ProbabilityTransform):
            if base.dim != self.dim:
                raise ValueError(f"{name}: `base` must have dim={self.dim}; got a {type(base).__name__} "
                                 f"with dim={base.dim}")
            self.prior = base
        elif isinstance(base, Distribution):
            if tuple(base.event_shape) != (self.dim,) or tuple(base.batch_shape) != ():
                raise ValueError(f"{name}: `base` must have event shape ({self.dim},) and batch shape (); got "
                                 f"event shape {tuple(base.event_shape)}, batch shape {tuple(base.batch_shape)}")
            self._fixed_base = base
        else:
            raise TypeError(f"{name}: `base` must be None, a torch Distribution or a ProbabilityTransform; "
                            f"got {type(base).__name__}")

    # ------------------------------------------------------------------ the base and helpers

    @property
    def base(self) -> Distribution:
        """The distribution of ``z``."""
        if self.prior is not None:
            return self.prior.as_distribution()
        if self._fixed_base is not None:
            return self._fixed_base
        # No argument validation: it costs time at every call, and NaN must propagate to fit's
        # own check (which names the step) rather than fail inside torch.distributions.
        return Independent(Normal(self._base_loc, self._base_scale, validate_args=False), 1, validate_args=False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            return t.dtype
        for t in self.buffers():
            return t.dtype
        return torch.get_default_dtype()

    def _name(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def check_x(self, x, method: str, name: str = "x") -> torch.Tensor:
        """``x`` as a ``(B, dim)`` floating tensor; a clear error otherwise."""
        where = self._name(method)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point tensor; got {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{where}: `{name}` must have shape (batch, {self.dim}) for dim={self.dim}; "
                             f"got {tuple(x.shape)}")
        return x

    def check_context(self, context, batch: int, method: str, *, like: torch.Tensor | None = None):
        """``context`` as a ``(batch, context_dim)`` tensor (or None for unconditional families)."""
        where = self._name(method)
        if self.context_dim == 0:
            if context is not None:
                raise ValueError(f"{where}: this model is unconditional (context_dim=0) but `context` was given")
            return None
        if context is None:
            raise ValueError(f"{where}: `context` (shape (batch, {self.context_dim})) is required: the model "
                             f"was built with context_dim={self.context_dim}")
        if not isinstance(context, torch.Tensor):
            raise TypeError(f"{where}: `context` must be a torch.Tensor; got {type(context).__name__}")
        if context.dim() == 1:
            context = context.expand(batch, -1)
        if context.dim() != 2 or context.shape[1] != self.context_dim or context.shape[0] != batch:
            raise ValueError(f"{where}: `context` must have shape ({batch}, {self.context_dim}) or "
                             f"({self.context_dim},); got {tuple(context.shape)}")
        if like is not None:
            context = context.to(dtype=like.dtype, device=like.device)
        return context

    def split_batch(self, batch, method: str = "loss") -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch (``x``, or ``(x, context)`` for conditional models) as ``(x, context)``."""
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"{self._name(method)}: a batch is `x` or `(x, context)`; got a sequence of "
                                 f"{len(batch)} items")
            x, context = batch
        else:
            x, context = batch, None
        x = self.check_x(x, method)
        return x, self.check_context(context, x.shape[0], method, like=x)

    def _unsupported(self, what: str):
        caps = ", ".join(sorted(self.capabilities)) or "none"
        return NotImplementedError(f"{type(self).__name__} has no {what} (its capabilities: {caps})")

    # ------------------------------------------------------------------ the protocol

    def transform(self, z: torch.Tensor, **cond) -> torch.Tensor:
        """``x = F(z)``, ``z`` of shape ``(B, dim)``."""
        if "ladj" in self.capabilities:
            return self.transform_and_ladj(z, **cond)[0]
        raise NotImplementedError(f"{type(self).__name__} must implement transform")

    def forward(self, z: torch.Tensor, **cond) -> torch.Tensor:
        return self.transform(z, **cond)

    def transform_and_ladj(self, z: torch.Tensor, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F(z), log|det dF/dz|)``, the second of shape ``(B,)``."""
        raise self._unsupported("log-determinant of F (transform_and_ladj)")

    def inverse_and_ladj(self, x: torch.Tensor, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F^-1(x), log|det dF^-1/dx|)``, the second of shape ``(B,)``."""
        raise self._unsupported("inverse")

    def inverse(self, x: torch.Tensor, **cond) -> torch.Tensor:
        """``z = F^-1(x)``."""
        return self.inverse_and_ladj(x, **cond)[0]

    def log_prob(self, x: torch.Tensor, **cond) -> torch.Tensor:
        """``log p(x)`` in nats, shape ``(B,)``: ``log base(F^-1(x)) + log|det dF^-1/dx|``."""
        if "inverse" not in self.capabilities:
            raise self._unsupported("log_prob")
        z, ladj = self.inverse_and_ladj(x, **cond)
        return self.base.log_prob(z) + ladj

    def rsample(self, n: int, **cond) -> torch.Tensor:
        """``n`` samples ``F(z)``, differentiable in the parameters (and in a learned prior's)."""
        n = _check_count(n, self._name("rsample"))
        return self.transform(self.base.rsample((n,)), **cond)

    def sample(self, n: int, *, seed: int | None = None, **cond) -> torch.Tensor:
        """``n`` samples ``F(z)``, ``z ~ base``, without gradients; the same ``seed`` gives the same samples."""
        n = _check_count(n, self._name("sample"))
        with torch.no_grad(), seeded(seed, self.device):
            return self.transform(self.base.sample((n,)), **cond)

    def trajectory(self, z: torch.Tensor, **cond) -> Trajectory:
        """The states of ``F`` from ``z`` to ``x``; families with inner structure return more than the two ends."""
        with torch.no_grad():
            return Trajectory([z, self.transform(z, **cond)], ["z", "x"])

    def loss(self, batch) -> torch.Tensor:
        """The training objective on one batch (``x`` or ``(x, context)``): a scalar to minimise."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss")

    def initialize(self, batch) -> None:
        """Data-dependent initialisation (e.g. ActNorm) from a first batch; :func:`pyprobtf.fit` calls it
        before training. The default does nothing."""

    def as_distribution(self, **cond) -> TransformDistribution:
        """This model as a :class:`torch.distributions.Distribution` (``cond`` is passed to every call)."""
        return TransformDistribution(self, **cond)


def _check_count(n, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{where}: `n` must be a non-negative int; got {n!r}")
    return int(n)


class Chain(ProbabilityTransform):
    """Transforms applied one after another: ``x = F_k(... F_2(F_1(z)))``, ``z ~`` the first one's base.

    Only the first transform's base is used; the others act as maps. The chain
    has a capability when every member has it, and a ``loss`` (the negative
    log-likelihood) when it has ``log_prob``.

    Example:
        >>> from pyprobtf.families import RealNVP
        >>> chain = Chain(RealNVP(dim=2), RealNVP(dim=2))
        >>> chain.log_prob(chain.sample(4, seed=0)).shape
        torch.Size([4])
    """

    fit_defaults = {"steps": 4000, "batch_size": 256, "lr": 1e-3}

    def __init__(self, *transforms: ProbabilityTransform):
        if not transforms:
            raise ValueError("Chain: give at least one ProbabilityTransform")
        for i, t in enumerate(transforms):
            if not isinstance(t, ProbabilityTransform):
                raise TypeError(f"Chain: argument {i} must be a ProbabilityTransform; got {type(t).__name__}")
            if t.dim != transforms[0].dim:
                raise ValueError(f"Chain: every transform must have dim={transforms[0].dim}; argument {i} has "
                                 f"dim={t.dim}")
            if t.context_dim != transforms[0].context_dim:
                raise ValueError(f"Chain: every transform must have context_dim={transforms[0].context_dim}; "
                                 f"argument {i} has context_dim={t.context_dim}")
        super().__init__(transforms[0].dim, context_dim=transforms[0].context_dim)
        self.steps = nn.ModuleList(transforms)
        caps = frozenset(CAPABILITIES)
        for t in transforms:
            caps &= t.capabilities
        self.capabilities = caps

    @property
    def base(self) -> Distribution:
        return self.steps[0].base

    def transform(self, z, **cond):
        for t in self.steps:
            z = t.transform(z, **cond)
        return z

    def transform_and_ladj(self, z, **cond):
        if "ladj" not in self.capabilities:
            raise self._unsupported("log-determinant of F (transform_and_ladj)")
        total = z.new_zeros(z.shape[0])
        for t in self.steps:
            z, ladj = t.transform_and_ladj(z, **cond)
            total = total + ladj
        return z, total

    def inverse_and_ladj(self, x, **cond):
        if "inverse" not in self.capabilities:
            raise self._unsupported("inverse")
        total = x.new_zeros(x.shape[0])
        for t in reversed(self.steps):
            x, ladj = t.inverse_and_ladj(x, **cond)
            total = total + ladj
        return x, total

    def trajectory(self, z, **cond):
        states, labels = [z], ["z"]
        for i, t in enumerate(self.steps):
            inner = t.trajectory(states[-1], **cond)
            states += inner.states[1:]
            labels += [f"{i}:{label}" for label in inner.labels[1:]]
        return Trajectory(states, labels)

    def loss(self, batch):
        x, context = self.split_batch(batch)
        cond = {} if context is None else {"context": context}
        return -self.log_prob(x, **cond).mean()

    def initialize(self, batch):
        x, context = self.split_batch(batch, "initialize")
        cond = {} if context is None else {"context": context}
        # Each member sees its own input: the data pulled back through the (already initialised)
        # members after it, so go from the last member to the first.
        for t in reversed(self.steps):
            t.initialize(x if context is None else (x, context))
            if "inverse" in t.capabilities:
                with torch.no_grad():
                    x = t.inverse(x, **cond)
