"""Variational autoencoder: a Gaussian decoder ``p(x|z)`` over a prior ``p(z)``, trained by the ELBO.

The encoder gives ``q(z|x) = N(mu(x), diag sigma(x)^2)``; ``z = mu + sigma * eps``
(the reparameterisation trick) makes the evidence lower bound

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x)

differentiable (the seed paper's eq. 1). ``p(x|z) = N(decoder(z), diag s^2)``
with one learned std ``s`` per feature (or a fixed one). The KL term is in
closed form for the default standard-normal prior and a one-sample Monte
Carlo estimate ``log q(z|x) - log p(z)`` for any other, such as a learned
prior: ``VAE(dim, prior="realnvp")`` (or ``base=RealNVP(dim=latent_dim)``)
trains a RealNVP flow on the codes jointly with the VAE, and its ELBO is the
one to compare with the fixed Gaussian prior's.

``F(z)`` is the decoder mean (the generative model's noise-free sample;
``sample(..., noise=True)`` adds the decoder's Gaussian noise).
``log_prob(x, n_samples=K)`` is the importance-weighted bound of Burda et al.
(2016), ``log (1/K) sum_k p(x, z_k) / q(z_k|x)``, ``z_k ~ q(z|x)``: a lower bound on
``log p(x)`` in expectation that tightens as ``K`` grows (``K = 1`` is the
ELBO); its exponential is an unbiased estimate of ``p(x)``.
All likelihoods are in nats, in data units (the standardisation's log-determinant included).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyprobtf.families._latent import LatentFamily, check_choice, check_int, check_real, default_latent_dim
from pyprobtf.families._nets import MLP, check_activation, check_hidden
from pyprobtf.transform import _check_count, seeded

PRIORS = (None, "gaussian", "realnvp")
_LOG_2PI = math.log(2 * math.pi)


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag exp(log_std)^2)`` summed over the last dimension."""
    return (-0.5 * ((x - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * _LOG_2PI).sum(-1)


class VAE(LatentFamily):
    """Variational autoencoder with a Gaussian decoder (see the module docstring).

    Args:
        dim: data dimension.
        latent_dim: size of ``z`` (default ``min(dim, 8)``).
        hidden, activation: the encoder MLP's hidden widths (the decoder's are reversed).
        beta: weight of the KL term in the training loss (1: the ELBO; other values give a beta-VAE,
            whose loss is no longer the negative ELBO).
        decoder_std: ``"learned"`` (one std per feature, trained) or a fixed positive std, in standardised units.
        min_decoder_std: floor of the learned std (standardised units).
        n_samples: default number of importance samples of ``log_prob``.
        prior: ``None``/``"gaussian"`` (standard normal) or ``"realnvp"`` (a learned RealNVP prior with
            ``prior_layers`` coupling layers of width ``prior_hidden``); or pass ``base=`` a prior yourself.
        base: a torch Distribution over ``z`` or a ProbabilityTransform of ``dim=latent_dim``.
        normalize: standardise the data per feature (fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = VAE(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> x = toy("8gaussians", 5, seed=1)
        >>> model.elbo(x).shape, model.log_prob(x, n_samples=100).shape
        (torch.Size([5]), torch.Size([5]))
    """

    # No capability is declared: log_prob is a bound (an unbiased estimate of p(x) after exp), not the exact
    # density the "log_prob" capability promises (and the checks of pyprobtf.testing would hold it to).
    capabilities = frozenset()
    # Three hidden layers and enough steps to fill a minute: on 8gaussians the decoder must tear the
    # Gaussian latent into eight pieces, and (128, 128) after 20k steps left ~10.5% of samples between
    # modes where (128, 128, 128) leaves 7-8% (measured with fit(max_seconds=60), seeds 0 and 1).
    fit_defaults = {"steps": 60_000, "batch_size": 256, "lr": 3e-3, "warmup": 200, "lr_final": 0.01,
                    "betas": (0.5, 0.9)}

    def __init__(self, dim: int, *, latent_dim: int | None = None, hidden=(128, 128, 128), activation: str = "relu",
                 beta: float = 1.0, decoder_std: str | float = "learned", min_decoder_std: float = 1e-3,
                 n_samples: int = 64, prior: str | None = None, prior_layers: int = 6, prior_hidden=(64, 64),
                 base=None, normalize: bool = True):
        name = type(self).__name__
        check_choice(name, "prior", prior, PRIORS)
        latent_dim = default_latent_dim(dim, latent_dim, 8)
        if prior == "realnvp":
            if base is not None:
                raise ValueError(f"{name}: give `prior='realnvp'` or `base`, not both")
            from pyprobtf.families.realnvp import RealNVP

            base = RealNVP(dim=check_int(name, "latent_dim", latent_dim), layers=prior_layers, hidden=prior_hidden)
        super().__init__(dim, latent_dim, base=base, normalize=normalize)
        hidden = check_hidden(name, hidden)
        check_activation(name, activation)
        self.beta = check_real(name, "beta", beta)
        self.n_samples = check_int(name, "n_samples", n_samples)
        self.min_decoder_std = check_real(name, "min_decoder_std", min_decoder_std, 0.0, low_open=True)
        self.encoder = MLP(dim, hidden, 2 * self.latent_dim, activation)
        self.decoder = MLP(self.latent_dim, hidden[::-1], dim, activation)
        if decoder_std == "learned":
            self.decoder_log_std = nn.Parameter(torch.full((dim,), math.log(0.1)))
        else:
            if isinstance(decoder_std, str):
                raise ValueError(f"{name}: `decoder_std` must be 'learned' or a positive number; got {decoder_std!r}")
            std = check_real(name, "decoder_std", decoder_std, 0.0, low_open=True)
            self.register_buffer("decoder_log_std", torch.full((dim,), math.log(std)))

    # -------------------------------------------------------------- the networks
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of ``q(z|x)``, each ``(B, latent_dim)``; ``x`` in data units."""
        x = self.check_x(x, "posterior")
        return self._posterior(self.scaler(x.to(self.dtype)))

    def _posterior(self, y):
        mu, log_sigma = self.encoder(y).chunk(2, dim=1)
        # A soft floor and ceiling: exp stays finite whatever the encoder outputs early in training.
        return mu, 6.0 * torch.tanh(log_sigma / 6.0) - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def _log_std(self) -> torch.Tensor:
        return self.decoder_log_std.clamp_min(math.log(self.min_decoder_std))

    def _log_joint(self, y, z):
        """``log p(y|z) + log p(z)`` in standardised units (the prior's log-density of ``z``)."""
        return _gaussian_log_prob(y, self.decoder(z), self._log_std()) + self.base.log_prob(z)

    # -------------------------------------------------------------- bounds
    def _elbo(self, y: torch.Tensor, beta: float) -> torch.Tensor:
        mu, log_sigma = self._posterior(y)
        z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
        reconstruction = _gaussian_log_prob(y, self.decoder(z), self._log_std())
        if self.standard_normal_base:
            kl = 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(1)
        else:
            kl = _gaussian_log_prob(z, mu, log_sigma) - self.base.log_prob(z)
        return reconstruction - beta * kl

    def elbo(self, x: torch.Tensor, *, n_samples: int = 1, seed: int | None = None) -> torch.Tensor:
        """The evidence lower bound per row of ``x`` (nats, data units), averaged over ``n_samples`` draws of
        ``z ~ q(z|x)``; shape ``(B,)``. Without gradients when called under ``torch.no_grad``."""
        x = self.check_x(x, "elbo")
        n_samples = check_int(self._name("elbo"), "n_samples", n_samples)
        with seeded(seed, self.device):
            y = self.scaler(x.to(self.dtype))
            total = sum(self._elbo(y, 1.0) for _ in range(n_samples)) / n_samples
        return total - self.scaler.log_scale_sum().to(total.dtype)

    def log_prob(self, x: torch.Tensor, *, n_samples: int | None = None, seed: int | None = 0,
                 chunk: int = 64) -> torch.Tensor:
        """The importance-weighted bound on ``log p(x)`` with ``n_samples`` draws of ``q(z|x)`` (default
        ``self.n_samples``), nats, shape ``(B,)``; ``seed`` fixes the draws (None: torch's global RNG).
        Draws are taken ``chunk`` at a time, so memory stays ``O(chunk * B * dim)``."""
        x = self.check_x(x, "log_prob")
        where = self._name("log_prob")
        n_samples = self.n_samples if n_samples is None else check_int(where, "n_samples", n_samples)
        chunk = check_int(where, "chunk", chunk)
        with seeded(seed, self.device):
            y = self.scaler(x.to(self.dtype))
            mu, log_sigma = self._posterior(y)
            parts = []
            for start in range(0, n_samples, chunk):
                k = min(chunk, n_samples - start)
                z = mu + torch.exp(log_sigma) * torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
                flat = z.reshape(-1, self.latent_dim)
                log_joint = self._log_joint(y.repeat(k, 1), flat).reshape(k, -1)
                parts.append(log_joint - _gaussian_log_prob(z, mu, log_sigma))
            log_w = torch.cat(parts)
        bound = torch.logsumexp(log_w, 0) - math.log(n_samples)
        return bound - self.scaler.log_scale_sum().to(bound.dtype)

    # -------------------------------------------------------------- the protocol
    def loss(self, batch):
        """``-ELBO`` per sample (nats, data units; with ``beta != 1`` the KL term is weighted by ``beta``)."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        return -(self._elbo(y, self.beta).mean() - self.scaler.log_scale_sum().to(y.dtype))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder mean at the posterior mean of ``x``, in data units."""
        mu, _ = self.posterior(x)
        return self.transform(mu)

    def sample(self, n: int, *, seed: int | None = None, noise: bool = False, context=None) -> torch.Tensor:
        """``n`` samples ``F(z)``, ``z ~ p(z)`` (decoder means); ``noise=True`` adds the decoder's Gaussian noise,
        giving draws of the full generative model whose density ``log_prob`` bounds."""
        n = _check_count(n, self._name("sample"))
        self.check_context(context, n, "sample")
        with torch.no_grad(), seeded(seed, self.device):
            y = self.decode(self.base.sample((n,)).to(self.dtype))
            if noise:
                y = y + torch.exp(self._log_std()) * torch.randn_like(y)
            return self.scaler.inverse(y)

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Fit the standardisation, then a learned prior's data-dependent layers on the initial codes."""
        super().initialize(batch)
        if self.prior is not None:
            x, _ = self.split_batch(batch, "initialize")
            mu, log_sigma = self._posterior(self.scaler(x))
            self.prior.initialize(mu + torch.exp(log_sigma) * torch.randn_like(mu))
