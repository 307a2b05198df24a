"""RealNVP: a normalizing flow of affine coupling layers, with exact likelihood.

``x = F(z)`` is a stack of blocks, each ``ActNorm -> affine coupling ->
(permutation)``. A coupling layer keeps half of the coordinates ``a`` and moves
the other half ``b`` by ``b * exp(s(a)) + t(a)`` through
:func:`pyprobtf.ops.affine_coupling` (the fused op, ``scale_fn="softclamp"`` by
default so ``|s|`` stays bounded); successive layers alternate which half is
kept. ``log p(x) = log N(F^-1(x)) + log|det dF^-1/dx|`` exactly, the
log-determinant being the sum of the layers' (the change of variables).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from pyprobtf.families._nets import MLP, FourierFeatures, check_activation, check_hidden
from pyprobtf.ops import affine_coupling
from pyprobtf.transform import ProbabilityTransform, Trajectory


class ActNorm(nn.Module):
    """``x = z * exp(log_scale) + loc`` per feature (Glow's activation normalisation).

    Initialised from data so that the data leave it standardised (``initialize_from``).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, z, context=None, inverse: bool = False):
        ladj = self.log_scale.sum().expand(z.shape[0])
        if inverse:
            return (z - self.loc) * torch.exp(-self.log_scale), -ladj
        return z * torch.exp(self.log_scale) + self.loc, ladj

    @torch.no_grad()
    def initialize_from(self, x: torch.Tensor) -> None:
        """Set loc and scale to the mean and std of ``x`` (this layer's output side)."""
        if x.shape[0] < 2:
            return
        self.loc.copy_(x.mean(0))
        self.log_scale.copy_(torch.log(x.std(0).clamp_min(1e-3)))
        self.initialized.fill_(True)


class Coupling(nn.Module):
    """Affine coupling: the coordinates ``transformed`` move by an affine map conditioned on the others."""

    def __init__(self, dim: int, transformed: list[int], hidden, activation: str, context_dim: int,
                 scale_fn: str, clamp: float, backend: str, x_frequencies: int = 0):
        super().__init__()
        kept = [i for i in range(dim) if i not in transformed]
        order = kept + transformed
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long), persistent=False)
        self.register_buffer("moved", torch.tensor(transformed, dtype=torch.long), persistent=False)
        self.register_buffer("unsort", torch.argsort(torch.tensor(order)), persistent=False)
        self.features = FourierFeatures(len(kept), x_frequencies if kept else 0)
        # With nothing to condition on (dim 1, no context), the layer is an affine map learnt through a
        # constant input.
        self.constant_input = self.features.size + context_dim == 0
        n_in = max(self.features.size + context_dim, 1)
        self.net = MLP(n_in, hidden, 2 * len(transformed), activation, zero_last=True)
        self.scale_fn, self.clamp, self.backend = scale_fn, clamp, backend

    def forward(self, z, context=None, inverse: bool = False):
        a, b = z[:, self.kept], z[:, self.moved]
        if self.constant_input:
            inputs = z.new_ones(z.shape[0], 1)
        else:
            inputs = self.features(a) if context is None else torch.cat([self.features(a), context], 1)
        h = self.net(inputs)
        shift, scale = h.chunk(2, 1)
        b, ladj = affine_coupling(b, shift, scale, scale_fn=self.scale_fn, clamp=self.clamp, inverse=inverse,
                                  backend=self.backend)
        return torch.cat([a, b], 1)[:, self.unsort], ladj.to(z.dtype)


class Permutation(nn.Module):
    """A fixed permutation of the coordinates (log-determinant 0)."""

    def __init__(self, perm: torch.Tensor):
        super().__init__()
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv", torch.argsort(perm), persistent=False)

    def forward(self, z, context=None, inverse: bool = False):
        return z[:, self.inv if inverse else self.perm], z.new_zeros(z.shape[0])


