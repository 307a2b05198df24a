"""vq_nearest: the k nearest codebook rows of each input row, without the N x K distance matrix.

``indices, dist = vq_nearest(x, codebook)`` finds, for each of the N rows of
``x`` (N, D), the nearest of the K rows of ``codebook`` (K, D) under

    l2:      |x - e|^2, evaluated as |x|^2 - 2 x.e + |e|^2 and clamped at 0
    cosine:  1 - x.e / (max(|x|, 1e-12) max(|e|, 1e-12))
    dot:     -x.e

and returns the ``k`` best in order, ties to the lower index. The compiled
backends scan the codebook in float32 (float64 for float64 data) with fused
running selection, keep per row only the codes within twice a rigorous
rounding-error bound of the k-th best, and re-score those in float64: the
answer is the float64 answer, at the speed of a float32 matrix multiply and
with O(N k + K) extra memory. ``precision="fast"`` lets the Triton backend
scan with TF32 tensor cores; the exact re-scoring keeps the same guarantee.

Not differentiable: losses are computed from the codebook rows gathered with
``indices`` (see :class:`pyprobtf.nn.VectorQuantizer`).
"""

from __future__ import annotations

import torch

from pyprobtf import _checks, reference
from pyprobtf.ops import _registry
from pyprobtf.reference.vq_nearest import needs_overflow_rule

OP = "vq_nearest"
METRICS = {"l2": 0, "cosine": 1, "dot": 2}
PRECISIONS = ("exact", "fast")

# `auto` order: fastest first, as measured by benchmarks/bench_vq.py
# (benchmarks/results/vq_nearest-*.md); on CUDA the Triton kernel (tl.dot on
# tensor cores) is expected to beat the plain CUDA one.
_registry.define(OP, auto={"cpu": ("cpp", "torch"), "cuda": ("triton", "cuda", "torch")}, benchmark="bench_vq")
_registry.register_kernel(OP, "reference")(reference.vq_nearest)


def _overflow_rule_applies(x, codebook) -> bool:
    """Whether this call is answered by the reference's overflow rule on every backend.

    Checked on CPU only: on a GPU the check would make the host wait for the
    device, so there inputs with NaN, inf or overflowing products follow the
    kernel's own float64 arithmetic.
    """
    return x.device.type == "cpu" and needs_overflow_rule(x, codebook)


def _forward(x, codebook, metric: str, k: int, precision: str, backend: str):
    name = _registry.resolve(OP, backend, x.device.type)
    if name != "reference" and _overflow_rule_applies(x, codebook):
        name = "reference"  # NaN, inf or overflow: one order-free rule for every backend
    kernel = _registry.kernel(OP, name)
    if name in _registry.FUNCTIONAL:
        indices, dist = kernel(x, codebook, metric, k)
        return indices.contiguous(), dist.contiguous()
    n = x.shape[0]
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    dist = torch.empty(n, k, dtype=torch.float32, device=x.device)
    if n > 0:
        kernel(x, codebook, indices, dist, METRICS[metric], precision == "fast")
    if k == 1:
        return indices.view(n), dist.view(n)
    return indices, dist


# ----------------------------------------------------------------------------- custom op
# The path torch.compile, fake tensors and torch.library.opcheck see.


@torch.library.custom_op("pyprobtf::vq_nearest", mutates_args=())
def _vq_nearest_op(
    x: torch.Tensor, codebook: torch.Tensor, metric: str, k: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, codebook, metric, k, precision, backend)


@_vq_nearest_op.register_fake
def _(x, codebook, metric, k, precision, backend):
    shape = (x.shape[0],) if k == 1 else (x.shape[0], k)
    return x.new_empty(shape, dtype=torch.int64), x.new_empty(shape, dtype=torch.float32)


# ----------------------------------------------------------------------------- public op


def vq_nearest(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    metric: str = "l2",
    k: int = 1,
    precision: str = "exact",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest codebook rows of each row of ``x``, without the N x K distance matrix.

    Args:
        x: queries, shape ``(N, D)``; float32, float64, float16 or bfloat16,
            any strides.
        codebook: codes, shape ``(K, D)`` with ``K >= 1``; the dtype and
            device of ``x``, any strides.
        metric: ``"l2"`` (squared Euclidean distance ``|x - e|^2``),
            ``"cosine"`` (``1 - cos(x, e)``) or ``"dot"`` (``-x.e``).
        k: how many codes per row, ``1 <= k <= K``.
        precision: ``"exact"`` or ``"fast"``. Both return the float64 answer
            (see below); ``"fast"`` lets the Triton backend scan float32 data
            with TF32 tensor cores before the exact re-scoring. The other
            backends run the same code for both.
        backend: ``"auto"`` (the fastest verified backend for the device),
            ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(indices, dist)``: int64 codebook indices and their float32
        distances, shape ``(N,)`` for ``k = 1`` and ``(N, k)`` otherwise,
        ordered by distance (NaN last), ties to the lower index. Each row's
        codes are the float64 minimum (the contract allows them to be off by
        ``8 * 2^-24 * (|x|^2 + max |e|^2)``; these backends are exact up to
        float64 rounding). Not differentiable.

    Memory: ``O(N k + K D)`` (the codebook is repacked once); distances are
    reduced as they are computed, never stored. The reference backend works
    in blocks of rows (at most about 32 MiB of float64 distances at a time).

    Example:
        >>> codebook = torch.randn(512, 64)
        >>> z = torch.randn(10000, 64)
        >>> idx, dist = vq_nearest(z, codebook)              # (10000,), (10000,)
        >>> top4, d4 = vq_nearest(z, codebook, k=4, metric="cosine")  # (10000, 4)
    """
    _checks.tensor(OP, "x", x)
    if x.dim() != 2:
        raise ValueError(f"{OP}: `x` must be 2-D, (N, D); got shape {tuple(x.shape)}")
    _checks.tensor(OP, "codebook", codebook)
    if codebook.dim() != 2:
        raise ValueError(f"{OP}: `codebook` must be 2-D, (K, D); got shape {tuple(codebook.shape)}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"{OP}: `codebook` must have the dtype of `x`, {x.dtype}; got {codebook.dtype}")
    if codebook.device != x.device:
        raise ValueError(f"{OP}: `codebook` must be on the device of `x`, {x.device}; got {codebook.device}")
    if codebook.shape[1] != x.shape[1]:
        raise ValueError(
            f"{OP}: `codebook` must have the row length D of `x`, {x.shape[1]}; got shape {tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise ValueError(f"{OP}: `codebook` must have at least one row; got shape {tuple(codebook.shape)}")
    _checks.choice(OP, "metric", metric, tuple(METRICS))
    k = _checks.integer(OP, "k", k, 1, codebook.shape[0])
    _checks.choice(OP, "precision", precision, PRECISIONS)
    _registry.check_backend(OP, backend)
    x, codebook = x.detach(), codebook.detach()
    if _registry.use_custom_op(x, codebook):
        return _vq_nearest_op(x, codebook, metric, k, precision, backend)
    return _forward(x, codebook, metric, k, precision, backend)
