"""VQ-VAE: a decoder over codebook entries, with a uniform or a learned autoregressive prior over code indices.

The encoder maps ``x`` to a channel-first map of code vectors ``(B, code_dim, *spatial)``
(for vectors: ``spatial = (slots,)``); each position's vector is replaced by its
nearest codebook entry by :class:`pyprobtf.nn.VectorQuantizer` (the seed paper's
eq. 2-3: straight-through gradient, codebook and commitment losses; by default an
EMA codebook with k-means initialisation and dead-code replacement), and the
decoder maps the chosen entries ``(B, code_dim, *spatial)`` back to ``x``. There
are ``slots = prod(spatial)`` code positions, read in row-major order.

Networks (the user's own, or the defaults): ``encoder(x) -> (B, code_dim, *spatial)``
for standardised ``x`` ``(B, *event_shape)``; ``decoder(codes) -> (B, *event_shape)``.
The code shape is read off one call of your encoder. The defaults are MLPs for
vectors and :class:`pyprobtf.nn.ConvEncoder`/:class:`pyprobtf.nn.ConvDecoder` for
``(C, H, W)`` images (codes at the last level's resolution).

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

import math

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Uniform

from torch import nn

from pyprobtf import _checks
from pyprobtf.families._latent import LatentFamily, default_latent_dim, event_shape_of, is_image, probe_shape
from pyprobtf.families._nets import MLP
from pyprobtf.families.autoregressive import SAMPLING_OPTIONS, Autoregressive
from pyprobtf.families.gan import image_or_vector_options
from pyprobtf.transform import Trajectory, check_net_output

VQ_PRIORS = ("autoregressive", "uniform")


class SlotMLP(MLP):
    """The vector default networks: an MLP whose code side is ``(B, code_dim, slots)`` (channel-first, as the
    protocol has it) and is laid out slot by slot inside (``(B, slots * code_dim)``, slot-major)."""

    def __init__(self, n_in: int, hidden, n_out: int, activation: str, *, codes_in: bool, code_dim: int,
                 slots: int):
        super().__init__(n_in, hidden, n_out, activation)
        self.codes_in, self.code_dim, self.slots = codes_in, code_dim, slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.codes_in:
            return super().forward(x.transpose(1, 2).reshape(x.shape[0], self.slots * self.code_dim))
        return super().forward(x.flatten(1)).reshape(x.shape[0], self.slots, self.code_dim).transpose(1, 2)


def _vector_quantizer():
    try:
        from pyprobtf.nn import VectorQuantizer
    except ImportError as exc:  # until the quantizer (issue 4) is part of this build
        raise ImportError("VQVAE needs pyprobtf.nn.VectorQuantizer, which this build of pyprobtf does not "
                          "have") from exc
    return VectorQuantizer


class VQVAE(LatentFamily):
    """VQ-VAE (see the module docstring).

    Args:
        dim: data dimension (shorthand for ``event_shape=(dim,)``).
        event_shape: the shape of one sample: ``(d,)``, or ``(C, H, W)`` for images.
        encoder, decoder: your networks (both; see the module docstring), or None for the defaults.
        slots: code positions of the default vector networks (default ``min(dim, 8)``); the base is
            ``U[0, 1)^slots`` (``slots = prod(spatial)`` in general).
        code_dim: size of each code vector (default 4; with your networks it is read off the encoder).
        num_codes: codebook size.
        hidden, activation: the default vector encoder MLP's hidden widths (the decoder's are reversed).
        channels: the default image networks' channels per level (codes at ``H / 2^(len(channels) - 1)``;
            default ``(16, 32)`` up to 16x16 images, ``(32, 64)`` above).
        beta: commitment weight; ema, decay, kmeans_init, dead_code_threshold: the quantizer's options
            (:class:`pyprobtf.nn.VectorQuantizer`).
        prior: ``"autoregressive"`` (a causal transformer over the ``slots`` indices, trained jointly)
            or ``"uniform"``.
        prior_d_model, prior_layers, prior_heads: the autoregressive prior's transformer (``prior_d_model``:
            64 for vectors, 32 for images).
        normalize: standardise the data (per feature, or per channel for images; fitted by ``initialize``).

    Example:
        >>> from pyprobtf import fit
        >>> from pyprobtf.data import toy
        >>> model = VQVAE(dim=2)
        >>> _ = fit(model, toy("8gaussians", 10_000), steps=50, progress=False)
        >>> model.sample(4, seed=0).shape
        torch.Size([4, 2])
        >>> sorted(model.codebook_usage(toy("8gaussians", 1000)))
        ['codes_used', 'perplexity', 'usage']
        >>> VQVAE(event_shape=(1, 8, 8)).code_shape       # 16 code positions (4x4) for 8x8 images
        (4, 4, 4)
    """

    capabilities = frozenset()
    fit_defaults = {"steps": 20_000, "batch_size": 256, "lr": 2e-3, "warmup": 200, "lr_final": 0.01,
                    "grad_clip": 1.0}
    sampling_options = SAMPLING_OPTIONS

    def __init__(self, dim: int | None = None, *, event_shape=None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, slots: int | None = None, code_dim: int | None = None,
                 num_codes: int = 64, hidden=None, activation: str | None = None, channels=None, beta: float = 0.25,
                 ema: bool = True, decay: float = 0.95, kmeans_init: bool = True, dead_code_threshold: float = 1.0,
                 prior: str = "autoregressive", prior_d_model: int | None = None, prior_layers: int = 2,
                 prior_heads: int = 4,
                 normalize: bool = True):
        name = type(self).__name__
        shape = event_shape_of(name, dim, event_shape)
        _checks.optional(_checks.module, name, "encoder", encoder)
        _checks.optional(_checks.module, name, "decoder", decoder)
        if (encoder is None) != (decoder is None):
            raise ValueError(f"{name}: give both `encoder` and `decoder`, or neither (for the defaults)")
        given = encoder is not None
        if channels is None and is_image(shape) and not given:
            # Two levels: a code map at half the resolution (16 positions for 8x8 images), short for the prior.
            channels = (16, 32) if max(shape[1:]) <= 16 else (32, 64)
        hidden, activation, channels = image_or_vector_options(name, shape, given, hidden, activation, channels,
                                                               (128, 128))
        if given:
            if slots is not None:
                raise ValueError(f"{name}: `slots` configures the default vector networks; with yours the code "
                                 f"positions are read off the encoder")
            code_shape = probe_shape(name, "encoder", encoder, shape)
            if not (isinstance(code_shape, tuple) and code_shape and isinstance(code_shape[0], int)) or \
                    len(code_shape) < 2:
                raise ValueError(f"{name}: `encoder` must return one (B, code_dim, *spatial) tensor; it returned "
                                 f"per-sample shape(s) {code_shape}")
            if code_dim is not None and code_dim != code_shape[0]:
                raise ValueError(f"{name}: `code_dim` ({code_dim!r}) differs from the encoder's channels "
                                 f"({code_shape[0]})")
        else:
            code_dim = 4 if code_dim is None else _checks.integer(name, "code_dim", code_dim, 1)
            if is_image(shape):
                from pyprobtf.nn.conv import ConvDecoder, ConvEncoder

                if slots is not None:
                    raise ValueError(f"{name}: `slots` is for vectors; for images the code map's size follows "
                                     f"`channels`")
                factor = 2 ** (len(channels) - 1)
                code_shape = (code_dim, shape[1] // factor, shape[2] // factor)
                encoder = ConvEncoder(shape, code_shape, channels=channels)
                decoder = ConvDecoder(code_shape, shape, channels=channels)
            else:
                n_slots = _checks.integer(name, "slots", default_latent_dim(math.prod(shape), slots, 8), 1)
                code_shape = (code_dim, n_slots)
                if len(shape) != 1:
                    raise ValueError(f"{name}: the default networks take vectors (d,) or images (C, H, W); give "
                                     f"your own for event_shape={shape}")
                n_in = math.prod(shape)
                encoder = SlotMLP(n_in, hidden, n_slots * code_dim, activation, codes_in=False, code_dim=code_dim,
                                  slots=n_slots)
                decoder = SlotMLP(n_slots * code_dim, hidden[::-1], n_in, activation, codes_in=True,
                                  code_dim=code_dim, slots=n_slots)
        self.code_shape = tuple(code_shape)
        self.code_dim = self.code_shape[0]
        super().__init__(None, (math.prod(self.code_shape[1:]),), event_shape=shape, normalize=normalize)
        self.slots = self.latent_dim
        self.num_codes = _checks.integer(name, "num_codes", num_codes, 1)
        self.prior_type = _checks.choice(name, "prior", prior, VQ_PRIORS)
        _checks.real(name, "beta", beta, 0)
        _checks.real(name, "decay", decay, 0, 1, high_open=True)
        _checks.real(name, "dead_code_threshold", dead_code_threshold, 0)
        self.encoder, self.decoder = encoder, decoder
        self.vq = _vector_quantizer()(self.num_codes, self.code_dim, beta=float(beta), ema=ema, decay=float(decay),
                                      kmeans_init=kmeans_init, dead_code_threshold=float(dead_code_threshold))
        if prior_d_model is None:
            prior_d_model = 32 if is_image(shape) else 64
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
        """The encoder's code vectors, channel-last ``(B, *spatial, code_dim)`` (as the quantizer takes them)."""
        out = check_net_output(type(self).__name__, "encoder", self.encoder(y), (y.shape[0], *self.code_shape))
        return out.movedim(1, -1)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Standardised ``x`` for channel-last code vectors ``(B, *spatial, code_dim)``."""
        out = self.decoder(codes.movedim(-1, 1))
        return check_net_output(type(self).__name__, "decoder", out, (codes.shape[0], *self.event_shape))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code indices of ``x`` (data units), int64 ``(B, slots)`` (positions in row-major order)."""
        x = self.check_x(x, "encode")
        with torch.no_grad():
            return self.vq.nearest(self._codes(self.scaler(x.to(self.dtype)))).reshape(x.shape[0], self.slots)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Data-unit ``x`` for code indices ``(B, slots)`` (or ``(B, *spatial)``)."""
        spatial = self.code_shape[1:]
        if not isinstance(indices, torch.Tensor) or indices.dim() < 1 or \
                tuple(indices.shape[1:]) not in ((self.slots,), spatial):
            raise ValueError(f"{self._name('decode_indices')}: `indices` must be a tensor of shape (batch, "
                             f"{self.slots}) or (batch, {', '.join(map(str, spatial))}); got "
                             f"{tuple(getattr(indices, 'shape', ())) or type(indices).__name__}")
        codes = self.vq.embed(indices.long().reshape(indices.shape[0], *spatial)).to(self.dtype)
        return self.scaler.inverse(self._decode_codes(codes))

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
        loss = F.mse_loss(self._decode_codes(z_q), y) + vq_loss
        if self.code_prior is not None:
            tokens = indices.detach().reshape(y.shape[0], self.slots).to(y.dtype)
            loss = loss + self.code_prior.loss(tokens) / self.slots
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
        n = _checks.integer(self._name("sample"), "n", n, 0)
        if self.code_prior is None:
            return super().sample(n, seed=seed, context=context)
        self.check_context(context, n, "sample")
        with torch.no_grad():
            return self.decode_indices(self.code_prior.sample(n, seed=seed, **sampling).long())

    def trajectory(self, z, context=None, **sampling):
        """``[u, x]``: the uniforms and the decoded sample."""
        with torch.no_grad():
            return Trajectory([z, self.transform(z, context, **sampling)], ["z", "x"])
