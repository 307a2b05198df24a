"""Particle models: GANs and score-based diffusion as two ways of moving particles (Franceschi et al. 2023).

Both families here see generation as pushing particles along a gradient field
that compares the particles' distribution with the data's:

- :class:`DiscriminatorFlow`, a generator-free GAN: ``F`` moves base draws
  ``x_0 = z`` for ``steps`` steps along the gradient of a time-conditioned
  discriminator's logit, ``x_{k+1} = x_k + step_size * grad_x d(x_k, k)``. The
  discriminator at step ``k`` is trained (logistic loss) to tell the data from
  the particles at step ``k``, so its logit estimates ``log p_data - log p_k``
  and the particles follow the Wasserstein gradient flow of
  ``KL(p_k || p_data)``. Training keeps a pool of particles at every step of
  the flow; each training step trains the discriminator on them, then moves
  every stage one step on (stage ``k`` becomes stage ``k + 1``; stage 0 gets fresh
  base draws), so the particles the discriminator sees are those its own
  recent versions produced.
- :class:`ScoreGAN`, a score model distilled into a one-step generator: a
  generator ``G`` (``F``) is trained so that its samples, noised at level
  ``sigma``, have the data's score: two denoising score models
  (:class:`~pyprobtf.families.Diffusion`, EDM) are trained alongside, one on
  the data and one on the generator's current samples, and ``G``'s samples
  move along the difference of the two denoisers, ``D_data - D_fake`` (the
  gradient of ``KL(p_G || p_data)`` of the noised distributions, as in
  distribution-matching distillation).

Both work in the standardised data space (fitted by ``initialize``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyprobtf.families._latent import LatentFamily, check_int, check_real, default_latent_dim
from pyprobtf.families._nets import MLP, FourierTime, check_activation, check_hidden
from pyprobtf.transform import Trajectory


class TimeLogit(nn.Module):
    """``d(x, t)``: a scalar logit per row from an MLP on ``[x, Fourier(t)]``."""

    def __init__(self, dim: int, hidden, activation: str):
        super().__init__()
        self.time = FourierTime(8, 20.0)
        self.net = MLP(dim + self.time.size, hidden, 1, activation)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.time(t.to(x))], 1)).squeeze(1)


class DiscriminatorFlow(LatentFamily):
    """A generator-free GAN: particles moved along a time-conditioned discriminator's gradient (module docstring).

    Args:
        dim: data dimension (``z`` has the same size).
        steps: flow steps ``K``.
        step_size: the step ``eta`` (standardised units per unit of logit gradient).
        hidden, activation: the discriminator MLP.
        particles: particles per flow stage in the training pool.
        base: the distribution of ``x_0`` (default N(0, I), standardised units).
        normalize: standardise the data per feature (fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = DiscriminatorFlow(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=20, progress=False)
        >>> len(model.trajectory(model.base.sample((3,))))   # z and the K states
        17
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 1e-3, "warmup": 100, "lr_final": 0.05}

    def __init__(self, dim: int, *, steps: int = 16, step_size: float = 0.1, hidden=(128, 128),
                 activation: str = "silu", particles: int = 128, base=None, normalize: bool = True):
        name = type(self).__name__
        super().__init__(dim, default_latent_dim(dim, None, dim if isinstance(dim, int) else 1), base=base,
                         normalize=normalize)
        self.steps = check_int(name, "steps", steps)
        self.step_size = check_real(name, "step_size", step_size, 0.0, low_open=True)
        self.particles = check_int(name, "particles", particles)
        self.discriminator = TimeLogit(dim, check_hidden(name, hidden), check_activation(name, activation))
        self.register_buffer("pool", torch.zeros(self.steps, self.particles, dim))
        self.register_buffer("pool_ready", torch.tensor(False))

    def _times(self, k, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.full((n,), float(k) / self.steps, dtype=like.dtype, device=like.device)

    def velocity(self, y: torch.Tensor, k: int, *, create_graph: bool = False) -> torch.Tensor:
        """``step_size * grad_y d(y, k)`` at flow step ``k`` (standardised units)."""
        return self.step_size * self._logit_grad(y, self._times(k, y.shape[0], y), create_graph=create_graph)

    def _logit_grad(self, y: torch.Tensor, t: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        with torch.enable_grad():
            v = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.discriminator(v, t).sum(), v, create_graph=create_graph)
        return grad

    def _flow(self, y: torch.Tensor, states: list | None = None) -> torch.Tensor:
        create_graph = torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in self.parameters()))
        for k in range(self.steps):
            y = y + self.velocity(y, k, create_graph=create_graph)
            if not create_graph:
                y = y.detach()
            if states is not None:
                states.append(self.scaler.inverse(y.detach()))
        return y

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._flow(z)

    def trajectory(self, z, context=None):
        """``z``, then the particles after every flow step (the last is ``x``), in data units."""
        z = self.check_z(z, "trajectory")
        self.check_context(context, z.shape[0], "trajectory")
        states = []
        with torch.no_grad():
            self._flow(z.to(self.dtype), states)
        return Trajectory([z] + states, ["z"] + [f"step {k + 1}" for k in range(self.steps - 1)] + ["x"])

    def _draw_base(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return self.base.sample((n,)).to(like)

    @torch.no_grad()
    def _fill_pool(self, like: torch.Tensor) -> None:
        y = self._draw_base(self.particles, like)
        for k in range(self.steps):
            self.pool[k].copy_(y)
            y = y + self.velocity(y, k)
        self.pool_ready.fill_(True)

    def loss(self, batch):
        """The discriminators' logistic loss, data against the pool's particles, averaged over the flow steps;
        in training, the pool then moves one step on."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        if not bool(self.pool_ready):
            self._fill_pool(y)
        pool = self.pool.to(y.dtype)
        fake = pool.reshape(-1, self.dim)
        t_fake = (torch.arange(self.steps, device=y.device, dtype=y.dtype) / self.steps).repeat_interleave(
            self.particles)
        real = y.repeat(self.steps, 1)
        t_real = (torch.arange(self.steps, device=y.device, dtype=y.dtype) / self.steps).repeat_interleave(
            y.shape[0])
        loss = F.softplus(-self.discriminator(real, t_real)).mean() + F.softplus(self.discriminator(fake, t_fake)).mean()
        if self.training:
            with torch.no_grad():
                moved = fake + self.step_size * self._logit_grad(fake, t_fake)
                self.pool[1:].copy_(moved.reshape(self.steps, self.particles, self.dim)[:-1])
                self.pool[0].copy_(self._draw_base(self.particles, y))
        return loss


class ScoreGAN(LatentFamily):
    """A one-step generator trained by two co-trained score models (see the module docstring).

    Args:
        dim: data dimension.
        latent_dim: size of ``z`` (default ``min(dim, 8)``).
        hidden, activation: the generator MLP.
        score_hidden: hidden widths of the two score networks (EDM-preconditioned MLPs).
        base: the distribution of ``z`` (default N(0, I)).
        normalize: standardise the data per feature (fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = ScoreGAN(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=20, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 1e-3, "warmup": 100, "lr_final": 0.05}

    def __init__(self, dim: int, *, latent_dim: int | None = None, hidden=(128, 128), activation: str = "silu",
                 score_hidden=(128, 128), base=None, normalize: bool = True):
        from pyprobtf.families.diffusion import Diffusion

        name = type(self).__name__
        super().__init__(dim, default_latent_dim(dim, latent_dim, 8), base=base, normalize=normalize)
        hidden, score_hidden = check_hidden(name, hidden), check_hidden(name, score_hidden)
        check_activation(name, activation)
        self.generator = MLP(self.latent_dim, hidden, dim, activation)
        # Both score models see standardised data (sigma_data = 1).
        self.data_score = Diffusion(dim, hidden=score_hidden, activation=activation, sigma_data=1.0)
        self.fake_score = Diffusion(dim, hidden=score_hidden, activation=activation, sigma_data=1.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def _draw_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        z = self.base.rsample((n,)) if self.prior is not None else self.base.sample((n,))
        return z.to(like)

    def loss(self, batch):
        """Data score loss + fake score loss (on detached generator samples) + the generator's distillation loss."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        g = self.generator(self._draw_z(y.shape[0], y))
        loss = self.data_score.loss(y) + self.fake_score.loss(g.detach())
        ds = self.data_score
        sigma = (torch.randn(g.shape[0], dtype=g.dtype, device=g.device) * ds.P_std + ds.P_mean).exp()
        with torch.no_grad():
            noisy = g + sigma[:, None] * torch.randn_like(g)
            real_d = self.data_score.denoise(noisy, sigma)
            fake_d = self.fake_score.denoise(noisy, sigma)
            # DMD's per-sample normalisation keeps the step size independent of the noise level.
            weight = 1.0 / (g - real_d).abs().mean(1, keepdim=True).clamp_min(1e-4)
            direction = (fake_d - real_d) * weight
        return loss + (g * direction).sum(1).mean()
