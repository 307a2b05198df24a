"""Property checks for flows, distributions and transforms from any library, each with a measured error.

Every ``verify_*`` function takes anything :func:`pyprobtf.testing.adapters.as_subject`
accepts (a pyprobtf model, a torch Distribution or Transform, a zuko flow, an
nflows Flow or Transform, a normflows flow, a callable ``f(z) -> (x, ladj)``)
and returns a :class:`CheckResult`: the measured error, the bound it was held
to, the verdict, and the interface that was used. Each has an ``assert_*``
twin that raises :class:`VerificationError` (an ``AssertionError``) whose
message names the property and the size of the violation. :func:`verify` runs
every check that applies.

=======================  =========================================================================
check                    what is measured (default bound)
=======================  =========================================================================
invertibility            ``max |F^-1(F(z)) - z| / (1 + |z|)`` and the same for ``F(F^-1(x))``
                         (``rtol``: 1e-7 in float64, 2e-3 in float32)
log_det                  ``max |ladj - log|det J|| / (1 + |log|det J||)``, ``J`` by autograd, exact up
                         to ``exact_max_dim`` (128); above it stochastic Lanczos quadrature with a
                         99.7% confidence half-width (3 standard errors over the probes) added to
                         the bound (``ladj_rtol``: 1e-6 in float64, 2e-3 in float32)
density_normalization    ``|integral exp(log_prob) - 1|``: midpoint rule in 1-3 dims (bound 0.02);
                         above, importance sampling, bound 0.01 + 3 standard errors
sample_log_prob          kernel Stein discrepancy of ``sample`` against ``grad log_prob`` (IMQ kernel,
                         wild bootstrap); fails when the p-value is below ``alpha`` (1e-3)
batch_invariance         maps: a row alone against the row inside a batch, and the batch reversed
                         (bound 1e3 ulps); sampling: rows drawn one at a time against rows drawn in
                         one batch, kernel two-sample test (p-value against ``alpha``)
reproducibility          ``sample(n, seed)`` twice: identical; ``seed + 1``: different
dtype_agreement          a float32 copy against a float64 copy on the same inputs (bound 2e-3
                         relative to ``1 + |value|``)
finite_gradients         ``grad log_prob`` in ``x`` and in the parameters: all finite
ode_order                (samplers) the convergence order of ``step(field, x, t, t_next)`` on three
                         problems with known solutions, against the claimed order (bound 0.3)
sde_weak_order           (samplers) the weak order of ``step(drift, diffusion, x, t, t_next, seed=)``
                         on Ornstein-Uhlenbeck (mean and second moment), against the claimed order
sde_stationary           (samplers) the stationary mean and variance of OU after many steps
=======================  =========================================================================

Example:
    >>> import torch
    >>> from pyprobtf.testing import verify
    >>> report = verify(torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    >>> report.passed
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pyprobtf.testing.adapters import Subject, as_subject

ALPHA = 1e-3  # the significance level of every statistical test


class VerificationError(AssertionError):
    """A property does not hold: the message names it and the size of the violation."""


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        check: the property's name (``"invertibility"``, ``"log_det"``, ...).
        passed: True, False, or None when the check does not apply (``detail`` says why).
        error: what was measured (an error, a statistic, or a deficit in order).
        bound: what ``error`` was held to.
        interface: the methods of the object that were used.
        detail: how it was measured, in words.
        p_value: for the statistical checks.
        seconds: how long the check took.
    """

    check: str
    passed: bool | None
    error: float = math.nan
    bound: float = math.nan
    interface: str = ""
    detail: str = ""
    p_value: float | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]

    def message(self) -> str:
        if self.passed is None:
            return f"{self.check}: not applicable ({self.detail})"
        verdict = "holds" if self.passed else "VIOLATED"
        if self.p_value is not None:  # a statistical test: the bound is its level
            rel = ">=" if self.passed else "<"
            size = f"p-value {self.p_value:.3g} {rel} alpha {self.bound:g} (statistic {self.error:.3g})"
        else:
            rel = "<=" if self.passed else ">"
            size = f"measured {self.error:.3g} {rel} bound {self.bound:.3g}"
        return f"{self.check} {verdict}: {size} ({self.detail}) [{self.interface}]"

    def raise_if_failed(self) -> CheckResult:
        if self.passed is False:
            raise VerificationError(self.message())
        return self


@dataclass
class Report:
    """Every check run on one object (:func:`verify`)."""

    interface: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.passed is False]

    def table(self) -> str:
        """A fixed-width pass/fail table with the numbers."""
        lines = [f"{'check':22s} {'result':6s} {'measured':>10s} {'bound':>10s} {'p-value':>8s} {'s':>5s}  detail",
                 "  (statistical checks: measured = the statistic, bound = the level alpha the p-value is held to)"]
        for r in self.results:
            p = f"{r.p_value:8.3g}" if r.p_value is not None else f"{'':8s}"
            err = f"{r.error:10.3g}" if r.passed is not None else f"{'':10s}"
            bound = f"{r.bound:10.3g}" if r.passed is not None else f"{'':10s}"
            lines.append(f"{r.check:22s} {r.status:6s} {err} {bound} {p} {r.seconds:5.1f}  {r.detail}")
        return "\n".join(lines)

    def raise_if_failed(self) -> Report:
        if self.failed:
            raise VerificationError("; ".join(r.message() for r in self.failed))
        return self


def _default_rtol(dtype: torch.dtype) -> float:
    return 1e-7 if dtype == torch.float64 else 2e-3


def _default_ladj_rtol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 2e-3


