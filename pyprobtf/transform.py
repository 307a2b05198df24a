"""The probability-transformation protocol: one object ``x = F(z)``, ``z ~ base``, for every family.

Every generative family in :mod:`pyprobtf.families` is a
:class:`ProbabilityTransform`, an :class:`torch.nn.Module` with

- ``event_shape``: the shape of one sample, a tuple: ``(d,)`` for vectors,
  ``(C, H, W)`` for images, ``(L,)`` for token sequences (``dim=d`` is shorthand
  for ``(d,)``; ``dim`` is always the number of elements of one sample); every
  method takes and returns ``(B, *event_shape)`` tensors and ``log_prob`` sums
  over the event;
- ``base``: a :class:`torch.distributions.Distribution` over ``z`` (a standard
  normal over ``event_shape`` unless another base was given);
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
``(B, k)`` tensor, or ``(k,)`` shared by all rows), one built with
``context_shape=S`` a floating ``(B, *S)`` tensor (or ``S`` shared), and one
built with ``num_classes=n`` integer class labels (a ``(B,)`` integer tensor or
one Python int for every row), in every method above; its ``loss`` takes
``(x, context)`` batches.

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
import math
import numbers
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints

from pyprobtf import _checks
from pyprobtf.seeds import check_seed

CAPABILITIES = ("inverse", "ladj", "log_prob")


@dataclasses.dataclass
class Trajectory:
    """The states of ``F`` from ``z`` (first) to ``x = F(z)`` (last), each ``(B, *event_shape)`` (``z`` may have
    its own latent shape), with a label each.

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
        """The states as one ``(T, B, *event_shape)`` tensor (all states must share a shape)."""
        return torch.stack(self.states)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu", where: str = "sample"):
    """Run the block with torch's global RNG seeded by ``seed`` and restored afterwards (nothing when None).

    ``seed``: an int in ``[-2^63, 2^64)``, taken modulo ``2^64`` (see :mod:`pyprobtf.seeds`)."""
    if seed is None:
        yield
        return
    seed = check_seed(seed, where)
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def draw_seed() -> int:
    """A 62-bit seed drawn from torch's global RNG (so a seeded caller seeds what it starts)."""
    return int(torch.randint(0, 2**62, (1,)).item())


