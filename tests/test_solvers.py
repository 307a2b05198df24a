"""pyprobtf.solvers: empirical orders of convergence, SDE moments against closed
forms, exact likelihoods of linear flows, Hutchinson's unbiasedness, samplers on
Gaussian data (whose scores, denoisers and flows are known in closed form),
schedules, prediction converters, batch invariance, no host synchronisation,
and bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from pyprobtf.solvers import (
    annealed_langevin,
    convert_prediction,
    edm_field,
    karras_sigmas,
    langevin,
    log_prob_ode,
    sample_ddim,
    sample_euler_ancestral,
    sample_ode,
    sample_sde,
    uniform_times,
    vp_cosine,
    vp_linear,
)
from pyprobtf.solvers.likelihood import exact_divergence

F64 = torch.float64
ODE_ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


def _geometric(n: int, start: float, stop: float) -> list[float]:
    """n + 1 points, evenly spaced in log: the natural grid of DPM-Solver (uniform in lambda = -log sigma)."""
    return [start * (stop / start) ** (i / n) for i in range(n + 1)]


def _observed_order(errors: list[float]) -> float:
    return math.log2(errors[-2] / errors[-1])


# ----------------------------------------------------------------------------- convergence orders


@pytest.mark.parametrize("method", list(ODE_ORDERS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_ode_order_of_convergence(method, direction):
    # dx/dt = -2 t x + x cos(t) is linear and non-autonomous: x(t) = x(t0) exp(-(t^2 - t0^2) + sin t - sin t0).
    t0, t1 = (0.2, 1.4) if direction == "forward" else (1.4, 0.2)
    x0 = torch.linspace(-1.0, 2.0, 6, dtype=F64).reshape(3, 2)
    exact = x0 * math.exp(-(t1**2 - t0**2) + math.sin(t1) - math.sin(t0))

    def field(x, t):
        return x * (-2.0 * t + math.cos(t))

    order = ODE_ORDERS[method]
    ns = [4, 8, 16] if order == 4 else [16, 32, 64]
    errors = [(sample_ode(field, x0, uniform_times(n, t0, t1), method=method) - exact).abs().max().item()
              for n in ns]
    assert errors[0] > errors[1] > errors[2] > 1e-13
    assert abs(_observed_order(errors) - order) < 0.2, (method, errors)


def _gaussian_edm(mu: float, s: float):
    """Data N(mu, s^2): the exact denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the PF-ODE map."""

    def denoiser(x, sigma):
        return mu + s * s / (s * s + sigma * sigma) * (x - mu)

    def flow(x, sigma_from, sigma_to):
        return mu + (x - mu) * math.sqrt((s * s + sigma_to**2) / (s * s + sigma_from**2))
    return denoiser, flow


def _edm(denoiser, kind: str):
    """The EDM field of a denoiser: as an EDMField (steps fold the conversion into their update) or a plain
    callable (steps see only dx/dsigma); both must give the same samples up to rounding."""
    field = edm_field(denoiser)
    return field if kind == "edm_field" else (lambda x, sigma: field(x, sigma))


@pytest.mark.parametrize("kind", ["edm_field", "plain"])
def test_dpmpp_2m_order_of_convergence(kind):
    denoiser, flow = _gaussian_edm(mu=0.7, s=0.5)
    field = _edm(denoiser, kind)
    x0 = torch.linspace(-20.0, 20.0, 8, dtype=F64).reshape(4, 2)
    exact = flow(x0, 10.0, 0.05)
    errors = [(sample_ode(field, x0, _geometric(n, 10.0, 0.05), method="dpmpp_2m") - exact).abs().max().item()
              for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert abs(_observed_order(errors) - 2) < 0.2, errors


@pytest.mark.parametrize("kind", ["edm_field", "plain"])
@pytest.mark.parametrize("method, atol", [("euler", 0.05), ("heun", 0.01), ("midpoint", 1e-3), ("rk4", 1e-4),
                                          ("dpmpp_2m", 0.01)])
def test_edm_sampling_down_to_sigma_zero(method, atol, kind):
    # A Karras grid ends at sigma = 0, where the EDM field is undefined: dpmpp_2m returns D there,
    # heun and rk4 take an Euler last step (k-diffusion's convention).
    denoiser, flow = _gaussian_edm(mu=0.7, s=0.5)
    x0 = torch.linspace(-80.0, 80.0, 8, dtype=F64).reshape(4, 2)
    got = sample_ode(_edm(denoiser, kind), x0, karras_sigmas(40, 0.002, 80.0), method=method)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, flow(x0, 80.0, 0.0), rtol=0, atol=atol)
    if kind == "edm_field":  # the folded update is the same method
        plain = sample_ode(_edm(denoiser, "plain"), x0, karras_sigmas(40, 0.002, 80.0), method=method)
        torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)


def test_euler_at_zero_can_be_disabled():
    denoiser, _ = _gaussian_edm(mu=0.7, s=0.5)
    x0 = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="undefined at sigma = 0"):
        sample_ode(edm_field(denoiser), x0, karras_sigmas(5, 0.1, 10.0), method="heun", euler_at_zero=False)
    # a field defined at 0 gets its Heun step there
    ts = uniform_times(4, 1.0, 0.0)
    field = (lambda x, t: -x * (1 + t))
    heun = sample_ode(field, x0, ts, method="heun", euler_at_zero=False)
    assert not torch.equal(heun, sample_ode(field, x0, ts, method="heun"))


def test_probability_flow_of_vp_schedules_against_closed_form():
    # Gaussian data N(mu, s^2) under VP: x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2) and the PF-ODE maps
    # x_t0 to alpha1 mu + sqrt(v1 / v0) (x_t0 - alpha0 mu).
    mu, s = 0.7, 0.5
    for schedule in (vp_linear(), vp_cosine()):
        def eps_model(x, t):
            a, sg = schedule.alpha(t), schedule.sigma(t)
            return sg * (x - a * mu) / (a * a * s * s + sg * sg)

        t0, t1 = 0.95, 1e-3
        var = [schedule.alpha(t) ** 2 * s * s + schedule.sigma(t) ** 2 for t in (t0, t1)]
        x0 = torch.linspace(-2.0, 2.0, 6, dtype=F64).reshape(3, 2)
        exact = schedule.alpha(t1) * mu + math.sqrt(var[1] / var[0]) * (x0 - schedule.alpha(t0) * mu)
        got = sample_ode(schedule.probability_flow(eps_model), x0, uniform_times(100, t0, t1), method="rk4")
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-7)
        # the same model given as a denoiser
        def denoiser(x, t):
            return (x - schedule.sigma(t) * eps_model(x, t)) / schedule.alpha(t)
        got = sample_ode(schedule.probability_flow(denoiser, "denoised"), x0, uniform_times(100, t0, t1),
                         method="rk4")
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- SDEs


def _moments_close(x: torch.Tensor, mean: float, var: float, *, bias: float = 0.0, k: float = 5.0):
    """Sample mean and variance equal mean, var within k standard errors (plus a known discretisation bias)."""
    n = x.numel()
    x = x.double().reshape(-1)
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2.0 / (n - 1))
    assert abs(x.mean().item() - mean) < k * se_mean + bias, (x.mean().item(), mean, se_mean)
    assert abs(x.var().item() - var) < k * se_var + bias, (x.var().item(), var, se_var)


def _chain_moments(mean: float, var: float, steps) -> tuple[float, float]:
    """Exact moments after the affine Gaussian steps x <- a x + b + c z (z ~ N(0, 1) fresh each step)."""
    for a, b, c in steps:
        mean, var = a * mean + b, a * a * var + c * c
    return mean, var


@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_euler_maruyama_ornstein_uhlenbeck_moments(seed_kind):
    # dx = -theta (x - m) dt + g dW from x0 = 2: mean m + (2 - m) e^{-theta T},
    # variance g^2 / (2 theta) (1 - e^{-2 theta T}).
    theta, m, g, T, n, n_steps = 1.5, -0.5, 0.8, 1.0, 40000, 200
    x0 = torch.full((n, 1), 2.0)
    seed = 7 if seed_kind == "int" else torch.arange(n) * 31 + 5
    x = sample_sde(lambda x, t: theta * (m - x), lambda x, t: g, x0, uniform_times(n_steps, 0.0, T), seed=seed)
    mean = m + (2.0 - m) * math.exp(-theta * T)
    var = g * g / (2 * theta) * (1 - math.exp(-2 * theta * T))
    # Euler-Maruyama's own chain x' = (1 - theta h) x + theta h m + g sqrt(h) z: its moments differ from the
    # closed form by the O(h) weak error; the samples match them within sampling error.
    h = T / n_steps
    chain = _chain_moments(2.0, 0.0, [(1 - theta * h, theta * h * m, g * math.sqrt(h))] * n_steps)
    assert abs(chain[0] - mean) < 0.01 and abs(chain[1] - var) < 0.003
    _moments_close(x, *chain)
    _moments_close(x, mean, var, bias=0.01)


def test_euler_maruyama_diffusion_shapes():
    # per-row (B, 1) and full diagonal diffusion tensors give the matching variances
    n, T = 20000, 0.5
    scales = torch.tensor([0.5, 2.0]).repeat(n // 2)
    x0 = torch.zeros(n, 2)
    per_row = sample_sde(lambda x, t: torch.zeros_like(x), lambda x, t: scales[:, None], x0,
                         uniform_times(5, 0.0, T), seed=3)
    full = sample_sde(lambda x, t: torch.zeros_like(x), lambda x, t: torch.tensor([1.0, 3.0]), x0,
                      uniform_times(5, 0.0, T), seed=3)
    for k, scale in enumerate((0.5, 2.0)):
        _moments_close(per_row[k::2], 0.0, scale**2 * T)
    for k, scale in enumerate((1.0, 3.0)):
        _moments_close(full[:, k], 0.0, scale**2 * T)


def test_reverse_time_sde_of_vp_schedule_recovers_the_data():
    # Exact Gaussian scores: integrating the reverse SDE from N(0, 1) at t = 1 gives N(mu, s^2)
    # up to Euler-Maruyama's O(h) bias.
    mu, s, n = 0.7, 0.5, 40000
    schedule = vp_linear()

    def eps_model(x, t):
        a, sg = schedule.alpha(t), schedule.sigma(t)
        return sg * (x - a * mu) / (a * a * s * s + sg * sg)

    drift, diffusion = schedule.reverse_sde(eps_model)
    x1 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    x = sample_sde(drift, diffusion, x1, uniform_times(300, 1.0, 1e-3), seed=11)
    _moments_close(x, mu, s * s, bias=0.015)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_the_data(eta):
    mu, s, n = 0.7, 0.5, 40000
    schedule = vp_cosine()

    def eps_model(x, t):
        a, sg = schedule.alpha(t), schedule.sigma(t)
        return sg * (x - a * mu) / (a * a * s * s + sg * sg)

    t0 = schedule.t_from_edm_sigma(80.0)
    x1 = torch.randn(n, 1, generator=torch.Generator().manual_seed(1)) * schedule.sigma(t0)
    x = sample_ddim(eps_model, x1, uniform_times(200, t0, 0.0), schedule, eta=eta, seed=5)
    _moments_close(x, mu, s * s, bias=0.01)


def test_ddim_eta_zero_converges_to_the_probability_flow():
    mu, s = 0.7, 0.5
    schedule = vp_linear()

    def eps_model(x, t):
        a, sg = schedule.alpha(t), schedule.sigma(t)
        return sg * (x - a * mu) / (a * a * s * s + sg * sg)

    t0, t1 = 0.9, 0.05
    var = [schedule.alpha(t) ** 2 * s * s + schedule.sigma(t) ** 2 for t in (t0, t1)]
    x0 = torch.linspace(-2.0, 2.0, 6, dtype=F64).reshape(3, 2)
    exact = schedule.alpha(t1) * mu + math.sqrt(var[1] / var[0]) * (x0 - schedule.alpha(t0) * mu)
    errors = [(sample_ddim(eps_model, x0, uniform_times(n, t0, t1), schedule) - exact).abs().max().item()
              for n in (20, 40, 80)]
    assert errors[0] > errors[1] > errors[2]
    assert abs(_observed_order(errors) - 1) < 0.25, errors  # DDIM is first order


@pytest.mark.parametrize("eta, kind", [(0.0, "edm_field"), (1.0, "edm_field"), (1.0, "plain")])
def test_euler_ancestral_moments(eta, kind):
    # On Gaussian data the denoiser is affine, so each k-diffusion step
    #   sigma_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)), sigma_down = sqrt(s'^2 - sigma_up^2),
    #   x' = x + (sigma_down - s) (x - D(x, s)) / s + sigma_up z
    # is affine and Gaussian: the samples' moments must match the chain's exact moments, and those
    # approach the data's (mu, s^2) as the grid is refined (first order).
    mu, s, n = 0.7, 0.5, 40000
    denoiser, _ = _gaussian_edm(mu, s)
    sigmas = karras_sigmas(60, 0.002, 80.0)
    steps = []
    for sg, sg_next in zip(sigmas[:-1], sigmas[1:]):
        up = min(sg_next, eta * math.sqrt(sg_next**2 * (sg**2 - sg_next**2) / sg**2)) if sg_next > 0 else 0.0
        down = math.sqrt(sg_next**2 - up**2)
        k = s * s / (s * s + sg * sg)  # D = mu + k (x - mu)
        a = 1 + (down - sg) * (1 - k) / sg
        steps.append((a, (1 - a) * mu, up))
    chain = _chain_moments(mu, 80.0**2 + s * s, steps)
    assert abs(chain[0] - mu) < 1e-9 and abs(chain[1] - s * s) < 0.06
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(2)) * math.sqrt(80.0**2 + s * s) + mu
    x = sample_euler_ancestral(_edm(denoiser, kind), x0, sigmas, eta=eta, seed=9)
    # x0's own sampling error carries through the (contracting) chain: compare its moments too
    x0_chain = _chain_moments(x0.double().mean().item(), x0.double().var().item(), steps)
    _moments_close(x, x0_chain[0], chain[1])


def test_euler_ancestral_with_eta_zero_is_euler():
    denoiser, _ = _gaussian_edm(0.7, 0.5)
    x0 = torch.randn(5, 3)
    sigmas = karras_sigmas(8, 0.01, 10.0)
    a = sample_euler_ancestral(edm_field(denoiser), x0, sigmas, eta=0.0, seed=1)
    b = sample_ode(edm_field(denoiser), x0, sigmas, method="euler")
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- Langevin


def test_langevin_reaches_the_discretised_stationary_law():
    # ULA on N(m, v): x' = x + h (m - x) / v + sqrt(2h) z has the stationary law N(m, v / (1 - h / (2v))).
    m, v, h, n = 2.0, 0.25, 0.01, 40000
    x = langevin(lambda x, t: (m - x) / v, torch.zeros(n, 1), step_size=h, n_steps=400, seed=3)
    _moments_close(x, m, v / (1 - h / (2 * v)))


def test_annealed_langevin_is_langevin_with_half_alpha_steps():
    score = (lambda x, sigma: -x / (1 + sigma * sigma))
    x0 = torch.randn(6, 4)
    one_level = annealed_langevin(score, x0, [0.5], n_steps_each=7, eps=0.02, seed=4)
    plain = langevin(score, x0, step_size=0.01, n_steps=7, t=0.5, seed=4)
    assert torch.equal(one_level, plain)


def test_annealed_langevin_samples_the_perturbed_data():
    # Data N(mu, s^2); score of the data perturbed at sigma: -(x - mu) / (s^2 + sigma^2). At the last level
    # the chain samples N(mu, v) (v = s^2 + sigma_L^2) up to ULA's factor 1 / (1 - h / (2v)), h = eps / 2;
    # the Tweedie denoising step then scales the spread by s^2 / v.
    mu, s, n, eps = 0.7, 0.5, 40000, 0.02
    sigmas = [1.0, 0.6, 0.3]
    score = (lambda x, sigma: -(x - mu) / (s * s + sigma * sigma))
    x0 = torch.rand(n, 1, generator=torch.Generator().manual_seed(3)) * 4 - 2
    v = s * s + sigmas[-1] ** 2
    var = v / (1 - (eps / 2) / (2 * v))
    x = annealed_langevin(score, x0, sigmas, n_steps_each=200, eps=eps, seed=8)
    _moments_close(x, mu, var)
    x, trajectory = annealed_langevin(score, x0, sigmas, n_steps_each=200, eps=eps, seed=8, denoise=True,
                                      return_trajectory=True)
    assert len(trajectory) == 3 * 200 + 2 and trajectory[-1] is x
    _moments_close(x, mu, var * (s * s / v) ** 2)


# ----------------------------------------------------------------------------- log_prob_ode

A = torch.tensor([[0.3, -0.8], [0.5, -0.1]], dtype=F64)
STD_NORMAL_2D = Independent(Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_log_prob_ode_exact_on_a_linear_field(direction):
    # f(x) = A x: z = expm(A (t1 - t0)) x and log p(x) = log N(z; 0, I) + tr(A) (t1 - t0).
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [0.0, 0.0]], dtype=F64)
    t0, t1 = (0.0, 1.0) if direction == "forward" else (1.0, 0.0)
    times = uniform_times(20, t0, t1)
    log_prob, z = log_prob_ode(lambda x, t: x @ A.T, x, times, STD_NORMAL_2D)
    z_exact = x @ torch.linalg.matrix_exp(A * (t1 - t0)).T
    want = STD_NORMAL_2D.log_prob(z_exact) + torch.trace(A) * (t1 - t0)
    torch.testing.assert_close(z, z_exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(log_prob, want, rtol=0, atol=1e-7)
    assert log_prob.shape == (3,) and log_prob.dtype == F64


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_log_prob_ode_divergence_integral_has_the_method_order(method):
    # f(x, t) = cos(t) x in 3 dimensions: the log-determinant integral is 3 sin(t1); its error shrinks
    # at the method's order (the divergences are combined with the method's Butcher weights).
    x = torch.tensor([[0.3, -0.2, 0.1]], dtype=F64)
    base = Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1)
    exact_z = x * math.exp(math.sin(1.0))
    exact = base.log_prob(exact_z) + 3 * math.sin(1.0)
    order = ODE_ORDERS[method]
    ns = [4, 8, 16] if order == 4 else [16, 32, 64]
    errors = []
    for n in ns:
        lp, _ = log_prob_ode(lambda x, t: math.cos(t) * x, x, uniform_times(n, 0.0, 1.0), base, method=method)
        errors.append((lp - exact).abs().item())
    assert abs(_observed_order(errors) - order) < 0.3, errors


def test_exact_divergence_is_the_jacobian_trace():
    w = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))

    def field(x, t):
        return torch.tanh(x @ w) * (1 + t)

    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    div = exact_divergence(field(x, 0.5), x)
    for b in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: field(v[None], 0.5)[0], x[b].detach())
        torch.testing.assert_close(div[b], torch.trace(jac))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    # One data point repeated with per-row seeds: independent estimates of the same log-density; their mean
    # equals the exact value within its standard error.
    n = 4000
    x = torch.tensor([[0.5, -1.0]], dtype=F64).repeat(n, 1)
    times = uniform_times(10, 0.0, 1.0)
    field = (lambda x, t: x @ A.T)
    exact, _ = log_prob_ode(field, x[:1], times, STD_NORMAL_2D)
    est, _ = log_prob_ode(field, x, times, STD_NORMAL_2D, divergence="hutchinson", probe=probe,
                          seed=torch.arange(n))
    se = est.std().item() / math.sqrt(n)
    assert se > 0  # the estimates really differ
    assert abs(est.mean().item() - exact.item()) < 5 * se
    more, _ = log_prob_ode(field, x, times, STD_NORMAL_2D, divergence="hutchinson", probe=probe,
                           seed=torch.arange(n), n_probes=4)
    assert more.std() < 0.6 * est.std()  # 4 probes: half the standard deviation


def test_log_prob_ode_is_differentiable_in_the_field_parameters():
    # f = a x on R^2: log p(x) = log N(e^a x) + 2a, so d/da = -e^{2a} |x|^2 + 2.
    a = torch.tensor(0.3, dtype=F64, requires_grad=True)
    x = torch.tensor([[0.5, -1.0], [1.0, 2.0]], dtype=F64)
    log_prob, _ = log_prob_ode(lambda x, t: a * x, x, uniform_times(10, 0.0, 1.0), STD_NORMAL_2D)
    (grad,) = torch.autograd.grad(log_prob.sum(), a)
    want = (-math.exp(0.6) * x.square().sum(1) + 2).sum()
    torch.testing.assert_close(grad, want, rtol=1e-6, atol=0)
    with torch.no_grad():
        log_prob, z = log_prob_ode(lambda x, t: a * x, x, uniform_times(10, 0.0, 1.0), STD_NORMAL_2D)
    assert not log_prob.requires_grad and not z.requires_grad


def test_log_prob_ode_sums_an_elementwise_base():
    x = torch.tensor([[0.5, -1.0]], dtype=F64)
    lp_ind, _ = log_prob_ode(lambda x, t: -x, x, uniform_times(4, 0.0, 1.0), STD_NORMAL_2D)
    lp_el, _ = log_prob_ode(lambda x, t: -x, x, uniform_times(4, 0.0, 1.0), Normal(0.0, 1.0))
    torch.testing.assert_close(lp_el, lp_ind)


# ----------------------------------------------------------------------------- schedules and predictions


def test_karras_sigmas_match_k_diffusion_formula():
    n, lo, hi, rho = 10, 0.002, 80.0, 7.0
    ramp = torch.linspace(0, 1, n, dtype=F64)
    want = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    got = karras_sigmas(n, lo, hi, rho)
    assert len(got) == n + 1 and got[-1] == 0.0 and got[0] == hi and got[-2] == lo
    torch.testing.assert_close(torch.tensor(got[:-1], dtype=F64), want, rtol=1e-14, atol=0)
    assert karras_sigmas(n, lo, hi, append_zero=False) == got[:-1]
    assert all(isinstance(s, float) for s in got)


def test_uniform_times():
    assert uniform_times(4, 1.0, 0.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    ts = uniform_times(3, 0.1, 0.7)
    assert ts[0] == 0.1 and ts[-1] == 0.7 and len(ts) == 4


@pytest.mark.parametrize("schedule", [vp_linear(), vp_linear(0.5, 5.0), vp_cosine(), vp_cosine(0.02)])
def test_vp_schedule_identities(schedule):
    for t in (1e-4, 0.1, 0.5, 0.9):
        a, s = schedule.alpha(t), schedule.sigma(t)
        assert abs(a * a + s * s - 1) < 1e-12
        assert abs(schedule.alpha_bar(t) - a * a) < 1e-12
        assert abs(schedule.edm_sigma(t) - s / a) < 1e-9 * (1 + s / a)
        assert abs(schedule.log_snr(t) - math.log(a * a / (s * s))) < 1e-9
        # beta = -d/dt log alpha_bar, by central differences
        dt = 1e-6
        fd = -(schedule.log_alpha_bar(t + dt) - schedule.log_alpha_bar(t - dt)) / (2 * dt)
        assert abs(schedule.beta(t) - fd) < 1e-5 * (1 + abs(fd))
        assert abs(schedule.t_from_edm_sigma(schedule.edm_sigma(t)) - t) < 1e-9
        # tensors give the same numbers as floats
        tt = torch.tensor([t], dtype=F64)
        for name in ("alpha", "sigma", "beta", "edm_sigma", "log_snr"):
            assert abs(getattr(schedule, name)(tt).item() - getattr(schedule, name)(t)) < 1e-12


def test_convert_prediction_round_trips_and_ground_truth():
    # x = alpha x0 + sigma eps with known x0 and eps: every prediction is known exactly.
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, 3, dtype=F64, generator=gen)
    for alpha, sigma in ((0.8, 0.6), (1.0, 3.0), (torch.tensor([0.6, 0.9, 1.0, 0.3, 0.99], dtype=F64),
                                                    torch.tensor([0.8, 0.2, 0.5, 0.7, 0.1], dtype=F64))):
        a = alpha[:, None] if isinstance(alpha, torch.Tensor) else alpha
        s = sigma[:, None] if isinstance(sigma, torch.Tensor) else sigma
        x = a * x0 + s * eps
        truth = {"denoised": x0, "epsilon": eps, "score": -eps / s, "velocity": a * eps - s * x0}
        for source, pred in truth.items():
            for target, want in truth.items():
                got = convert_prediction(pred, x, source=source, target=target, alpha=alpha, sigma=sigma)
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_edm_field_is_x_minus_denoised_over_sigma():
    x = torch.randn(3, 4, dtype=F64)
    field = edm_field(lambda x, sigma: 0.5 * x)
    torch.testing.assert_close(field(x, 2.0), (x - 0.5 * x) / 2.0)


# ----------------------------------------------------------------------------- loops: trajectories, invariance, sync


def test_trajectory_and_callback():
    x0 = torch.ones(2, 3)
    seen = []
    x, trajectory = sample_ode(lambda x, t: -x, x0, [0.0, 0.5, 1.0], method="euler", return_trajectory=True,
                               callback=lambda i, t, x: seen.append((i, t)))
    assert len(trajectory) == 3 and trajectory[0] is x0 and trajectory[-1] is x
    torch.testing.assert_close(trajectory[1], 0.5 * x0)
    assert seen == [(0, 0.5), (1, 1.0)]
    x, trajectory = sample_sde(lambda x, t: -x, lambda x, t: 0.1, x0, [0.0, 0.5, 1.0], return_trajectory=True)
    assert len(trajectory) == 3 and trajectory[-1] is x
    x, trajectory = langevin(lambda x, t: -x, x0, step_size=0.1, n_steps=4, return_trajectory=True)
    assert len(trajectory) == 5 and trajectory[-1] is x


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_sampling_is_differentiable(method):
    # dx/dt = a x: one step multiplies x by the method's stability polynomial R(a h), so
    # d x_T / d x_0 = R(a h)^n and d x_T / d a = n R^(n-1) R'(a h) h x_0: autograd through the loop (the
    # lincomb passes included) must give exactly these.
    a = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    x0 = torch.tensor([[1.0, -2.0]], dtype=F64, requires_grad=True)
    n, h = 5, 0.2
    x = sample_ode(lambda x, t: a * x, x0, uniform_times(n, 0.0, n * h), method=method)
    gx0, ga = torch.autograd.grad(x.sum(), (x0, a))
    z = -0.7 * h
    terms = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}[method]
    r = sum(z**k / math.factorial(k) for k in range(terms + 1))
    dr = sum(z ** (k - 1) / math.factorial(k - 1) for k in range(1, terms + 1))
    torch.testing.assert_close(gx0, torch.full_like(x0, r**n))
    torch.testing.assert_close(ga, torch.tensor(n * r ** (n - 1) * dr * h * (1.0 - 2.0), dtype=F64))


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_bar(tqdm_installed, monkeypatch, capsys):
    import builtins
    import sys

    if not tqdm_installed:  # the plain-text bar used when tqdm is missing
        real_import = builtins.__import__

        def no_tqdm(name, *args, **kwargs):
            if name.startswith("tqdm"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_tqdm)
        monkeypatch.delitem(sys.modules, "tqdm.auto", raising=False)
    else:
        pytest.importorskip("tqdm")
    x = sample_ode(lambda x, t: -x, torch.ones(2, 2), uniform_times(4, 0.0, 1.0), progress=True)
    assert x.shape == (2, 2)
    err = capsys.readouterr().err
    assert "sample_ode" in err and "4/4" in err


def test_times_as_tensor_equal_times_as_list():
    x0 = torch.randn(3, 2)
    ts = uniform_times(5, 1.0, 0.2)
    a = sample_ode(lambda x, t: x * t, x0, ts, method="rk4")
    b = sample_ode(lambda x, t: x * t, x0, torch.tensor(ts, dtype=F64), method="rk4")
    assert torch.equal(a, b)


def test_per_row_seeds_give_batch_invariant_samplers():
    n = 12
    x0 = torch.randn(n, 3, 5)
    seeds = torch.arange(n) * 1000 + 17
    rows = slice(4, 9)
    runs = [
        lambda x, s: sample_sde(lambda x, t: -x, lambda x, t: 0.5, x, uniform_times(6, 0.0, 1.0), seed=s),
        lambda x, s: langevin(lambda x, t: -x, x, step_size=0.05, n_steps=6, seed=s),
        lambda x, s: sample_euler_ancestral(lambda x, sg: x / sg, x, karras_sigmas(5, 0.1, 5.0), seed=s),
        lambda x, s: sample_ddim(lambda x, t: 0.1 * x, x, uniform_times(5, 0.9, 0.1), vp_linear(), eta=1.0, seed=s),
    ]
    for run in runs:
        assert torch.equal(run(x0, seeds)[rows], run(x0[rows], seeds[rows]))


def test_loops_never_read_device_values():
    # On the meta device any host synchronisation (.item(), bool(tensor), .tolist()) raises:
    # the loops must only launch work.
    x0 = torch.empty(4, 3, device="meta")
    ts = uniform_times(3, 1.0, 0.1)
    field = (lambda x, t: -x * t)
    for method in ("euler", "heun", "midpoint", "rk4", "dpmpp_2m"):
        assert sample_ode(field, x0, ts, method=method, backend="reference").device.type == "meta"
    sample_sde(field, lambda x, t: torch.ones(4, 1, device="meta"), x0, ts, seed=torch.arange(4, device="meta"),
               backend="reference")
    sample_sde(field, lambda x, t: torch.ones(3, device="meta"), x0, ts, backend="reference")
    langevin(field, x0, step_size=0.1, n_steps=3, backend="reference")
    annealed_langevin(field, x0, [1.0, 0.5], n_steps_each=2, backend="reference")
    sample_euler_ancestral(field, x0, karras_sigmas(3, 0.1, 1.0), backend="reference")
    sample_ddim(field, x0, ts, vp_linear(), eta=0.5, backend="reference")


@pytest.mark.gpu
def test_sampling_loop_is_captured_in_a_cuda_graph():
    x0 = torch.randn(64, 128, device="cuda")
    seeds = torch.arange(64, device="cuda")
    ts = uniform_times(8, 1.0, 0.0)

    def run(x):
        x = sample_ode(lambda x, t: -x * t, x, ts, method="heun")
        return sample_sde(lambda x, t: -x, lambda x, t: 0.3, x, ts[::-1], seed=seeds)

    want = run(x0)
    static = x0.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(static)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static)
    graph.replay()
    torch.testing.assert_close(out, want)


# ----------------------------------------------------------------------------- bad input


def _field(x, t):
    return -x


X = torch.zeros(3, 2)
BAD_CALLS = [
    (lambda: sample_ode(_field, X, [0.0, 0.5, 0.4, 1.0]), ValueError,
     r"sample_ode: `times` must be strictly monotone.*times\[1\] = 0.5 is followed by times\[2\] = 0.4"),
    (lambda: sample_ode(_field, X, [1.0, 0.5, 0.5]), ValueError, r"`times` must be strictly monotone"),
    (lambda: sample_ode(_field, X, [0.0, math.nan]), ValueError, r"`times\[1\]` must be a finite number; got nan"),
    (lambda: sample_ode(_field, X, [0.0]), ValueError, r"`times` must have at least 2 entries; got 1"),
    (lambda: sample_ode(_field, X, torch.zeros(2, 2)), ValueError, r"`times` must be 1-D"),
    (lambda: sample_ode(_field, X, 5.0), TypeError, r"`times` must be a list, tuple or 1-D tensor"),
    (lambda: sample_ode(_field, X, [0.0, "1"]), TypeError, r"`times\[1\]` must be a finite number; got str"),
    (lambda: sample_ode(_field, X, [0.0, 1.0], method="rk45"), ValueError, r"`method` must be one of"),
    (lambda: sample_ode(_field, X, [0.0, 1.0], method="dpmpp_2m"), ValueError,
     r"'dpmpp_2m' needs `times` to be decreasing noise levels"),
    (lambda: sample_ode(None, X, [0.0, 1.0]), TypeError, r"`field` must be a callable"),
    (lambda: sample_ode(_field, X.numpy(), [0.0, 1.0]), TypeError, r"`x0` must be a torch.Tensor"),
    (lambda: sample_ode(_field, X.long(), [0.0, 1.0]), TypeError, r"`x0` must have dtype float32"),
    (lambda: sample_sde(_field, _field, X, [0.0, 1.0], seed=0.5), TypeError,
     r"sample_sde: `seed` must be an integer or an integer tensor of shape \(B,\); got float"),
    (lambda: sample_sde(_field, _field, X, [0.0, 1.0], seed=torch.arange(2)), ValueError,
     r"`seed` must be an integer or a tensor of shape \(B,\) = \(3,\); got shape \(2,\)"),
    (lambda: sample_sde(_field, _field, X, [0.0, 1.0], seed=torch.ones(3)), TypeError, r"got dtype torch.float32"),
    (lambda: sample_sde(_field, lambda x, t: torch.ones(4), X, [0.0, 1.0]), ValueError,
     r"`diffusion` must return a number or a tensor broadcastable to the state \(3, 2\); got shape \(4,\)"),
    (lambda: sample_sde(_field, lambda x, t: "1", X, [0.0, 1.0]), TypeError, r"`diffusion` must return"),
    (lambda: sample_sde(_field, _field, X, [0.0, 1.0], method="milstein"), ValueError, r"`method` must be one of"),
    (lambda: sample_euler_ancestral(_field, X, [1.0, 2.0]), ValueError, r"`sigmas` must be decreasing"),
    (lambda: sample_euler_ancestral(_field, X, [1.0, 0.0], eta=-1), ValueError,
     r"`eta` must be a finite number >= 0; got -1.0"),
    (lambda: sample_ddim(_field, X, [0.1, 0.9], vp_linear()), ValueError, r"`times` must decrease"),
    (lambda: langevin(_field, X, step_size=0.0, n_steps=3), ValueError,
     r"`step_size` must be a finite number > 0; got 0.0"),
    (lambda: langevin(_field, X, step_size=0.1, n_steps=-1), ValueError, r"`n_steps` must be >= 0; got -1"),
    (lambda: langevin(_field, X, step_size=0.1, n_steps=2.5), TypeError, r"`n_steps` must be an integer"),
    (lambda: annealed_langevin(_field, X, [0.1, 1.0]), ValueError, r"`sigmas` must be decreasing and positive"),
    (lambda: annealed_langevin(_field, X, [1.0, 0.0]), ValueError, r"`sigmas` must be decreasing and positive"),
    (lambda: annealed_langevin(_field, X, [1.0], eps=0.0), ValueError, r"`eps` must be a finite number > 0; got 0.0"),
    (lambda: log_prob_ode(_field, X, [0.0, 1.0], STD_NORMAL_2D, divergence="trace"), ValueError,
     r"`divergence` must be one of \('exact', 'hutchinson'\)"),
    (lambda: log_prob_ode(_field, X, [0.0, 1.0], STD_NORMAL_2D, n_probes=0), ValueError, r"`n_probes` must be >= 1"),
    (lambda: log_prob_ode(_field, X, [0.0, 1.0], STD_NORMAL_2D, method="dpmpp_2m"), ValueError,
     r"`method` must be one of"),
    (lambda: log_prob_ode(_field, X, [0.0, 1.0], "normal"), TypeError, r"`base` must be a torch.distributions"),
    (lambda: log_prob_ode(_field, X.double(), [0.0, 1.0], Independent(Normal(torch.zeros(3, 2), 1.0), 2)),
     ValueError, r"`base.log_prob\(z\)` must have shape \(B,\)"),
    (lambda: karras_sigmas(0, 0.1, 1.0), ValueError, r"`n` must be >= 1; got 0"),
    (lambda: karras_sigmas(5, 0.0, 1.0), ValueError, r"`sigma_min` must be a finite number > 0; got 0.0"),
    (lambda: karras_sigmas(5, 2.0, 1.0), ValueError, r"`sigma_max` must be > `sigma_min` \(2.0\); got 1.0"),
    (lambda: uniform_times(0, 0.0, 1.0), ValueError, r"`n_steps` must be >= 1"),
    (lambda: uniform_times(3, 1.0, 1.0), ValueError, r"`t_start` and `t_end` must differ"),
    (lambda: vp_linear(20.0, 0.1), ValueError, r"`beta_max` must be > `beta_min`"),
    (lambda: vp_cosine(-0.1), ValueError, r"`s` must be a finite number >= 0; got -0.1"),
    (lambda: convert_prediction(X, X, source="x0", target="epsilon", sigma=1.0), ValueError,
     r"`source` must be one of \('denoised', 'epsilon', 'score', 'velocity'\)"),
    (lambda: convert_prediction(X, X, source="denoised", target="epsilon", sigma=0.0), ValueError,
     r"divides by `sigma`, which is 0"),
    (lambda: convert_prediction(X, X, source="denoised", target="epsilon", sigma=-1.0), ValueError,
     r"`sigma` must be a finite number >= 0; got -1.0"),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_input(index):
    call, error, match = BAD_CALLS[index]
    with pytest.raises(error, match=match):
        call()