def _timed(fn):
    """Time the check, put the interface in its result, and turn an exception inside the object into a failure."""

    def run(obj, *args, **kwargs):
        start = time.perf_counter()
        subject = as_subject(obj, dim=kwargs.pop("dim", None), inverse=kwargs.pop("inverse", None))
        try:
            result = fn(subject, *args, **kwargs)
        except VerificationError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the object raises is a failure of the check
            result = CheckResult(fn.__name__.removeprefix("verify_"), False, math.inf, 0.0,
                                 detail=f"raised {type(exc).__name__}: {str(exc)[:160]}")
        result.interface = subject.interface
        result.seconds = time.perf_counter() - start
        return result

    run.__name__, run.__doc__, run.__wrapped__ = fn.__name__, fn.__doc__, fn
    return run


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / (1 + |b|)`` in float64 (inf where one is finite and the other not)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    both_same_inf = torch.isinf(a) & (a == b)
    err = torch.where(both_same_inf, torch.zeros_like(a), (a - b).abs() / (1 + b.abs()))
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    return float(err.max())


def _na(check, why) -> CheckResult:
    return CheckResult(check, None, detail=why)


# ----------------------------------------------------------------------------- invertibility


@_timed
def verify_invertibility(s: Subject, *, n: int = 64, seed: int = 0, rtol: float | None = None) -> CheckResult:
    """``F^-1(F(z)) = z`` and ``F(F^-1(x)) = x`` on ``n`` points, relative to ``1 + |value|``."""
    if s.forward is None or s.inverse is None:
        return _na("invertibility", "needs a forward map and its inverse")
    rtol = _default_rtol(s.dtype) if rtol is None else rtol
    with torch.no_grad():
        z = s.points(n, seed)
        x = s.forward(z)[0]
        back = s.inverse(x)[0]
        err_z = _rel_err(back, z)
        x2 = s.data(n, seed + 1)
        again = s.forward(s.inverse(x2)[0])[0]
        err_x = _rel_err(again, x2)
    err = max(err_z, err_x)
    which = "F^-1(F(z)) vs z" if err_z >= err_x else "F(F^-1(x)) vs x"
    return CheckResult("invertibility", err <= rtol, err, rtol,
                       detail=f"max |error| / (1 + |value|) over {n} points, worst: {which}; {s.dtype}")


# ----------------------------------------------------------------------------- log-determinant


def _jacobian_log_det(fn, z: torch.Tensor) -> torch.Tensor:
    from pyprobtf.testing.transforms import jacobian_log_det

    return jacobian_log_det(lambda v: fn(v)[0], z)


