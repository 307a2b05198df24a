"""Any family as the prior in a decoder family's latent space: latent diffusion, latent flow matching,
VQ-VAE with an autoregressive prior -- one class.

``Latent(autoencoder, prior)`` samples ``z`` from ``prior`` and decodes it with
``autoencoder``'s decoder: ``x = decode(G(u))``, ``u ~`` the prior's base, ``G`` the
prior's own ``F``. The pieces:

- ``autoencoder``: an :class:`~pyprobtf.families.Autoencoder` (latents: its codes),
  a :class:`~pyprobtf.families.VAE` (latents: draws of ``q(z|x)``, the codes its
  decoder is trained on) or a :class:`~pyprobtf.families.VQVAE` (latents: the code
  indices, ``(slots,)`` tokens; its prior is then a token family such as
  ``Autoregressive(slots, vocab_size=num_codes)``, and its own ``prior="uniform"``
  avoids training a second one);
- ``prior``: any family whose ``event_shape`` is the latent's shape
  (``autoencoder.latent_shape``); a conditional prior makes the whole model
  conditional (the autoencoder itself is unconditional).

Training (what :func:`pyprobtf.fit` runs through :meth:`Latent.loss`) has two
stages, counted in training steps:

1. steps ``[0, prior_start)``: the autoencoder alone (its own loss);
2. from step ``prior_start``: the prior joins, trained by its own loss on the
   latents of each batch (computed without gradients: the prior never moves the
   encoder); the prior's data-dependent initialisation runs once, on the first
   such batch. With ``autoencoder_steps=N`` the autoencoder stops after ``N``
   steps (its parameters get no gradient after that, so the optimizer leaves
   them alone) and the prior trains on fixed latents: the classic two-stage
   recipe (latent diffusion) inside one ``fit`` call. Without it both train to
   the end (the prior follows the latents as they settle).

The step count is a buffer (saved in checkpoints, so a resumed run continues
in the right stage). Between stages some parameters get no gradient: under
DistributedDataParallel use ``find_unused_parameters=True``, or train the two
parts with two ``fit`` calls (``fit(autoencoder, x)``, then
``fit(prior, model.encode(x))``) and wrap them in ``Latent`` afterwards.

Example:
    >>> import torch
    >>> from pyprobtf import fit
    >>> from pyprobtf.families import VAE, FlowMatching
    >>> x = torch.rand(256, 1, 8, 8)
    >>> model = Latent(VAE(event_shape=(1, 8, 8)), FlowMatching(dim=16), prior_start=5)
    >>> _ = fit(model, x, steps=10, batch_size=64, progress=False)
    >>> model.sample(3, seed=0).shape
    torch.Size([3, 1, 8, 8])
"""

from __future__ import annotations

import torch

from pyprobtf import _checks
from pyprobtf.families.autoencoder import Autoencoder
from pyprobtf.families.vae import VAE
from pyprobtf.families.vqvae import VQVAE
from pyprobtf.transform import ProbabilityTransform, Trajectory

DECODER_FAMILIES = (Autoencoder, VAE, VQVAE)