class RealNVP(ProbabilityTransform):
    """RealNVP normalizing flow (Dinh et al. 2017) for vectors: exact ``log_prob``, ``inverse`` and log-determinants.

    Args:
        dim: data dimension.
        layers: coupling layers; each is preceded by an ActNorm.
        hidden: widths of the hidden layers of each coupling network.
        activation: ``"silu"``, ``"relu"``, ``"gelu"``, ``"tanh"``, ``"elu"`` or ``"softplus"``.
        scale_fn, clamp: how the network's log-scale output is bounded (see
            :func:`pyprobtf.ops.affine_coupling`).
        actnorm: put an ActNorm before every coupling layer.
        permutation: ``"random"`` (a fixed random permutation after every second
            coupling layer, seeded by the layer index), ``"reverse"`` or ``None``; only used when ``dim > 2``.
        x_frequencies: Fourier features of the coupling networks' inputs (see
            :class:`~pyprobtf.families._nets.FourierFeatures`).
        base, context_dim: see :class:`~pyprobtf.ProbabilityTransform`.
        backend: the affine_coupling backend (``"auto"``, ``"cpp"``, ``"reference"``, ...).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = RealNVP(dim=2)
        >>> _ = fit(model, toy("moons", 10_000), steps=100, progress=False)
        >>> model.log_prob(toy("moons", 3, seed=1)).shape
        torch.Size([3])
    """

    capabilities = frozenset({"inverse", "ladj", "log_prob"})
    fit_defaults = {"steps": 20_000, "batch_size": 512, "lr": 2e-3, "warmup": 200, "grad_clip": 10.0,
                    "lr_final": 0.01}

    def __init__(self, dim: int, *, layers: int = 10, hidden=(128, 128), activation: str = "silu",
                 scale_fn: str = "softclamp", clamp: float = 3.0, actnorm: bool = True,
                 permutation: str | None = "random", x_frequencies: int = 0, base=None, context_dim: int = 0,
                 backend: str = "auto"):
        super().__init__(dim, base=base, context_dim=context_dim)
        name = type(self).__name__
        if isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 1:
            raise ValueError(f"{name}: `layers` must be a positive int; got {layers!r}")
        hidden = check_hidden(name, hidden)
        check_activation(name, activation)
        if permutation not in ("random", "reverse", None):
            raise ValueError(f"{name}: `permutation` must be 'random', 'reverse' or None; got {permutation!r}")
        self.blocks = nn.ModuleList()
        for k in range(layers):
            block = nn.ModuleList()
            if actnorm:
                block.append(ActNorm(dim))
            # Alternating masks: even layers move the odd coordinates, odd layers the even ones
            # (in 1-D there is nothing to condition on: the layer is an affine map of the context).
            moved = [i for i in range(dim) if i % 2 != k % 2] if dim > 1 else [0]
            block.append(Coupling(dim, moved, hidden, activation, context_dim, scale_fn, clamp, backend,
                                  x_frequencies))
            if permutation is not None and dim > 2 and k % 2 == 1 and k < layers - 1:
                if permutation == "reverse":
                    perm = torch.arange(dim - 1, -1, -1)
                else:
                    perm = torch.randperm(dim, generator=torch.Generator().manual_seed(1000 + k))
                block.append(Permutation(perm))
            self.blocks.append(block)

    def _run(self, h, context, inverse: bool, states=None):
        total = h.new_zeros(h.shape[0])
        blocks = reversed(self.blocks) if inverse else self.blocks
        for block in blocks:
            for layer in (reversed(block) if inverse else block):
                h, ladj = layer(h, context, inverse=inverse)
                total = total + ladj
            if states is not None:
                states.append(h)
        return h, total

    def _checked(self, v, context, method, name="x"):
        v = self.check_x(v, method, name)
        return v, self.check_context(context, v.shape[0], method, like=v)

    def transform_and_ladj(self, z, context=None):
        return self._run(*self._checked(z, context, "transform_and_ladj", "z"), False)

    def transform(self, z, context=None):
        return self._run(*self._checked(z, context, "transform", "z"), False)[0]

    def inverse_and_ladj(self, x, context=None):
        return self._run(*self._checked(x, context, "inverse_and_ladj"), True)

    def inverse(self, x, context=None):
        return self._run(*self._checked(x, context, "inverse"), True)[0]

    def log_prob(self, x, context=None):
        z, ladj = self._run(*self._checked(x, context, "log_prob"), True)
        return self.base.log_prob(z) + ladj

    def trajectory(self, z, context=None):
        z, context = self._checked(z, context, "trajectory", "z")
        states = [z]
        with torch.no_grad():
            self._run(z, context, False, states)
        return Trajectory(states, ["z"] + [f"layer {k + 1}" for k in range(len(self.blocks) - 1)] + ["x"])

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Initialise every ActNorm from ``batch`` pulled back through the layers after it."""
        x, context = self.split_batch(batch, "initialize")
        h = x
        for block in reversed(self.blocks):
            for layer in reversed(block):
                if isinstance(layer, ActNorm) and not bool(layer.initialized):
                    layer.initialize_from(h)
                h, _ = layer(h, context, inverse=True)

    def _needs_init(self) -> bool:
        # Checked until it is False once (reading the flags would sync a GPU at every step).
        if not getattr(self, "_all_initialized", False):
            self._all_initialized = all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))
        return not self._all_initialized

    def loss(self, batch):
        """Negative log-likelihood per sample in nats (ActNorms initialise from the first batch if needed)."""
        x, context = self.split_batch(batch)
        if self.training and self._needs_init():
            self.initialize((x, context) if context is not None else x)
        return -self.log_prob(x, context).mean()
