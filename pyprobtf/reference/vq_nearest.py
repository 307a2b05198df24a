"""Reference nearest-codebook search: the contract of docs/ARCHITECTURE.md in float64 PyTorch."""

from __future__ import annotations

import torch

METRICS = ("l2", "cosine", "dot")
COSINE_EPS = 1e-12

# Rows per block: bounds the distance block to about 2^22 float64 values (32 MiB)
# whatever N, so memory stays O(N * k + K) as the contract asks.
_BLOCK_ELEMENTS = 1 << 22


def vq_distances(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """The (N, K) matrix of contract distances, in float64. For tests and small inputs."""
    x64, e64 = x.to(torch.float64), codebook.to(torch.float64)
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
    block = max(1, _BLOCK_ELEMENTS // max(codes, 1))
    for start in range(0, n, block):
        d = vq_distances(x[start : start + block], codebook, metric)
        values, order = torch.sort(d, dim=1, stable=True)  # NaN sorts last
        indices[start : start + block] = order[:, :k]
        dist[start : start + block] = values[:, :k].to(torch.float32)
    if k == 1:
        return indices[:, 0], dist[:, 0]
    return indices, dist
