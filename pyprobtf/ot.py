"""Minibatch optimal transport: pair the points of two equal-size batches to (nearly) minimise the total cost.

- :func:`exact_pairing`: the optimal one-to-one pairing (a linear assignment
  problem), solved by SciPy's ``linear_sum_assignment`` on the CPU; needs
  SciPy (``pip install "pyprobtf[ot]"``).
- :func:`sinkhorn_plan` / :func:`sinkhorn_pairing`: entropy-regularised OT by
  POT's log-domain Sinkhorn (``ot.sinkhorn``, on the tensors' own device through
  POT's torch backend; ``pip install "pyprobtf[ot]"``); pairs are drawn from the
  plan. For large batches, where the exact solve's ``O(n^3)`` cost shows.

Costs are squared Euclidean distances ``|a_i - b_j|^2``. Both pairings
return an index ``idx`` such that ``(a[idx], b)`` are the pairs.

Example:
    >>> a, b = torch.randn(64, 2), torch.randn(64, 2)
    >>> idx = sinkhorn_pairing(a, b, seed=0)
    >>> idx.shape
    torch.Size([64])
"""

from __future__ import annotations

import torch


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a_i - b_j|^2`` as an ``(n, m)`` matrix (clamped at 0)."""
    return torch.cdist(a, b).square()


def exact_pairing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``idx`` minimising ``sum_j |a[idx[j]] - b[j]|^2`` over permutations (same batch size for ``a`` and ``b``)."""
    _check(a, b, "exact_pairing")
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:
        raise ImportError(
            "exact minibatch OT needs SciPy (scipy.optimize.linear_sum_assignment): install it with "
            "`pip install \"pyprobtf[ot]\"`, or use ot=\"sinkhorn\" (POT)"
        ) from exc
    cost = squared_distances(b.detach(), a.detach()).to("cpu", torch.float64).numpy()
    rows, cols = linear_sum_assignment(cost)  # rows are b's indices, in order 0..n-1
    return torch.as_tensor(cols, dtype=torch.long, device=a.device)[torch.as_tensor(rows).argsort().to(a.device)]


def sinkhorn_plan(cost: torch.Tensor, *, reg: float = 0.05, max_iters: int = 200, tol: float = 1e-4) -> torch.Tensor:
    """The entropic OT plan between uniform marginals for an ``(n, m)`` ``cost``.

    ``reg`` is the entropic regularisation as a share of the mean cost (small
    values approach the exact plan and need more iterations). Iterates in the
    log domain until both marginals are within ``tol`` (relative) or for
    ``max_iters`` rounds. Returns the plan ``P`` (``(n, m)``, summing to 1).
    """
    if cost.dim() != 2:
        raise ValueError(f"sinkhorn_plan: `cost` must be a matrix; got shape {tuple(cost.shape)}")
    if not reg > 0:
        raise ValueError(f"sinkhorn_plan: `reg` must be positive; got {reg!r}")
    try:
        import ot
    except ImportError as exc:
        raise ImportError("Sinkhorn transport needs POT (the Python Optimal Transport library): "
                          "`pip install \"pyprobtf[ot]\"`, or use the exact pairing") from exc
    n, m = cost.shape
    c = cost.detach().to(torch.float64 if cost.dtype == torch.float64 else torch.float32)
    eps = reg * float(c.mean()) if c.numel() and float(c.mean()) > 0 else reg
    a = torch.full((n,), 1.0 / n, dtype=c.dtype, device=c.device)
    b = torch.full((m,), 1.0 / m, dtype=c.dtype, device=c.device)
    # POT stops on the L2 norm of the marginal violation; tol is relative to each marginal entry (1/m).
    return ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", numItermax=max_iters, stopThr=tol / m, warn=False)


def sinkhorn_pairing(a: torch.Tensor, b: torch.Tensor, *, reg: float = 0.05, max_iters: int = 200,
                     seed: int | None = None) -> torch.Tensor:
    """For each ``b[j]``, an ``a`` index drawn from the Sinkhorn plan's column ``j`` (see :func:`sinkhorn_plan`).

    ``a`` points may be used more than once (or not at all); every ``b`` point is used once.
    ``seed`` seeds the draw (default: torch's global RNG).
    """
    _check(a, b, "sinkhorn_pairing")
    plan = sinkhorn_plan(squared_distances(a.detach(), b.detach()), reg=reg, max_iters=max_iters)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=plan.device).manual_seed(seed)
    return torch.multinomial(plan.T, 1, generator=gen).squeeze(1)


def _check(a, b, where):
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{where}: `a` and `b` must be matrices of one shape (n, d); got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
