"""Objects for the tests of pyprobtf.testing.verification and ``pyprobtf verify``: a correct flow written by
hand in every interface the checks accept, its deliberately broken variants (the mutation suite), and ODE/SDE
steps, correct and broken.

``Coupling(dim, bug=None)`` is ``x = F(z)``, ``z ~ N(0, I)``: an elementwise affine map of the first half
and an affine coupling of the second half on the first, with ``__call__(z) -> (x, ladj)``,
``inverse(x) -> (z, ladj)``, ``log_prob`` and ``sample(n, seed=)``. ``bug`` names one mistake of
:data:`BUGS`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# bug -> the property whose check must catch it
BUGS = {
    "ladj_wrong_sign": "log_det",
    "ladj_missing_constant": "log_det",
    "ladj_off_by_1e-4_relative": "log_det",
    "inverse_bias_1e-5": "invertibility",
    "inverse_ladj_wrong_sign": "log_det",
    "log_prob_unnormalised_5pct": "density_normalization",
    "log_prob_missing_ladj": "density_normalization",
    "sample_scale_1.2": "sample_log_prob",
    "map_depends_on_batch": "batch_invariance",
    "sample_centred_on_batch_mean": "batch_invariance",
    "sample_one_noise_per_batch": "batch_invariance",
    "sample_ignores_seed": "reproducibility",
    "log_prob_nan_gradient": "finite_gradients",
    "float32_path_in_bfloat16": "dtype_agreement",
}


class Coupling(nn.Module):
    """A correct (``bug=None``) or broken flow in ``dim`` dimensions; fixed random weights from ``seed``."""

    def __init__(self, dim: int = 2, bug: str | None = None, seed: int = 0):
        super().__init__()
        if bug is not None and bug not in BUGS:
            raise ValueError(f"Coupling: `bug` must be one of {sorted(BUGS)}; got {bug!r}")
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.bug, self.k = dim, bug, dim // 2 if dim > 1 else 1
        k, r = self.k, dim - self.k
        self.log_scale = nn.Parameter(0.5 * torch.randn(k, generator=gen, dtype=torch.float64))
        self.shift = nn.Parameter(torch.randn(k, generator=gen, dtype=torch.float64))
        self.A = nn.Parameter(torch.randn(k, r, generator=gen, dtype=torch.float64) / math.sqrt(k))
        self.C = nn.Parameter(torch.randn(k, r, generator=gen, dtype=torch.float64) / math.sqrt(k))

    @property
    def base(self):
        """The distribution of ``z`` (a standard normal), so checks can use the model's own pushforward."""
        zero = torch.zeros(self.dim, dtype=self.log_scale.dtype)
        return torch.distributions.Independent(torch.distributions.Normal(zero, zero + 1), 1)

    def _first(self, z1):
        scale = self.log_scale.exp()
        if self.bug == "float32_path_in_bfloat16" and z1.dtype == torch.float32:
            return (z1.bfloat16() * scale.bfloat16() + self.shift.bfloat16()).float()
        return z1 * scale + self.shift

    def forward(self, z):
        z1, z2 = z[:, :self.k], z[:, self.k:]
        x1 = self._first(z1)
        if self.bug == "map_depends_on_batch":
            x1 = x1 + 1e-3 * z1.mean(0)
        s = torch.tanh(x1 @ self.A)
        x2 = z2 * s.exp() + x1 @ self.C
        ladj = self.log_scale.sum() + s.sum(1)
        if self.bug == "ladj_wrong_sign":
            ladj = -ladj
        elif self.bug == "ladj_missing_constant":
            ladj = s.sum(1)
        elif self.bug == "ladj_off_by_1e-4_relative":
            ladj = ladj * (1 + 1e-4)
        return torch.cat([x1, x2], 1), ladj

    def inverse(self, x):
        x1, x2 = x[:, :self.k], x[:, self.k:]
        s = torch.tanh(x1 @ self.A)
        z1 = (x1 - self.shift) * (-self.log_scale).exp()
        z2 = (x2 - x1 @ self.C) * (-s).exp()
        ladj = -(self.log_scale.sum() + s.sum(1))
        if self.bug == "inverse_ladj_wrong_sign":
            ladj = -ladj
        z = torch.cat([z1, z2], 1)
        if self.bug == "inverse_bias_1e-5":
            z = z + 1e-5
        return z, ladj

    def log_prob(self, x):
        z, ladj = self.inverse(x)
        base = -0.5 * (z**2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        if self.bug == "log_prob_missing_ladj":
            return base
        if self.bug == "log_prob_unnormalised_5pct":
            return base + ladj + math.log(1.05)
        if self.bug == "log_prob_nan_gradient":
            # The sqrt branch is never selected, but its gradient (NaN for negative x) still flows.
            return base + ladj + torch.where(x[:, 0] > 1e6, torch.sqrt(-x[:, 0].abs()), 0.0)
        return base + ladj

    def sample(self, n: int, seed: int | None = None):
        gen = torch.Generator().manual_seed(seed % 2**63) if seed is not None else None
        if self.bug == "sample_ignores_seed":
            gen = None
        dtype = self.log_scale.dtype
        z = torch.randn(n, self.dim, generator=gen, dtype=dtype)
        if self.bug == "sample_scale_1.2":
            z = 1.2 * z
        elif self.bug == "sample_centred_on_batch_mean":
            z = z - z.mean(0)
        elif self.bug == "sample_one_noise_per_batch":
            z = z[:1].expand(n, -1)
        with torch.no_grad():
            return self(z)[0]


# ----------------------------------------------------------------------------- other interfaces, broken


class BadExp(torch.distributions.ExpTransform):
    """A user's torch Transform whose log-determinant forgot that d exp(x)/dx = exp(x): returns 0."""

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros_like(x)


class NflowsStyleScale(nn.Module):
    """nflows' interface, ``forward(inputs, context=None) -> (outputs, logabsdet)``, with the sign of
    ``logabsdet`` flipped in ``forward`` when ``broken``."""

    def __init__(self, dim: int = 3, broken: bool = False):
        super().__init__()
        self.log_scale = nn.Parameter(torch.linspace(-0.5, 0.7, dim, dtype=torch.float64))
        self.broken = broken

    def forward(self, inputs, context=None):
        ladj = self.log_scale.sum().expand(inputs.shape[0])
        return inputs * self.log_scale.exp(), (-ladj if self.broken else ladj)

    def inverse(self, inputs, context=None):
        return inputs * (-self.log_scale).exp(), -self.log_scale.sum().expand(inputs.shape[0])


# ----------------------------------------------------------------------------- steps


def euler(field, x, t, t_next):
    return x + (t_next - t) * field(x, t)


def heun(field, x, t, t_next):
    h = t_next - t
    k1 = field(x, t)
    k2 = field(x + h * k1, t_next)
    return x + 0.5 * h * (k1 + k2)


def heun_wrong_time(field, x, t, t_next):
    """Heun's corrector evaluated at t instead of t_next: first order on non-autonomous fields."""
    h = t_next - t
    k1 = field(x, t)
    k2 = field(x + h * k1, t)
    return x + 0.5 * h * (k1 + k2)


def rk4(field, x, t, t_next):
    h = t_next - t
    k1 = field(x, t)
    k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = field(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = field(x + h * k3, t_next)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def rk4_k3_from_k1(field, x, t, t_next):
    """RK4 with a typo: k3 built from k1 instead of k2."""
    h = t_next - t
    k1 = field(x, t)
    k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = field(x + 0.5 * h * k1, t + 0.5 * h)
    k4 = field(x + h * k3, t_next)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _noise(x, seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    return torch.randn(x.shape, generator=gen, dtype=x.dtype)


def euler_maruyama(drift, diffusion, x, t, t_next, seed=0):
    h = t_next - t
    return x + h * drift(x, t) + diffusion(x, t) * math.sqrt(abs(h)) * _noise(x, seed)


def em_noise_times_h(drift, diffusion, x, t, t_next, seed=0):
    """Euler-Maruyama with the noise scaled by h instead of sqrt(h)."""
    h = t_next - t
    return x + h * drift(x, t) + diffusion(x, t) * abs(h) * _noise(x, seed)


def em_double_variance(drift, diffusion, x, t, t_next, seed=0):
    """Euler-Maruyama with the noise scaled by sqrt(2 h)."""
    h = t_next - t
    return x + h * drift(x, t) + diffusion(x, t) * math.sqrt(2 * abs(h)) * _noise(x, seed)


# (step, kind, claimed order, correct?)
STEPS = {
    "euler": (euler, "ode", 1, True),
    "heun": (heun, "ode", 2, True),
    "rk4": (rk4, "ode", 4, True),
    "euler_claimed_2": (euler, "ode", 2, False),
    "heun_wrong_time": (heun_wrong_time, "ode", 2, False),
    "rk4_k3_from_k1": (rk4_k3_from_k1, "ode", 4, False),
    "euler_maruyama": (euler_maruyama, "sde", 1, True),
    "em_claimed_2": (euler_maruyama, "sde", 2, False),
    "em_noise_times_h": (em_noise_times_h, "sde", 1, False),
    "em_double_variance": (em_double_variance, "sde", 1, False),
}


# ----------------------------------------------------------------------------- for the command line


def good_flow():
    return Coupling(2)


def broken_flow():
    return Coupling(2, bug="ladj_wrong_sign")


def zuko_flow():
    import zuko

    torch.manual_seed(0)
    return zuko.flows.MAF(2, hidden_features=[16, 16])


def broken_zuko_flow():
    """A zuko MAF whose distribution reports log_prob + log 2 (e.g. a forgotten constant in a custom base)."""
    import zuko

    class Off(zuko.flows.MAF):
        def forward(self, c=None):
            dist = super().forward(c)
            log_prob = dist.log_prob
            dist.log_prob = lambda x: log_prob(x) + math.log(2)
            return dist

    torch.manual_seed(0)
    return Off(2, hidden_features=[16, 16])
