"""VQ-VAE: a decoder over codebook entries, with a uniform or a learned autoregressive prior over code indices.

The encoder maps ``x`` to ``slots`` vectors of size ``code_dim``; each is
replaced by its nearest codebook entry by :class:`pyprobtf.nn.VectorQuantizer`
(the seed paper's eq. 2-3: straight-through gradient, codebook and commitment
losses; by default an EMA codebook with k-means initialisation and dead-code
replacement), and the decoder maps the ``slots`` chosen entries back to ``x``.

``x = F(u)`` for uniforms ``u`` in ``[0, 1)^slots`` (the base): the indices
are drawn from the prior -- uniformly (``prior="uniform"``: index
``floor(u_j * num_codes)``) or by a learned :class:`Autoregressive` prior over
the ``slots`` indices (``prior="autoregressive"``, the default, trained jointly
on the encoder's current indices) through :func:`pyprobtf.ops.sample_logits`
-- and decoded. The prior's sampling options (``temperature``, ``top_k``,
``top_p``, ``min_p``) can be given to ``transform``/``sample``.

There is no density (the model is a discrete generator); :meth:`VQVAE.reconstruction_error`
and :meth:`VQVAE.codebook_usage` measure the autoencoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Uniform

from pyprobtf.families._latent import LatentFamily, check_choice, check_int, check_real, default_latent_dim
from pyprobtf.families._nets import MLP, check_activation, check_hidden
from pyprobtf.families.autoregressive import SAMPLING_OPTIONS, Autoregressive
from pyprobtf.transform import Trajectory

VQ_PRIORS = ("autoregressive", "uniform")


def _vector_quantizer():
    try:
        from pyprobtf.nn import VectorQuantizer
    except ImportError as exc:  # until the quantizer (issue 4) is part of this build
        raise ImportError("VQVAE needs pyprobtf.nn.VectorQuantizer, which this build of pyprobtf does not have") from exc
    return VectorQuantizer


class VQVAE(LatentFamily):
    """VQ-VAE for vectors (see the module docstring).

    Args:
        dim: data dimension.
        slots: code vectors per sample (default ``min(dim, 8)``); the base is ``U[0, 1)^slots``.
        code_dim: size of each code vector.
        num_codes: codebook size.
        hidden, activation: the encoder MLP's hidden widths (the decoder's are reversed).
        beta: commitment weight; ema, decay, kmeans_init, dead_code_threshold: the quantizer's options
            (:class:`pyprobtf.nn.VectorQuantizer`).
        prior: ``"autoregressive"`` (a causal transformer over the ``slots`` indices, trained jointly)
            or ``"uniform"``.
        prior_d_model, prior_layers, prior_heads: the autoregressive prior's transformer.
        normalize: standardise the data per feature (fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = VQVAE(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])
        >>> sorted(model.codebook_usage(toy("8gaussians", 1000)))
        ['codes_used', 'perplexity', 'usage']
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 2e-3, "warmup": 200, "lr_final": 0.01,
                    "grad_clip": 1.0}
    sampling_options = SAMPLING_OPTIONS

    def __init__(self, dim: int, *, slots: int | None = None, code_dim: int = 4, num_codes: int = 64,
                 hidden=(128, 128), activation: str = "relu", beta: float = 0.25, ema: bool = True,
                 decay: float = 0.95, kmeans_init: bool = True, dead_code_threshold: float = 1.0,
                 prior: str = "autoregressive", prior_d_model: int = 64, prior_layers: int = 2, prior_heads: int = 4,
                 normalize: bool = True):
        name = type(self).__name__
        super().__init__(dim, default_latent_dim(dim, slots, 8), normalize=normalize)
        self.slots = self.latent_dim
        self.code_dim = check_int(name, "code_dim", code_dim)
        self.num_codes = check_int(name, "num_codes", num_codes)
        hidden = check_hidden(name, hidden)
        check_activation(name, activation)
        self.prior_type = check_choice(name, "prior", prior, VQ_PRIORS)
        check_real(name, "beta", beta)
        check_real(name, "decay", decay, 0.0, 1.0, high_open=True)
        check_real(name, "dead_code_threshold", dead_code_threshold)
        self.encoder = MLP(dim, hidden, self.slots * self.code_dim, activation)
        self.decoder = MLP(self.slots * self.code_dim, hidden[::-1], dim, activation)
        self.vq = _vector_quantizer()(self.num_codes, self.code_dim, beta=float(beta), ema=ema, decay=float(decay),
                                      kmeans_init=kmeans_init, dead_code_threshold=float(dead_code_threshold))
        self.code_prior = (Autoregressive(self.slots, vocab_size=self.num_codes, d_model=prior_d_model,
                                          layers=prior_layers, heads=prior_heads)
                           if prior == "autoregressive" else None)
        self.register_buffer("_u_low", torch.zeros(self.slots), persistent=False)
        self.register_buffer("_u_high", torch.ones(self.slots), persistent=False)

    @property
    def base(self):
        """``U[0, 1)^slots``: one uniform per code index."""
        return Independent(Uniform(self._u_low, self._u_high, validate_args=False), 1, validate_args=False)

    # -------------------------------------------------------------- encoder, quantizer, decoder
    def _codes(self, y: torch.Tensor) -> torch.Tensor:
        return self.encoder(y).reshape(y.shape[0], self.slots, self.code_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code indices of ``x`` (data units), int64 ``(B, slots)``."""
        x = self.check_x(x, "encode")
        with torch.no_grad():
            return self.vq.nearest(self._codes(self.scaler(x.to(self.dtype))))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Data-unit ``x`` for code indices ``(B, slots)``."""
        if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.shape[1] != self.slots:
            raise ValueError(f"{self._name('decode_indices')}: `indices` must be a tensor of shape (batch, "
                             f"{self.slots}); got {getattr(indices, 'shape', type(indices).__name__)}")
        codes = self.vq.embed(indices.long()).to(self.dtype)
        return self.scaler.inverse(self.decoder(codes.reshape(indices.shape[0], -1)))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decoder(quantize(encoder(x)))`` in data units."""
        return self.decode_indices(self.encode(x))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> float:
        """Mean squared reconstruction error per feature, in data units."""
        x = self.check_x(x, "reconstruction_error")
        return float((self.reconstruct(x) - x.to(self.dtype)).square().mean())

    @torch.no_grad()
    def codebook_usage(self, x: torch.Tensor) -> dict[str, float]:
        """How the codebook is used on ``x``: ``codes_used`` (distinct codes), ``usage`` (their share of
        ``num_codes``) and ``perplexity`` (``exp`` of the entropy of the code frequencies: ``num_codes`` when all are
        used equally, 1 when one takes everything)."""
        idx = self.encode(x).flatten()
        counts = torch.bincount(idx, minlength=self.num_codes).double()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
        used = int((counts > 0).sum())
        return {"codes_used": float(used), "usage": used / self.num_codes, "perplexity": float(torch.exp(entropy))}

    # -------------------------------------------------------------- the protocol
    def loss(self, batch):
        """Reconstruction MSE (standardised units) + the quantizer's loss + the prior's NLL of the current indices."""
        x, _ = self.split_batch(batch)
        y = self.scaler(x)
        z_q, indices, vq_loss = self.vq(self._codes(y))
        loss = F.mse_loss(self.decoder(z_q.reshape(y.shape[0], -1)), y) + vq_loss
        if self.code_prior is not None:
            loss = loss + self.code_prior.loss(indices.detach().to(y.dtype)) / self.slots
        return loss

    def indices_from_uniforms(self, u: torch.Tensor, **sampling) -> torch.Tensor:
        """The prior's code indices for base draws ``u`` ``(B, slots)`` (its ``F``)."""
        if self.code_prior is None:
            # A uniform prior is unchanged by temperature and top-p/k/min-p (all codes tie): nothing to apply.
            return (u.double() * self.num_codes).floor().clamp(0, self.num_codes - 1).long()
        return self.code_prior.transform(u, **sampling).long()

    def transform(self, z, context=None, **sampling):
        """``x = F(u)``: prior indices for the uniforms ``u`` (called ``z``), decoded."""
        z = self.check_z(z, "transform")
        self.check_context(context, z.shape[0], "transform")
        bad = ~((z >= 0) & (z < 1)).all(1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"{self._name('transform')}: `z` must hold uniforms in [0, 1) (the base U[0, 1)^"
                             f"{self.slots}); row {row} is {z[row].tolist()}")
        return self.decode_indices(self.indices_from_uniforms(z, **sampling))

    def sample(self, n: int, *, seed: int | None = None, context=None, **sampling) -> torch.Tensor:
        """``n`` samples; with the autoregressive prior the indices come from its per-row Philox streams."""
        if self.code_prior is None:
            return super().sample(n, seed=seed, context=context)
        self.check_context(context, 0, "sample")
        with torch.no_grad():
            return self.decode_indices(self.code_prior.sample(n, seed=seed, **sampling).long())

    def trajectory(self, z, context=None, **sampling):
        """``[u, x]``: the uniforms and the decoded sample."""
        with torch.no_grad():
            return Trajectory([z, self.transform(z, context, **sampling)], ["z", "x"])
