"""Every family: the protocol (shapes, capabilities, trajectories), the pyprobtf.testing checks that
apply, seeded sampling, conditioning, bad input; family specifics (RealNVP through the fused op,
Diffusion's parameterisations and samplers against a closed-form denoiser, FlowMatching's OT pairing,
ContinuousFlow's maximum-likelihood training)."""

from __future__ import annotations

import math

import pytest
import torch

from pyprobtf import fit
from pyprobtf.data import toy
from pyprobtf.families import ContinuousFlow, Diffusion, FlowMatching, RealNVP
from pyprobtf.testing import check_transform
from pyprobtf.transform import ProbabilityTransform, Trajectory

# Small networks, briefly trained: enough for F to be far from the identity. Coarse solver grids
# keep the ODE families quick (the checks compare like with like).
FAST = {"ode_steps": 12, "log_prob_steps": 12}
FAMILIES = {
    "realnvp": lambda **kw: RealNVP(dim=2, layers=4, hidden=(32, 32), **kw),
    "diffusion-edm": lambda **kw: Diffusion(dim=2, hidden=(32, 32), sde_steps=48, **FAST, **kw),
    "diffusion-vp": lambda **kw: Diffusion(dim=2, hidden=(32, 32), parameterization="vp", sde_steps=48, **FAST,
                                           **kw),
    "flow_matching": lambda **kw: FlowMatching(dim=2, hidden=(32, 32), **FAST, **kw),
    "continuous_flow": lambda **kw: ContinuousFlow(dim=2, hidden=(16, 16), train_steps=4, **FAST, **kw),
}
ODE_FAMILIES = ("diffusion-edm", "diffusion-vp", "flow_matching", "continuous_flow")


def trained(name, steps=60, **kw):
    torch.manual_seed(0)
    model = FAMILIES[name](**kw)
    data = toy("8gaussians", 4000)
    fit(model, data, steps=steps, batch_size=128, lr=3e-3, progress=False)
    return model


