"""Generative adversarial network: the generator is ``F``, trained against a discriminator.

A discriminator ``D(x) = sigmoid(d(x))`` (``d`` the logit) learns to tell data
from generated samples ``G(z)``, ``z ~ N(0, I)``; the generator learns to fool it:

- ``loss="minimax"`` (the seed paper's eq. 5): ``min_G max_D E log D(x) + E log(1 - D(G(z)))``;
- ``loss="non-saturating"`` (eq. 6-7, the default): ``D`` as above, ``G`` minimises
  ``-E log D(G(z))`` instead, whose gradient does not vanish when ``D`` wins;
- ``gradient_penalty=gamma``: adds ``gamma/2 E|grad_x d(x)|^2`` on the data
  (R1, Mescheder et al. 2018), which keeps the game from oscillating.

Both players are trained by one objective so that :func:`pyprobtf.fit`
(one optimizer, DDP, checkpoints) trains a GAN like any other family:
``loss = L_D(d; G(z) detached) + L_G(G; d with its weights detached)``, so each
player's gradient is its own loss's (simultaneous gradient steps).

Networks (the user's own, or the defaults): ``generator(z) -> x`` ``(B, *event_shape)``
(standardised units) for ``z`` ``(B, *latent_shape)``, and ``discriminator(x) -> logits``
``(B,)`` or ``(B, 1)``. The defaults are MLPs for vectors and, for ``(C, H, W)`` images, a
:class:`pyprobtf.nn.ConvDecoder` generator and a :class:`pyprobtf.nn.ConvEncoder` discriminator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from torch import nn

from pyprobtf import _checks
from pyprobtf.families._latent import (LatentFamily, SplitMLP, default_latent_dim, default_channels, event_shape_of,
                                       is_image, resolve_latent_shape, sum_event, vector_options)
from pyprobtf.families._nets import check_hidden
from pyprobtf.transform import check_net_output

GAN_LOSSES = ("non-saturating", "minimax")
#: the image default latent
IMAGE_LATENT = (32,)


def r1_penalty(logit_fn, y: torch.Tensor) -> torch.Tensor:
    """``E |grad_y logit(y)|^2`` over the rows of ``y`` (differentiable in the logit's parameters)."""
    y = y.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(logit_fn(y).sum(), y, create_graph=True)
    return sum_event(grad.square()).mean()


def logits_of(owner: str, net: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
    """``net(x, *args)`` as ``(B,)`` logits (``(B, 1)`` is accepted); an error naming the network otherwise."""
    out = net(x, *args)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 1:
        out = out.squeeze(1)
    return check_net_output(owner, "discriminator", out, (x.shape[0],))


def build_generator(owner, event_shape, latent_dim, latent_shape, generator, hidden, activation, channels,
                    *, vector_cap: int = 8):
    """``(latent_shape, generator)``: the user's (latent shape given, or read off by calling it is impossible:
    it must be given), else the default for vectors (an MLP) or images (a ConvDecoder)."""
    _checks.optional(_checks.module, owner, "generator", generator)
    if generator is not None:
        if latent_dim is None and latent_shape is None:
            raise ValueError(f"{owner}: give `latent_shape` (the shape of z your generator takes) with `generator`")
        return resolve_latent_shape(owner, event_shape, latent_dim, latent_shape, ()), generator
    if is_image(event_shape):
        from pyprobtf.nn.conv import ConvDecoder

        latent = resolve_latent_shape(owner, event_shape, latent_dim, latent_shape, IMAGE_LATENT)
        return latent, ConvDecoder(latent, event_shape, channels=channels)
    latent = resolve_latent_shape(owner, event_shape, latent_dim, latent_shape,
                                  (default_latent_dim(math.prod(event_shape), None, vector_cap),))
    return latent, SplitMLP(latent, event_shape, hidden, activation)


def build_discriminator(owner, event_shape, discriminator, hidden, activation, channels, outputs: int = 1):
    """The user's discriminator, else the default: an MLP (vectors) or a ConvEncoder (images) with ``outputs``
    logits per row."""
    _checks.optional(_checks.module, owner, "discriminator", discriminator)
    if discriminator is not None:
        return discriminator
    if is_image(event_shape):
        from pyprobtf.nn.conv import ConvEncoder

        return ConvEncoder(event_shape, (outputs,), channels=channels, activation="leaky_relu")
    return SplitMLP(event_shape, (outputs,), hidden, activation)


def image_or_vector_options(owner, event_shape, nets_given: bool, hidden, activation, channels, hidden_default):
    """``(hidden, activation, channels)`` for the defaults still to build; an error for options that do not apply."""
    if is_image(event_shape):
        for name, value in (("hidden", hidden), ("activation", activation)):
            if value is not None:
                raise ValueError(f"{owner}: `{name}` configures the vector default (an MLP); image defaults take "
                                 f"`channels`")
        if nets_given and channels is not None:
            raise ValueError(f"{owner}: `channels` configures the default networks; it cannot be given with your "
                             f"own networks")
        return None, None, default_channels(event_shape) if channels is None else channels
    if channels is not None:
        raise ValueError(f"{owner}: `channels` configures the image default networks; vectors take `hidden`")
    hidden, activation = vector_options(owner, nets_given, hidden, activation, hidden_default)
    return hidden, activation, None


class GAN(LatentFamily):
    """A GAN: a generator ``F`` and a discriminator (see the module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        generator, discriminator: your networks (see the module docstring), or None for the defaults; with your
            generator, give ``latent_shape``.
        latent_dim, latent_shape: the shape of ``z`` (default ``min(dim, 8)`` for vectors, ``(32,)`` for images).
        hidden, activation: the default vector generator's hidden widths and activation.
        disc_hidden: the default vector discriminator's hidden widths (default: ``hidden``).
        channels: the default image networks' channels per level.
        loss: ``"non-saturating"`` or ``"minimax"``.
        gradient_penalty: the R1 weight ``gamma`` (0: none).
        base: the distribution of ``z`` (default N(0, I)); a ProbabilityTransform of ``dim=latent_dim`` is a
            learned prior, trained through the generator's loss (by ``rsample``).
        normalize: standardise the data per feature (fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = GAN(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 3e-3, "warmup": 200, "lr_final": 0.05,
                    "betas": (0.5, 0.9)}

    decoder_name = "generator"

    def __init__(self, dim: int | None = None, *, event_shape=None, generator: nn.Module | None = None,
                 discriminator: nn.Module | None = None, latent_dim: int | None = None, latent_shape=None,
                 hidden=None, activation: str | None = None, disc_hidden=None, channels=None,
                 loss: str = "non-saturating", gradient_penalty: float = 0.1, base=None, normalize: bool = True):
        name = type(self).__name__
        shape = event_shape_of(name, dim, event_shape)
        both = generator is not None and discriminator is not None
        hidden, activation, channels = image_or_vector_options(name, shape, both, hidden, activation, channels,
                                                               (128, 128))
        if disc_hidden is not None and (discriminator is not None or is_image(shape)):
            raise ValueError(f"{name}: `disc_hidden` configures the default vector discriminator")
        if hidden is None and not is_image(shape):  # one network given: the other's default still needs widths
            hidden, activation = check_hidden(name, (128, 128)), "relu"
        latent_shape, generator = build_generator(name, shape, latent_dim, latent_shape, generator, hidden,
                                                  activation, channels)
        discriminator = build_discriminator(name, shape, discriminator,
                                            hidden if disc_hidden is None else check_hidden(name, disc_hidden),
                                            activation, channels)
        super().__init__(None, latent_shape, event_shape=shape, base=base, normalize=normalize)
        self.loss_type = _checks.choice(name, "loss", loss, GAN_LOSSES)
        self.gradient_penalty = _checks.real(name, "gradient_penalty", gradient_penalty, 0)
        self.generator, self.discriminator = generator, discriminator

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def _d(self, y: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        return logits_of(type(self).__name__, self.discriminator if net is None else net, y)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit ``d(x)`` for data-unit ``x``, shape ``(B,)``."""
        x = self.check_x(x, "logit")
        return self._d(self.scaler(x.to(self.dtype)))

    def _draw_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        z = self.base.rsample((n,)) if self.prior is not None else self.base.sample((n,))
        return z.to(like)

    def loss(self, batch):
        """``L_D + L_G`` (see the module docstring); each player gets only its own loss's gradient."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        fake = self.decoded(self._draw_z(y.shape[0], y))
        d_real = self._d(y)
        d_fake = self._d(fake.detach())
        # -log D(x) - log(1 - D(G(z))), with log sigmoid(a) = -softplus(-a).
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        if self.gradient_penalty > 0:
            loss_d = loss_d + 0.5 * self.gradient_penalty * r1_penalty(self._d, y)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        d_gen = logits_of(type(self).__name__, lambda v: functional_call(self.discriminator, frozen, (v,)), fake)
        if self.loss_type == "minimax":
            loss_g = -F.softplus(d_gen).mean()   # E log(1 - D(G(z)))
        else:
            loss_g = F.softplus(-d_gen).mean()   # -E log D(G(z))
        return loss_d + loss_g