def _student_t_997(dof: int) -> float:
    """The two-sided 99.7% quantile of Student's t with ``dof`` degrees of freedom (Cornish-Fisher expansion
    around the normal's 2.968; a few percent low for dof < 10, closer above)."""
    z = 2.9677
    dof = max(dof, 1)
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _slq_log_det(fn, z: torch.Tensor, *, probes: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 log det(J^T J)`` per row by stochastic Lanczos quadrature, and its standard error over the probes.

    ``J^T J v`` comes from one forward-mode and one reverse-mode product (double backward); rows are
    independent, so one batched product serves every row.
    """
    B, d = z.shape
    gen = torch.Generator().manual_seed(seed % 2**63)
    # Every probe of every row is one row of a single Lanczos run (rows are independent).
    zr = z.detach().repeat(probes, 1).requires_grad_(True)

    def jtj(v):
        with torch.enable_grad():
            out = fn(zr)[0].double()
            u = torch.zeros_like(out, requires_grad=True)
            (vjp,) = torch.autograd.grad(out, zr, u, create_graph=True)
            (jv,) = torch.autograd.grad(vjp, u, v, retain_graph=True)  # J v
            (jtjv,) = torch.autograd.grad(out, zr, jv)  # J^T J v
        return jtjv.detach()

    P = B * probes
    v = (torch.randint(0, 2, (P, d), generator=gen).double() * 2 - 1)
    q = v / v.norm(dim=1, keepdim=True)
    qs, alphas, betas = [q], [], []
    m = min(steps, d)
    for j in range(m):
        w = jtj(qs[-1])
        a = (w * qs[-1]).sum(1)
        basis = torch.stack(qs, 1)  # full re-orthogonalisation, rows separately
        w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", basis, w), basis)
        w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", basis, w), basis)
        alphas.append(a)
        if j + 1 < m:
            b = w.norm(dim=1).clamp_min(1e-300)
            betas.append(b)
            qs.append(w / b[:, None])
    T = torch.diag_embed(torch.stack(alphas, 1))
    if betas:
        off = torch.stack(betas, 1)
        T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, vecs = torch.linalg.eigh(T)
    tau2 = vecs[:, 0, :] ** 2
    estimates = (d * (tau2 * torch.log(theta.clamp_min(1e-300))).sum(1)).reshape(probes, B)
    est = estimates  # (probes, B): estimates of log det(J^T J)
    return 0.5 * est.mean(0), 0.5 * est.std(0, unbiased=True) / math.sqrt(probes)


@_timed
def verify_log_det(s: Subject, *, n: int = 8, seed: int = 0, rtol: float | None = None, exact_max_dim: int = 128,
                   probes: int = 16, lanczos_steps: int = 30) -> CheckResult:
    """The reported ``log|det dF/dz|`` (and ``log|det dF^-1/dx|``) against the autograd Jacobian.

    Up to ``exact_max_dim`` the Jacobian is built row by row (``dim`` backward passes) and its
    log-determinant taken exactly; above, stochastic Lanczos quadrature with ``probes`` Rademacher
    probes and ``lanczos_steps`` steps estimates it, and the 99.7% confidence half-width over the probes
    (Student t) is allowed on top of the bound: errors smaller than that half-width (stated in the detail)
    are out of the estimator's reach.
    """
    maps = [(name, m) for name, m in (("F", s.forward), ("F^-1", s.inverse)) if m is not None]
    if not maps:
        return _na("log_det", "no map with a log-determinant")
    rtol = _default_ladj_rtol(s.dtype) if rtol is None else rtol
    worst, bound, where, how, measured = -1.0, rtol, "", "", False
    points = {"F": lambda: s.points(n, seed), "F^-1": lambda: s.data(n, seed + 1)}
    for name, m in maps:
        v = points[name]()
        with torch.no_grad():
            ladj = m(v)[1]
        if ladj is None:
            continue
        if s.dim <= exact_max_dim:
            expected = _jacobian_log_det(m, v)
            err, b = _rel_err(ladj, expected), rtol
            how = f"exact autograd Jacobian, {n} points"
        else:
            expected, se = _slq_log_det(m, v.double(), probes=probes, steps=lanczos_steps, seed=seed)
            diff = (ladj.double() - expected).abs() / (1 + expected.abs())
            half_width = _student_t_997(probes - 1) * se / (1 + expected.abs())
            err, b = float((diff - half_width).clamp_min(0).max()), rtol
            how = (f"stochastic Lanczos quadrature ({probes} probes, {lanczos_steps} steps) above dim "
                   f"{exact_max_dim}: the error beyond the 99.7% confidence half-width (Student t over the "
                   f"probes; at most "
                   f"{float(half_width.max()):.2g}), {n} points")
        measured = True
        if err > worst:
            worst, bound, where = err, b, name
    if not measured:
        return _na("log_det", "the maps report no log-determinant")
    return CheckResult("log_det", worst <= bound, worst, bound,
                       detail=f"|ladj - log|det J|| / (1 + |log|det J||), worst map {where}; {how}; {s.dtype}")


# ----------------------------------------------------------------------------- density normalisation


def _safe_log_prob(s: Subject, x: torch.Tensor) -> torch.Tensor:
    """log_prob with -inf outside the support (which torch distributions may refuse to evaluate)."""
    support = s.support
    inside = torch.ones(x.shape[0], dtype=torch.bool)
    if support is not None and support is not torch.distributions.constraints.real:
        try:
            ok = support.check(x if s.dim > 1 and support.event_dim == 1 else
                               (x[:, 0] if s.dim == 1 and support.event_dim == 0 else x))
            inside = ok.reshape(x.shape[0], -1).all(1)
        except (RuntimeError, ValueError, NotImplementedError):
            pass
    out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    if inside.any():
        out[inside] = s.log_prob(x[inside].to(s.dtype)).double()
    return out


@_timed
def verify_density_normalization(s: Subject, *, seed: int = 0, atol: float = 0.02, n_grid: int | None = None,
                                 bounds=None, n_importance: int = 20000) -> CheckResult:
    """``exp(log_prob)`` integrates to 1: midpoint rule on a box in 1-3 dimensions (``atol``); above that
    importance sampling (bound ``atol / 2 + 3`` standard errors), from the model's own pushforward of its
    base where it has a base and a forward log-determinant, else from Gaussians fitted to its samples."""
    if s.log_prob is None:
        return _na("density_normalization", "no log_prob")
    d = s.dim
    with torch.no_grad():
        ref = s.data(4000, seed).double()
    ref = ref[torch.isfinite(ref).all(1)]
    if d <= 3:
        if bounds is None:
            lo, hi = ref.min(0).values, ref.max(0).values
            pad = 0.5 * (hi - lo) + 1e-3
            bounds = list(zip((lo - pad).tolist(), (hi + pad).tolist()))
            sup = getattr(s.support, "base_constraint", s.support)  # independent(interval) -> interval
            lower = getattr(sup, "lower_bound", None)
            upper = getattr(sup, "upper_bound", None)
            if isinstance(lower, (int, float)):
                bounds = [(max(a, float(lower)), b) for a, b in bounds]
            if isinstance(upper, (int, float)):
                bounds = [(a, min(b, float(upper))) for a, b in bounds]
        n_grid = n_grid or {1: 4096, 2: 200, 3: 40}[d]
        axes = [torch.linspace(lo, hi, n_grid + 1, dtype=torch.float64) for lo, hi in bounds]
        mids = [0.5 * (a[1:] + a[:-1]) for a in axes]
        grid = torch.cartesian_prod(*mids).reshape(-1, d)
        cell = math.prod((hi - lo) / n_grid for lo, hi in bounds)
        total = 0.0
        with torch.no_grad():
            for i in range(0, grid.shape[0], 16384):
                total += float(torch.exp(_safe_log_prob(s, grid[i:i + 16384])).nan_to_num(0.0).sum())
        mass = total * cell
        err = abs(mass - 1)
        box = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in bounds)
        return CheckResult("density_normalization", err <= atol, err, atol,
                           detail=f"integral = {mass:.5f} by the midpoint rule, {n_grid} points per axis on {box}")
    gen = torch.Generator().manual_seed(seed % 2**63)
    pushforward = s.forward is not None and s.base_log_prob is not None and s.base_sample is not None
    if pushforward:
        # The proposal is the model's own pushforward q(x) = base(z) / |det dF/dz| at x = F(z): a normalised
        # density once the log-determinant is right (the log_det check), and p / q = 1 exactly when log_prob
        # is the model's density, so the weights have no variance left for a correct model.
        log_w = []
        with torch.no_grad():
            for i in range(0, n_importance, 4096):
                z = s.base_sample(min(4096, n_importance - i), seed + 17 + i)
                x, ladj = s.forward(z.to(s.dtype))
                if ladj is None:
                    pushforward = False
                    break
                log_w.append(s.log_prob(x).double() - s.base_log_prob(z).double() + ladj.double())
    if pushforward:
        w = torch.exp(torch.cat(log_w)).nan_to_num(0.0)
        how = "the model's pushforward of its base"
    else:
        mean = ref.mean(0)
        cov = torch.cov(ref.T) + 1e-9 * torch.eye(d, dtype=torch.float64)
        comps = [torch.distributions.MultivariateNormal(mean, cov * w**2) for w in (1.1, 1.5)]
        half = n_importance // 2
        xs = torch.cat([mean + torch.randn(half, d, generator=gen, dtype=torch.float64) @
                        torch.linalg.cholesky(c.covariance_matrix).T for c in comps])
        log_q = torch.logsumexp(torch.stack([c.log_prob(xs) for c in comps]), 0) - math.log(2)
        with torch.no_grad():
            log_p = torch.cat([_safe_log_prob(s, xs[i:i + 8192]) for i in range(0, xs.shape[0], 8192)])
        w = torch.exp(log_p - log_q).nan_to_num(0.0)
        how = "Gaussians fitted to samples (1.1 and 1.5 times wider)"
    est, se = float(w.mean()), float(w.std() / math.sqrt(w.numel()))
    ess = float(w.sum() ** 2 / (w**2).sum()) if float(w.sum()) > 0 else 0.0
    err, bound = abs(est - 1), atol / 2 + 3 * se
    return CheckResult("density_normalization", err <= bound, err, bound,
                       detail=f"integral = {est:.4f} +- {3 * se:.4f} (99.7%) by importance sampling from {how}, "
                              f"{w.numel()} draws, effective sample size {ess:.0f}")


# ----------------------------------------------------------------------------- samples against log_prob


def _imq_stein_matrix(x: torch.Tensor, score: torch.Tensor, beta: float = -0.5) -> torch.Tensor:
    """The Stein kernel ``u(x_i, x_j)`` of the inverse multiquadric kernel ``(1 + |r|^2 / l^2)^beta``."""
    d = x.shape[1]
    r = x[:, None, :] - x[None, :, :]
    r2 = (r**2).sum(-1)
    ell2 = float(r2[r2 > 0].median()) if (r2 > 0).any() else 1.0
    q = 1 + r2 / ell2
    k = q**beta
    dk = 2 * beta * q ** (beta - 1) / ell2  # grad_x k = dk * r, grad_y k = -dk * r
    s_dot_s = score @ score.T
    si_r = (score[:, None, :] * r).sum(-1)
    sj_r = (score[None, :, :] * r).sum(-1)
    trace = -4 * beta * (beta - 1) * q ** (beta - 2) * r2 / ell2**2 - 2 * beta * d * q ** (beta - 1) / ell2
    return k * s_dot_s - dk * si_r + dk * sj_r + trace


def _ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (Stephens' correction)."""
    a, b = a[torch.isfinite(a)].sort().values, b[torch.isfinite(b)].sort().values
    n, m = a.numel(), b.numel()
    if n == 0 or m == 0:
        return math.inf, 0.0
    both = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, both, right=True).double() / n
    cdf_b = torch.searchsorted(b, both, right=True).double() / m
    d = float((cdf_a - cdf_b).abs().max())
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def _wild_bootstrap_p(u: torch.Tensor, seed: int, draws: int = 1999) -> tuple[float, float]:
    n = u.shape[0]
    u = u.clone()
    u.fill_diagonal_(0.0)
    stat = float(u.sum()) / (n * (n - 1))
    gen = torch.Generator().manual_seed(seed % 2**63)
    w = torch.randint(0, 2, (draws, n), generator=gen).double() * 2 - 1
    boot = ((w @ u) * w).sum(1) / (n * (n - 1))
    p = (1 + int((boot >= stat).sum())) / (1 + draws)
    return stat, p


