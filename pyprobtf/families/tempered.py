"""Truncation and temperature: one base-distribution modifier for every family.

The GAN truncation trick, Glow's sampling temperature and nucleus (top-p)
sampling are the same idea: draw ``z`` from the high-density part of the base
instead of all of it, trading diversity for typicality. :class:`Tempered`
wraps any family with two knobs that mean the same thing for every base:

- ``temperature`` ``T``: the base density raised to the power ``1/T^2`` for a
  Gaussian base (``z = loc + T * L eps``, Glow's temperature), and the
  conditional probabilities raised to ``1/T`` for token families (the
  autoregressive model, the VQ-VAE's prior), as in language-model sampling;
- ``top_p`` ``p``: keep the smallest highest-density region holding a share ``p``
  of the base's mass, renormalised. For a Gaussian that region is the ball
  ``|eps|^2 <= chi2_k^{-1}(p)`` (the truncation trick with a radius chosen by
  mass); ``eps`` is mapped into it radially by its chi-square CDF
  (``|eps'|^2 = chi2^{-1}(p * chi2(|eps|^2))``), so each draw stays a smooth function of one
  base draw and seeded sampling is reproducible. For token families it is nucleus sampling
  per conditional. ``top_k`` and ``min_p`` are the token families' other filters.

A learned prior (a base that is itself a ProbabilityTransform, e.g. a VAE's
RealNVP prior) is tempered recursively: its own base is. Where the wrapped
family has a density (an inverse, or a token family's ``log_prob``),
``log_prob`` is the density of the tempered model.

Example:
    >>> from pyprobtf.families import RealNVP
    >>> model = RealNVP(dim=2)
    >>> cold = Tempered(model, temperature=0.7, top_p=0.9)
    >>> cold.sample(5, seed=0).shape
    torch.Size([5, 2])
    >>> bool(torch.isfinite(cold.log_prob(cold.sample(5, seed=0))).all())
    True
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints

from pyprobtf import _checks
from pyprobtf.transform import ProbabilityTransform, TransformDistribution


def chi2_cdf(x: torch.Tensor, k: int) -> torch.Tensor:
    """The chi-square CDF with ``k`` degrees of freedom (float64)."""
    return torch.special.gammainc(torch.tensor(k / 2, dtype=torch.float64), x.double().clamp_min(0) / 2)


def chi2_ppf(q: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse chi-square CDF with ``k`` degrees of freedom, by bisection in float64 (to the last bits)."""
    q = q.double()
    lo = torch.zeros_like(q)
    hi = torch.full_like(q, k + 40.0 * math.sqrt(2.0 * k) + 100.0)  # far past the quantiles a float64 q can reach
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = chi2_cdf(mid, k) < q
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class TemperedNormal(Distribution):
    """``z = loc + T * L eps'`` with ``eps'`` the standard normal restricted to its ``top_p`` central ball.

    ``L`` is ``scale_tril`` (lower triangular) or the diagonal ``scale``. ``log_prob`` is the exact
    density of that truncated, scaled Gaussian (``-inf`` outside the ball).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, *, scale: torch.Tensor | None = None, scale_tril: torch.Tensor | None = None,
                 temperature: float = 1.0, top_p: float = 1.0):
        self.loc, self.scale, self.scale_tril = loc, scale, scale_tril
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.k = loc.shape[-1]
        self.radius_sq = float(chi2_ppf(torch.tensor(self.top_p), self.k)) if self.top_p < 1 else math.inf
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([self.k]), validate_args=False)

    def _truncate(self, eps: torch.Tensor) -> torch.Tensor:
        if self.top_p >= 1:
            return eps
        r_sq = eps.double().square().sum(-1)
        new_sq = chi2_ppf(chi2_cdf(r_sq, self.k) * self.top_p, self.k)
        factor = torch.where(r_sq > 0, torch.sqrt(new_sq / r_sq.clamp_min(1e-300)), torch.ones_like(r_sq))
        return eps * factor.to(eps.dtype).unsqueeze(-1)

    def _apply_scale(self, eps):
        if self.scale_tril is not None:
            return eps @ self.scale_tril.T
        return eps * self.scale

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        eps = self._truncate(torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device))
        return self.loc + self.temperature * self._apply_scale(eps)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        centred = (value - self.loc) / self.temperature
        if self.scale_tril is not None:
            eps = torch.linalg.solve_triangular(self.scale_tril, centred.unsqueeze(-1), upper=False).squeeze(-1)
            log_det = torch.log(self.scale_tril.diagonal().abs()).sum()
        else:
            eps = centred / self.scale
            log_det = torch.log(self.scale).sum()
        r_sq = eps.square().sum(-1)
        lp = -0.5 * r_sq - 0.5 * self.k * math.log(2 * math.pi) - log_det - self.k * math.log(self.temperature)
        if self.top_p < 1:
            lp = torch.where(r_sq <= self.radius_sq, lp - math.log(self.top_p), torch.full_like(lp, -math.inf))
        return lp


def temper_base(base: Distribution, temperature: float, top_p: float) -> Distribution:
    """The tempered version of a Gaussian ``base``, or of a learned prior's (recursively); an error otherwise."""
    if isinstance(base, TransformDistribution):
        return Tempered(base.model, temperature=temperature, top_p=top_p).as_distribution(**base.cond)
    if isinstance(base, MultivariateNormal):
        return TemperedNormal(base.loc, scale_tril=base.scale_tril, temperature=temperature, top_p=top_p)
    if isinstance(base, Independent) and isinstance(base.base_dist, Normal) and \
            base.reinterpreted_batch_ndims == 1 and base.base_dist.loc.dim() == 1:
        inner = base.base_dist
        return TemperedNormal(inner.loc, scale=inner.scale, temperature=temperature, top_p=top_p)
    if isinstance(base, TemperedNormal):
        return TemperedNormal(base.loc, scale=base.scale, scale_tril=base.scale_tril,
                              temperature=temperature * base.temperature, top_p=top_p * base.top_p)
    raise TypeError(f"Tempered: cannot temper a base of type {type(base).__name__}: supported are Gaussian bases "
                    f"(Independent Normal, MultivariateNormal), learned priors (ProbabilityTransform bases), and "
                    f"token families (Autoregressive, VQVAE)")


