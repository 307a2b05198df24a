"""Autoregressive model: a small causal transformer over discretised coordinates or tokens; ``F`` acts on uniforms.

The joint is factorised coordinate by coordinate, ``p(t) = prod_j p(t_j | t_<j)``,
each conditional a categorical over ``V`` values given by a causal transformer
(a start token, then the tokens so far). The likelihood is exact.

Sampling is ``F`` applied to uniforms (the seed paper's eq. 18-19): the base is
``U[0, 1)^dim`` and coordinate ``j`` is the inverse CDF of its conditional at
``u_j``, drawn by :func:`pyprobtf.ops.sample_logits` (``uniform=u_j``) after
temperature, top-k, top-p and min-p filtering. ``sample(n, seed=s)`` takes the
uniforms from per-row Philox streams (row ``b``, coordinate ``j``: key ``s``,
counter ``b * dim + j``, the 53-bit uniform of sample_logits' seeded path), so
a row's sample does not depend on how many rows were drawn with it.

Two kinds of data:

- tokens (``vocab_size=V``): every value is an integer in ``[0, V)``;
  ``log_prob`` is the log-probability mass of the token sequence;
- continuous vectors (the default, ``bins=B``): coordinate ``j`` is cut into ``B``
  equal bins over ``[low_j, high_j)`` (fitted to the data by ``initialize``
  with a 5% margin, or ``bounds=(low, high)``), and the model is the
  piecewise-constant density that is uniform inside each bin:
  ``log p(x) = sum_j [log P(t_j | t_<j) - log width_j]`` -- exact for that
  model, ``-inf`` outside the box. ``F`` is then a continuous triangular map
  (the Knothe-Rosenblatt map of the model): ``u_j`` picks the bin and its
  position inside the bin's share of the CDF places ``x_j`` inside the bin, so
  ``F`` is invertible (``inverse`` gives the conditional CDFs) with
  ``log|det dx/du| = -log p(x)``.

Any event shape: an image ``(C, H, W)`` is the sequence of its ``C * H * W``
values in row-major order (e.g. 8x8 digits: 64 tokens, each one of ``bins``
grey levels; ``bounds=(0, 1), bins=17`` makes the bins the cells of
:func:`pyprobtf.data.digits`' dequantization). For events of more than one
dimension, ``initialize`` fits one box shared by every value.

The network (yours, or the default :class:`pyprobtf.nn.CausalTransformer`):
``net(tokens) -> logits``, tokens int64 ``(B, L)`` with values in ``[0, V]``, ``V``
(``bins`` or ``vocab_size``) being the start token the family puts at position 0,
logits ``(B, L, V)``; position ``i`` may see tokens ``0..i`` only and gives the
distribution of value ``i`` (``L`` runs from 1 to ``dim``).

The sampling options (``temperature``, ``top_k``, ``top_p``, ``min_p``) are
part of the model (constructor arguments, overridable per call) and change
``transform``, ``inverse``, ``log_prob`` and ``sample`` together: ``log_prob``
is always the density of the distribution ``sample`` draws from. Training
(``loss``) ignores them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Uniform

from pyprobtf import _checks
from pyprobtf.nn.transformer import CausalTransformer
from pyprobtf.seeds import check_seed, signed_int64
from pyprobtf.transform import ProbabilityTransform, Trajectory, check_net_output, draw_seed

SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p")


def _sampling_ops():
    try:
        from pyprobtf.ops import filter_logits, sample_logits
    except ImportError as exc:  # until the sampling op (issue 5) is part of this build
        raise ImportError("Autoregressive sampling needs pyprobtf.ops.sample_logits and filter_logits, which this "
                          "build of pyprobtf does not have") from exc
    return sample_logits, filter_logits


def philox_uniforms(seed: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """``(rows, cols)`` float64 uniforms in [0, 1): entry ``(b, j)`` is Philox's 53-bit uniform with key ``seed``
    and counter ``b * cols + j`` (what :func:`pyprobtf.ops.sample_logits` draws with ``seed=`` a tensor of
    ``seed`` and ``offset=b * cols + j``)."""
    from pyprobtf.reference.philox import uniform53

    counters = torch.arange(rows * cols, dtype=torch.int64, device=device).reshape(rows, cols)
    return uniform53(seed, counters)


class Autoregressive(ProbabilityTransform):
    """Autoregressive transformer over discretised coordinates or tokens (see the module docstring).

    Args:
        dim: number of coordinates (sequence length); shorthand for ``event_shape=(dim,)``.
        event_shape: the shape of one sample (an image ``(C, H, W)`` is read in row-major order).
        net: your causal network (see the module docstring), or None for the default transformer.
        bins: bins per coordinate for continuous data (ignored with ``vocab_size``; default 64, 16 for images).
        vocab_size: for token data: the number of token values (data are integers in ``[0, vocab_size)``).
        bounds: continuous data: ``(low, high)`` for every coordinate; ``None`` fits them to the data
            (``initialize``, with a margin of ``margin`` times the range on each side).
        d_model, layers, heads: the default transformer's width, depth and attention heads (64, 2, 4; images:
            ``d_model=32``, and ``fit_defaults`` batches of 64).
        dropout: dropout in the default transformer's blocks while training (a regulariser for small data sets).
        temperature, top_k, top_p, min_p: the sampling options (see :func:`pyprobtf.ops.sample_logits`).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = Autoregressive(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> x = model.sample(4, seed=0)
        >>> model.log_prob(x).shape
        torch.Size([4])
        >>> hot = model.sample(4, seed=0, temperature=0.7, top_p=0.9)
    """

    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 2e-3, "warmup": 200, "lr_final": 0.01,
                    "grad_clip": 1.0}
    #: the keyword options transform/sample/log_prob take (what Tempered passes on)
    sampling_options = SAMPLING_OPTIONS

    def __init__(self, dim: int | None = None, *, event_shape=None, net: nn.Module | None = None,
                 bins: int | None = None,
                 vocab_size: int | None = None, bounds=None, margin: float = 0.05, d_model: int | None = None,
                 layers: int | None = None, heads: int | None = None, dropout: float | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0):
        super().__init__(dim, event_shape=event_shape)
        name = type(self).__name__
        self.tokens_mode = vocab_size is not None
        image = len(self.event_shape) == 3
        if bins is None:
            bins = 16 if image else 64
        self.vocab = (_checks.integer(name, "vocab_size", vocab_size, 1) if self.tokens_mode else
                      _checks.integer(name, "bins", bins, 1))
        if image:
            # Images are long sequences: smaller batches, and a narrower default transformer, keep steps cheap.
            self.fit_defaults = {**type(self).fit_defaults, "batch_size": 64}
        self.margin = _checks.real(name, "margin", margin, 0)
        self.sampling = self._check_sampling(name, {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                                    "min_p": min_p})
        options = {"d_model": d_model, "layers": layers, "heads": heads, "dropout": dropout}
        if _checks.optional(_checks.module, name, "net", net) is not None:
            for key, value in options.items():
                if value is not None:
                    raise ValueError(f"{name}: `{key}` configures the default transformer; it cannot be given with "
                                     f"your own `net`")
            self.net = net
        else:
            defaults = {"d_model": 32 if image else 64, "layers": 2, "heads": 4}
            d_model, layers, heads = (_checks.integer(name, k, defaults[k] if options[k] is None else options[k], 1)
                                      for k in ("d_model", "layers", "heads"))
            if d_model % heads:
                raise ValueError(f"{name}: `d_model` must be a multiple of `heads`; got {d_model} and {heads}")
            dropout = _checks.real(name, "dropout", 0.0 if dropout is None else dropout, 0, 1, high_open=True)
            self.net = CausalTransformer(self.dim, self.vocab, d_model=d_model, layers=layers, heads=heads,
                                         dropout=dropout)
        self.register_buffer("low", torch.zeros(self.dim))
        self.register_buffer("width", torch.ones(self.dim))
        self.register_buffer("bounded", torch.tensor(self.tokens_mode))
        if bounds is not None:
            if self.tokens_mode:
                raise ValueError(f"{name}: `bounds` is for continuous data; token data (vocab_size) have none")
            low, high = self._check_bounds(name, bounds)
            self._set_bounds(torch.full((self.dim,), low), torch.full((self.dim,), high))
        # Continuous data: an invertible triangular map with exact densities. Tokens: a log-pmf only.
        self.capabilities = frozenset() if self.tokens_mode else frozenset({"inverse", "ladj", "log_prob"})
        self.register_buffer("_u_low", torch.zeros(self.event_shape), persistent=False)
        self.register_buffer("_u_high", torch.ones(self.event_shape), persistent=False)

    # -------------------------------------------------------------- options and checks
    @staticmethod
    def _check_bounds(name, bounds):
        low, high = _checks.sequence(name, "bounds", bounds, _checks.real, length=2)
        if not low < high:
            raise ValueError(f"{name}: `bounds` must be finite with low < high; got {bounds!r}")
        return low, high

    @staticmethod
    def _check_sampling(where: str, options: dict) -> dict:
        out = {}
        for key, value in options.items():
            if key == "top_k":
                out[key] = _checks.integer(where, "top_k", value, 0)
            elif key == "temperature":
                out[key] = _checks.real(where, "temperature", value, 0)
            elif key == "top_p":
                out[key] = _checks.real(where, "top_p", value, 0, 1, low_open=True)
            else:
                out[key] = _checks.real(where, "min_p", value, 0, 1, high_open=True)
        return out

    def _options(self, method: str, overrides: dict) -> dict:
        unknown = set(overrides) - set(SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"{self._name(method)}: unknown option(s) {sorted(unknown)}; the sampling options are "
                            f"{SAMPLING_OPTIONS}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return {**self.sampling, **self._check_sampling(self._name(method), given)}

    @staticmethod
    def _filtering(options: dict) -> bool:
        return options != {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}

    @property
    def base(self):
        """``U[0, 1)`` for every value of the event."""
        return Independent(Uniform(self._u_low, self._u_high, validate_args=False), len(self.event_shape),
                           validate_args=False)

    # -------------------------------------------------------------- bins
    @torch.no_grad()
    def _set_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        self.low.copy_(low)
        self.width.copy_((high - low) / self.vocab)
        self.bounded.fill_(True)

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Continuous data without ``bounds``: fit the box to the data (range plus ``margin`` on each side; one
        range for all values of events of more than one dimension, such as images)."""
        x, _ = self.split_batch(batch, "initialize")
        if self.tokens_mode or bool(self.bounded) or x.shape[0] == 0:
            return
        x = self._flat(x)
        if len(self.event_shape) > 1:
            x = x.reshape(-1, 1)
        lo, hi = x.min(0).values.double(), x.max(0).values.double()
        lo, hi = lo.expand(self.dim), hi.expand(self.dim)
        pad = self.margin * (hi - lo) + 1e-3 * (hi - lo).abs().clamp_min(1.0)
        self._set_bounds((lo - pad).to(self.low), (hi + pad).to(self.low))

    def _require_bounds(self, method: str) -> None:
        if not bool(self.bounded):
            raise RuntimeError(f"{self._name(method)}: the bins are not set yet: train with pyprobtf.fit (which "
                               f"fits them to the data), call initialize(data), or pass bounds=(low, high)")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.dim)

    def tokenize(self, x: torch.Tensor, *, clamp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, inside)``: the bin (or token) of every value of ``x`` ``(B, *event_shape)``, int64 ``(B, dim)``
        in row-major order, and which rows lie in the model's support (``clamp=True`` moves outside values into the
        edge bins). A NaN value is token 0 and its row is outside the support, whatever ``clamp``."""
        x = self._flat(x)
        nan = torch.isnan(x)
        if self.tokens_mode:
            t = torch.round(x)
            inside = ((t == x) & (t >= 0) & (t < self.vocab)).all(1)
            return torch.where(nan, 0.0, t).clamp(0, self.vocab - 1).long(), inside
        self._require_bounds("tokenize")
        pos = (x.double() - self.low.double()) / self.width.double()
        inside = ((pos >= 0) & (pos < self.vocab)).all(1)
        t = torch.floor(torch.where(nan, 0.0, pos)).clamp(0, self.vocab - 1).long()
        return t, (inside | clamp) & ~nan.any(1)

    # -------------------------------------------------------------- conditionals
    def next_logits(self, prefix: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, j + 1, V)`` for a prefix of tokens ``(B, j)``: the network on ``[start, prefix]``; the last
        position is the conditional of token ``j`` given the prefix."""
        start = prefix.new_full((prefix.shape[0], 1), self.vocab)
        out = self.net(torch.cat([start, prefix], 1))
        return check_net_output(type(self).__name__, "net", out, (prefix.shape[0], prefix.shape[1] + 1, self.vocab))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, dim, V)``: position ``j`` is the conditional of token ``j`` given ``t_<j``."""
        return self.next_logits(tokens[:, :-1])

    def _log_probs(self, logits: torch.Tensor, options: dict) -> torch.Tensor:
        """log-probabilities ``(..., V)`` of the filtered distribution (float64 when filtering)."""
        if not self._filtering(options):
            return F.log_softmax(logits, -1)
        _, filter_logits = _sampling_ops()
        flat = logits.reshape(-1, logits.shape[-1])
        return F.log_softmax(filter_logits(flat.double(), **options), -1).reshape(logits.shape)

    def log_prob(self, x: torch.Tensor, **sampling) -> torch.Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``: a density over the bins' box (continuous data) or the log-pmf
        (tokens); ``-inf`` outside the support, NaN for a row holding NaN. ``sampling`` overrides the model's
        sampling options."""
        x = self.check_x(x, "log_prob")
        options = self._options("log_prob", sampling)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        tokens, inside = self.tokenize(x)
        lp = self._log_probs(self.logits(tokens), options)
        out = lp.gather(2, tokens.unsqueeze(2)).squeeze(2).sum(1)
        if not self.tokens_mode:
            out = out - torch.log(self.width).sum().to(out.dtype)
        out = torch.where(inside, out, torch.full_like(out, -math.inf))
        return torch.where(torch.isnan(self._flat(x)).any(1), torch.full_like(out, math.nan), out).to(x.dtype)

    def loss(self, batch):
        """Negative log-likelihood per sample in nats (values outside the box count in the edge bins)."""
        x, _ = self.split_batch(batch)
        tokens, inside = self.tokenize(x, clamp=not self.tokens_mode)
        if self.tokens_mode and not bool(inside.all()):
            row = int((~inside).nonzero()[0, 0])
            raise ValueError(f"{self._name('loss')}: `x` must hold integer tokens in [0, {self.vocab}) "
                             f"(vocab_size={self.vocab}); row {row} is {x[row].tolist()}")
        lp = F.log_softmax(self.logits(tokens), -1).gather(2, tokens.unsqueeze(2)).squeeze(2).sum(1)
        if not self.tokens_mode:
            lp = lp - torch.log(self.width).sum().to(lp.dtype)
        return -lp.mean()

    # -------------------------------------------------------------- F and its inverse
    def _check_u(self, u, method: str) -> torch.Tensor:
        """The uniforms ``(B, *event_shape)`` checked, as ``(B, dim)``."""
        u = self._flat(self.check_x(u, method, "z"))
        bad = ~((u >= 0) & (u < 1)).all(1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"{self._name(method)}: `z` must hold uniforms in [0, 1) (the base U[0, 1)^{self.dim}); "
                             f"row {row} is {u[row].tolist()}")
        return u

    def _draw(self, u: torch.Tensor, options: dict, states: list | None = None):
        """``(x, tokens, log_q)``: F(u) coordinate by coordinate; ``log_q`` = sum of the chosen tokens' filtered
        log-probabilities. ``states``: append the state after each coordinate (see ``trajectory``)."""
        sample_logits, _ = _sampling_ops()
        n = u.shape[0]
        tokens = torch.zeros(n, self.dim, dtype=torch.long, device=u.device)
        coords, log_q = [], u.new_zeros(n, dtype=torch.float64)
        for j in range(self.dim):
            # float64 logits: the op and the in-bin position below see the same filtered distribution.
            logits = self.next_logits(tokens[:, :j])[:, -1].double()
            u_j = u[:, j]
            t = sample_logits(logits.detach(), uniform=u_j.detach().double(), **options)
            tokens[:, j] = t
            lp = self._log_probs(logits, options)
            chosen = lp.gather(1, t[:, None]).squeeze(1)
            log_q = log_q + chosen.detach()
            if self.tokens_mode:
                coords.append(t.to(u.dtype))
            else:
                # Position inside the bin: where u_j falls in the token's share of the CDF (vocabulary order).
                probs = lp.exp()
                before = (probs.cumsum(1) - probs).gather(1, t[:, None]).squeeze(1)
                frac = torch.nan_to_num((u_j.double() - before) / chosen.exp(), nan=0.0).clamp(0.0, 1.0 - 2**-40)
                coords.append((self.low[j].double() + (t.double() + frac) * self.width[j].double()).to(u.dtype))
            if states is not None:
                states.append(self._state(coords, u))
        return torch.stack(coords, 1), tokens, log_q

    def _state(self, coords: list, u: torch.Tensor) -> torch.Tensor:
        """The drawn coordinates, and the rest as their uniforms spread over the box (or the vocabulary)."""
        rest = u[:, len(coords):].double()
        if self.tokens_mode:
            rest = rest * self.vocab
        else:
            rest = self.low[len(coords):].double() + rest * self.vocab * self.width[len(coords):].double()
        return torch.cat([torch.stack(coords, 1), rest.to(u.dtype)], 1)

    def transform(self, z, context=None, **sampling):
        """``x = F(u)`` for uniforms ``u`` (called ``z``) of shape ``(B, dim)`` in ``[0, 1)``."""
        z = self._check_u(z, "transform")
        self.check_context(context, z.shape[0], "transform")
        options = self._options("transform", sampling)
        if not self.tokens_mode:
            self._require_bounds("transform")
        return self._draw(z, options)[0].reshape(z.shape[0], *self.event_shape)

    def transform_and_ladj(self, z, context=None, **sampling):
        """``(F(u), log|det dF/du|)``; the log-determinant is ``-log p(x)`` (continuous data only)."""
        if self.tokens_mode:
            raise self._unsupported("log-determinant of F (token data are discrete)")
        z = self._check_u(z, "transform_and_ladj")
        self.check_context(context, z.shape[0], "transform_and_ladj")
        self._require_bounds("transform_and_ladj")
        x, _, log_q = self._draw(z, self._options("transform_and_ladj", sampling))
        ladj = torch.log(self.width.double()).sum() - log_q
        return x.reshape(z.shape[0], *self.event_shape), ladj.to(x.dtype)

    def inverse_and_ladj(self, x, context=None, **sampling):
        """``(u, log|det du/dx|)``: the conditional CDFs of ``x`` (continuous data only) and ``log p(x)``."""
        if self.tokens_mode:
            raise self._unsupported("inverse (token data are discrete)")
        x = self.check_x(x, "inverse_and_ladj")
        self.check_context(context, x.shape[0], "inverse_and_ladj")
        options = self._options("inverse_and_ladj", sampling)
        tokens, inside = self.tokenize(x)
        if not bool(inside.all()):
            row = int((~inside).nonzero()[0, 0])
            raise ValueError(f"{self._name('inverse_and_ladj')}: `x` must lie in the model's box [low, low + "
                             f"bins * width); row {row} is {x[row].tolist()}")
        lp = self._log_probs(self.logits(tokens).double(), options)
        probs = lp.exp()
        chosen = lp.gather(2, tokens.unsqueeze(2)).squeeze(2)
        before = (probs.cumsum(2) - probs).gather(2, tokens.unsqueeze(2)).squeeze(2)
        frac = (self._flat(x).double() - self.low.double()) / self.width.double() - tokens.double()
        u = (before + frac * chosen.exp()).clamp(0.0, 1.0 - 2**-53)
        ladj = chosen.sum(1) - torch.log(self.width.double()).sum()
        return u.to(x.dtype).reshape(x.shape), ladj.to(x.dtype)

    def sample(self, n: int, *, seed: int | None = None, context=None, **sampling) -> torch.Tensor:
        """``n`` samples ``F(u)``, ``u`` from per-row Philox streams of ``seed`` (see the module docstring);
        ``sampling`` overrides the sampling options for this call."""
        n = _checks.integer(self._name("sample"), "n", n, 0)
        self.check_context(context, n, "sample")
        if seed is None:
            seed = draw_seed()
        else:
            seed = signed_int64(check_seed(seed, self._name("sample")))
        u = philox_uniforms(seed, n, self.dim, device=self.device).to(self.dtype)
        u = u.reshape(n, *self.event_shape)
        # float32 rounding can lift a uniform just below 1 to 1.0: keep it inside [0, 1).
        u = u.clamp_max(1.0 - torch.finfo(u.dtype).eps / 2)
        with torch.no_grad():
            return self.transform(u, **sampling)

    def trajectory(self, z, context=None, **sampling):
        """``z`` (the uniforms), then the state after each coordinate is drawn: drawn coordinates hold their
        values, the others their uniforms spread over the box (token data: over ``[0, vocab_size)``)."""
        u = self._check_u(z, "trajectory")
        self.check_context(context, z.shape[0], "trajectory")
        states = []
        with torch.no_grad():
            self._draw(u, self._options("trajectory", sampling), states)
        states = [s.reshape(z.shape) for s in states]
        return Trajectory([z] + states, ["z"] + [f"x_{j + 1}" for j in range(self.dim - 1)] + ["x"])
