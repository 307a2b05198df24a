"""torchcfm's flow matchers with fused updates and OT plans in torch (``pip install "pyprobtf[torchcfm]"``).

A one-line swap in a torchcfm training script::

    # from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
    from pyprobtf.integrations.torchcfm import ExactOptimalTransportConditionalFlowMatcher
    FM = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)

Each class subclasses the torchcfm class of the same name (``isinstance`` checks and
the peer's other methods keep working) and computes ``xt`` and ``ut`` of
``sample_location_and_conditional_flow`` with one :func:`~pyprobtf.ops.lincomb` pass each
(per-row coefficients from ``t``), for any ``(bs, *dim)`` shape. The noise ``eps`` is
drawn with ``self.sample_noise_like`` (``torch.randn_like``, as torchcfm), and ``t``
with ``torch.rand``, so under one ``torch.manual_seed`` the outputs equal torchcfm's.

The OT plans are computed in torch on the tensors' device (no copy to the host, no
POT): ``"exact"`` by an auction algorithm with epsilon scaling (the pairing's total
cost is within ``1e-7 *`` the cost range of the optimum, far below float32 rounding of
the data), ``"sinkhorn"`` by log-domain Sinkhorn iterations with POT's absolute
``reg``. Pairs are drawn from the plan with replacement, as torchcfm does, but with
``torch.multinomial`` (torch's generator) instead of NumPy's.
"""

from __future__ import annotations

import math
import numbers

import torch

try:
    from torchcfm import conditional_flow_matching as _cfm
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("pyprobtf.integrations.torchcfm needs torchcfm: pip install 'pyprobtf[torchcfm]' "
                      "(install torchcfm with --no-deps, then POT; see docs/integrations-diffusion.md)") from exc

from pyprobtf.ops import lincomb

__all__ = [
    "ConditionalFlowMatcher",
    "ExactOptimalTransportConditionalFlowMatcher",
    "OTPlanSampler",
    "SchrodingerBridgeConditionalFlowMatcher",
    "TargetConditionalFlowMatcher",
    "auction_assignment",
]


# ----------------------------------------------------------------------------- OT in torch


def auction_assignment(cost: torch.Tensor, *, rel_eps: float = 1e-7) -> torch.Tensor:
    """``perm`` minimising ``sum_i cost[i, perm[i]]`` over permutations, on ``cost``'s device.

    Bertsekas' auction algorithm (Jacobi bidding, all unassigned rows bid at once) with
    epsilon scaling, in float64. It ends with ``eps = rel_eps * (cost.max() - cost.min()) / n``,
    so the total cost is within ``n * eps = rel_eps * range`` of the optimum.

    Example:
        >>> perm = auction_assignment(torch.cdist(a, b) ** 2)   # a[i] pairs with b[perm[i]]
    """
    if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"auction_assignment: `cost` must be a square matrix; got shape {tuple(cost.shape)}")
    n = cost.shape[0]
    device = cost.device
    if n <= 1:
        return torch.zeros(n, dtype=torch.long, device=device)
    benefit = -cost.detach().to(torch.float64)
    spread = float(benefit.max() - benefit.min())
    if spread == 0.0:
        return torch.arange(n, device=device)
    final_eps = rel_eps * spread / n
    eps = spread / 4.0
    prices = torch.zeros(n, dtype=torch.float64, device=device)
    rows = torch.arange(n, device=device)
    while True:
        owner = torch.full((n,), -1, dtype=torch.long, device=device)  # column -> row
        assigned = torch.full((n,), -1, dtype=torch.long, device=device)  # row -> column
        while True:
            free = rows[assigned < 0]
            if free.numel() == 0:
                break
            values = benefit[free] - prices
            top = values.topk(2, dim=1)
            best = top.indices[:, 0]
            bids = prices[best] + (top.values[:, 0] - top.values[:, 1]) + eps
            high = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
            high.scatter_reduce_(0, best, bids, reduce="amax")
            wins = bids == high[best]
            # One winner per column among equal bids: the highest row index.
            winner = torch.full((n,), -1, dtype=torch.long, device=device)
            winner.scatter_reduce_(0, best[wins], free[wins], reduce="amax")
            won = (winner >= 0).nonzero().squeeze(1)
            previous = owner[won]
            assigned[previous[previous >= 0]] = -1
            owner[won] = winner[won]
            assigned[winner[won]] = won
            prices[won] = high[won]
        if eps <= final_eps:
            return assigned
        eps = max(eps / 8.0, final_eps)