class Tempered(ProbabilityTransform):
    """``model`` with a tempered and truncated base (see the module docstring); ``F`` is ``model``'s.

    Args:
        model: any :class:`~pyprobtf.ProbabilityTransform` (not trained through this wrapper:
            ``loss`` is the model's own).
        temperature: ``T > 0`` (token families also take 0: greedy).
        top_p: the share of the base's mass kept, in ``(0, 1]``.
        top_k, min_p: token families only (see :func:`pyprobtf.ops.sample_logits`).
    """

    def __init__(self, model: ProbabilityTransform, *, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, min_p: float = 0.0):
        if not isinstance(model, ProbabilityTransform):
            raise TypeError(f"Tempered: `model` must be a ProbabilityTransform; got {type(model).__name__}")
        super().__init__(event_shape=model.event_shape, context_dim=model.context_dim,
                         context_shape=None if model.context_dim else (model.context_shape or None),
                         num_classes=model.num_classes)
        self.model = model
        self.token_family = hasattr(model, "sampling_options")
        self.top_p = _checks.real("Tempered", "top_p", top_p, 0, 1, low_open=True)
        if self.token_family:
            self.temperature = _checks.real("Tempered", "temperature", temperature, 0)
            self.options = {"temperature": self.temperature, "top_p": self.top_p,
                            "top_k": _checks.integer("Tempered", "top_k", top_k, 0),
                            "min_p": _checks.real("Tempered", "min_p", min_p, 0, 1, high_open=True)}
        else:
            self.temperature = _checks.real("Tempered", "temperature", temperature, 0, low_open=True)
            for name, value, default in (("top_k", top_k, 0), ("min_p", min_p, 0.0)):
                if value != default:
                    raise ValueError(f"Tempered: `{name}` applies to token families (Autoregressive, VQVAE) only; "
                                     f"{type(model).__name__} has a continuous base")
            self.options = {}
            temper_base(model.base, self.temperature, self.top_p)  # fail now, not at the first sample
        caps = set(model.capabilities)
        if not self.token_family and "inverse" not in caps:
            caps.discard("log_prob")  # e.g. a VAE's bound: its prior is read inside the model, not tempered here
        self.capabilities = frozenset(caps)
        self.fit_defaults = model.fit_defaults

    @property
    def base(self) -> Distribution:
        if self.token_family:
            return self.model.base
        return temper_base(self.model.base, self.temperature, self.top_p)

    def transform(self, z, **cond):
        return self.model.transform(z, **cond, **self.options)

    def transform_and_ladj(self, z, **cond):
        return self.model.transform_and_ladj(z, **cond, **self.options)

    def inverse_and_ladj(self, x, **cond):
        return self.model.inverse_and_ladj(x, **cond, **self.options)

    def log_prob(self, x, **cond):
        if self.token_family:
            return self.model.log_prob(x, **cond, **self.options)
        if "inverse" not in self.capabilities:
            raise self._unsupported("log_prob")
        z, ladj = self.model.inverse_and_ladj(x, **cond)
        return self.base.log_prob(z) + ladj

    def sample(self, n: int, *, seed: int | None = None, **cond):
        if self.token_family:
            return self.model.sample(n, seed=seed, **cond, **self.options)
        return super().sample(n, seed=seed, **cond)

    def trajectory(self, z, **cond):
        return self.model.trajectory(z, **cond, **self.options)

    def loss(self, batch):
        return self.model.loss(batch)