@pytest.fixture(scope="module")
def models():
    return {name: trained(name) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_defaults_build_for_vector_data(name):
    cls = type(FAMILIES[name]())
    model = cls(dim=3)
    assert isinstance(model, ProbabilityTransform) and model.dim == 3
    z = model.base.sample((5,))
    assert z.shape == (5, 3)
    assert model.transform(z).shape == (5, 3)
    assert set(model.fit_defaults) >= {"steps", "batch_size", "lr"}
    assert model.capabilities == {"inverse", "ladj", "log_prob"}


@pytest.mark.parametrize("name", FAMILIES)
def test_testing_checks_pass(models, name):
    model = models[name].double()
    if name in ODE_FAMILIES:
        # F's log-determinant is the integral of the divergence along the path: compare it with the
        # Jacobian of the same discretisation (RK4 on the likelihood grid). Both converge as h^4 where
        # the field is smooth; ReLU kinks and the Fourier features of x leave ~1e-3 at 32 steps.
        model.ode_method, model.ode_steps, model.log_prob_steps = "rk4", 32, 32
        tol = 5e-3
    else:
        tol = None
    try:
        report = check_transform(model, n=16, rtol=tol, atol=tol, n_grid=40, density_atol=0.02)
        assert set(report) == {"invertibility_error", "log_det_error", "density_mass", "reproducible"}
    finally:
        model.float()
        if name in ODE_FAMILIES:
            model.ode_method, model.ode_steps, model.log_prob_steps = type(model)(dim=2).ode_method, 12, 12


@pytest.mark.parametrize("name", FAMILIES)
def test_protocol_shapes_and_trajectory(models, name):
    model = models[name]
    z = model.base.sample((7,))
    x = model.transform(z)
    traj = model.trajectory(z)
    assert isinstance(traj, Trajectory) and len(traj) >= 3
    assert traj.labels[0] == "z" and torch.equal(traj.states[0], z)
    assert torch.allclose(traj.states[-1], x, atol=1e-5)
    assert traj.stack().shape == (len(traj), 7, 2)
    lp = model.log_prob(x.detach())
    assert lp.shape == (7,) and torch.isfinite(lp).all()
    fine = {"steps": 48} if name in ODE_FAMILIES else {}  # the ODE families' 12-step default grids are coarse
    xi, ladj = model.transform_and_ladj(z, **fine)
    zi, iladj = model.inverse_and_ladj(xi.detach(), **fine)
    assert ladj.shape == iladj.shape == (7,)
    assert torch.allclose(ladj, -iladj, rtol=2e-3, atol=1e-2)
    assert torch.allclose(zi, z, atol=1e-2)
    assert model(z).shape == (7, 2)
    assert torch.isfinite(model.loss(toy("8gaussians", 32)))


@pytest.mark.parametrize("name", FAMILIES)
def test_as_distribution_samples_reparameterises_and_scores(models, name):
    model = models[name]
    dist = model.as_distribution()
    assert dist.sample((3, 4)).shape == (3, 4, 2)
    x = dist.rsample((5,))
    assert x.requires_grad
    x.sum().backward()  # the gradient reaches the parameters through F
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    assert dist.log_prob(x.detach().reshape(5, 1, 2)).shape == (5, 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_is_reproducible_from_a_seed(models, name):
    model = models[name]
    a, b = model.sample(20, seed=3), model.sample(20, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, model.sample(20, seed=4))
    torch.manual_seed(0)
    c = model.sample(20)
    torch.manual_seed(0)
    assert torch.equal(c, model.sample(20))


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_input_is_refused_with_the_expected_shape(models, name):
    model = models[name]
    cls = type(model).__name__
    with pytest.raises(ValueError, match=rf"{cls}\.log_prob: `x` must have shape \(batch, 2\) for event_shape=\(2,\); got \(4, 3\)"):
        model.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"`z` must have shape \(batch, 2\)"):
        model.transform(torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(torch.zeros(4, 2), context=torch.zeros(4, 1))
    with pytest.raises(ValueError, match="`n` must be >= 0"):
        model.sample(-1)
    with pytest.raises(ValueError, match="`dim` must be >= 1"):
        type(model)(dim=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_conditional_models_use_their_context(name):
    torch.manual_seed(0)
    model = FAMILIES[name](context_dim=1)
    # Two data sets told apart by the context: 0 -> moons, 1 -> the same shifted far right.
    x0, x1 = toy("moons", 2000), toy("moons", 2000, seed=1) + torch.tensor([6.0, 0.0])
    data = (torch.cat([x0, x1]), torch.cat([torch.zeros(2000, 1), torch.ones(2000, 1)]))
    fit(model, data, steps=150 if name != "continuous_flow" else 80, batch_size=128, lr=5e-3, progress=False)
    left = model.sample(200, seed=0, context=torch.zeros(1))
    right = model.sample(200, seed=0, context=torch.ones(200, 1))
    # With the context ignored the two sample sets would be equal (same seed); the slower-training
    # neural ODE only has to move the right way in its few steps, the others most of the way (6).
    assert float(right[:, 0].mean() - left[:, 0].mean()) > (0.3 if name == "continuous_flow" else 3.0)
    with pytest.raises(ValueError, match="`context` .* is required"):
        model.sample(3)
    with pytest.raises(ValueError, match=r"`context` must have shape \(3, 1\) or \(1,\) for context_dim=1; got \(3, 2\)"):
        model.log_prob(torch.zeros(3, 2), context=torch.zeros(3, 2))


# ----------------------------------------------------------------------------- RealNVP


def test_realnvp_uses_the_fused_op_and_matches_the_reference_backend(models):
    model = models["realnvp"]
    x = toy("8gaussians", 64)
    lp = model.log_prob(x)
    for block in model.blocks:
        for layer in block:
            if hasattr(layer, "backend"):
                layer.backend = "reference"
    try:
        assert torch.allclose(model.log_prob(x), lp, atol=1e-5)
    finally:
        for block in model.blocks:
            for layer in block:
                if hasattr(layer, "backend"):
                    layer.backend = "auto"


def test_realnvp_initialises_actnorm_from_data_and_permutes_in_higher_dimensions():
    model = RealNVP(dim=5, layers=4)
    x = torch.randn(500, 5) * 3 + 7
    model.initialize(x)
    z = model.inverse(x)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-4) and torch.allclose(z.std(0), torch.ones(5), atol=1e-3)
    assert any(type(layer).__name__ == "Permutation" for block in model.blocks for layer in block)
    assert RealNVP(dim=1).log_prob(torch.zeros(3, 1)).shape == (3,)
    with pytest.raises(ValueError, match="`permutation` must be"):
        RealNVP(dim=3, permutation="shuffle")


# ----------------------------------------------------------------------------- Diffusion


def _gaussian_oracle(model: Diffusion, s: float):
    """Replace the network by the exact denoiser of N(0, s^2 I) data."""
    if model.parameterization == "edm":
        def denoise(x, t, context=None):
            t = t.reshape(-1, 1) if isinstance(t, torch.Tensor) else t
            return x * s**2 / (s**2 + t**2)
        model.denoise = denoise
    else:
        def eps(x, t, context=None):
            a, sg = model.alpha(t), model.sigma(t)
            return sg * x / (a * a * s * s + sg * sg)
        model.predict_eps = eps


@pytest.mark.parametrize("parameterization", ["edm", "vp"])
def test_diffusion_solvers_with_the_exact_denoiser(parameterization):
    s = 0.7
    model = Diffusion(dim=2, parameterization=parameterization).double()
    _gaussian_oracle(model, s)
    x = torch.randn(500, 2, dtype=torch.float64) * s
    true = torch.distributions.Normal(0.0, s).log_prob(x).sum(1)
    assert (model.log_prob(x) - true).abs().max() < 2e-3
    for method, tol in (("ode", 0.02), ("sde", 0.03), ("langevin", 0.12)):
        samples = model.sample(20_000, seed=0, method=method)
        assert (samples.std(0) - s).abs().max() < tol, (method, samples.std(0))
    traj = model.trajectory(torch.randn(4, 2, dtype=torch.float64), method="langevin", steps=5)
    assert len(traj) == len(traj.labels) == 1 + 1 + 6


def test_diffusion_forward_noising_is_closed_form():
    vp = Diffusion(dim=2, parameterization="vp")
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones(3))
    assert math.isclose(vp.alpha(0.5) ** 2, math.exp(-(0.1 * 0.5 + 0.5 * 19.9 * 0.25)), rel_tol=1e-12)
    edm = Diffusion(dim=2)
    assert edm.sigma(3.0) == 3.0 and edm.alpha(3.0) == 1.0 and edm.base_scale == 80.0
    times = edm.times(8, True)
    assert times[0] == 80.0 and times[-1] == 0.002 and all(a > b for a, b in zip(times, times[1:]))
    vtimes = vp.times(8, True)
    assert vtimes[0] == 1.0 and vtimes[-1] == 1e-3 and all(a > b for a, b in zip(vtimes, vtimes[1:]))


def test_diffusion_measures_sigma_data_and_checks_its_options():
    model = Diffusion(dim=2)
    model.initialize(torch.randn(1000, 2) * 3)
    assert abs(float(model.sigma_data) - 3) < 0.2
    fixed = Diffusion(dim=2, sigma_data=0.5)
    fixed.initialize(torch.randn(1000, 2) * 3)
    assert float(fixed.sigma_data) == 0.5
    with pytest.raises(ValueError, match="`parameterization` must be one of"):
        Diffusion(dim=2, parameterization="ve")
    with pytest.raises(ValueError, match="`method` must be one of"):
        model.sample(2, method="ddim")
    with pytest.raises(ValueError, match="`sigma_min` must be below `sigma_max`"):
        Diffusion(dim=2, sigma_min=5.0, sigma_max=1.0)


# ----------------------------------------------------------------------------- FlowMatching


@pytest.mark.parametrize("ot", ["exact", "sinkhorn"])
def test_flow_matching_ot_pairs_shorten_the_paths(ot):
    if ot == "exact":
        pytest.importorskip("scipy")
    torch.manual_seed(0)
    model = FlowMatching(dim=2, hidden=(16,), ot=ot)
    x = toy("8gaussians", 256)
    z = torch.randn(256, 2)
    paired = model.pair(z, x)
    assert (paired - x).square().sum() < 0.6 * (z - x).square().sum()
    if ot == "exact":
        assert sorted(paired[:, 0].tolist()) == sorted(z[:, 0].tolist())  # a permutation of the draws
    assert torch.isfinite(model.loss(x))


def test_flow_matching_refuses_ot_with_context_and_bad_options():
    with pytest.raises(ValueError, match="minibatch OT .* use ot=None"):
        FlowMatching(dim=2, ot="exact", context_dim=1)
    with pytest.raises(ValueError, match=r"`ot` must be one of \(None, 'exact', 'sinkhorn'\); got 'greedy'"):
        FlowMatching(dim=2, ot="greedy")
    with pytest.raises(ValueError, match="`ode_method` must be one of"):
        FlowMatching(dim=2, ode_method="dopri5")


# ----------------------------------------------------------------------------- ContinuousFlow


def test_continuous_flow_learns_by_maximum_likelihood():
    torch.manual_seed(0)
    model = ContinuousFlow(dim=2, hidden=(32, 32), train_steps=4, log_prob_steps=16)
    data = toy("8gaussians", 4000)
    with torch.no_grad():
        before = -float(model.log_prob(data[:300]).mean())
    fit(model, data, steps=100, batch_size=128, lr=1e-2, progress=False)
    with torch.no_grad():
        after = -float(model.log_prob(data[:300]).mean())
    assert after < before - 0.5, (before, after)