@_timed
def verify_sample_log_prob(s: Subject, *, n: int = 500, seed: int = 0, alpha: float = ALPHA) -> CheckResult:
    """``sample`` draws from ``exp(log_prob)``: a kernel Stein discrepancy test (IMQ kernel, wild bootstrap).

    Only the score ``grad log_prob`` enters, so the test is blind to the normalising constant (which
    :func:`verify_density_normalization` checks). Fails when the p-value is below ``alpha``.
    """
    if s.log_prob is None or s.sample is None:
        return _na("sample_log_prob", "needs both sample and log_prob")
    with torch.no_grad():
        x = s.sample(n, seed).detach()
    x = x.to(s.dtype).requires_grad_(True)
    with torch.enable_grad():
        lp = s.log_prob(x)
        (score,) = torch.autograd.grad(lp.sum(), x, allow_unused=True) if lp.requires_grad else (None,)
    if score is None:
        return _na("sample_log_prob", "log_prob has no gradient in x (a piecewise-constant density): the Stein "
                   "test needs the score")
    x, score = x.detach().double(), score.double()
    keep = torch.isfinite(score).all(1) & torch.isfinite(x).all(1)
    if int(keep.sum()) < n // 2:
        return CheckResult("sample_log_prob", False, math.inf, 0.0,
                           detail=f"grad log_prob is finite at only {int(keep.sum())} of {n} samples")
    # Standardise each coordinate (y = x / sd, score_y = score * sd): the test of the transformed density is
    # the same hypothesis, and one bandwidth then suits every coordinate.
    sd = x[keep].std(0).clamp_min(1e-12)
    x, score = x / sd, score * sd
    stat, p = _wild_bootstrap_p(_imq_stein_matrix(x[keep], score[keep]), seed)
    how = f"kernel Stein discrepancy (IMQ) of {int(keep.sum())} samples against grad log_prob"
    if s.inverse is not None and s.base_log_prob is not None:
        # The same hypothesis seen through the model's inverse: z = F^-1(x) against the base's score, where
        # the density is simple and the test has more power. Bonferroni over the two tests.
        with torch.no_grad():
            z = s.inverse(x.to(s.dtype) * sd.to(s.dtype))[0].detach()
        z = z.requires_grad_(True)
        with torch.enable_grad():
            (zscore,) = torch.autograd.grad(s.base_log_prob(z).sum(), z)
        z, zscore = z.detach().double(), zscore.double()
        ok = torch.isfinite(z).all(1) & torch.isfinite(zscore).all(1)
        zsd = z[ok].std(0).clamp_min(1e-12)
        zstat, zp = _wild_bootstrap_p(_imq_stein_matrix(z[ok] / zsd, zscore[ok] * zsd), seed + 1)
        # And a two-sample Kolmogorov-Smirnov test of log base(F^-1(samples)) against log base(fresh base
        # draws): one scalar that a wrong scale or shape moves a lot.
        with torch.no_grad():
            fresh = s.base_sample(n, seed + 2)
            a = s.base_log_prob(z[ok].to(s.dtype)).double()
            b = s.base_log_prob(fresh.to(s.dtype)).double()
        kstat, kp = _ks_two_sample(a, b)
        stat, p = min(((stat, p), (zstat, zp), (kstat, kp)), key=lambda sp: sp[1])
        p = min(1.0, 3 * p)
        how += (" and of F^-1(samples) against the base's score, and a Kolmogorov-Smirnov test of log base("
                "F^-1(samples)) against fresh base draws (smallest p-value, Bonferroni over 3)")
    return CheckResult("sample_log_prob", p >= alpha, stat, alpha, p_value=p,
                       detail=f"{how}, wild bootstrap, fails below p = {alpha:g}")


