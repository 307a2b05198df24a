"""RealNVP: a normalizing flow of affine coupling layers, with exact likelihood.

``x = F(z)`` is a stack of blocks, each ``ActNorm -> affine coupling ->
(permutation)``. A coupling layer keeps half of the coordinates ``a`` and moves
the other half ``b`` by ``b * exp(s(a)) + t(a)`` through
:func:`pyprobtf.ops.affine_coupling` (the fused op, ``scale_fn="softclamp"`` by
default so ``|s|`` stays bounded); successive layers alternate which half is
kept. ``log p(x) = log N(F^-1(x)) + log|det dF^-1/dx|`` exactly, the
log-determinant being the sum of the layers' (the change of variables).

On image shapes ``(C, H, W)`` the layers are Dinh et al.'s multi-scale
architecture (:class:`MultiScaleFlow`): checkerboard couplings, a squeeze
(each 2x2 patch becomes 4 channels), channel-wise couplings, optionally half of
the channels factored out as latents, and checkerboard couplings at the last
scale; the scale/shift networks come from ``conditioner(in_channels,
out_channels)``.
"""

from __future__ import annotations


import torch
from torch import nn

from pyprobtf import _checks
from pyprobtf.families._nets import MLP, FourierFeatures, check_activation, check_hidden
from pyprobtf.ops import affine_coupling
from pyprobtf.transform import ProbabilityTransform, Trajectory, check_net_output


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
    """RealNVP normalizing flow (Dinh et al. 2017): exact ``log_prob``, ``inverse`` and log-determinants.

    Args:
        dim, event_shape: the shape of one sample (``dim=d`` is ``event_shape=(d,)``); on ``(C, H, W)``
            image shapes the multi-scale architecture below replaces ``layers``/``hidden``/``permutation``.
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
        base, context_dim: see :class:`~pyprobtf.ProbabilityTransform` (image shapes: unconditional).
        backend: the affine_coupling backend (``"auto"``, ``"cpp"``, ``"reference"``, ...).
        levels: image shapes: scales (``H`` and ``W`` must be divisible by ``2 ** (levels - 1)``).
        checkerboard, channel, final: image shapes: checkerboard couplings per scale, channel-wise couplings
            per scale (after the squeeze), checkerboard couplings at the last scale (Dinh et al.: 3, 3, 4).
        factor_out: image shapes: set half of the channels aside as latents after each scale but the last.
        conditioner: image shapes: a factory ``(in_channels, out_channels) -> nn.Module`` for the scale/shift
            networks, each mapping ``(B, in_channels, h, w)`` to ``(B, out_channels, h, w)`` (shift, then
            log-scale); default :func:`conv_conditioner` (a small conv net, its last layer at zero).

    On images::

        model = RealNVP(event_shape=(1, 8, 8), conditioner=lambda c_in, c_out: MyConvNet(c_in, c_out))

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

    #: fit's defaults for image shapes
    image_fit_defaults = {"steps": 20_000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "grad_clip": 10.0,
                          "lr_final": 0.02}

    def __init__(self, dim: int | None = None, *, event_shape=None, layers: int = 10, hidden=(128, 128),
                 activation: str = "silu", scale_fn: str = "softclamp", clamp: float = 3.0, actnorm: bool = True,
                 permutation: str | None = "random", x_frequencies: int = 0, base=None, context_dim: int = 0,
                 backend: str = "auto", levels: int = 2, checkerboard: int = 3, channel: int = 3, final: int = 4,
                 factor_out: bool = True, conditioner=None):
        super().__init__(dim, event_shape=event_shape, base=base, context_dim=context_dim)
        name = type(self).__name__
        self.image = len(self.event_shape) == 3
        self.blocks = nn.ModuleList()
        if self.image:
            self._build_image(name, levels, checkerboard, channel, final, factor_out, conditioner, scale_fn, clamp,
                              backend)
            return
        if len(self.event_shape) != 1:
            raise ValueError(f"{name}: event_shape must be (dim,) or an image shape (C, H, W); got "
                             f"{self.event_shape}")
        dim = self.dim
        layers = _checks.integer(name, "layers", layers, 1)
        hidden = check_hidden(name, hidden)
        check_activation(name, activation)
        _checks.choice(name, "permutation", permutation, ("random", "reverse", None))
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

    def _build_image(self, name, levels, checkerboard, channel, final, factor_out, conditioner, scale_fn, clamp,
                     backend):
        if self.conditional:
            raise ValueError(f"{name}: the image (multi-scale) RealNVP is unconditional; got a context")
        for key, value, low in (("levels", levels, 1), ("checkerboard", checkerboard, 0), ("channel", channel, 0),
                                ("final", final, 1)):
            _checks.integer(name, key, value, low)
        c, hh, ww = self.event_shape
        factor = 2 ** (levels - 1)
        if hh % factor or ww % factor:
            raise ValueError(f"{name}: image height and width must be divisible by 2 ** (levels - 1) = {factor}; "
                             f"got event_shape={self.event_shape}")
        if scale_fn not in ("exp", "softclamp"):
            raise ValueError(f"{name}: image shapes need scale_fn 'exp' or 'softclamp' (the checkerboard masks "
                             f"rely on a log-scale of 0 for 0); got {scale_fn!r}")
        _checks.boolean(name, "factor_out", factor_out)
        _checks.optional(_checks.callable_, name, "conditioner", conditioner,
                         "factory (in_channels, out_channels) -> nn.Module")
        self.fit_defaults = dict(self.image_fit_defaults)
        self.flow = MultiScaleFlow(self.event_shape, levels=levels, checkerboard=checkerboard, channel=channel,
                                   final=final, factor_out=factor_out,
                                   conditioner=conditioner if conditioner is not None else conv_conditioner(),
                                   scale_fn=scale_fn, clamp=clamp, backend=backend)

    def _run(self, h, context, inverse: bool, states=None):
        if self.image:
            out = self.flow.encode(h) if inverse else self.flow.decode(h)
            if states is not None:
                states.append(out[0])
            return out
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
        return Trajectory(states, ["z"] + [f"layer {k + 1}" for k in range(len(states) - 2)] + ["x"])

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Initialise every ActNorm from ``batch`` pulled back through the layers after it."""
        x, context = self.split_batch(batch, "initialize")
        if self.image:
            self.flow.encode(x)  # each ActNorm2d initialises itself from the first data it sees
            return
        h = x
        for block in reversed(self.blocks):
            for layer in reversed(block):
                if isinstance(layer, ActNorm) and not bool(layer.initialized):
                    layer.initialize_from(h)
                h, _ = layer(h, context, inverse=True)

    def _needs_init(self) -> bool:
        # Checked until it is False once (reading the flags would sync a GPU at every step).
        if not getattr(self, "_all_initialized", False):
            self._all_initialized = all(bool(m.initialized) for m in self.modules()
                                        if isinstance(m, (ActNorm, ActNorm2d)))
        return not self._all_initialized

    def loss(self, batch):
        """Negative log-likelihood per sample in nats (ActNorms initialise from the first batch if needed)."""
        x, context = self.split_batch(batch)
        if self.training and self._needs_init():
            self.initialize((x, context) if context is not None else x)
        return -self.log_prob(x, context).mean()