def sinkhorn_log(cost: torch.Tensor, reg: float, *, max_iters: int = 1000, tol: float = 1e-9) -> torch.Tensor:
    """POT's ``ot.sinkhorn(unif, unif, cost, reg)`` plan, iterated in the log domain on ``cost``'s device.

    Stops when the column marginal is within ``tol`` (L1, as POT's ``stopThr``) or after
    ``max_iters`` rounds (POT's ``numItermax`` default).
    """
    n, m = cost.shape
    dtype = torch.float64
    log_k = -cost.detach().to(dtype) / reg
    log_a = torch.full((n,), -math.log(n), dtype=dtype, device=cost.device)
    log_b = torch.full((m,), -math.log(m), dtype=dtype, device=cost.device)
    f = torch.zeros(n, dtype=dtype, device=cost.device)
    g = torch.zeros(m, dtype=dtype, device=cost.device)
    for i in range(max_iters):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
        if i % 10 == 0:
            col = torch.logsumexp(log_k + f[:, None] + g[None, :], dim=0).exp()
            row = torch.logsumexp(log_k + f[:, None] + g[None, :], dim=1).exp()
            if float((row - log_a.exp()).abs().sum()) < tol and float((col - log_b.exp()).abs().sum()) < tol:
                break
    return (log_k + f[:, None] + g[None, :]).exp()


class OTPlanSampler:
    """torchcfm's ``OTPlanSampler`` (methods ``"exact"`` and ``"sinkhorn"``) computed in torch on the device.

    ``get_map`` returns the plan as a torch tensor; ``sample_map`` draws index pairs from
    it with ``torch.multinomial`` (with replacement by default, as torchcfm).
    """

    def __init__(self, method: str, reg: float = 0.05, normalize_cost: bool = False, warn: bool = True, **_ignored):
        if method not in ("exact", "sinkhorn"):
            raise ValueError(f"OTPlanSampler: `method` must be 'exact' or 'sinkhorn'; got {method!r}")
        if not isinstance(reg, numbers.Real) or not reg > 0:
            raise ValueError(f"OTPlanSampler: `reg` must be a positive number; got {reg!r}")
        self.method, self.reg, self.normalize_cost, self.warn = method, float(reg), normalize_cost, warn

    def get_map(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The OT plan between the minibatches for the squared Euclidean cost, ``(bs0, bs1)``, summing to 1."""
        cost = torch.cdist(x0.reshape(x0.shape[0], -1).detach().double(),
                           x1.reshape(x1.shape[0], -1).detach().double()) ** 2
        if self.normalize_cost:
            cost = cost / cost.max()
        if self.method == "exact":
            if x0.shape[0] != x1.shape[0]:
                raise ValueError(f"OTPlanSampler: exact OT in torch needs equal batch sizes; got x0 "
                                 f"{x0.shape[0]} and x1 {x1.shape[0]}")
            n = x0.shape[0]
            plan = torch.zeros(n, n, dtype=torch.float64, device=x0.device)
            plan[torch.arange(n, device=x0.device), auction_assignment(cost)] = 1.0 / n
            return plan
        plan = sinkhorn_log(cost, self.reg)
        if not bool(torch.isfinite(plan).all()) or float(plan.sum()) < 1e-8:
            plan = torch.full_like(plan, 1.0 / plan.numel())  # torchcfm's fallback
        return plan

    def sample_map(self, pi: torch.Tensor, batch_size: int, replace: bool = True):
        """``(i, j)``: ``batch_size`` index pairs drawn from the plan ``pi``."""
        flat = pi.reshape(-1)
        choices = torch.multinomial(flat / flat.sum(), batch_size, replacement=replace)
        return torch.div(choices, pi.shape[1], rounding_mode="floor"), choices % pi.shape[1]

    def sample_plan(self, x0, x1, replace: bool = True):
        i, j = self.sample_map(self.get_map(x0, x1), x0.shape[0], replace=replace)
        return x0[i], x1[j]

    def sample_plan_with_labels(self, x0, x1, y0=None, y1=None, replace: bool = True):
        i, j = self.sample_map(self.get_map(x0, x1), x0.shape[0], replace=replace)
        return x0[i], x1[j], None if y0 is None else y0[i], None if y1 is None else y1[j]


# ----------------------------------------------------------------------------- matchers


def _rows(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(bs,)`` float tensor on ``x``'s device (torchcfm accepts a number or a ``(bs,)`` tensor)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(t, torch.Tensor):
        return t.reshape(-1).to(device=x.device, dtype=dtype).expand(x.shape[0]) if t.numel() == 1 else \
            t.reshape(x.shape[0]).to(device=x.device, dtype=dtype)
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


class _Fused:
    """``sample_location_and_conditional_flow`` as two lincomb passes; subclasses give the coefficients.

    ``_coefficients(t)`` returns per-row ``(x0, x1, eps)`` coefficients of ``xt`` and of ``ut``.
    """

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False):
        if t is None:
            t = torch.rand(x0.shape[0]).type_as(x0)
        assert len(t) == x0.shape[0], "t has to have batch size dimension"
        eps = self.sample_noise_like(x0)
        xt_c, ut_c = self._coefficients(_rows(t, x0))
        xt = lincomb((x0, x1, eps), xt_c)
        ut = lincomb((x0, x1, eps), ut_c)
        return (t, xt, ut, eps) if return_noise else (t, xt, ut)


class ConditionalFlowMatcher(_Fused, _cfm.ConditionalFlowMatcher):
    """torchcfm's independent CFM: ``xt = (1 - t) x0 + t x1 + sigma eps``, ``ut = x1 - x0``.

    Example:
        >>> FM = ConditionalFlowMatcher(sigma=0.1)
        >>> t, xt, ut = FM.sample_location_and_conditional_flow(torch.randn(64, 3, 8, 8), data)
    """

    def _coefficients(self, t):
        ones = torch.ones_like(t)
        return (1.0 - t, t, float(self.sigma) * ones), (-ones, ones, 0.0 * ones)


class ExactOptimalTransportConditionalFlowMatcher(ConditionalFlowMatcher,
                                                  _cfm.ExactOptimalTransportConditionalFlowMatcher):
    """torchcfm's OT-CFM: pairs drawn from the exact minibatch OT plan (in torch), then as the independent CFM."""

    def __init__(self, sigma=0.0):
        _cfm.ConditionalFlowMatcher.__init__(self, sigma)
        self.ot_sampler = OTPlanSampler(method="exact")

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False):
        x0, x1 = self.ot_sampler.sample_plan(x0, x1)
        return super().sample_location_and_conditional_flow(x0, x1, t, return_noise)

    def guided_sample_location_and_conditional_flow(self, x0, x1, y0=None, y1=None, t=None, return_noise=False):
        x0, x1, y0, y1 = self.ot_sampler.sample_plan_with_labels(x0, x1, y0, y1)
        out = ConditionalFlowMatcher.sample_location_and_conditional_flow(self, x0, x1, t, return_noise)
        return (*out[:3], y0, y1, *out[3:])