# ----------------------------------------------------------------------------- batch invariance


def _mmd_permutation_p(a: torch.Tensor, b: torch.Tensor, seed: int, draws: int = 1999) -> tuple[float, float]:
    """Squared MMD (Gaussian kernel, median bandwidth) of two samples and its permutation p-value."""
    x = torch.cat([a, b]).double()
    x = x[torch.isfinite(x).all(1)] if torch.isfinite(x).all() else torch.nan_to_num(x, 1e6, 1e6, -1e6)
    m = a.shape[0]
    d2 = torch.cdist(x, x) ** 2
    bw = float(d2[d2 > 0].median()) if (d2 > 0).any() else 1.0
    k = torch.exp(-d2 / bw)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed % 2**63)
    # The biased statistic of a split w (+1 for one sample, -1 for the other) is w^T K w / m^2 (equal sizes).
    labels = torch.cat([torch.ones(m), -torch.ones(n - m)]).double()
    perms = torch.stack([labels[torch.randperm(n, generator=gen)] for _ in range(draws)])
    observed = float(labels @ k @ labels) / m**2
    null = ((perms @ k) * perms).sum(1) / m**2
    count = int((null >= observed).sum())
    return observed, (1 + count) / (1 + draws)


@_timed
def verify_batch_invariance(s: Subject, *, n: int = 16, rows: int = 4, seed: int = 0, samples: int = 64,
                            alpha: float = ALPHA, ulps: float = 1e3) -> CheckResult:
    """Each row's result does not depend on the rest of the batch.

    Maps (forward, inverse, log_prob): every one of the first ``rows`` rows computed alone, and the
    batch reversed, against the batch (bound ``ulps`` units of the dtype, relative to ``1 + |value|``).
    Sampling: ``samples`` rows drawn one per call against ``samples`` rows drawn in one call, by a
    kernel two-sample test (fails below ``alpha``).
    """
    tol = ulps * torch.finfo(s.dtype).eps
    worst, where = 0.0, ""
    with torch.no_grad():
        maps = [("forward", s.forward, s.points(n, seed)), ("inverse", s.inverse, None), ("log_prob", None, None)]
        for name, m, v in maps:
            if name == "inverse" and s.inverse is not None:
                m, v = s.inverse, s.data(n, seed + 1)
            if name == "log_prob" and s.log_prob is not None:
                m, v = (lambda x: (s.log_prob(x), None)), s.data(n, seed + 2)
            if m is None:
                continue
            full = m(v)
            flip = m(v.flip(0))
            for i, (a, b) in enumerate(zip(full, flip)):
                if a is not None:
                    e = _rel_err(b.flip(0), a)
                    if e > worst:
                        worst, where = e, f"{name} output {i}, batch reversed"
            for r in range(min(rows, n)):
                alone = m(v[r:r + 1])
                for i, (a, b) in enumerate(zip(full, alone)):
                    if a is not None:
                        e = _rel_err(b.reshape(a[r:r + 1].shape) if b.numel() == a[r:r + 1].numel() else b,
                                     a[r:r + 1])
                        if e > worst:
                            worst, where = e, f"{name} output {i}, row {r} alone"
    if worst > tol:
        return CheckResult("batch_invariance", False, worst, tol,
                           detail=f"max |alone - in batch| / (1 + |value|): {where}")
    if s.sample is None:
        if s.forward is None and s.inverse is None and s.log_prob is None:
            return _na("batch_invariance", "no map and no sampler")
        return CheckResult("batch_invariance", True, worst, tol, detail="maps: rows alone and the batch reversed")
    with torch.no_grad():
        one = torch.cat([s.sample(1, seed + 1000 + i).reshape(1, -1) for i in range(samples)])
        many = s.sample(samples, seed + 999).reshape(samples, -1)
    if not (torch.isfinite(one).all() and torch.isfinite(many).all()):
        return CheckResult("batch_invariance", False, math.inf, 0.0,
                           detail="sampling: non-finite values when drawing one row per call or a batch")
    stat, p = _mmd_permutation_p(one, many, seed)
    return CheckResult("batch_invariance", p >= alpha and worst <= tol, stat, alpha, p_value=p,
                       detail=f"maps: max relative difference {worst:.2g} <= {tol:.2g}; sampling: squared MMD of "
                              f"{samples} rows drawn one per call vs in one batch, permutation test, fails below "
                              f"p = {alpha:g}")


