"""Reference nearest-codebook search: the contract of docs/ARCHITECTURE.md in float64 PyTorch.

Where float64 arithmetic can overflow (a NaN or inf in ``x`` or the codebook, or
``D (max|x| + max|e|)^2 >= 2^1000``, see :func:`needs_overflow_rule`) the order
in which a backend sums the products would decide the result (``inf + -inf``
is NaN, ``(inf + -1e308) + -1e308`` is inf, an FMA keeps a product that
overflows alone). There the contract is this order-free rule, and every backend
answers such calls with this reference:

- the products ``p_d = x_d * e_d`` are rounded to float64 one by one (no FMA);
- a dot product with a NaN product, or with both a ``+inf`` and a ``-inf``
  product, is NaN; else one with a ``+inf`` (``-inf``) product is ``+inf``
  (``-inf``); else it is the sum of the finite products, accumulated scaled by
  ``2^-53`` (exact) so that no partial sum overflows, then scaled back (``inf``
  when the sum itself is beyond float64);
- ``|x|^2`` and ``|e|^2`` are the dot products of a row with itself, ``|x|`` and
  ``|e|`` their square roots, and the distances follow the formulas in IEEE
  float64 arithmetic (``inf - inf`` is NaN, NaN sorts last).
"""

from __future__ import annotations

import math

import torch

METRICS = ("l2", "cosine", "dot")
COSINE_EPS = 1e-12

# Rows per block: bounds the distance block to about 2^22 float64 values (32 MiB)
# whatever N, so memory stays O(N * k + K) as the contract asks.
_BLOCK_ELEMENTS = 1 << 22


# Below this, D (max|x| + max|e|)^2 keeps every product, norm and distance far from overflow.
OVERFLOW_LIMIT = 2.0**1000


def needs_overflow_rule(x: torch.Tensor, codebook: torch.Tensor) -> bool:
    """Whether ``x`` or ``codebook`` holds a NaN or inf, or values large enough for float64 to overflow."""
    if x.numel() == 0 or codebook.numel() == 0:
        return False
    a = x.detach().abs().amax().to(torch.float64)
    b = codebook.detach().abs().amax().to(torch.float64)
    bound = x.shape[1] * (a + b.to(a.device)) ** 2  # NaN or inf for non-finite input
    return not bool(bound < OVERFLOW_LIMIT)


def _dot_rule(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, K) dot products of the rows of ``a`` (n, D) and ``b`` (K, D) by the overflow rule above."""
    p = a[:, None, :] * b[None, :, :]
    finite = p.isfinite()
    total = (torch.where(finite, p, 0.0) * 2.0**-53).sum(-1) * 2.0**53
    pos, neg = (p == math.inf).any(-1), (p == -math.inf).any(-1)
    total = torch.where(pos, math.inf, total)
    total = torch.where(neg, -math.inf, total)
    return torch.where(p.isnan().any(-1) | (pos & neg), math.nan, total)


def _self_dot_rule(a: torch.Tensor) -> torch.Tensor:
    p = a * a
    total = (torch.where(p.isfinite(), p, 0.0) * 2.0**-53).sum(-1) * 2.0**53
    total = torch.where((p == math.inf).any(-1), math.inf, total)
    return torch.where(p.isnan().any(-1), math.nan, total)


def _distances_overflow_rule(x64: torch.Tensor, e64: torch.Tensor, metric: str) -> torch.Tensor:
    dot = _dot_rule(x64, e64)
    if metric == "l2":
        xsq, esq = _self_dot_rule(x64), _self_dot_rule(e64)
        return (xsq[:, None] - 2.0 * dot + esq[None, :]).clamp_min(0.0)
    if metric == "cosine":
        xn = _self_dot_rule(x64).sqrt().clamp_min(COSINE_EPS)
        en = _self_dot_rule(e64).sqrt().clamp_min(COSINE_EPS)
        return 1.0 - dot / (xn[:, None] * en[None, :])
    return -dot


def vq_distances(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", overflow_rule: bool | None = None):
    """The (N, K) matrix of contract distances, in float64. For tests and small inputs.

    ``overflow_rule``: evaluate by the overflow rule of this module's docstring
    (default: when :func:`needs_overflow_rule` says so).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x64, e64 = x.to(torch.float64), codebook.to(torch.float64)
    if overflow_rule is None:
        overflow_rule = needs_overflow_rule(x64, e64)
    if overflow_rule:
        return _distances_overflow_rule(x64, e64, metric)
    dot = x64 @ e64.T
    if metric == "l2":
        xsq = (x64 * x64).sum(1)
        esq = (e64 * e64).sum(1)
        return (xsq[:, None] - 2.0 * dot + esq[None, :]).clamp_min(0.0)
    if metric == "cosine":
        xn = x64.norm(dim=1).clamp_min(COSINE_EPS)
        en = e64.norm(dim=1).clamp_min(COSINE_EPS)
        return 1.0 - dot / (xn[:, None] * en[None, :])
    if metric == "dot":
        return -dot
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def vq_nearest(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` codebook rows nearest to each row of ``x``, computed in float64.

    Distances per :func:`vq_distances`; the ``k`` smallest in order, NaN after
    every number, ties to the lower codebook index (a stable sort). Rows are
    processed in blocks, so the full (N, K) matrix never exists.

    Returns ``(indices, dist)``: int64 and float32, shape ``(N,)`` for ``k = 1``
    and ``(N, k)`` otherwise.
    """
    n, codes = x.shape[0], codebook.shape[0]
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    dist = torch.empty(n, k, dtype=torch.float32, device=x.device)
    overflow_rule = needs_overflow_rule(x, codebook)
    # The overflow rule holds (rows, K, D) products at a time.
    per_row = max(codes, 1) * (max(x.shape[1], 1) if overflow_rule else 1)
    block = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, n, block):
        d = vq_distances(x[start : start + block], codebook, metric, overflow_rule)
        values, order = torch.sort(d, dim=1, stable=True)  # NaN sorts last
        indices[start : start + block] = order[:, :k]
        dist[start : start + block] = values[:, :k].to(torch.float32)
    if k == 1:
        return indices[:, 0], dist[:, 0]
    return indices, dist