class TargetConditionalFlowMatcher(_Fused, _cfm.TargetConditionalFlowMatcher):
    """Lipman et al.'s target CFM: ``xt = t x1 + (1 - (1 - sigma) t) eps``, ``ut = x1 - (1 - sigma) eps``.

    (torchcfm's ``(x1 - (1 - sigma) xt) / (1 - (1 - sigma) t)``, simplified: the same field.)
    """

    def _coefficients(self, t):
        sigma = float(self.sigma)
        zeros = torch.zeros_like(t)
        return (zeros, t, 1.0 - (1.0 - sigma) * t), (zeros, zeros + 1.0, zeros - (1.0 - sigma))


class SchrodingerBridgeConditionalFlowMatcher(_Fused, _cfm.SchrodingerBridgeConditionalFlowMatcher):
    """torchcfm's SB-CFM: ``sigma_t = sigma sqrt(t (1 - t))``, ``ut = (1 - 2t) / (2t(1 - t)) sigma_t eps + x1 - x0``.

    Pairs come from the entropic plan with ``reg = 2 sigma^2`` (``ot_method="sinkhorn"``)
    or the exact plan (``"exact"``, torchcfm's default), computed in torch.
    """

    def __init__(self, sigma=1.0, ot_method="exact"):
        _cfm.SchrodingerBridgeConditionalFlowMatcher.__init__(self, sigma, ot_method="exact")
        self.ot_method = ot_method
        self.ot_sampler = OTPlanSampler(method=ot_method, reg=2 * self.sigma**2)

    def _coefficients(self, t):
        sigma_t = float(self.sigma) * torch.sqrt(t * (1.0 - t))
        ratio = (1.0 - 2.0 * t) / (2.0 * t * (1.0 - t) + 1e-8)  # torchcfm's sigma_t' / sigma_t, with its 1e-8
        ones = torch.ones_like(t)
        return (1.0 - t, t, sigma_t), (-ones, ones, ratio * sigma_t)

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False):
        x0, x1 = self.ot_sampler.sample_plan(x0, x1)
        return _Fused.sample_location_and_conditional_flow(self, x0, x1, t, return_noise)

    def guided_sample_location_and_conditional_flow(self, x0, x1, y0=None, y1=None, t=None, return_noise=False):
        x0, x1, y0, y1 = self.ot_sampler.sample_plan_with_labels(x0, x1, y0, y1)
        out = _Fused.sample_location_and_conditional_flow(self, x0, x1, t, return_noise)
        return (*out[:3], y0, y1, *out[3:])