# ----------------------------------------------------------------------------- reproducibility


@_timed
def verify_reproducibility(s: Subject, *, n: int = 32, seed: int = 0) -> CheckResult:
    """``sample(n, seed)`` gives the same values twice and different ones for ``seed + 1``; maps repeat exactly."""
    with torch.no_grad():
        if s.sample is not None:
            a, b, c = s.sample(n, seed), s.sample(n, seed), s.sample(n, seed + 1)
            diff = float((a.double() - b.double()).abs().nan_to_num(math.inf).max())
            same_other = bool(torch.equal(a, c))
            how = "seeded natively" if s.seeded else "global RNG seeded around each call"
            if diff > 0 or same_other:
                return CheckResult("reproducibility", False, diff if diff > 0 else math.inf, 0.0,
                                   detail=(f"sample(n={n}, seed={seed}) twice differs by up to {diff:.3g}" if diff > 0
                                           else f"seeds {seed} and {seed + 1} give identical samples") + f" ({how})")
            return CheckResult("reproducibility", True, 0.0, 0.0, detail=f"sample(n={n}) twice per seed; {how}")
        if s.forward is None:
            return _na("reproducibility", "no sampler and no map")
        z = s.points(n, seed)
        a, b = s.forward(z)[0], s.forward(z)[0]
        diff = float((a.double() - b.double()).abs().max())
        return CheckResult("reproducibility", diff == 0, diff, 0.0, detail="forward twice on the same inputs")


# ----------------------------------------------------------------------------- float32 against float64


@_timed
def verify_dtype_agreement(s: Subject, *, n: int = 64, seed: int = 0, rtol: float = 2e-3) -> CheckResult:
    """A float32 copy and a float64 copy agree on the same inputs (forward, inverse, log_prob)."""
    if s.convert is None:
        return _na("dtype_agreement", "the object cannot be copied into another dtype")
    lo, hi = s.convert(torch.float32), s.convert(torch.float64)
    worst, where = 0.0, ""
    with torch.no_grad():
        z = hi.points(n, seed).to(torch.float32).double()
        checks = []
        if hi.forward is not None:
            checks.append(("forward", lambda t, v: t.forward(v), z))
        x = hi.data(n, seed + 1).to(torch.float32).double()
        if hi.inverse is not None:
            checks.append(("inverse", lambda t, v: t.inverse(v), x))
        if hi.log_prob is not None:
            checks.append(("log_prob", lambda t, v: (t.log_prob(v),), x))
        for name, fn, v in checks:
            for i, (a, b) in enumerate(zip(fn(lo, v.float()), fn(hi, v))):
                if a is None or b is None:
                    continue
                e = _rel_err(a, b)
                if e > worst:
                    worst, where = e, f"{name} output {i}"
    if not where and not checks:
        return _na("dtype_agreement", "no map and no log_prob")
    return CheckResult("dtype_agreement", worst <= rtol, worst, rtol,
                       detail=f"max |float32 - float64| / (1 + |float64|), worst: {where or 'none'}")


# ----------------------------------------------------------------------------- gradients


@_timed
def verify_finite_gradients(s: Subject, *, n: int = 64, seed: int = 0) -> CheckResult:
    """``grad log_prob`` (or of the forward map, without log_prob) in the inputs and in the parameters is finite."""
    fn = s.log_prob if s.log_prob is not None else (
        (lambda z: s.forward(z)[0].sum(1)) if s.forward is not None else None)
    if fn is None:
        return _na("finite_gradients", "no log_prob and no map")
    v = (s.data(n, seed) if s.log_prob is not None else s.points(n, seed)).detach().to(s.dtype)
    v = v.requires_grad_(True)
    params = [p for p in getattr(s.obj, "parameters", lambda: [])() if p.requires_grad]
    with torch.enable_grad():
        out = fn(v)
        grads = torch.autograd.grad(out.sum(), [v] + params, allow_unused=True)
    bad = sum(int((~torch.isfinite(g)).sum()) for g in grads if g is not None)
    bad_values = int((~torch.isfinite(out.detach())).sum())
    what = "log_prob" if s.log_prob is not None else "forward"
    return CheckResult("finite_gradients", bad == 0 and bad_values == 0, float(bad + bad_values), 0.0,
                       detail=f"non-finite entries of {what} and of its gradient in x and {len(params)} parameter "
                              f"tensors, {n} points")


