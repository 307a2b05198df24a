"""pyprobtf.data (toy sets and their densities), pyprobtf.metrics and pyprobtf.ot."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyprobtf import metrics, ot
from pyprobtf.data import TOY_DATASETS, toy, toy_log_prob, toy_modes

# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sets_are_seeded_float32_and_distinct(name):
    a, b, c = toy(name, 1000, seed=0), toy(name, 1000, seed=0), toy(name, 1000, seed=1)
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert toy(name, 0).shape == (0, 2)


def test_moons_are_the_two_half_circles_with_noise_0_1():
    x = toy("moons", 200_000).double()
    # Residuals from each arc (radius 1, centred at (0, 0), upper half, and at (1, 0.5), lower half),
    # away from the arcs' ends: Gaussian noise of std 0.1 in the normal direction.
    for centre, lower in (((0.0, 0.0), False), ((1.0, 0.5), True)):
        d = x - torch.tensor(centre, dtype=torch.float64)
        angle = torch.atan2(d[:, 1], d[:, 0]).remainder(2 * math.pi)
        if lower:
            angle = angle - math.pi
        residual = d.norm(dim=1) - 1
        near = (angle > 0.3) & (angle < math.pi - 0.3) & (residual.abs() < 0.4)
        assert abs(float(residual[near].mean())) < 0.005
        assert abs(float(residual[near].std()) - 0.1) < 0.005
    assert abs(float(x[:, 0].mean()) - 0.5) < 0.01  # the two moons are equally likely


def test_eight_gaussians_and_checkerboard_match_their_densities():
    centres, std = toy_modes("8gaussians")
    assert centres.shape == (8, 2) and torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    x = toy("8gaussians", 100_000)
    share = metrics.mode_coverage(x, centres)
    assert (share - 0.125).abs().max() < 0.01
    assert abs(metrics.mode_quality(x, centres, std) - (1 - math.exp(-4.5))) < 0.003
    board = toy("checkerboard", 100_000)
    lp = toy_log_prob("checkerboard", board)
    assert torch.equal(lp, torch.full_like(lp, -math.log(8)))  # every point is on a black square
    counts = torch.histogramdd(board.double(), bins=[4, 4], range=[-2.0, 2.0, -2.0, 2.0]).hist
    black = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]] * 2, dtype=torch.bool)
    assert (counts[~black] == 0).all() and ((counts[black] / 100_000 - 0.125).abs() < 0.01).all()


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_toy_densities_integrate_to_one(name):
    n = 400
    axis = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 8 - 4  # midpoints over [-4, 4]
    grid = torch.cartesian_prod(axis, axis)
    mass = float(toy_log_prob(name, grid).exp().sum()) * (8 / n) ** 2
    assert abs(mass - 1) < 1e-3
    assert toy_log_prob(name, grid.float()).dtype == torch.float32


def test_unknown_data_set_lists_the_choices():
    with pytest.raises(ValueError, match="unknown data set 'swissroll'; choose one of moons, circles, 8gaussians, "
                                         "checkerboard, spirals, pinwheel"):
        toy("swissroll", 10)
    with pytest.raises(ValueError, match="choose one of 8gaussians, checkerboard"):
        toy_log_prob("moons", torch.zeros(1, 2))
    with pytest.raises(ValueError, match="`n` must be a non-negative int"):
        toy("moons", -1)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        toy_log_prob("8gaussians", torch.zeros(3))


# ----------------------------------------------------------------------------- metrics


def _brute_energy(x, y):
    def mean_dist(a, b, exclude_diagonal):
        d = [float((a[i] - b[j]).norm()) for i in range(len(a)) for j in range(len(b))
             if not (exclude_diagonal and i == j)]
        return sum(d) / len(d)

    return 2 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True)


@given(n=st.integers(2, 9), m=st.integers(2, 9), d=st.integers(1, 3), seed=st.integers(0, 1000))
def test_energy_distance_and_mmd_match_their_definitions(n, m, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(m, d, generator=gen, dtype=torch.float64) + 0.5
    assert abs(metrics.energy_distance(x, y) - _brute_energy(x, y)) < 1e-10
    h = 0.7

    def k(a, b):
        return math.exp(-float((a - b).square().sum()) / (2 * h * h))

    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert abs(metrics.mmd(x, y, bandwidth=h, squared=True) - (kxx + kyy - 2 * kxy)) < 1e-10


def test_sample_metrics_separate_equal_from_shifted_distributions():
    x, y = toy("8gaussians", 3000, seed=0), toy("8gaussians", 3000, seed=1)
    shifted = y + torch.tensor([0.5, 0.0])
    assert abs(metrics.energy_distance(x, y)) < 0.01 < metrics.energy_distance(x, shifted)
    assert metrics.mmd(x, y) < 0.05 < metrics.mmd(x, shifted)
    # Sliced W2 of a shift a in d dimensions: sqrt(E_u (u.a)^2) = |a| / sqrt(d).
    sw_shift = metrics.sliced_wasserstein2(x, x + torch.tensor([0.6, 0.0]), n_projections=2000)
    assert abs(sw_shift - 0.6 / math.sqrt(2)) < 0.01
    assert metrics.sliced_wasserstein2(x, y) < 0.1
    assert metrics.sliced_wasserstein2(x, y[:1000]) < 0.1  # unequal sizes: quantile grid


def test_nll_of_a_known_distribution():
    base = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    x = base.sample((50_000,))
    assert abs(metrics.nll(base, x, batch_size=7000) - (1 + math.log(2 * math.pi))) < 0.02
    assert metrics.nll(lambda v: torch.zeros(v.shape[0]), x) == 0.0


def test_mode_metrics_on_a_chosen_sample():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.1, 0.0], [9.0, 0.0], [10.0, 0.5], [5.1, 0.0]])
    assert torch.equal(metrics.mode_coverage(samples, centres), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert metrics.mode_quality(samples, centres, std=0.2, k=3) == 0.5  # 0.1 and 0.5 are within 0.6
    with pytest.raises(ValueError, match="`centres` must have shape"):
        metrics.mode_coverage(samples, torch.zeros(3))
    with pytest.raises(ValueError, match="same dimension"):
        metrics.energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))


# ----------------------------------------------------------------------------- ot


def _cost(a, b, idx):
    return float((a[idx] - b).square().sum())


@given(n=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_exact_pairing_is_optimal(n, seed):
    pytest.importorskip("scipy")
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen)
    idx = ot.exact_pairing(a, b)
    assert sorted(idx.tolist()) == list(range(n))
    best = min(_cost(a, b, torch.tensor(p)) for p in itertools.permutations(range(n)))
    assert _cost(a, b, idx) <= best + 1e-5


def test_exact_pairing_without_scipy_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match=r'pyprobtf\[ot\].*ot="sinkhorn"'):
        ot.exact_pairing(torch.zeros(3, 2), torch.ones(3, 2))


def test_sinkhorn_plan_has_uniform_marginals_and_approaches_the_exact_pairing():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    plan = ot.sinkhorn_plan(ot.squared_distances(a, b), reg=0.05, max_iters=5000, tol=1e-8)
    # POT's last update makes the row sums exact; the column sums meet the tolerance.
    assert torch.allclose(plan.sum(1), torch.full((64,), 1 / 64, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(plan.sum(0), torch.full((64,), 1 / 64, dtype=torch.float64), rtol=1e-8)
    idx = ot.sinkhorn_pairing(a, b, reg=0.01, max_iters=2000, seed=0)
    random_cost = _cost(a, b, torch.arange(64))
    pytest.importorskip("scipy")
    exact = _cost(a, b, ot.exact_pairing(a, b))
    assert exact <= _cost(a, b, idx) < exact + 0.25 * (random_cost - exact)
    assert torch.equal(idx, ot.sinkhorn_pairing(a, b, reg=0.01, max_iters=2000, seed=0))


def test_ot_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="one shape"):
        ot.sinkhorn_pairing(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="`reg` must be positive"):
        ot.sinkhorn_plan(torch.zeros(3, 3), reg=0)


def test_digits_score_orders_real_blurred_and_noise():
    from pyprobtf.data import digits
    from pyprobtf.metrics import digits_classes, digits_score

    real = digits("test")
    noise = torch.rand(500, 64, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(real.reshape(-1, 1, 8, 8), 3, 1, 1, count_include_pad=False)
    r, n, b = digits_score(real), digits_score(noise), digits_score(blurred)
    assert 6.0 < r["score"] < 7.5 and r["coverage"] > 0.98
    assert n["score"] < 2.2 and b["score"] < 2.6
    assert n["mmd"] > b["mmd"] > r["mmd"]
    assert abs(sum(r["classes"]) - 1) < 1e-9
    # One class only: no coverage, score 1 at most.
    ones = real[digits_classes(real) == 1]
    assert digits_score(ones)["coverage"] < 0.45
    with pytest.raises(ValueError, match="64 pixels"):
        digits_score(torch.rand(4, 10))
