"""The vector quantizer of VQ-VAE (van den Oord, Vinyals and Kavukcuoglu, 2017).

For encoder outputs ``z`` it returns the nearest codebook entries ``e_k`` with
``k = argmin_j |z - e_j|^2`` (eq. 1 and 2 of the paper), found by
:func:`pyprobtf.ops.vq_nearest` without an N x K distance matrix, passes the
decoder's gradient straight through to the encoder, and computes the loss of
eq. 3 without its reconstruction term::

    loss = |sg[z] - e|^2 + beta * |z - sg[e]|^2        (means over elements)

With ``ema=True`` the codebook term is dropped and the codebook follows
exponential moving averages of the inputs assigned to each code instead (the
paper's appendix A.1).

Bad input: in training, a batch that would update the codebook's state (the
k-means initialisation, the EMA statistics, dead-code replacement) must be
finite; a NaN or infinite value raises ``ValueError`` before anything changes,
so one bad batch never leaves a NaN code behind. In evaluation (and in training
without any of those updates) NaN propagates as in :func:`pyprobtf.ops.vq_nearest`.

Data parallel: when ``torch.distributed`` is initialised with more than one
process, the statistics that change the codebook are combined over the ranks
(the EMA sums and counts and the usage counts are all-reduced; the k-means
initialisation runs on the batches of every rank gathered together and is
broadcast from rank 0; dead codes are replaced by rows rank 0 picks, broadcast;
the first training call takes rank 0's codebook and statistics), so every rank
keeps the same codebook without DistributedDataParallel's help.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyprobtf.ops import vq_nearest

METRICS = ("l2", "cosine")


class VQOutput(NamedTuple):
    """What :meth:`VectorQuantizer.forward` returns (a tuple: ``z_q, indices, loss = vq(z)``)."""

    z_q: torch.Tensor
    """Quantized input, shape and dtype of ``z``; gradients pass straight through to ``z``."""
    indices: torch.Tensor
    """int64 code indices, shape ``z.shape[:-1]``."""
    loss: torch.Tensor
    """Scalar: codebook loss + ``beta`` * commitment loss (commitment only with ``ema=True``)."""


def code_statistics(vectors: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code sums of ``vectors`` (N, D) and counts, in one pass over the data.

    A column of ones is appended to the vectors, so one ``index_add_`` gives
    both: no N x K one-hot matrix. Returns ``(sums (K, D), counts (K,))`` in the
    dtype of ``vectors``.
    """
    n, dim = vectors.shape
    stats = vectors.new_zeros(num_codes, dim + 1)
    stats.index_add_(0, indices, torch.cat([vectors, vectors.new_ones(n, 1)], dim=1))
    return stats[:, :dim], stats[:, dim]


