"""vector-quantize-pytorch's quantizers with pyprobtf's nearest-code search (``pip install pyprobtf[vq]``).

:class:`VectorQuantize` and :class:`ResidualVQ` are the library's own classes
(every argument, default, ``state_dict`` key and return value: ``(quantized,
indices, commit_loss)``; ``codebook_dim`` projections, ``heads``, ``decay``,
``commitment_weight``, ``kmeans_init``, ``threshold_ema_dead_code``,
``use_cosine_sim``, ``accept_image_fmap``, ``channel_last``, ``sync_codebook``
all behave as there) with one change inside the codebook: the nearest code is
found by :func:`pyprobtf.ops.vq_nearest` instead of a dense N x K distance
matrix and ``argmax``, the quantized vectors are gathered instead of
multiplied by an N x K one-hot matrix, and the EMA statistics are accumulated
by index (``scatter_add``/``index_add``, all-reduced across processes with
``sync_codebook`` as there) instead of through that one-hot matrix. Memory
goes from O(N K) to O(N + K D).

The codes are the exact (float64) nearest ones; the library ranks float32
distances, so where two codes are within float32 rounding of each other the
choice may differ. Exact ties go to the lower index in both.

The library's dense path is kept, unchanged, for the options that need the
full distance matrix or its one-hot rows: stochastic or straight-through
(Gumbel) code sampling, ``topk``, ``mask``/``lens``, ``codebook_transform_fn``,
``affine_param``, ``vq_bridge``, ``ema_update_weight``, ``accum_ema_update``,
the cross-entropy commitment loss, the codebook diversity loss, and
``forward(x, indices=...)``.

Example:
    >>> import torch
    >>> from pyprobtf.integrations.vector_quantize_pytorch import VectorQuantize
    >>> vq = VectorQuantize(dim=64, codebook_size=1024, decay=0.8, commitment_weight=1.0,
    ...                     accept_image_fmap=True)
    >>> quantized, indices, commit_loss = vq(torch.randn(8, 64, 32, 32))   # indices: (8, 32, 32)
"""

from __future__ import annotations

import torch
from torch.amp import autocast

try:
    import vector_quantize_pytorch as _vqp
    from vector_quantize_pytorch.vector_quantize_pytorch import Codebook as _PeerCodebook
    from vector_quantize_pytorch.vector_quantize_pytorch import ema_inplace, gumbel_sample
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pyprobtf.integrations.vector_quantize_pytorch needs vector-quantize-pytorch: pip install 'pyprobtf[vq]' "
        "(install it after torch, with torch pinned, so that it does not pull another torch)"
    ) from exc

from pyprobtf.ops import vq_nearest

__all__ = ["ResidualVQ", "VectorQuantize"]


