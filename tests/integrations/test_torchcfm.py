"""pyprobtf.integrations.torchcfm against torchcfm itself, on the same inputs."""

import pytest
import torch

cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
ot = pytest.importorskip("ot")
ours = pytest.importorskip("pyprobtf.integrations.torchcfm")

# Float32 rounding of (1 - t) x0 + t x1 + sigma eps evaluated in another order.
ATOL, RTOL = 2e-6, 2e-6

MATCHERS = [
    ("ConditionalFlowMatcher", {"sigma": 0.0}),
    ("ConditionalFlowMatcher", {"sigma": 0.3}),
    ("TargetConditionalFlowMatcher", {"sigma": 0.1}),
    ("SchrodingerBridgeConditionalFlowMatcher", {"sigma": 0.7}),
]


def _peer_location_and_flow(peer, x0, x1, t, eps):
    """torchcfm's (xt, ut) for given pairs, t and noise (its own sample_xt and compute_conditional_flow)."""
    xt = peer.sample_xt(x0, x1, t, eps)
    return xt, peer.compute_conditional_flow(x0, x1, t, xt)


@pytest.mark.parametrize("name,kwargs", MATCHERS)
@pytest.mark.parametrize("shape", [(64, 2), (8, 3, 5, 7)])
def test_location_and_flow_match_torchcfm(name, kwargs, shape):
    ours_fm, peer_fm = getattr(ours, name)(**kwargs), getattr(cfm, name)(**kwargs)
    assert isinstance(ours_fm, getattr(cfm, name))
    x0, x1 = torch.randn(shape), torch.randn(shape) + 2.0
    t = torch.rand(shape[0]).clamp(0.01, 0.99)
    if "Schrodinger" in name:  # compare the fused math on fixed pairs (the OT pairing is tested below)
        ours_fm.ot_sampler.sample_plan = lambda a, b: (a, b)
    torch.manual_seed(5)
    t_out, xt, ut, eps = ours_fm.sample_location_and_conditional_flow(x0, x1, t, return_noise=True)
    torch.manual_seed(5)
    assert torch.equal(eps, torch.randn_like(x0))  # the noise torchcfm would draw from the same seed
    xt_ref, ut_ref = _peer_location_and_flow(peer_fm, x0, x1, t, eps)
    assert t_out is t
    torch.testing.assert_close(xt, xt_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ut, ut_ref, atol=ATOL * 10, rtol=RTOL * 10)  # ut divides by (1 - (1-s) t)


def test_same_seed_same_outputs_as_torchcfm_without_t():
    x0, x1 = torch.randn(32, 4), torch.randn(32, 4)
    torch.manual_seed(3)
    a = ours.ConditionalFlowMatcher(sigma=0.2).sample_location_and_conditional_flow(x0, x1)
    torch.manual_seed(3)
    b = cfm.ConditionalFlowMatcher(sigma=0.2).sample_location_and_conditional_flow(x0, x1)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n,dim", [(2, 3), (16, 2), (64, 5), (128, 2)])
def test_auction_assignment_cost_equals_pot_emd(n, dim):
    gen = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen)
    cost = (torch.cdist(a.double(), b.double()) ** 2)
    perm = ours.auction_assignment(cost)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    ours_cost = cost[torch.arange(n), perm].sum().item() / n
    plan = ot.emd(ot.unif(n), ot.unif(n), cost.numpy())
    pot_cost = float((plan * cost.numpy()).sum())
    spread = float(cost.max() - cost.min())
    assert ours_cost <= pot_cost + 1e-7 * spread / n + 1e-12
    assert ours_cost >= pot_cost - 1e-9 * spread  # cannot beat the optimum


def test_exact_ot_matcher_pairs_come_from_the_optimal_plan():
    n = 32
    x0, x1 = torch.randn(n, 2), torch.randn(n, 2) * 0.5 + 3.0
    fm = ours.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    plan = fm.ot_sampler.get_map(x0, x1)
    assert plan.device == x0.device
    torch.testing.assert_close(plan.sum(0), torch.full((n,), 1.0 / n, dtype=torch.float64))
    pot_plan = ot.emd(ot.unif(n), ot.unif(n), (torch.cdist(x0, x1) ** 2).double().numpy())
    cost = (torch.cdist(x0, x1) ** 2).double()
    assert abs(float((plan * cost).sum()) - float((torch.as_tensor(pot_plan) * cost).sum())) < 1e-6
    t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1, torch.zeros(n))
    # at t = 0 (sigma 0) xt is the source point and ut = x1 - x0 joins it to its partner in the plan
    partner = plan.argmax(1)
    rows = torch.cdist(xt, x0).argmin(1)
    torch.testing.assert_close(xt + ut, x1[partner[rows]])


def test_sinkhorn_plan_matches_pot():
    n = 24
    x0, x1 = torch.randn(n, 3), torch.randn(n, 3)
    cost = (torch.cdist(x0.double(), x1.double()) ** 2)
    reg = 2 * 0.7**2
    plan = ours.sinkhorn_log(cost, reg)
    ref = ot.sinkhorn(ot.unif(n), ot.unif(n), cost.numpy(), reg)
    torch.testing.assert_close(plan, torch.as_tensor(ref), atol=1e-8, rtol=1e-5)


def test_guided_returns_labels_of_the_drawn_pairs():
    x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
    y0, y1 = torch.arange(16), torch.arange(16) + 100
    fm = ours.ExactOptimalTransportConditionalFlowMatcher()
    t, xt, ut, ya, yb = fm.guided_sample_location_and_conditional_flow(x0, x1, y0, y1, t=torch.zeros(16))
    torch.testing.assert_close(xt, x0[ya])
    torch.testing.assert_close(xt + ut, x1[yb - 100])


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="method"):
        ours.OTPlanSampler("partial")
