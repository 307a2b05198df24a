"""The ProbabilityTransform protocol (composition, learned priors, distributions) and the
pyprobtf.testing checkers users run on their own transforms (they must catch broken ones)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from pyprobtf import Chain, ProbabilityTransform, fit
from pyprobtf.data import toy
from pyprobtf.families import FlowMatching, RealNVP
from pyprobtf.testing import (
    check_density_normalization,
    check_invertibility,
    check_log_det,
    check_op_against_reference,
    check_sample_reproducible,
    check_transform,
    points,
)


class Affine(ProbabilityTransform):
    """x = a * z + b per coordinate: the smallest complete family (for testing the protocol)."""

    capabilities = frozenset({"inverse", "ladj", "log_prob"})

    def __init__(self, dim, a=2.0, b=1.0, *, wrong_ladj=0.0, wrong_inverse=0.0, **kw):
        super().__init__(dim, **kw)
        self.log_a = torch.nn.Parameter(torch.full((dim,), math.log(a)))
        self.b = torch.nn.Parameter(torch.full((dim,), b))
        self.wrong_ladj, self.wrong_inverse = wrong_ladj, wrong_inverse

    def transform_and_ladj(self, z, context=None):
        z = self.check_x(z, "transform_and_ladj", "z")
        return z * self.log_a.exp() + self.b, self.log_a.sum().expand(z.shape[0]) + self.wrong_ladj

    def inverse_and_ladj(self, x, context=None):
        x = self.check_x(x, "inverse_and_ladj")
        z = (x - self.b) * (-self.log_a).exp() + self.wrong_inverse * x.square()
        return z, -self.log_a.sum().expand(x.shape[0]) - self.wrong_ladj

    def loss(self, batch):
        return -self.log_prob(batch).mean()


def gaussian_log_prob(x, loc, scale):
    return torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)


# ----------------------------------------------------------------------------- the protocol


def test_a_minimal_family_gets_log_prob_sample_and_distribution_from_the_protocol():
    model = Affine(2, a=2.0, b=1.0).double()
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.allclose(model.log_prob(x), gaussian_log_prob(x, 1.0, 2.0))
    assert torch.allclose(model.inverse(model.transform(x)), x)
    dist = model.as_distribution()
    assert torch.allclose(dist.log_prob(x), gaussian_log_prob(x, 1.0, 2.0))
    assert dist.sample((2, 3)).shape == (2, 3, 2)
    traj = model.trajectory(x)
    assert traj.labels == ["z", "x"] and len(traj) == 2
    fit(model, torch.randn(4000, 2) * 3 - 2, steps=300, lr=0.05, progress=False)
    assert torch.allclose(model.log_a.exp(), torch.full((2,), 3.0, dtype=torch.float64), atol=0.3)


def test_chain_composes_maps_log_determinants_and_trajectories():
    torch.manual_seed(0)
    first, second = Affine(2, a=2.0, b=1.0), Affine(2, a=0.5, b=-3.0)
    chain = Chain(first, second)
    z = torch.randn(6, 2)
    x, ladj = chain.transform_and_ladj(z)
    assert torch.allclose(x, (z * 2 + 1) * 0.5 - 3)
    assert torch.allclose(ladj, torch.zeros(6), atol=1e-6)  # log 2 + log 0.5 per coordinate
    assert torch.allclose(chain.log_prob(x), gaussian_log_prob(x, -2.5, 1.0), atol=1e-5)
    traj = chain.trajectory(z)
    assert traj.labels == ["z", "0:x", "1:x"] and torch.allclose(traj.states[-1], x)
    # Families chain too: two RealNVPs, log_prob = base(z) + both inverse log-determinants.
    nvp = Chain(RealNVP(dim=2, layers=2, hidden=(8,)), RealNVP(dim=2, layers=2, hidden=(8,)))
    fit(nvp, toy("moons", 1000), steps=30, batch_size=64, progress=False)
    x = toy("moons", 5, seed=1)
    y, l2 = nvp.steps[1].inverse_and_ladj(x)
    z, l1 = nvp.steps[0].inverse_and_ladj(y)
    assert torch.allclose(nvp.log_prob(x), nvp.base.log_prob(z) + l1 + l2, atol=1e-5)
    with pytest.raises(ValueError, match=r"every transform must have event_shape=\(2,\)"):
        Chain(Affine(2), Affine(3))


def test_chain_without_inverse_has_no_log_prob():
    class MapOnly(Affine):
        capabilities = frozenset()

        def transform(self, z, context=None):
            return z.square()

    chain = Chain(Affine(2), MapOnly(2))
    assert chain.capabilities == frozenset()
    assert chain.transform(torch.zeros(3, 2)).shape == (3, 2)
    with pytest.raises(NotImplementedError, match="Chain has no log_prob"):
        chain.log_prob(torch.zeros(3, 2))


def test_a_family_can_use_another_as_its_learned_prior():
    torch.manual_seed(0)
    prior = FlowMatching(dim=2, hidden=(16,), ode_steps=4, log_prob_steps=4)
    model = RealNVP(dim=2, layers=2, hidden=(8,), base=prior)
    assert isinstance(model.base, torch.distributions.Distribution)
    x = toy("moons", 8)
    z, ladj = model.inverse_and_ladj(x)
    assert torch.allclose(model.log_prob(x), prior.log_prob(z) + ladj, atol=1e-5)
    assert model.sample(5, seed=0).shape == (5, 2) and torch.equal(model.sample(5, seed=0), model.sample(5, seed=0))
    # The prior's parameters train with the flow (maximum likelihood reaches them).
    fit(model, toy("moons", 500), steps=2, batch_size=32, progress=False)
    assert any(p.grad is not None for p in prior.parameters())
    with pytest.raises(ValueError, match=r"`base` must have event_shape=\(2,\)"):
        RealNVP(dim=2, base=FlowMatching(dim=3))
    with pytest.raises(TypeError, match="`base` must be None, a torch Distribution or a ProbabilityTransform"):
        RealNVP(dim=2, base="normal")


def test_a_fixed_distribution_as_base():
    base = torch.distributions.Independent(torch.distributions.Uniform(torch.zeros(2), torch.ones(2)), 1)
    model = Affine(2, a=2.0, b=0.0, base=base)
    assert (model.sample(100, seed=0) <= 2).all()
    with pytest.raises(ValueError, match=r"event shape \(2,\)"):
        Affine(2, base=torch.distributions.Normal(0.0, 1.0))


# ----------------------------------------------------------------------------- the checkers


def test_checkers_pass_a_correct_transform_and_return_what_they_measured():
    model = Affine(2, a=1.5, b=0.3).double()
    report = check_transform(model)
    assert report["invertibility_error"] < 1e-12 and report["log_det_error"] < 1e-12
    assert abs(report["density_mass"] - 1) < 1e-3 and report["reproducible"] == 1.0
    one_d = Affine(1, a=0.3, b=2.0).double()
    assert abs(check_density_normalization(one_d, bounds=(-1.0, 5.0)) - 1) < 1e-6


def test_checkers_catch_a_wrong_log_determinant():
    bad = Affine(2, wrong_ladj=0.01).double()
    with pytest.raises(AssertionError, match=r"log\|det dF/dz\| vs the autograd Jacobian"):
        check_log_det(bad)
    with pytest.raises(AssertionError, match="density integrates to 0.99"):
        check_density_normalization(bad, atol=1e-3)


def test_checkers_catch_a_wrong_inverse():
    with pytest.raises(AssertionError, match=r"inverse\(transform\(z\)\) vs z"):
        check_invertibility(Affine(2, wrong_inverse=1e-3).double())


@given(z=points(2, max_batch=8))
def test_points_strategy_feeds_the_checkers(z):
    assert z.dtype == torch.float64 and z.shape[1] == 2 and 1 <= z.shape[0] <= 8
    check_invertibility(Affine(2).double(), z)


def test_sample_reproducibility_checker_catches_unseeded_sampling():
    class Unseeded(Affine):
        def sample(self, n, *, seed=None, **cond):
            return torch.randn(n, 2)

    with pytest.raises(AssertionError, match="differs between two calls"):
        check_sample_reproducible(Unseeded(2))
    assert check_sample_reproducible(Affine(2))


def test_op_checker_runs_every_backend_against_the_reference():
    from pyprobtf import reference
    from pyprobtf.ops import affine_coupling

    x, shift, scale = torch.randn(3, 17, 5).unbind(0)
    checked = check_op_against_reference(
        lambda *a, backend: affine_coupling(*a, scale_fn="softclamp", backend=backend),
        lambda *a: reference.affine_coupling(*a, "softclamp", 2.0, False), x, shift, scale,
        backends=["reference", "cpp"], rtol=1e-5, atol=1e-5,
    )
    assert checked == ["reference", "cpp"]
    # Without `backends`, the op is called once as it is (a user's own op and reference).
    assert check_op_against_reference(torch.sin, lambda v: v.sin(), x) == ["default"]
    assert "cpp" in check_op_against_reference(
        lambda *a, backend: affine_coupling(*a, backend=backend),
        lambda *a: reference.affine_coupling(*a, "exp", 2.0, False), x, shift, scale, backends="available")
    with pytest.raises(AssertionError, match="output 0"):
        check_op_against_reference(lambda v: v.sin() + 1e-3, torch.sin, x)


@pytest.mark.parametrize("name", ["RealNVP", "FlowMatching", "Diffusion", "ContinuousFlow", "VAE", "Autoregressive"])
def test_log_prob_of_an_empty_batch_is_empty(name):
    from pyprobtf import families

    model = getattr(families, name)(dim=2)
    with torch.no_grad():
        assert model.log_prob(torch.zeros(0, 2)).shape == (0,)
