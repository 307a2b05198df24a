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
All likelihoods are in nats, in data units (the standardisation's log-determinant included),
summed over the event's dimensions.

Networks (the user's own, or the defaults): ``encoder(x) -> (mean, log_std)``, each
``(B, *latent_shape)``, for standardised ``x`` of shape ``(B, *event_shape)``;
``decoder(z) -> x_mean`` ``(B, *event_shape)``, standardised units. The defaults are
MLPs for vectors (``hidden``, ``activation``) and :class:`pyprobtf.nn.ConvEncoder` /
:class:`pyprobtf.nn.ConvDecoder` for ``(C, H, W)`` images (``channels``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyprobtf import _checks
from pyprobtf.families._latent import (LatentFamily, SplitMLP, default_latent_dim, default_channels, event_shape_of,
                                       is_image, probe_shape, resolve_latent_shape, sum_event, vector_options)
from pyprobtf.transform import check_net_output, seeded

PRIORS = (None, "gaussian", "realnvp")
_LOG_2PI = math.log(2 * math.pi)
#: the image default latent: a vector (any family can then be the prior in Latent)
IMAGE_LATENT = (16,)


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                       event_dims: int | None = None) -> torch.Tensor:
    """``log N(x; mean, diag exp(log_std)^2)`` summed over the last ``event_dims`` dimensions (default: all but
    the first)."""
    return sum_event(-0.5 * ((x - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * _LOG_2PI, event_dims)


def build_encoder_decoder(owner, event_shape, latent_dim, latent_shape, encoder, decoder, hidden, activation,
                          channels, *, heads: int, hidden_default, vector_cap: int = 8, image_latent=IMAGE_LATENT):
    """``(latent_shape, encoder, decoder, defaults)``: the user's networks (both or neither), else the defaults:
    an MLP pair for vectors, a :class:`~pyprobtf.nn.ConvEncoder`/:class:`~pyprobtf.nn.ConvDecoder` pair for images.
    With the user's networks and no latent shape given, the latent shape is read off one call of the encoder."""
    _checks.optional(_checks.module, owner, "encoder", encoder)
    _checks.optional(_checks.module, owner, "decoder", decoder)
    if (encoder is None) != (decoder is None):
        raise ValueError(f"{owner}: give both `encoder` and `decoder`, or neither (for the defaults)")
    given = encoder is not None
    if given:
        vector_options(owner, True, hidden, activation, hidden_default)
        if channels is not None:
            raise ValueError(f"{owner}: `channels` configures the default networks; it cannot be given with your "
                             f"own networks")
        if latent_dim is None and latent_shape is None:
            out = probe_shape(owner, "encoder", encoder, event_shape)
            latent_shape = out[0] if heads > 1 and isinstance(out[0], tuple) else out
        return resolve_latent_shape(owner, event_shape, latent_dim, latent_shape, ()), encoder, decoder, False
    if is_image(event_shape):
        from pyprobtf.nn.conv import ConvDecoder, ConvEncoder

        for name, value in (("hidden", hidden), ("activation", activation)):
            if value is not None:
                raise ValueError(f"{owner}: `{name}` configures the vector default (an MLP); image defaults take "
                                 f"`channels`")
        latent = resolve_latent_shape(owner, event_shape, latent_dim, latent_shape, image_latent)
        if channels is None and len(latent) == 3 and latent[1] and event_shape[1] % latent[1] == 0:
            # A map latent: as many levels as it takes to reach its resolution.
            levels = max(1, (event_shape[1] // latent[1]).bit_length())
            channels = tuple(min(32 * 2**i, 128) for i in range(levels))
        channels = default_channels(event_shape) if channels is None else channels
        return (latent, ConvEncoder(event_shape, latent, channels=channels, heads=heads),
                ConvDecoder(latent, event_shape, channels=channels), True)
    if channels is not None:
        raise ValueError(f"{owner}: `channels` configures the image default networks; vectors take `hidden`")
    hidden, activation = vector_options(owner, False, hidden, activation, hidden_default)
    latent = resolve_latent_shape(owner, event_shape, latent_dim, latent_shape,
                                  (default_latent_dim(math.prod(event_shape), None, vector_cap),))
    return (latent, SplitMLP(event_shape, latent, hidden, activation, heads=heads),
            SplitMLP(latent, event_shape, hidden[::-1], activation), True)


class VAE(LatentFamily):
    """Variational autoencoder with a Gaussian decoder (see the module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        encoder, decoder: your networks (both, see the module docstring), or None for the defaults.
        latent_dim, latent_shape: the shape of ``z`` (default: ``min(dim, 8)`` for vectors, ``(16,)`` for images;
            read off the encoder when you give networks and no shape).
        hidden, activation: the default vector encoder MLP's hidden widths (the decoder's are reversed).
        channels: the default image networks' channels per level (:class:`pyprobtf.nn.ConvEncoder`).
        beta: weight of the KL term in the training loss (1: the ELBO; other values give a beta-VAE,
            whose loss is no longer the negative ELBO).
        decoder_std: ``"learned"`` (one std per feature, trained) or a fixed positive std, in standardised units.
        min_decoder_std: floor of the learned std (standardised units).
        n_samples: default number of importance samples of ``log_prob``.
        prior: ``None``/``"gaussian"`` (standard normal) or ``"realnvp"`` (a learned RealNVP prior with
            ``prior_layers`` coupling layers of width ``prior_hidden``, vector latents); or pass ``base=``.
            ``"auto"`` (the default): ``"realnvp"`` for images with the default networks and a vector
            latent, else standard normal.
        base: a torch Distribution over ``z`` or a ProbabilityTransform of ``event_shape=latent_shape``.
        normalize: standardise the data (per feature, or per channel for images; fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = VAE(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> x = toy("8gaussians", 5, seed=1)
        >>> model.elbo(x).shape, model.log_prob(x, n_samples=100).shape
        (torch.Size([5]), torch.Size([5]))
        >>> images = VAE(event_shape=(1, 8, 8))          # convolutional defaults, z of shape (16,)
        >>> images.sample(3, seed=0).shape
        torch.Size([3, 1, 8, 8])
    """

    # No capability is declared: log_prob is a bound (an unbiased estimate of p(x) after exp), not the exact
    # density the "log_prob" capability promises (and the checks of pyprobtf.testing would hold it to).
    capabilities = frozenset()
    # Three hidden layers and enough steps to fill a minute: on 8gaussians the decoder must tear the
    # Gaussian latent into eight pieces, and (128, 128) after 20k steps left ~10.5% of samples between
    # modes where (128, 128, 128) leaves 7-8% (measured with fit(max_seconds=60), seeds 0 and 1).
    fit_defaults = {"steps": 60_000, "batch_size": 256, "lr": 3e-3, "warmup": 200, "lr_final": 0.01,
                    "betas": (0.5, 0.9)}

    def __init__(self, dim: int | None = None, *, event_shape=None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, latent_dim: int | None = None, latent_shape=None, hidden=None,
                 activation: str | None = None, channels=None, beta: float = 1.0,
                 decoder_std: str | float = "learned", min_decoder_std: float = 1e-3, n_samples: int = 64,
                 prior: str | None = "auto", prior_layers: int = 6, prior_hidden=(64, 64), base=None,
                 normalize: bool = True):
        name = type(self).__name__
        _checks.choice(name, "prior", prior, PRIORS + ("auto",))
        shape = event_shape_of(name, dim, event_shape)
        if prior == "auto":
            # Images with the default networks get a learned prior: under a standard-normal prior the decoder
            # of an 8x8-digits VAE draws blurry blends from the prior's holes (classifier score 2.7 after
            # 120 s on 2 cores, against 5.1 with the RealNVP prior; benchmarks/results/digits-decoders-cpu.md).
            vector_latent = latent_shape is None or len(tuple(latent_shape)) == 1
            default_nets = encoder is None and decoder is None
            prior = "realnvp" if is_image(shape) and default_nets and base is None and vector_latent else None

        def realnvp_prior(latent):
            if base is not None:
                raise ValueError(f"{name}: give `prior='realnvp'` or `base`, not both")
            from pyprobtf.families.realnvp import RealNVP

            if len(latent) != 1:
                raise ValueError(f"{name}: `prior='realnvp'` needs a vector latent; got latent_shape={latent}")
            return RealNVP(dim=latent[0], layers=prior_layers, hidden=prior_hidden)

        if prior == "realnvp" and encoder is None and decoder is None:
            # The prior first, then the default networks (the order their initial weights are drawn in).
            default = IMAGE_LATENT if is_image(shape) else (default_latent_dim(math.prod(shape), None, 8),)
            base = realnvp_prior(resolve_latent_shape(name, shape, latent_dim, latent_shape, default))
        latent_shape, encoder, decoder, self_built = build_encoder_decoder(
            name, shape, latent_dim, latent_shape, encoder, decoder, hidden, activation, channels, heads=2,
            hidden_default=(128, 128, 128))
        if prior == "realnvp" and not self_built:
            base = realnvp_prior(latent_shape)
        super().__init__(None, latent_shape, event_shape=shape, base=base, normalize=normalize)
        self.beta = _checks.real(name, "beta", beta, 0)
        self.n_samples = _checks.integer(name, "n_samples", n_samples, 1)
        self.min_decoder_std = _checks.real(name, "min_decoder_std", min_decoder_std, 0, low_open=True)
        self.encoder, self.decoder = encoder, decoder
        # The default encoder's log-std starts near exp(-1) and stays in a soft [-7, 5] range; yours is used as
        # it comes.
        self._soft_log_std = self_built
        if decoder_std == "learned":
            self.decoder_log_std = nn.Parameter(torch.full(self.event_shape, math.log(0.1)))
        else:
            if isinstance(decoder_std, str):
                raise ValueError(f"{name}: `decoder_std` must be 'learned' or a positive number; got {decoder_std!r}")
            std = _checks.real(name, "decoder_std", decoder_std, 0, low_open=True)
            self.register_buffer("decoder_log_std", torch.full(self.event_shape, math.log(std)))

    # -------------------------------------------------------------- the networks
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of ``q(z|x)``, each ``(B, *latent_shape)``; ``x`` in data units."""
        x = self.check_x(x, "posterior")
        return self._posterior(self.scaler(x.to(self.dtype)))

    def _posterior(self, y):
        out = self.encoder(y)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"{type(self).__name__}: `encoder` must return a pair (mean, log_std); it returned "
                            f"{type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (tuple, list))
                                                       else ""))
        want = (y.shape[0], *self.latent_shape)
        mu = check_net_output(type(self).__name__, "encoder (mean)", out[0], want)
        log_sigma = check_net_output(type(self).__name__, "encoder (log_std)", out[1], want)
        if self._soft_log_std:
            # A soft floor and ceiling: exp stays finite whatever the encoder outputs early in training.
            log_sigma = 6.0 * torch.tanh(log_sigma / 6.0) - 1.0
        return mu, log_sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def _log_std(self) -> torch.Tensor:
        return self.decoder_log_std.clamp_min(math.log(self.min_decoder_std))

    def _log_joint(self, y, z):
        """``log p(y|z) + log p(z)`` in standardised units (the prior's log-density of ``z``)."""
        return _gaussian_log_prob(y, self.decoded(z), self._log_std()) + self.base.log_prob(z)

    # -------------------------------------------------------------- bounds
    def _elbo(self, y: torch.Tensor, beta: float) -> torch.Tensor:
        mu, log_sigma = self._posterior(y)
        z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
        reconstruction = _gaussian_log_prob(y, self.decoded(z), self._log_std())
        if self.standard_normal_base:
            kl = sum_event(0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma))
        else:
            kl = _gaussian_log_prob(z, mu, log_sigma) - self.base.log_prob(z)
        return reconstruction - beta * kl

    def elbo(self, x: torch.Tensor, *, n_samples: int = 1, seed: int | None = None) -> torch.Tensor:
        """The evidence lower bound per row of ``x`` (nats, data units), averaged over ``n_samples`` draws of
        ``z ~ q(z|x)``; shape ``(B,)``. Without gradients when called under ``torch.no_grad``."""
        x = self.check_x(x, "elbo")
        n_samples = _checks.integer(self._name("elbo"), "n_samples", n_samples, 1)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        with seeded(seed, self.device):
            y = self.scaler(x.to(self.dtype))
            total = sum(self._elbo(y, 1.0) for _ in range(n_samples)) / n_samples
        return total - self.scaler.log_scale_sum().to(total.dtype)

    def log_prob(self, x: torch.Tensor, *, n_samples: int | None = None, seed: int | None = 0,
                 chunk: int = 64) -> torch.Tensor:
        """The importance-weighted bound on ``log p(x)`` with ``n_samples`` draws of ``q(z|x)`` (default
        ``self.n_samples``), nats, shape ``(B,)``; ``seed`` fixes the draws (None: torch's global RNG).
        Draws are taken ``chunk`` at a time, so memory stays ``O(chunk * B * dim)``. An empty batch gives an
        empty result."""
        x = self.check_x(x, "log_prob")
        where = self._name("log_prob")
        n_samples = self.n_samples if n_samples is None else _checks.integer(where, "n_samples", n_samples, 1)
        chunk = _checks.integer(where, "chunk", chunk, 1)
        if x.shape[0] == 0:  # torch's Independent.log_prob cannot reshape an empty batch
            return x.new_zeros(0)
        with seeded(seed, self.device):
            y = self.scaler(x.to(self.dtype))
            mu, log_sigma = self._posterior(y)
            parts = []
            for start in range(0, n_samples, chunk):
                k = min(chunk, n_samples - start)
                z = mu + torch.exp(log_sigma) * torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
                flat = z.reshape(k * y.shape[0], *self.latent_shape)
                rows = y.expand(k, *y.shape).reshape(k * y.shape[0], *self.event_shape)
                log_joint = self._log_joint(rows, flat).reshape(k, y.shape[0])
                parts.append(log_joint - _gaussian_log_prob(z, mu, log_sigma, len(self.latent_shape)))
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
        n = _checks.integer(self._name("sample"), "n", n, 0)
        self.check_context(context, n, "sample")
        with torch.no_grad(), seeded(seed, self.device):
            y = self.decoded(self.base.sample((n,)).to(self.dtype))
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