# ----------------------------------------------------------------------------- samplers


def _ode_problems():
    """(name, field(x, t), x0, exact(t)) with known solutions on t in [0, 1]."""
    x0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64) * 2.0
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)

    def rotation(t):
        c, s = math.cos(2 * t), math.sin(2 * t)
        return y0 @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64)

    return [
        ("dx/dt = -x", lambda x, t: -x, x0, lambda t: x0 * math.exp(-t)),
        ("dx/dt = cos(t) x", lambda x, t: math.cos(t) * x, x0, lambda t: x0 * math.exp(math.sin(t))),
        ("dx/dt = A x (rotation)", lambda x, t: x @ rot.T, y0, rotation),
    ]


def verify_ode_order(step: Callable, order: float, *, steps=(8, 16, 32, 64), slack: float = 0.3) -> CheckResult:
    """The convergence order of ``step(field, x, t, t_next) -> x_next`` against the ``order`` it claims.

    Integrates three problems with known solutions (a decay, a non-autonomous linear one, a rotation) over
    [0, 1] with ``steps`` uniform steps, fits the slope of log(error) against log(h) where the error is above
    rounding, and fails when the smallest slope is below ``order - slack``.
    """
    start = time.perf_counter()
    if not callable(step):
        raise TypeError(f"verify_ode_order: `step` must be callable; got {type(step).__name__}")
    worst, where = math.inf, ""
    for name, f, x0, exact in _ode_problems():
        errs = []
        for n in steps:
            x = x0.clone()
            for k in range(n):
                x = step(f, x, k / n, (k + 1) / n)
            errs.append(float((x.double() - exact(1.0)).abs().max()))
        pts = [(math.log(1 / n), math.log(e)) for n, e in zip(steps, errs) if e > 1e-12]
        if len(pts) < 2:
            measured = math.inf  # exact to rounding on this problem
        else:
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            measured = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
        if measured < worst:
            worst, where = measured, f"{name}: errors {', '.join(f'{e:.2g}' for e in errs)} at {list(steps)} steps"
    deficit = order - worst
    return CheckResult("ode_order", deficit <= slack, deficit, slack, interface=f"step(field, x, t, t_next) "
                       f"claimed order {order:g}", seconds=time.perf_counter() - start,
                       detail=f"measured order {worst:.2f} vs claimed {order:g} (deficit = claimed - measured); "
                              f"worst {where}")


def _sde_call(step, drift, diffusion, x, t, t_next, seed):
    try:
        return step(drift, diffusion, x, t, t_next, seed=seed)
    except TypeError as exc:
        if "seed" not in str(exc):
            raise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return step(drift, diffusion, x, t, t_next)


def verify_sde_weak_order(step: Callable, order: float = 1.0, *, paths: int = 200_000, seed: int = 0,
                          steps=(4, 8, 16, 32), slack: float = 0.3) -> CheckResult:
    """The weak order of ``step(drift, diffusion, x, t, t_next, seed=) -> x_next`` on Ornstein-Uhlenbeck.

    ``dx = -2 x dt + dW``, ``x(0) = 2``, to ``T = 1``: the errors of ``E[x_T]`` and ``E[x_T^2]`` against their
    closed forms, over ``paths`` paths, for each number of ``steps``; errors within 4 Monte Carlo standard
    errors are left out of the fit (noise, not bias). A ``step`` without ``seed=`` is run under
    ``torch.manual_seed``. Fails when the fitted slope is below ``order - slack``.
    """
    start = time.perf_counter()
    theta, sigma, x0, T = 2.0, 1.0, 2.0, 1.0
    mean_T = x0 * math.exp(-theta * T)
    var_T = sigma**2 / (2 * theta) * (1 - math.exp(-2 * theta * T))
    second_T = mean_T**2 + var_T
    errs, noise = [], []
    for i, n in enumerate(steps):
        x = torch.full((paths, 1), x0, dtype=torch.float64)
        h = T / n
        for k in range(n):
            x = _sde_call(step, lambda v, t: -theta * v, lambda v, t: sigma, x, k * h, (k + 1) * h,
                          seed + 7919 * i + k)
        x = x.double()
        m, s2 = float(x.mean()), float((x**2).mean())
        se_m, se_s2 = float(x.std()) / math.sqrt(paths), float((x**2).std()) / math.sqrt(paths)
        e = max(abs(m - mean_T), abs(s2 - second_T))
        errs.append(e)
        noise.append(max(se_m, se_s2))
    pts = [(math.log(T / n), math.log(e)) for n, e, s in zip(steps, errs, noise) if e > 4 * s]
    if len(pts) < 2:
        measured = math.inf
    else:
        mx = sum(p[0] for p in pts) / len(pts)
        my = sum(p[1] for p in pts) / len(pts)
        measured = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    deficit = order - measured
    return CheckResult("sde_weak_order", deficit <= slack, deficit, slack, seconds=time.perf_counter() - start,
                       interface=f"step(drift, diffusion, x, t, t_next, seed=) claimed weak order {order:g}",
                       detail=f"measured weak order {measured:.2f} vs claimed {order:g} on OU dx = -2x dt + dW; "
                              f"errors of E[x], E[x^2]: {', '.join(f'{e:.2g}' for e in errs)} at {list(steps)} "
                              f"steps ({paths} paths; Monte Carlo s.e. <= {max(noise):.1g})")


