"""Autoencoder: an encoder-decoder pair whose decoder becomes generative once the latent distribution is known.

``x = F(z)`` is the decoder; its base is a Gaussian fitted to the encoded
training data (mean and full covariance of ``encoder(x)``), tracked during
training by bias-corrected moving averages of the batch moments and refitted
exactly on a data set by :meth:`Autoencoder.fit_latent`.

Training minimises the reconstruction error ``|decoder(encoder(c(x))) - x|^2``
(summed over features, in the standardised data space), where ``c`` is an
optional corruption (a denoising autoencoder): ``"gaussian"`` adds noise of
std ``corruption``, ``"mask"`` zeroes each input feature with probability
``corruption``. A plain autoencoder's codes fill an arbitrary region that a
Gaussian fits badly; ``latent_penalty`` (default 1) adds the sliced
2-Wasserstein distance between the batch's codes and a standard normal (as in
the sliced-Wasserstein autoencoder, Kolouri et al. 2019), so that the fitted
Gaussian describes where the codes lie and decoding it gives data-like samples.
``latent_penalty=0`` is the plain (denoising) autoencoder.

Networks (the user's own, or the defaults): ``encoder(x) -> z`` ``(B, *latent_shape)`` for
standardised ``x`` ``(B, *event_shape)``, and ``decoder(z) -> x`` ``(B, *event_shape)``. The
defaults are MLPs for vectors and :class:`pyprobtf.nn.ConvEncoder`/:class:`pyprobtf.nn.ConvDecoder`
for ``(C, H, W)`` images. The reconstruction error is summed over the event.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import MultivariateNormal, TransformedDistribution
from torch.distributions.transforms import ReshapeTransform

from pyprobtf import _checks
from pyprobtf.families._latent import LatentFamily, event_shape_of, sum_event
from pyprobtf.families.vae import build_encoder_decoder
from pyprobtf.transform import check_net_output

DENOISING = (None, "gaussian", "mask")


def sliced_wasserstein_to_normal(z: torch.Tensor, n_projections: int) -> torch.Tensor:
    """Sliced 2-Wasserstein distance squared between the rows of ``z`` and as many standard-normal draws
    (random directions; the 1-D distances by sorting). Differentiable in ``z``."""
    n, k = z.shape
    directions = torch.randn(k, n_projections, dtype=z.dtype, device=z.device)
    directions = directions / directions.norm(dim=0, keepdim=True)
    reference = torch.randn(n, n_projections, dtype=z.dtype, device=z.device)  # projections of N(0, I) draws
    projected = (z @ directions).sort(0).values
    return (projected - reference.sort(0).values).square().mean()


class Autoencoder(LatentFamily):
    """A (denoising) autoencoder whose decoder samples from a Gaussian fitted to the codes (module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        encoder, decoder: your networks (both; see the module docstring), or None for the defaults.
        latent_dim, latent_shape: the code's shape (default ``min(dim, 8)`` for vectors, ``(8,)`` for images;
            read off the encoder when you give networks and no shape).
        hidden, activation: the default vector encoder MLP's hidden widths (the decoder's are reversed).
        channels: the default image networks' channels per level (:class:`pyprobtf.nn.ConvEncoder`).
        denoising: ``None``, ``"gaussian"`` or ``"mask"``: how inputs are corrupted in training.
        corruption: the noise std (``"gaussian"``, standardised units) or the masking probability (``"mask"``).
        latent_penalty: weight of the sliced-Wasserstein pull of the codes towards N(0, I) (0: none).
        n_projections: random directions of that distance.
        latent_momentum: decay of the moving averages that track the codes' mean and covariance.
        normalize: standardise the data per feature (fitted by ``initialize``) before encoding.

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = Autoencoder(dim=2, denoising="gaussian")
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])
        >>> model.base.loc.shape          # the Gaussian fitted to the codes
        torch.Size([2])
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 3e-3, "warmup": 200, "lr_final": 0.01,
                    "betas": (0.5, 0.9)}

    def __init__(self, dim: int | None = None, *, event_shape=None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, latent_dim: int | None = None, latent_shape=None, hidden=None,
                 activation: str | None = None, channels=None, denoising: str | None = "gaussian",
                 corruption: float = 0.2, latent_penalty: float = 30.0, n_projections: int = 64,
                 latent_momentum: float = 0.99, normalize: bool = True):
        name = type(self).__name__
        shape = event_shape_of(name, dim, event_shape)
        latent_shape, encoder, decoder, _ = build_encoder_decoder(
            name, shape, latent_dim, latent_shape, encoder, decoder, hidden, activation, channels, heads=1,
            hidden_default=(128, 128), image_latent=(8,))
        super().__init__(None, latent_shape, event_shape=shape, normalize=normalize)
        self.denoising = _checks.choice(name, "denoising", denoising, DENOISING)
        high = 1.0 if denoising == "mask" else float("inf")
        self.corruption = _checks.real(name, "corruption", corruption, 0, high, high_open=denoising == "mask")
        self.latent_penalty = _checks.real(name, "latent_penalty", latent_penalty, 0)
        self.n_projections = _checks.integer(name, "n_projections", n_projections, 1)
        self.latent_momentum = _checks.real(name, "latent_momentum", latent_momentum, 0, 1, high_open=True)
        self.encoder, self.decoder = encoder, decoder
        k = self.latent_dim
        # Raw moving averages of E[z] and E[z z^T]; `_moment_weight` = 1 - momentum^updates corrects their zero start.
        self.register_buffer("_mean_avg", torch.zeros(k))
        self.register_buffer("_second_avg", torch.zeros(k, k))
        self.register_buffer("_moment_weight", torch.tensor(0.0))

    # -------------------------------------------------------------- the fitted Gaussian
    def latent_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, covariance)`` of the codes (a standard normal before any training step)."""
        k = self.latent_dim
        weight = float(self._moment_weight)
        if weight <= 0:
            return self._mean_avg.new_zeros(k), torch.eye(k, dtype=self._mean_avg.dtype, device=self._mean_avg.device)
        mean = self._mean_avg / weight
        cov = self._second_avg / weight - torch.outer(mean, mean)
        return mean, 0.5 * (cov + cov.T)

    @property
    def base(self):
        """``N(mean, covariance)`` of the encoded training data (a small jitter keeps it positive definite); over
        the flattened code, reshaped to ``latent_shape`` for a map latent."""
        mean, cov = self.latent_moments()
        jitter = 1e-6 * (float(cov.diagonal().mean().abs()) + 1e-12)
        eye = torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        normal = MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov + jitter * eye))
        if len(self.latent_shape) == 1:
            return normal
        return TransformedDistribution(normal, [ReshapeTransform((self.latent_dim,), self.latent_shape)])

    @torch.no_grad()
    def _track(self, z: torch.Tensor) -> None:
        m = self.latent_momentum
        z = z.reshape(z.shape[0], -1).to(self._mean_avg.dtype)
        self._mean_avg.mul_(m).add_(z.mean(0), alpha=1 - m)
        self._second_avg.mul_(m).add_(z.T @ z / z.shape[0], alpha=1 - m)
        self._moment_weight.mul_(m).add_(1 - m)

    @torch.no_grad()
    def fit_latent(self, x: torch.Tensor, *, batch_size: int = 8192) -> None:
        """Refit the base exactly: the mean and covariance of ``encode(x)`` over the rows of ``x``."""
        x = self.check_x(x, "fit_latent")
        if x.shape[0] < 2:
            raise ValueError(f"{self._name('fit_latent')}: `x` needs at least 2 rows; got {x.shape[0]}")
        codes = torch.cat([self.encode(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        codes = codes.reshape(codes.shape[0], -1).to(self._mean_avg.dtype)
        self._mean_avg.copy_(codes.mean(0))
        self._second_avg.copy_(codes.T @ codes / codes.shape[0])
        self._moment_weight.fill_(1.0)

    # -------------------------------------------------------------- the networks
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of ``x`` (data units), shape ``(B, *latent_shape)``."""
        x = self.check_x(x, "encode")
        return self._encode(self.scaler(x.to(self.dtype)))

    def _encode(self, y: torch.Tensor) -> torch.Tensor:
        return check_net_output(type(self).__name__, "encoder", self.encoder(y), (y.shape[0], *self.latent_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decoder(encoder(x))`` in data units (no corruption)."""
        return self.transform(self.encode(x))

    def corrupt(self, y: torch.Tensor) -> torch.Tensor:
        """The training corruption of standardised inputs ``y``."""
        if self.denoising == "gaussian":
            return y + self.corruption * torch.randn_like(y)
        if self.denoising == "mask":
            return y * (torch.rand_like(y) >= self.corruption).to(y.dtype)
        return y

    def loss(self, batch):
        """Reconstruction error (sum over features, standardised units) + ``latent_penalty`` * SW2^2(codes, N(0, I))."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        z = self._encode(self.corrupt(y))
        loss = sum_event((self.decoded(z) - y).square()).mean()
        if self.latent_penalty > 0:
            loss = loss + self.latent_penalty * sliced_wasserstein_to_normal(z.flatten(1), self.n_projections)
        if self.training:
            # The base tracks the codes of the clean inputs.
            with torch.no_grad():
                self._track(self._encode(y) if self.denoising is not None else z.detach())
        return loss