class FlatDistribution(Distribution):
    """The improper density 1 on R^dim: ``log_prob`` is 0. Used to read log-determinants off
    likelihood solvers (``log p(x) = log base(z) + log|det dz/dx|`` with ``log base = 0``)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, dim, dtype=torch.float32, device="cpu"):
        self._dtype, self._device = dtype, torch.device(device)
        shape = torch.Size([dim]) if isinstance(dim, numbers.Integral) else torch.Size(dim)
        super().__init__(batch_shape=torch.Size(), event_shape=shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_zeros(value.shape[:value.dim() - len(self.event_shape)])


class _StandardNormal(Independent):
    """``Independent(Normal)`` whose ``log_prob`` also takes an empty batch (torch's sums reshape ``(0, -1)``)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.numel() == 0:
            return value.new_zeros(value.shape[:value.dim() - len(self.event_shape)])
        return super().log_prob(value)


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
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size(model.event_shape), validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        n = shape.numel()
        z = self.model.base.rsample((n,))
        return self.model.transform(z, **self.cond).reshape(*shape, *self.model.event_shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        event = self.model.event_shape
        batch = value.shape[:value.dim() - len(event)]
        return self.model.log_prob(value.reshape(-1, *event), **self.cond).reshape(batch)


class ProbabilityTransform(nn.Module):
    """Base class of every family: ``x = F(z)`` with ``z ~ base``. See the module docstring.

    Subclasses implement ``transform`` (or ``transform_and_ladj``) and ``loss``,
    and, where they can, ``inverse_and_ladj`` and ``log_prob``; they list what
    they support in ``capabilities`` and their training defaults for
    :func:`pyprobtf.fit` in ``fit_defaults``.

    Args:
        dim: the number of elements of one sample; shorthand for ``event_shape=(dim,)``.
        event_shape: the shape of one sample (give ``dim`` or ``event_shape``).
        base: ``None`` (standard normal over ``event_shape``), a ``torch.distributions``
            distribution with that event shape, or another ProbabilityTransform of the
            same ``event_shape`` (a learned prior; it becomes a submodule).
        context_dim: size of a conditioning vector ``context`` (0: unconditional).
        context_shape: the shape of a floating conditioning tensor per sample (an
            embedding, a low-resolution image, ...), instead of ``context_dim``.
        num_classes: condition on integer class labels in ``[0, num_classes)``.
    """

    #: what the family supports beyond transform/sample/loss: a subset of CAPABILITIES
    capabilities: frozenset[str] = frozenset()
    #: what pyprobtf.fit uses when steps/batch_size/lr/... are not given
    fit_defaults: dict = {"steps": 2000, "batch_size": 256, "lr": 1e-3}

    def __init__(self, dim: int | None = None, *, event_shape=None, base=None, context_dim: int = 0,
                 context_shape=None, num_classes: int = 0):
        super().__init__()
        name = type(self).__name__
        self.event_shape = resolve_event_shape(name, dim, event_shape)
        self.dim = math.prod(self.event_shape)
        self.context_dim, self.context_shape, self.num_classes = resolve_context(
            name, context_dim, context_shape, num_classes)
        self.prior: ProbabilityTransform | None = None
        self._fixed_base: Distribution | None = None
        if base is None:
            # Buffers, so the base follows the module across .to(device) and .double().
            self.register_buffer("_base_loc", torch.zeros(self.event_shape), persistent=False)
            self.register_buffer("_base_scale", torch.ones(self.event_shape), persistent=False)
        elif isinstance(base, ProbabilityTransform):
            if base.event_shape != self.event_shape:
                raise ValueError(f"{name}: `base` must have event_shape={self.event_shape}; got a "
                                 f"{type(base).__name__} with event_shape={base.event_shape}")
            self.prior = base
        elif isinstance(base, Distribution):
            if tuple(base.event_shape) != self.event_shape or tuple(base.batch_shape) != ():
                raise ValueError(f"{name}: `base` must have event shape {self.event_shape} and batch shape (); "
                                 f"got event shape {tuple(base.event_shape)}, batch shape {tuple(base.batch_shape)}")
            self._fixed_base = base
        else:
            raise TypeError(f"{name}: `base` must be None, a torch Distribution or a ProbabilityTransform; "
                            f"got {type(base).__name__}")

    # ------------------------------------------------------------------ the base and helpers

    @property
    def conditional(self) -> bool:
        """Whether the model takes a ``context``."""
        return bool(self.context_dim or self.context_shape or self.num_classes)

    @property
    def base(self) -> Distribution:
        """The distribution of ``z``."""
        if self.prior is not None:
            return self.prior.as_distribution()
        if self._fixed_base is not None:
            return self._fixed_base
        # No argument validation: it costs time at every call, and NaN must propagate to fit's
        # own check (which names the step) rather than fail inside torch.distributions.
        return _StandardNormal(Normal(self._base_loc, self._base_scale, validate_args=False), self._base_loc.dim(),
                               validate_args=False)

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
            if t.is_floating_point():
                return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def _name(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def check_x(self, x, method: str, name: str = "x") -> torch.Tensor:
        """``x`` as a ``(B, *event_shape)`` floating tensor; a clear error otherwise."""
        return check_sample(self._name(method), name, x, self.event_shape, "event_shape")

    def check_context(self, context, batch: int, method: str, *, like: torch.Tensor | None = None):
        """``context`` as a ``(batch, *context_shape)`` floating tensor, or ``(batch,)`` int64 class labels
        (``num_classes``), or None for unconditional families; a clear error otherwise."""
        where = self._name(method)
        if not self.conditional:
            if context is not None:
                raise ValueError(f"{where}: this model is unconditional (no context_dim, context_shape or "
                                 f"num_classes) but `context` was given")
            return None
        if self.num_classes:
            return _check_labels(where, context, batch, self.num_classes, like)
        shape = self.context_shape
        spec = f"context_dim={self.context_dim}" if self.context_dim else f"context_shape={shape}"
        if context is None:
            raise ValueError(f"{where}: `context` (shape (batch, {', '.join(map(str, shape))})) is required: the "
                             f"model was built with {spec}")
        if not isinstance(context, torch.Tensor):
            raise TypeError(f"{where}: `context` must be a torch.Tensor; got {type(context).__name__}")
        if not (context.is_floating_point() or context.dtype in _INT_DTYPES):
            raise TypeError(f"{where}: `context` must be a real tensor ({spec}); got {context.dtype}")
        if tuple(context.shape) == shape:
            context = context.expand(batch, *shape)
        if tuple(context.shape) != (batch, *shape):
            raise ValueError(f"{where}: `context` must have shape {(batch, *shape)} or {shape} for {spec}; got "
                             f"{tuple(context.shape)}")
        if like is not None:
            context = context.to(dtype=like.dtype, device=like.device)
        elif not context.is_floating_point():
            context = context.to(self.dtype)
        return context

    def cond_kwargs(self, context) -> dict:
        """``{"context": context}``, or ``{}`` for None: what to pass on to methods taking ``**cond``."""
        return {} if context is None else {"context": context}

    def split_batch(self, batch, method: str = "loss") -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch (``x``, or ``(x, context)`` for conditional models) as ``(x, context)``."""
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"{self._name(method)}: a batch is `x` or `(x, context)`; got a sequence of "
                                 f"{len(batch)} items")
            x, context = batch
            if not self.conditional:
                # (x, label) pairs from a labelled dataset train an unconditional model on x alone.
                context = None
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
        n = _checks.integer(self._name("rsample"), "n", n, 0)
        return self.transform(self.base.rsample((n,)), **cond)

    def sample(self, n: int, *, seed: int | None = None, **cond) -> torch.Tensor:
        """``n`` samples ``F(z)``, ``z ~ base``, without gradients; the same ``seed`` gives the same samples."""
        n = _checks.integer(self._name("sample"), "n", n, 0)
        with torch.no_grad(), seeded(seed, self.device, self._name("sample")):
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


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def resolve_event_shape(owner: str, dim, event_shape) -> tuple[int, ...]:
    """The event shape from ``dim`` (shorthand for ``(dim,)``) or ``event_shape``: a tuple of positive ints."""
    if dim is not None and event_shape is not None:
        shape = resolve_event_shape(owner, None, event_shape)
        if dim != math.prod(shape):
            raise ValueError(f"{owner}: `dim` ({dim!r}) must be the number of elements of `event_shape` "
                             f"{shape}; give one of them")
        return shape
    if event_shape is None:
        return (_checks.integer(owner, "dim", dim, 1),)
    return _checks.shape(owner, "event_shape", event_shape)


def resolve_context(owner: str, context_dim, context_shape, num_classes) -> tuple[int, tuple[int, ...], int]:
    """``(context_dim, context_shape, num_classes)`` checked; at most one kind of context."""
    context_dim = _checks.integer(owner, "context_dim", context_dim, 0)
    num_classes = _checks.integer(owner, "num_classes", num_classes, 0)
    if context_shape is not None:
        context_shape = _checks.shape(owner, "context_shape", context_shape)
    kinds = [k for k, v in (("context_dim", context_dim), ("context_shape", context_shape),
                            ("num_classes", num_classes)) if v]
    if len(kinds) > 1:
        raise ValueError(f"{owner}: give one kind of context ({', '.join(kinds)} were given)")
    if context_dim:
        context_shape = (int(context_dim),)
    return int(context_dim), tuple(context_shape or ()), int(num_classes)


def check_sample(where: str, name: str, x, shape: tuple[int, ...], what: str = "event_shape") -> torch.Tensor:
    """``x`` as a ``(B, *shape)`` floating tensor; the error names ``where``, ``name`` and both shapes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: `{name}` must be a floating-point tensor; got {x.dtype}")
    if x.dim() != 1 + len(shape) or tuple(x.shape[1:]) != tuple(shape):
        want = "(batch, " + ", ".join(map(str, shape)) + ")"
        raise ValueError(f"{where}: `{name}` must have shape {want} for {what}={tuple(shape)}; got "
                         f"{tuple(x.shape)}")
    return x


def check_net_output(owner: str, net: str, out, expected: tuple[int, ...]) -> torch.Tensor:
    """A user network's output checked against the shape the family needs: the error names the network,
    the shape expected and the shape received (call it on every output; it costs a shape comparison)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{owner}: `{net}` must return a torch.Tensor; it returned {type(out).__name__}")
    if tuple(out.shape) != tuple(expected):
        raise ValueError(f"{owner}: `{net}` returned shape {tuple(out.shape)}; expected {tuple(expected)}")
    return out


def _check_labels(where: str, context, batch: int, num_classes: int, like) -> torch.Tensor:
    if context is None:
        raise ValueError(f"{where}: `context` (class labels in [0, {num_classes})) is required: the model was "
                         f"built with num_classes={num_classes}")
    if _checks.is_integer(context):
        context = torch.tensor(int(context))
    if not isinstance(context, torch.Tensor) or context.is_floating_point() or context.is_complex() \
            or context.dtype == torch.bool:
        got = context.dtype if isinstance(context, torch.Tensor) else type(context).__name__
        raise TypeError(f"{where}: `context` must be integer class labels (an int or an integer tensor of shape "
                        f"({batch},)) for num_classes={num_classes}; got {got}")
    if context.dim() == 0:
        context = context.expand(batch)
    if tuple(context.shape) != (batch,):
        raise ValueError(f"{where}: `context` (class labels) must have shape ({batch},); got "
                         f"{tuple(context.shape)}")
    if context.numel() and (int(context.min()) < 0 or int(context.max()) >= num_classes):
        raise ValueError(f"{where}: `context` class labels must lie in [0, {num_classes}); got values in "
                         f"[{int(context.min())}, {int(context.max())}]")
    device = like.device if like is not None else context.device
    return context.to(device=device, dtype=torch.int64)


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
            first = transforms[0]
            if t.event_shape != first.event_shape:
                raise ValueError(f"Chain: every transform must have event_shape={first.event_shape}; argument {i} "
                                 f"has event_shape={t.event_shape}")
            if (t.context_shape, t.num_classes) != (first.context_shape, first.num_classes):
                raise ValueError(f"Chain: every transform must take the same context as the first "
                                 f"(context_shape={first.context_shape}, num_classes={first.num_classes}); "
                                 f"argument {i} has context_shape={t.context_shape}, num_classes={t.num_classes}")
        first = transforms[0]
        super().__init__(event_shape=first.event_shape, context_dim=first.context_dim,
                         context_shape=None if first.context_dim else (first.context_shape or None),
                         num_classes=first.num_classes)
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