def verify_sde_stationary(step: Callable, order: float = 1.0, *, paths: int = 20_000, h: float = 0.02,
                          t_end: float = 8.0, seed: int = 0) -> CheckResult:
    """The stationary law of Ornstein-Uhlenbeck ``dx = -x dt + dW`` (mean 0, variance 1/2) after ``t_end``.

    The mean must be within 4 standard errors of 0, and the variance within 4 standard errors plus
    the discretisation bias a method of weak ``order`` may have (``2 h^order`` relative) of 1/2.
    """
    start = time.perf_counter()
    n = int(round(t_end / h))
    x = torch.zeros(paths, 1, dtype=torch.float64)
    for k in range(n):
        x = _sde_call(step, lambda v, t: -v, lambda v, t: 1.0, x, k * h, (k + 1) * h, seed + k)
    x = x.double()
    m, var = float(x.mean()), float(x.var())
    se_m, se_var = math.sqrt(0.5 / paths), 0.5 * math.sqrt(2 / paths)
    err_m = abs(m) / (4 * se_m)
    allowed_var = 4 * se_var + 2 * 0.5 * h**order
    err_v = abs(var - 0.5) / allowed_var
    err = max(err_m, err_v)
    return CheckResult("sde_stationary", err <= 1.0, err, 1.0, seconds=time.perf_counter() - start,
                       interface=f"step(drift, diffusion, x, t, t_next, seed=) claimed weak order {order:g}",
                       detail=f"OU dx = -x dt + dW after {n} steps of {h:g}: mean {m:.4f} (expected 0, allowed "
                              f"{4 * se_m:.3g}), variance {var:.4f} (expected 0.5, allowed {allowed_var:.3g}); "
                              f"measured = the larger excess ratio, {paths} paths")


# ----------------------------------------------------------------------------- everything


CHECKS = {
    "invertibility": verify_invertibility,
    "log_det": verify_log_det,
    "density_normalization": verify_density_normalization,
    "sample_log_prob": verify_sample_log_prob,
    "batch_invariance": verify_batch_invariance,
    "reproducibility": verify_reproducibility,
    "dtype_agreement": verify_dtype_agreement,
    "finite_gradients": verify_finite_gradients,
}


def verify(obj, *, dim: int | None = None, inverse: Callable | None = None, dtype: torch.dtype | None = None,
           seed: int = 0, checks=None, rtol: float | None = None, ladj_rtol: float | None = None,
           density_atol: float = 0.02, n_grid: int | None = None, alpha: float = ALPHA,
           eval_mode: bool = True) -> Report:
    """Run every check that applies to ``obj``; returns a :class:`Report` (``.passed``, ``.table()``).

    ``dtype``: cast a copy of the object first (float64 by default where it can be cast, so that the
    tolerances measure the model rather than rounding). ``eval_mode``: ``nn.Module`` objects are put in
    eval mode for the checks (batch norm and dropout in training mode make rows depend on each other) and
    restored afterwards. ``checks``: names from :data:`CHECKS` (default: all). ``rtol``, ``ladj_rtol``,
    ``density_atol``, ``n_grid`` (quadrature points per axis) and ``alpha`` go to the checks that take them.

    Example:
        >>> from pyprobtf.families import RealNVP
        >>> verify(RealNVP(dim=2)).raise_if_failed().passed
        True
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"verify: `checks` must be names from {', '.join(CHECKS)}; got {unknown}")
    modules = [m for m in (obj if isinstance(obj, tuple) else (obj,)) if isinstance(m, torch.nn.Module)]
    training = [m.training for m in modules]
    try:
        if eval_mode:
            for m in modules:
                m.eval()
        subject = as_subject(obj, dim=dim, inverse=inverse)
        dtype = torch.float64 if dtype is None else dtype
        if subject.dtype != dtype and subject.convert is not None:
            subject = subject.convert(dtype)
            if eval_mode and isinstance(subject.obj, torch.nn.Module):
                subject.obj.eval()
        report = Report(subject.interface)
        for name in names:
            kwargs = {"seed": seed}
            if name == "invertibility" and rtol is not None:
                kwargs["rtol"] = rtol
            if name == "log_det" and ladj_rtol is not None:
                kwargs["rtol"] = ladj_rtol
            if name == "density_normalization":
                kwargs["atol"] = density_atol
                kwargs["n_grid"] = n_grid
            if name in ("sample_log_prob", "batch_invariance"):
                kwargs["alpha"] = alpha
            report.results.append(CHECKS[name](subject, **kwargs))
        return report
    finally:
        for m, was in zip(modules, training):
            m.train(was)


def _assert(check_fn):
    def assert_fn(obj, *args, **kwargs):
        return check_fn(obj, *args, **kwargs).raise_if_failed()

    assert_fn.__name__ = check_fn.__name__.replace("verify_", "assert_")
    assert_fn.__doc__ = f"Raise :class:`VerificationError` unless :func:`{check_fn.__name__}` passes; returns its " \
                        f"result."
    return assert_fn


assert_invertible = _assert(verify_invertibility)
assert_log_det_correct = _assert(verify_log_det)
assert_normalized = _assert(verify_density_normalization)
assert_samples_match_log_prob = _assert(verify_sample_log_prob)
assert_batch_invariant = _assert(verify_batch_invariance)
assert_reproducible = _assert(verify_reproducibility)
assert_dtypes_agree = _assert(verify_dtype_agreement)
assert_finite_gradients = _assert(verify_finite_gradients)
assert_ode_order = _assert(verify_ode_order)
assert_sde_weak_order = _assert(verify_sde_weak_order)
assert_sde_stationary = _assert(verify_sde_stationary)