class VectorQuantizer(nn.Module):
    """VQ-VAE's quantizer: nearest code, straight-through gradient, codebook and commitment losses.

    Args:
        num_codes: codebook size K.
        dim: code dimension D; inputs are channel-last ``(..., D)``.
        beta: weight of the commitment loss ``|z - sg[e]|^2`` (the paper's 0.25).
        metric: ``"l2"`` (the paper's) or ``"cosine"``: inputs and codes are
            then L2-normalised, the quantized output is the unit code, and both
            losses are taken between unit vectors.
        ema: update the codebook by exponential moving averages of its
            assigned inputs instead of by gradient (the codebook is then a
            buffer, not a parameter, and the loss has no codebook term).
        decay: EMA decay for the codebook (``ema=True``) and for the usage
            counts that decide which codes are dead.
        eps: Laplace smoothing of the EMA counts, so unused codes never divide by zero.
        kmeans_init: on the first training batch, initialise the codebook by
            k-means on that batch: k-means++ seeding (K passes over the batch),
            then ``kmeans_iters`` Lloyd iterations.
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_code_threshold: in training, a code whose average number of
            assignments per batch (:meth:`code_usage`) falls below this is
            replaced by a random input of the current batch, then has a grace
            period of about ln(2) / (1 - decay) batches. 0 disables replacement.
        backend, precision: passed to :func:`pyprobtf.ops.vq_nearest`.
        process_group: the ``torch.distributed`` group whose ranks keep one codebook
            (default: the default group, when ``torch.distributed`` is initialised).

    Shapes:
        ``z``: ``(B, D)`` or ``(B, ..., D)`` (channel-last, e.g. ``(B, H, W, D)``;
        permute channel-first feature maps first). ``forward`` returns
        :class:`VQOutput` ``(z_q, indices, loss)`` with ``z_q`` like ``z``,
        ``indices`` of shape ``z.shape[:-1]`` and a scalar ``loss``.

    Statistics of the last forward call (no gradient): ``perplexity``
    (``exp`` of the entropy of the code frequencies; K when all codes are used
    equally, 1 when one code takes everything), ``usage`` (fraction of codes
    used), ``replaced`` (codes replaced as dead). :meth:`code_usage` gives each
    code's average assignments per training batch (a bias-corrected EMA).

    Example:
        >>> vq = VectorQuantizer(512, 64, beta=0.25, ema=True, kmeans_init=True, dead_code_threshold=1.0)
        >>> z = encoder(images).permute(0, 2, 3, 1)          # (B, H, W, 64)
        >>> z_q, indices, vq_loss = vq(z)                     # (B, H, W, 64), (B, H, W), ()
        >>> recon = decoder(z_q.permute(0, 3, 1, 2))
        >>> loss = F.mse_loss(recon, images) + vq_loss
        >>> codes = vq.embed(indices)                         # decode stored indices later
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        metric: str = "l2",
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        backend: str = "auto",
        precision: str = "exact",
        process_group=None,
    ):
        super().__init__()
        if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
            raise ValueError(f"VectorQuantizer: `num_codes` must be a positive int; got {num_codes!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"VectorQuantizer: `dim` must be a positive int; got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"VectorQuantizer: `metric` must be one of {METRICS}; got {metric!r}")
        if not (0.0 <= decay < 1.0):
            raise ValueError(f"VectorQuantizer: `decay` must be in [0, 1); got {decay!r}")
        if not (beta >= 0.0 and math.isfinite(beta)):
            raise ValueError(f"VectorQuantizer: `beta` must be >= 0 and finite; got {beta!r}")
        if not (eps > 0.0):
            raise ValueError(f"VectorQuantizer: `eps` must be > 0; got {eps!r}")
        if not (dead_code_threshold >= 0.0):
            raise ValueError(f"VectorQuantizer: `dead_code_threshold` must be >= 0; got {dead_code_threshold!r}")
        if isinstance(kmeans_iters, bool) or not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"VectorQuantizer: `kmeans_iters` must be an int >= 0; got {kmeans_iters!r}")
        self.num_codes, self.dim = num_codes, dim
        self.beta, self.metric, self.ema, self.decay, self.eps = float(beta), metric, ema, float(decay), float(eps)
        self.kmeans_iters, self.dead_code_threshold = kmeans_iters, float(dead_code_threshold)
        self.backend, self.precision = backend, precision
        self.process_group = process_group
        self._state_shared = False

        # The initialisation of the widely used PyTorch VQ-VAE: small codes around the origin.
        init = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_counts", torch.ones(num_codes))
            self.register_buffer("ema_sums", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("usage_ema", torch.zeros(num_codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._initialized = not kmeans_init
        self.perplexity = torch.tensor(float("nan"))
        self.usage = torch.tensor(float("nan"))
        self.replaced = 0

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, metric={self.metric!r}, ema={self.ema}, "
            f"decay={self.decay}, dead_code_threshold={self.dead_code_threshold}"
        )

    # ------------------------------------------------------------------------- lookup

    def codes(self) -> torch.Tensor:
        """The codebook as used for quantization, (K, D): unit rows for ``metric="cosine"``."""
        return F.normalize(self.codebook, dim=-1) if self.metric == "cosine" else self.codebook

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows for integer ``indices`` of any shape: ``indices.shape + (D,)``."""
        return F.embedding(indices, self.codes())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices of ``z`` (..., D), shape ``z.shape[:-1]``, without losses or updates."""
        flat = self._flatten(z)
        return self._search(flat).reshape(z.shape[:-1])

    # ------------------------------------------------------------------------- forward

    def forward(self, z: torch.Tensor) -> VQOutput:
        flat = self._flatten(z)
        target = F.normalize(flat, dim=-1) if self.metric == "cosine" else flat
        if self.training and not self._state_shared:
            self._share_state()
        if self.training and (self.ema or self.dead_code_threshold > 0 or not self._initialized):
            self._check_finite(flat)
        if self.training and not self._initialized:
            # Reading the buffer synchronises with the device: done until it is set, then cached.
            self._initialized = bool(self.initialized)
            if not self._initialized:
                self._kmeans_init(target.detach())
                self._initialized = True
        indices = self._search(flat)
        z_q = self.embed(indices).to(flat.dtype)

        commitment = F.mse_loss(target, z_q.detach())
        if self.ema:
            loss = self.beta * commitment
        else:
            loss = F.mse_loss(z_q, target.detach()) + self.beta * commitment
        z_q_st = target + (z_q - target).detach()  # straight-through: d z_q / d z = identity

        with torch.no_grad():
            counts = torch.bincount(indices, minlength=self.num_codes).to(self.usage_ema.dtype)
            if self.training:
                counts = self._all_reduce(counts)
            self._record_statistics(counts)
            self.replaced = 0
            if self.training:
                if self.ema:
                    self._ema_update(target.detach(), indices, counts)
                self.usage_ema.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
                self.steps += 1
                if self.dead_code_threshold > 0:
                    self._replace_dead_codes(target.detach())
        return VQOutput(z_q_st.reshape(z.shape), indices.reshape(z.shape[:-1]), loss)

    # ------------------------------------------------------------------------- internals

    def _world(self):
        """The process group whose ranks share the codebook, or None when this process is alone."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self._world()
        if group is not None:
            dist.all_reduce(tensor, group=group)
        return tensor

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self._world()
        if group is not None:
            dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
        return tensor

    @torch.no_grad()
    def _share_state(self) -> None:
        """On the first training call, every rank takes rank 0's codebook and statistics."""
        if self._world() is not None:
            self._broadcast(self.codebook.data)
            for buffer in self.buffers():
                self._broadcast(buffer)
        self._state_shared = True

    def _check_finite(self, flat: torch.Tensor) -> None:
        """Refuse (on every rank alike) a training batch with NaN or inf before it touches the codebook."""
        bad = self._all_reduce((~torch.isfinite(flat.detach())).sum().to(torch.float64))
        if bool(bad > 0):
            where = " (summed over the ranks)" if self._world() is not None else ""
            raise ValueError(
                f"VectorQuantizer: `z` must be finite in training (it updates the codebook); got {int(bad)} NaN or "
                f"infinite value(s){where}")

    def _gathered(self, data: torch.Tensor) -> torch.Tensor:
        """The rows of ``data`` of every rank, rank order (this rank's alone when it is alone)."""
        group = self._world()
        if group is None:
            return data
        sizes = [torch.zeros((), dtype=torch.int64, device=data.device) for _ in range(dist.get_world_size(group))]
        dist.all_gather(sizes, torch.tensor(data.shape[0], device=data.device), group=group)
        longest = max(int(n) for n in sizes)
        padded = data.new_zeros(longest, data.shape[1])
        padded[: data.shape[0]] = data
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[: int(n)] for part, n in zip(parts, sizes)])

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"VectorQuantizer: `z` must be a floating-point tensor; got {getattr(z, 'dtype', type(z))}")
        if z.dim() < 2 or z.shape[-1] != self.dim:
            raise ValueError(
                f"VectorQuantizer: `z` must have shape (B, ..., {self.dim}) (channel-last); got {tuple(z.shape)}"
            )
        return z.reshape(-1, self.dim)

    def _search(self, flat: torch.Tensor) -> torch.Tensor:
        codebook = self.codebook.detach()
        indices, _ = vq_nearest(
            flat.detach().to(codebook.dtype), codebook, metric=self.metric, backend=self.backend,
            precision=self.precision,
        )
        return indices

    def _record_statistics(self, counts: torch.Tensor) -> None:
        total = counts.sum()
        p = counts / total.clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        # torch.where, not `if`: no device synchronisation.
        self.perplexity = torch.where(total > 0, torch.exp(entropy), torch.full_like(entropy, float("nan")))
        self.usage = (counts > 0).float().mean()

    def _set_codebook(self, values: torch.Tensor) -> None:
        self.codebook.data.copy_(values)

    def _ema_update(self, target: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        sums, _ = code_statistics(target.to(self.ema_sums.dtype), indices, self.num_codes)
        sums = self._all_reduce(sums.contiguous())  # counts arrive all-reduced
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        n = self.ema_counts.sum()
        smoothed = (self.ema_counts + self.eps) / (n + self.num_codes * self.eps) * n
        self._set_codebook(self.ema_sums / smoothed[:, None])

    def code_usage(self) -> torch.Tensor:
        """Expected assignments per training batch of each code, (K,): the usage EMA,
        bias-corrected for its zero start (as Adam's moments are)."""
        return self.usage_ema / (1.0 - self.decay ** self.steps.clamp_min(1).to(self.usage_ema.dtype))

    def _replace_dead_codes(self, target: torch.Tensor) -> None:
        dead = (self.code_usage() < self.dead_code_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return
        if target.shape[0] == 0:  # rank 0 may still have rows: take its picks
            if self._world() is None:
                return
            target = target.new_zeros(1, target.shape[1])
        pick = torch.randint(target.shape[0], (dead.numel(),), device=target.device)
        new = self._broadcast(target[pick].to(self.codebook.dtype).contiguous())  # rank 0's picks everywhere
        self.codebook.data[dead] = new
        # A grace period: the usage of a replaced code starts at twice the threshold, so
        # unused it is judged dead again after about ln(2) / (1 - decay) batches.
        self.usage_ema[dead] = 2.0 * self.dead_code_threshold * (1.0 - self.decay ** float(self.steps))
        if self.ema:
            self.ema_counts[dead] = 1.0
            self.ema_sums[dead] = new
        self.replaced = int(dead.numel())

    def _distances_to(self, data: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Distances in float64: finite for every finite float32 input (1e38 squared is not a float32)."""
        data, center = data.to(torch.float64), center.to(torch.float64)
        if self.metric == "cosine":  # unit vectors
            return (1.0 - data @ center).clamp_min(0.0)
        return ((data - center) ** 2).sum(1)

    @torch.no_grad()
    def _kmeans_init(self, target: torch.Tensor) -> None:
        """k-means++ seeding (Arthur and Vassilvitskii, 2007), then Lloyd iterations (on rank 0's view
        of every rank's batch, then broadcast)."""
        data = self._gathered(target.to(self.codebook.dtype).contiguous())
        n = data.shape[0]
        if n == 0:
            return
        centroids = torch.empty(self.num_codes, self.dim, dtype=data.dtype, device=data.device)
        centroids[0] = data[torch.randint(n, ())]
        nearest = self._distances_to(data, centroids[0])
        for i in range(1, self.num_codes):
            # Next seed: an input drawn with probability proportional to its distance to the
            # seeds so far (uniformly once every input coincides with a seed).
            weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
            centroids[i] = data[torch.multinomial(weights, 1)[0]]
            nearest = torch.minimum(nearest, self._distances_to(data, centroids[i]))
        for _ in range(self.kmeans_iters):
            indices, _ = vq_nearest(data, centroids, metric=self.metric, backend=self.backend)
            sums, counts = code_statistics(data.to(torch.float64), indices, self.num_codes)
            used = counts > 0
            # Means in float64 (float32 sums of values near 1e38 overflow); empty clusters keep their centroid.
            centroids[used] = (sums[used] / counts[used, None]).to(centroids.dtype)
            if self.metric == "cosine":
                centroids = F.normalize(centroids, dim=-1)
        centroids = self._broadcast(centroids.contiguous())
        self._set_codebook(centroids)
        if self.ema:
            self.ema_counts.fill_(1.0)
            self.ema_sums.copy_(centroids)
        self.initialized.fill_(True)