class Latent(ProbabilityTransform):
    """A decoder family with any family as the prior over its latents (see the module docstring).

    Args:
        autoencoder: an Autoencoder, VAE or VQVAE (unconditional).
        prior: a ProbabilityTransform with ``event_shape == autoencoder.latent_shape`` (for a VQVAE: a token
            family over ``vocab_size=num_codes``).
        prior_start: training steps of the autoencoder alone before the prior joins.
        autoencoder_steps: training steps after which the autoencoder stops (None: it trains to the end).
    """

    capabilities = frozenset()

    def __init__(self, autoencoder: ProbabilityTransform, prior: ProbabilityTransform, *, prior_start: int = 500,
                 autoencoder_steps: int | None = None):
        if not isinstance(autoencoder, DECODER_FAMILIES):
            raise TypeError(f"Latent: `autoencoder` must be an Autoencoder, VAE or VQVAE; got "
                            f"{type(autoencoder).__name__}")
        if not isinstance(prior, ProbabilityTransform):
            raise TypeError(f"Latent: `prior` must be a ProbabilityTransform; got {type(prior).__name__}")
        if autoencoder.conditional:
            raise ValueError("Latent: `autoencoder` must be unconditional (condition the prior instead)")
        if prior.event_shape != autoencoder.latent_shape:
            raise ValueError(f"Latent: `prior` must have event_shape={autoencoder.latent_shape} (the "
                             f"{type(autoencoder).__name__}'s latent_shape); got {prior.event_shape}")
        if isinstance(autoencoder, VQVAE) and getattr(prior, "vocab", None) != autoencoder.num_codes or \
                isinstance(autoencoder, VQVAE) and not getattr(prior, "tokens_mode", False):
            raise ValueError(f"Latent: the prior of a VQVAE's code indices must be a token family with "
                             f"vocab_size=num_codes={autoencoder.num_codes}, e.g. Autoregressive("
                             f"{autoencoder.slots}, vocab_size={autoencoder.num_codes})")
        super().__init__(event_shape=autoencoder.event_shape, context_dim=prior.context_dim,
                         context_shape=None if prior.context_dim else (prior.context_shape or None),
                         num_classes=prior.num_classes)
        self.prior_start = _checks.integer("Latent", "prior_start", prior_start, 0)
        if autoencoder_steps is not None:
            autoencoder_steps = _checks.integer("Latent", "autoencoder_steps", autoencoder_steps, 1)
            if autoencoder_steps < self.prior_start:
                raise ValueError(f"Latent: `autoencoder_steps` ({autoencoder_steps}) must be at least `prior_start` "
                                 f"({self.prior_start})")
        self.autoencoder_steps = autoencoder_steps
        self.autoencoder = autoencoder
        self.latent_prior = prior
        self.latent_shape = autoencoder.latent_shape
        self.fit_defaults = dict(autoencoder.fit_defaults)
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))
        self.register_buffer("prior_ready", torch.tensor(False))

    @property
    def base(self):
        """The prior's base."""
        return self.latent_prior.base

    # -------------------------------------------------------------- latents
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents of ``x`` (data units) that the prior is trained on, ``(B, *latent_shape)``: a VAE's draws
        of ``q(z|x)``, an Autoencoder's codes, a VQVAE's code indices (as floats)."""
        x = self.check_x(x, "encode")
        ae = self.autoencoder
        with torch.no_grad():
            if isinstance(ae, VAE):
                mu, log_sigma = ae.posterior(x)
                return mu + torch.exp(log_sigma) * torch.randn_like(mu)
            if isinstance(ae, VQVAE):
                return ae.encode(x).to(x.dtype)
            return ae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Data-unit ``x`` for latents ``z`` ``(B, *latent_shape)`` (a VQVAE's indices are rounded into range)."""
        ae = self.autoencoder
        if isinstance(ae, VQVAE):
            return ae.decode_indices(torch.nan_to_num(z).round().clamp(0, ae.num_codes - 1).long())
        return ae.transform(z)

    # -------------------------------------------------------------- the protocol
    def transform(self, z, **cond):
        """``x = decode(G(z))``, ``G`` the prior's ``F``."""
        return self.decode(self.latent_prior.transform(z, **cond))

    def sample(self, n: int, *, seed: int | None = None, **cond) -> torch.Tensor:
        """``n`` samples: the prior's (its own sampler and seeding), decoded."""
        n = _checks.integer(self._name("sample"), "n", n, 0)
        with torch.no_grad():
            return self.decode(self.latent_prior.sample(n, seed=seed, **cond))

    def trajectory(self, z, **cond) -> Trajectory:
        """The prior's trajectory in the latent space, each state decoded (``z`` first, as the prior has it)."""
        inner = self.latent_prior.trajectory(z, **cond)
        with torch.no_grad():
            states = [inner.states[0]] + [self.decode(s) for s in inner.states[1:]]
        return Trajectory(states, inner.labels)

    def stage(self) -> str:
        """The training stage of the next step: ``"autoencoder"``, ``"both"`` or ``"prior"``."""
        step = int(self.steps_taken)
        if step < self.prior_start:
            return "autoencoder"
        if self.autoencoder_steps is not None and step >= self.autoencoder_steps:
            return "prior"
        return "both"

    def loss(self, batch):
        """The autoencoder's loss, the prior's loss on the batch's latents, or both (see the module docstring)."""
        x, context = self.split_batch(batch)
        stage = self.stage()
        if self.training:
            self.steps_taken += 1
        loss = x.new_zeros(())
        if stage != "prior":
            loss = loss + self.autoencoder.loss(x)
        if stage != "autoencoder":
            z = self.encode(x)
            prior_batch = z if context is None else (z, context)
            if not bool(self.prior_ready):
                self.latent_prior.initialize(prior_batch)
                self.prior_ready.fill_(True)
            loss = loss + self.latent_prior.loss(prior_batch)
        return loss

    def initialize(self, batch) -> None:
        """The autoencoder's data-dependent initialisation (the prior's waits for its first latents)."""
        x, _ = self.split_batch(batch, "initialize")
        self.autoencoder.initialize(x)
        if self.prior_start == 0 and not bool(self.prior_ready):
            context = self.split_batch(batch, "initialize")[1]
            z = self.encode(x)
            self.latent_prior.initialize(z if context is None else (z, context))
            self.prior_ready.fill_(True)