class _Codebook(_PeerCodebook):
    """The library's Codebook with the nearest search and EMA statistics done by index.

    Instances are made by the library's constructor and given this class
    afterwards (it adds no state): the module, its buffers and its
    ``state_dict`` are the library's.
    """

    # Set by VectorQuantize.forward for each call: whether the caller uses the distance matrix.
    needs_distances = False

    def _fast_path_ok(self, mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk) -> bool:
        sampler = getattr(self.gumbel_sample, "keywords", {})
        stochastic = sampler.get("stochastic", False) or sampler.get("straight_through", False)
        return not (
            self.needs_distances or stochastic or mask is not None or codebook_transform_fn is not None
            or ema_update_weight is not None or accum_ema_update or topk is not None or self.affine_param
            or self.vq_bridge is not None
            or getattr(self.gumbel_sample, "func", None) is not gumbel_sample  # a custom sampler
        )

    @autocast("cuda", enabled=False)
    def forward(self, x, sample_codebook_temp=None, mask=None, freeze_codebook=False, codebook_transform_fn=None,
                ema_update_weight=None, accum_ema_update=False, ema_update=None, topk=None, update_usage=True):
        if not self._fast_path_ok(mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk):
            return super().forward(x, sample_codebook_temp, mask, freeze_codebook, codebook_transform_fn,
                                   ema_update_weight, accum_ema_update, ema_update, topk, update_usage)
        ema_update = self.ema_update if ema_update is None else ema_update
        needs_codebook_dim = x.ndim < 4
        x = x.float()
        if needs_codebook_dim:
            x = x.unsqueeze(0)
        shape = x.shape  # (h, b, n, d)
        flatten = x.reshape(shape[0], -1, shape[-1])  # (h, N, d)
        self.init_embed_(flatten)
        embed = self.embed if self.learnable_codebook else self.embed.detach()
        embed = embed.to(flatten.dtype)
        # use_cosine_sim: inputs and codes are unit vectors already, and the library ranks by x.e.
        metric = "dot" if self.use_cosine_sim else "l2"
        indices = torch.stack([vq_nearest(flatten[h], embed[h], metric=metric)[0] for h in range(shape[0])])
        quantize = torch.stack([embed[h].index_select(0, indices[h]) for h in range(shape[0])])
        if self.training and update_usage and not freeze_codebook:
            self._update_codebook(flatten, indices, ema_update)
        quantize = quantize.reshape(shape)
        indices = indices.reshape(shape[:-1])
        if needs_codebook_dim:
            quantize, indices = quantize.squeeze(0), indices.squeeze(0)
        return quantize, indices, None

    def _update_codebook(self, flatten: torch.Tensor, indices: torch.Tensor, ema_update: bool) -> None:
        """The library's update_codebook, with the counts and sums taken by index."""
        if not ema_update and not self.has_dead_code_replacement:
            return
        heads, _, dim = flatten.shape
        samples = flatten.detach()
        cluster_size = torch.zeros(heads, self.codebook_size, dtype=samples.dtype, device=samples.device)
        cluster_size.scatter_add_(1, indices, torch.ones_like(indices, dtype=samples.dtype))
        self.all_reduce_fn(cluster_size)
        embed_sum = torch.zeros(heads, self.codebook_size, dim, dtype=samples.dtype, device=samples.device)
        for h in range(heads):
            embed_sum[h].index_add_(0, indices[h], samples[h])
        self.all_reduce_fn(embed_sum)
        ema_inplace(self.cluster_size, cluster_size, self.decay)
        ema_inplace(self.embed_avg, embed_sum, self.decay)
        if ema_update and not self.manual_ema_update:
            self.update_ema()
        self.expire_codes_(flatten)


def _use_fast_codebook(vq) -> None:
    vq._codebook.__class__ = _Codebook


class VectorQuantize(_vqp.VectorQuantize):
    """``vector_quantize_pytorch.VectorQuantize`` with :func:`~pyprobtf.ops.vq_nearest` (see the module).

    Same arguments, defaults, ``state_dict`` keys and return value
    ``(quantized, indices, commit_loss)``.
    """

    def __init__(self, dim, codebook_size, *args, **kwargs):
        super().__init__(dim, codebook_size, *args, **kwargs)
        _use_fast_codebook(self)

    def forward(self, x, indices=None, *args, **kwargs):
        self._codebook.needs_distances = (
            indices is not None or self.commitment_use_cross_entropy_loss or self.has_codebook_diversity_loss
        )
        return super().forward(x, indices, *args, **kwargs)


class ResidualVQ(_vqp.ResidualVQ):
    """``vector_quantize_pytorch.ResidualVQ`` whose levels are :class:`VectorQuantize` (see the module).

    ``num_quantizers`` levels, each a nearest-code search on the residual left
    by the previous ones; same arguments, ``state_dict`` keys and return value
    ``(quantized, indices, commit_losses)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            if isinstance(layer, _vqp.VectorQuantize):
                layer.__class__ = VectorQuantize
                _use_fast_codebook(layer)
