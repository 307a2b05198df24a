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

Both work in the standardised data space (fitted by ``initialize``), on any event shape.

Networks (the user's own, or the defaults): DiscriminatorFlow's
``discriminator(x, k) -> logits (B,)`` for ``x`` ``(B, *event_shape)`` and flow steps ``k``
(int64 ``(B,)`` in ``[0, steps)``); ScoreGAN's ``generator(z) -> x`` as in
:class:`~pyprobtf.families.GAN`, and ``score_nets=(data_net, fake_net)``, two networks
with :class:`~pyprobtf.families.Diffusion`'s protocol ``net(x, t, context=None)``
(wrapped in its EDM preconditioning). The defaults are MLPs for vectors and
convolutional networks for ``(C, H, W)`` images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyprobtf import _checks
from pyprobtf.families._latent import LatentFamily, event_shape_of, sum_event
from pyprobtf.families._nets import check_hidden
from pyprobtf.families.gan import build_discriminator, build_generator, image_or_vector_options, logits_of
from pyprobtf.transform import Trajectory, check_net_output


class StepLogits(nn.Module):
    """``d(x, k)``: one logit per flow step ``k`` from a shared trunk (one output head per step).

    Heads instead of a time input: the steps are discrete, and constant time features at the input slow
    the first, second-order phase of learning to tell a distribution from one with the same moments.
    ``trunk(x) -> (B, steps)``: an MLP for vectors, a :class:`pyprobtf.nn.ConvEncoder` for images.
    """

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.net = trunk

    def all_steps(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of every step's head, ``(B, steps)``."""
        return self.net(x)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)``: row ``b``'s head ``k[b]`` (``k`` an int64 ``(B,)`` tensor)."""
        return self.net(x).gather(1, k.reshape(-1, 1)).squeeze(1)


class DiscriminatorFlow(LatentFamily):
    """A generator-free GAN: particles moved along a time-conditioned discriminator's gradient (module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``; ``z`` has the event's shape).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        discriminator: your time-conditioned discriminator (see the module docstring), or None for the default.
        steps: flow steps ``K``.
        step_size: the step ``eta`` (standardised units per unit of logit gradient).
        max_step: the longest move of one step (Euclidean norm over the event).
        hidden, activation: the default vector discriminator MLP.
        channels: the default image discriminator's channels per level.
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
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 1e-3, "warmup": 100, "lr_final": 0.05,
                    "betas": (0.5, 0.9)}

    def __init__(self, dim: int | None = None, *, event_shape=None, discriminator: nn.Module | None = None,
                 steps: int = 16, step_size: float = 1.0, max_step: float | None = 0.25,
                 gradient_penalty: float = 0.1, hidden=None, activation: str | None = None, channels=None,
                 particles: int = 128, base=None, normalize: bool = True):
        name = type(self).__name__
        shape = event_shape_of(name, dim, event_shape)
        self_built = _checks.optional(_checks.module, name, "discriminator", discriminator) is None
        hidden, activation, channels = image_or_vector_options(name, shape, not self_built, hidden, activation,
                                                               channels, (128, 128))
        steps = _checks.integer(name, "steps", steps, 1)
        if self_built:
            discriminator = StepLogits(build_discriminator(name, shape, None, hidden, activation, channels, steps))
        super().__init__(None, shape, event_shape=shape, base=base, normalize=normalize)
        self.steps = steps
        self.step_size = _checks.real(name, "step_size", step_size, 0, low_open=True)
        self.max_step = _checks.optional(_checks.real, name, "max_step", max_step, 0, low_open=True)
        self.gradient_penalty = _checks.real(name, "gradient_penalty", gradient_penalty, 0)
        self.particles = _checks.integer(name, "particles", particles, 1)
        self.discriminator = discriminator
        self.register_buffer("pool", torch.zeros(self.steps, self.particles, *shape))
        self.register_buffer("pool_ready", torch.tensor(False))

    def _grad(self, y: torch.Tensor, k: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """``grad_y d(y, k)`` per row."""
        with torch.enable_grad():
            v = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
            logits = logits_of(type(self).__name__, self.discriminator, v, k)
            (grad,) = torch.autograd.grad(logits.sum(), v, create_graph=create_graph)
        return grad

    def _move(self, y: torch.Tensor, k: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """One flow step for rows at steps ``k``: ``y + step_size * grad d``, each move at most ``max_step`` long."""
        step = self.step_size * self._grad(y, k, create_graph=create_graph)
        if self.max_step is not None:
            norm = step.flatten(1).norm(dim=1).reshape(-1, *([1] * (step.dim() - 1)))
            step = step * (self.max_step / norm.clamp_min(self.max_step))
        return y + step

    def velocity(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """The move of flow step ``k`` at ``y`` (standardised units): ``F`` adds it ``steps`` times."""
        return self._move(y, torch.full((y.shape[0],), k, dtype=torch.long, device=y.device)) - y

    def _flow(self, y: torch.Tensor, states: list | None = None) -> torch.Tensor:
        create_graph = torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in self.parameters()))
        for k in range(self.steps):
            y = self._move(y, torch.full((y.shape[0],), k, dtype=torch.long, device=y.device),
                           create_graph=create_graph)
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
            y = self._move(y, torch.full((y.shape[0],), k, dtype=torch.long, device=y.device))
        self.pool_ready.fill_(True)

    def loss(self, batch):
        """The discriminators' logistic loss, data against the pool's particles, averaged over the flow steps,
        plus ``gradient_penalty/2`` times the mean squared logit gradient at both; in training, the pool then
        moves one step on."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        if not bool(self.pool_ready):
            self._fill_pool(y)
        fake = self.pool.to(y.dtype).reshape(-1, *self.event_shape).clone()  # the pool moves on below, in place
        k_fake = torch.arange(self.steps, device=y.device).repeat_interleave(self.particles)
        k_real = torch.randint(self.steps, (y.shape[0],), device=y.device)
        if isinstance(self.discriminator, StepLogits):
            # The data against every step's head at once: all heads of one pass over the batch.
            real = self.discriminator.all_steps(y)
            check_net_output(type(self).__name__, "discriminator", real, (y.shape[0], self.steps))
        else:
            real = logits_of(type(self).__name__, self.discriminator, y, k_real)  # a random step per data row
        loss = F.softplus(-real).mean() + F.softplus(logits_of(type(self).__name__, self.discriminator, fake,
                                                                k_fake)).mean()
        if self.gradient_penalty > 0:
            # Keeps the logits smooth, so the particles' steps stay bounded; data rows get a random head each.
            penalty = sum_event(self._grad(y, k_real, create_graph=True).square()).mean() + \
                sum_event(self._grad(fake, k_fake, create_graph=True).square()).mean()
            loss = loss + 0.5 * self.gradient_penalty * penalty
        if self.training:
            with torch.no_grad():
                moved = self._move(fake, k_fake)
                self.pool[1:].copy_(moved.reshape(self.steps, self.particles, *self.event_shape)[:-1])
                self.pool[0].copy_(self._draw_base(self.particles, y))
        return loss


class ScoreGAN(LatentFamily):
    """A one-step generator trained by two co-trained score models (see the module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        generator: your generator (as GAN's; give ``latent_shape`` with it), or None for the default.
        score_nets: a pair ``(data_net, fake_net)`` with Diffusion's network protocol, or None for Diffusion's
            defaults.
        latent_dim, latent_shape: the shape of ``z`` (default ``min(dim, 8)`` for vectors, ``(32,)`` for images).
        hidden, activation: the default vector generator MLP.
        channels: the default image generator's channels per level.
        score_hidden: hidden widths of the two default vector score networks (EDM-preconditioned
            :class:`Diffusion` MLPs).
        generator_every: the generator takes a step every ``generator_every`` training steps (the score
            models every step), so the fake-sample score model keeps up with the generator.
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
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 2e-3, "warmup": 100, "lr_final": 0.05,
                    "betas": (0.5, 0.9)}

    decoder_name = "generator"

    def __init__(self, dim: int | None = None, *, event_shape=None, generator: nn.Module | None = None,
                 score_nets=None, latent_dim: int | None = None, latent_shape=None, hidden=None,
                 activation: str | None = None, channels=None, score_hidden=None, generator_every: int = 5,
                 base=None, normalize: bool = True):
        from pyprobtf.families.diffusion import Diffusion

        name = type(self).__name__
        shape = event_shape_of(name, dim, event_shape)
        _checks.optional(_checks.module, name, "generator", generator)
        if score_nets is not None:
            _checks.sequence(name, "score_nets", score_nets, lambda where, key, net: _checks.optional(
                _checks.module, where, key, net), length=2)
            if score_hidden is not None:
                raise ValueError(f"{name}: `score_hidden` configures the default score networks; it cannot be "
                                 f"given with `score_nets`")
        hidden, activation, channels = image_or_vector_options(name, shape, generator is not None, hidden,
                                                               activation, channels, (128, 128))
        latent_shape, generator = build_generator(name, shape, latent_dim, latent_shape, generator, hidden,
                                                  activation, channels)
        super().__init__(None, latent_shape, event_shape=shape, base=base, normalize=normalize)
        self.generator_every = _checks.integer(name, "generator_every", generator_every, 1)
        self.generator = generator
        # Both score models see standardised data (sigma_data = 1).
        if score_nets is None and len(shape) == 1:
            score_hidden = check_hidden(name, (128, 128) if score_hidden is None else score_hidden)
            act = activation or "relu"
            self.data_score = Diffusion(shape[0], hidden=score_hidden, activation=act, sigma_data=1.0)
            self.fake_score = Diffusion(shape[0], hidden=score_hidden, activation=act, sigma_data=1.0)
        else:
            # Images, or your networks: Diffusion's own network argument and image defaults.
            nets = (None, None) if score_nets is None else score_nets
            self.data_score = Diffusion(event_shape=shape, net=nets[0], sigma_data=1.0)
            self.fake_score = Diffusion(event_shape=shape, net=nets[1], sigma_data=1.0)
        self.register_buffer("_steps_taken", torch.zeros((), dtype=torch.long))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def _draw_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        z = self.base.rsample((n,)) if self.prior is not None else self.base.sample((n,))
        return z.to(like)

    def loss(self, batch):
        """Data score loss + fake score loss (on detached generator samples), and every ``generator_every``
        training steps the generator's distillation loss ``<G(z), sg[w (D_fake - D_data)]>``."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        g = self.decoded(self._draw_z(y.shape[0], y))
        loss = self.data_score.loss(y) + self.fake_score.loss(g.detach())
        # Between generator steps its loss is weighted by 0, not left out: every parameter then has a gradient
        # at every step, as DistributedDataParallel requires.
        scale = 1.0 if int(self._steps_taken) % self.generator_every == 0 else 0.0
        if self.training:
            self._steps_taken += 1
        ds = self.data_score
        sigma = (torch.randn(g.shape[0], dtype=g.dtype, device=g.device) * ds.P_std + ds.P_mean).exp()
        per_row = (-1,) + (1,) * (g.dim() - 1)
        with torch.no_grad():
            noisy = g + sigma.reshape(per_row) * torch.randn_like(g)
            real_d = self.data_score.denoise(noisy, sigma)
            fake_d = self.fake_score.denoise(noisy, sigma)
            # DMD's per-sample normalisation keeps the step size independent of the noise level.
            weight = 1.0 / (g - real_d).abs().flatten(1).mean(1).clamp_min(1e-4).reshape(per_row)
            direction = (fake_d - real_d) * weight
        return loss + scale * sum_event(g * direction).mean()