# ---------------------------------------------------------------------- images: Dinh et al.'s multi-scale flow

def conv_conditioner(hidden: int = 32):
    """The default ``conditioner`` factory of image RealNVP: ``(in_channels, out_channels) -> conv3x3 -> SiLU ->
    conv1x1 -> SiLU -> conv3x3``, the last conv starting at zero (each coupling starts as the identity)."""

    def build(in_channels: int, out_channels: int) -> nn.Module:
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
                             nn.Conv2d(hidden, hidden, 1), nn.SiLU(), last)

    return build


def squeeze(h: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``: each 2x2 patch becomes 4 channels (log-determinant 0)."""
    b, c, hh, ww = h.shape
    h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(b, 4 * c, hh // 2, ww // 2)


def unsqueeze(h: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    b, c, hh, ww = h.shape
    h = h.reshape(b, c // 4, 2, 2, hh, ww).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // 4, 2 * hh, 2 * ww)


class ActNorm2d(nn.Module):
    """``x = z * exp(log_scale) + loc`` per channel; initialised from the first data it sees (data side)."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, h, inverse: bool = False):
        if inverse and not bool(self.initialized) and h.shape[0] > 1:
            with torch.no_grad():
                self.loc.copy_(h.mean((0, 2, 3), keepdim=True))
                self.log_scale.copy_(torch.log(h.std((0, 2, 3), keepdim=True).clamp_min(1e-3)))
                self.initialized.fill_(True)
        ladj = (self.log_scale.sum() * (h.shape[2] * h.shape[3])).expand(h.shape[0])
        if inverse:
            return (h - self.loc) * torch.exp(-self.log_scale), -ladj
        return h * torch.exp(self.log_scale) + self.loc, ladj


class ImageCoupling(nn.Module):
    """One affine coupling on ``(B, C, H, W)``: ``"checkerboard"`` (the pixels of one colour move, conditioned
    on the others) or ``"channel"`` (one half of the channels moves, conditioned on the other), with the mask
    flipped by ``parity``; the move is :func:`pyprobtf.ops.affine_coupling`."""

    def __init__(self, shape, kind: str, parity: int, conditioner, scale_fn: str, clamp: float, backend: str):
        super().__init__()
        c, hh, ww = shape
        self.kind, self.parity = kind, parity
        if kind == "checkerboard":
            board = (torch.arange(hh)[:, None] + torch.arange(ww)[None, :] + parity) % 2
            self.register_buffer("mask", board.to(torch.float32)[None, None], persistent=False)
            self.net, self.expected = conditioner(c, 2 * c), (2 * c, hh, ww)
        else:
            self.net, self.expected = conditioner(c // 2, 2 * (c // 2)), (2 * (c // 2), hh, ww)
        self.scale_fn, self.clamp, self.backend = scale_fn, clamp, backend

    def forward(self, h, inverse: bool = False):
        if self.kind == "checkerboard":
            mask = self.mask.to(h.dtype)
            out = check_net_output("RealNVP", "conditioner", self.net(h * mask), (h.shape[0], *self.expected))
            shift, scale = (out * (1 - mask)).chunk(2, 1)
            # The kept pixels get shift 0 and log-scale 0 (scale_fn "exp"/"softclamp" map 0 to 0): unchanged,
            # with no share in the log-determinant.
            y, ladj = affine_coupling(h, shift.contiguous(), scale.contiguous(), scale_fn=self.scale_fn,
                                      clamp=self.clamp, inverse=inverse, backend=self.backend)
            return y, ladj.to(h.dtype)
        kept, moved = h.chunk(2, 1)
        if self.parity:
            kept, moved = moved, kept
        out = check_net_output("RealNVP", "conditioner", self.net(kept), (h.shape[0], *self.expected))
        shift, scale = out.chunk(2, 1)
        moved, ladj = affine_coupling(moved.contiguous(), shift.contiguous(), scale.contiguous(),
                                      scale_fn=self.scale_fn, clamp=self.clamp, inverse=inverse,
                                      backend=self.backend)
        parts = [moved, kept] if self.parity else [kept, moved]
        return torch.cat(parts, 1), ladj.to(h.dtype)


class MultiScaleFlow(nn.Module):
    """Dinh et al.'s multi-scale architecture on ``(C, H, W)``: per scale, ``checkerboard`` couplings, a squeeze,
    ``channel`` couplings and (``factor_out``) half of the channels set aside as latents; at the last scale
    ``final`` checkerboard couplings. Every coupling is preceded by an :class:`ActNorm2d`. ``z`` has the shape
    of ``x`` (the set-aside parts are put back in place)."""

    def __init__(self, shape, *, levels: int, checkerboard: int, channel: int, final: int, factor_out: bool,
                 conditioner, scale_fn: str, clamp: float, backend: str):
        super().__init__()
        self.levels, self.factor_out = levels, factor_out
        self.scales = nn.ModuleList()
        c, hh, ww = shape
        for level in range(levels - 1):
            checker = self._stack((c, hh, ww), "checkerboard", checkerboard, conditioner, scale_fn, clamp, backend)
            c, hh, ww = 4 * c, hh // 2, ww // 2
            chan = self._stack((c, hh, ww), "channel", channel, conditioner, scale_fn, clamp, backend)
            self.scales.append(nn.ModuleList([checker, chan]))
            if factor_out:
                c = c // 2
        self.final = self._stack((c, hh, ww), "checkerboard", final, conditioner, scale_fn, clamp, backend)

    @staticmethod
    def _stack(shape, kind, n, conditioner, scale_fn, clamp, backend) -> nn.ModuleList:
        layers = nn.ModuleList()
        for k in range(n):
            layers.append(ActNorm2d(shape[0]))
            layers.append(ImageCoupling(shape, kind, k % 2, conditioner, scale_fn, clamp, backend))
        return layers

    @staticmethod
    def _run(layers, h, inverse, total):
        for layer in (reversed(layers) if inverse else layers):
            h, ladj = layer(h, inverse=inverse)
            total = total + ladj
        return h, total

    def encode(self, x):
        """``(z, log|det dz/dx|)``: the data side to the base side."""
        h, total, aside = x, x.new_zeros(x.shape[0]), []
        for checker, chan in self.scales:
            h, total = self._run(checker, h, True, total)
            h, total = self._run(chan, squeeze(h), True, total)
            if self.factor_out:
                h, out = h.chunk(2, 1)
                aside.append(out)
        h, total = self._run(self.final, h, True, total)
        for _ in self.scales:
            if self.factor_out:
                h = torch.cat([h, aside.pop()], 1)
            h = unsqueeze(h)
        return h, total

    def decode(self, z):
        """``(x, log|det dx/dz|)``: the base side to the data side."""
        h, total, aside = z, z.new_zeros(z.shape[0]), []
        for _ in self.scales:
            h = squeeze(h)
            if self.factor_out:
                h, out = h.chunk(2, 1)
                aside.append(out)
        h, total = self._run(self.final, h, False, total)
        for checker, chan in reversed(self.scales):
            if self.factor_out:
                h = torch.cat([h, aside.pop()], 1)
            h, total = self._run(chan, h, False, total)
            h, total = self._run(checker, unsqueeze(h), False, total)
        return h, total
