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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pyprobtf.families._latent import LatentFamily, check_choice, check_real, default_latent_dim
from pyprobtf.families._nets import MLP, check_activation, check_hidden

GAN_LOSSES = ("non-saturating", "minimax")


def r1_penalty(logit_fn, y: torch.Tensor) -> torch.Tensor:
    """``E |grad_y logit(y)|^2`` over the rows of ``y`` (differentiable in the logit's parameters)."""
    y = y.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(logit_fn(y).sum(), y, create_graph=True)
    return grad.square().sum(1).mean()


class GAN(LatentFamily):
    """A GAN for vectors: an MLP generator ``F`` and an MLP discriminator (see the module docstring).

    Args:
        dim: data dimension.
        latent_dim: size of ``z`` (default ``min(dim, 8)``).
        hidden, activation: the generator's hidden widths and activation.
        disc_hidden: the discriminator's hidden widths (default: ``hidden``).
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

    def __init__(self, dim: int, *, latent_dim: int | None = None, hidden=(128, 128), activation: str = "relu",
                 disc_hidden=None, loss: str = "non-saturating", gradient_penalty: float = 0.1, base=None,
                 normalize: bool = True):
        name = type(self).__name__
        super().__init__(dim, default_latent_dim(dim, latent_dim, 8), base=base, normalize=normalize)
        hidden = check_hidden(name, hidden)
        disc_hidden = hidden if disc_hidden is None else check_hidden(name, disc_hidden)
        check_activation(name, activation)
        self.loss_type = check_choice(name, "loss", loss, GAN_LOSSES)
        self.gradient_penalty = check_real(name, "gradient_penalty", gradient_penalty)
        self.generator = MLP(self.latent_dim, hidden, dim, activation)
        self.discriminator = MLP(dim, disc_hidden, 1, activation)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit ``d(x)`` for data-unit ``x``, shape ``(B,)``."""
        x = self.check_x(x, "logit")
        return self.discriminator(self.scaler(x.to(self.dtype))).squeeze(1)

    def _draw_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        z = self.base.rsample((n,)) if self.prior is not None else self.base.sample((n,))
        return z.to(like)

    def loss(self, batch):
        """``L_D + L_G`` (see the module docstring); each player gets only its own loss's gradient."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        fake = self.generator(self._draw_z(y.shape[0], y))
        d_real = self.discriminator(y).squeeze(1)
        d_fake = self.discriminator(fake.detach()).squeeze(1)
        # -log D(x) - log(1 - D(G(z))), with log sigmoid(a) = -softplus(-a).
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        if self.gradient_penalty > 0:
            loss_d = loss_d + 0.5 * self.gradient_penalty * r1_penalty(
                lambda v: self.discriminator(v).squeeze(1), y)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        d_gen = functional_call(self.discriminator, frozen, (fake,)).squeeze(1)
        if self.loss_type == "minimax":
            loss_g = -F.softplus(d_gen).mean()   # E log(1 - D(G(z)))
        else:
            loss_g = F.softplus(-d_gen).mean()   # -E log D(G(z))
        return loss_d + loss_g
