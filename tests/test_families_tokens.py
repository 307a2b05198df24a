"""The token families (issue 7): Autoregressive (F applied to uniforms through sample_logits) and VQVAE.

They need pyprobtf.ops.sample_logits / filter_logits (issue 5) and pyprobtf.nn.VectorQuantizer
(issue 4); the tests skip, saying so, on a build without them.
"""

import itertools
import math

import pytest
import torch

import pyprobtf
from pyprobtf import fit
from pyprobtf.data import toy
from pyprobtf.families import Autoregressive, Tempered
from pyprobtf.testing import (
    check_density_normalization,
    check_invertibility,
    check_log_det,
    check_sample_reproducible,
    check_transform,
)

HAS_SAMPLING = hasattr(pyprobtf.ops, "sample_logits") and hasattr(pyprobtf.ops, "filter_logits")
try:
    import pyprobtf.nn  # noqa: F401

    HAS_VQ = hasattr(pyprobtf.nn, "VectorQuantizer")
except ImportError:
    HAS_VQ = False

needs_sampling = pytest.mark.skipif(not HAS_SAMPLING, reason="needs pyprobtf.ops.sample_logits/filter_logits (issue 5)")
needs_vq = pytest.mark.skipif(not (HAS_VQ and HAS_SAMPLING),
                              reason="needs pyprobtf.nn.VectorQuantizer (issue 4) and sample_logits (issue 5)")


def _ar(dim=2, **kw):
    kw.setdefault("d_model", 16)
    kw.setdefault("heads", 2)
    kw.setdefault("layers", 1)
    return Autoregressive(dim=dim, **kw)


def _trained_ar(steps=20, **kw):
    torch.manual_seed(0)
    model = _ar(**kw)
    fit(model, toy("8gaussians", 4000, seed=1), steps=steps, batch_size=128, progress=False)
    return model


# ----------------------------------------------------------------------------- Autoregressive, continuous


@needs_sampling
def test_ar_is_an_exact_flow_on_its_box():
    model = _trained_ar(bins=16).double()
    low, high = model.low, model.low + model.vocab * model.width
    # the density is piecewise constant on a grid of bins: the midpoint rule on a grid 4x finer is exact
    bounds = [(float(a), float(b)) for a, b in zip(low, high)]
    mass = check_density_normalization(model, bounds=bounds, n_grid=64, atol=1e-9)
    assert abs(mass - 1) < 1e-9
    check_invertibility(model, x=toy("8gaussians", 64, seed=3).double())
    check_log_det(model, n=16)  # against the autograd Jacobian of F(u): -log p(x)
    x, ladj = model.transform_and_ladj(model.base.sample((32,)))
    assert torch.allclose(ladj, -model.log_prob(x), atol=1e-9)
    report = check_transform(model, density_bounds=bounds, n_grid=32, density_atol=1e-9)
    assert set(report) == {"invertibility_error", "log_det_error", "density_mass", "reproducible"}


@needs_sampling
def test_ar_filtered_density_is_normalised_and_is_what_sample_draws():
    model = _trained_ar(bins=8).double()
    bounds = [(float(a), float(a + 8 * w)) for a, w in zip(model.low, model.width)]
    for options in ({"temperature": 0.5}, {"top_p": 0.6}, {"top_k": 3, "temperature": 1.5}, {"min_p": 0.3}):
        tempered = Tempered(model, **options)
        mass = check_density_normalization(tempered, bounds=bounds, n_grid=32, atol=1e-9)
        assert abs(mass - 1) < 1e-9
        # the bins sampled follow the filtered probabilities (and never a filtered-out bin)
        x = model.sample(20000, seed=1, **options)
        assert torch.isfinite(model.log_prob(x, **options)).all()
        tokens, _ = model.tokenize(x)
        first = torch.bincount(tokens[:, 0], minlength=8).double() / x.shape[0]
        lp = model._log_probs(model.next_logits(tokens[:1, :0])[:, -1].double(), model._options("t", options))
        assert torch.allclose(first, lp.exp().squeeze(0), atol=0.012)


@needs_sampling
def test_ar_sampling_is_batch_invariant_and_is_sample_logits_with_per_row_seeds():
    model = _trained_ar()
    a = model.sample(7, seed=3)
    b = model.sample(20, seed=3)
    assert torch.allclose(a, b[:7], atol=1e-6)
    assert check_sample_reproducible(model)
    # the same tokens as sample_logits' own seeded path: key = seed, counter = row * dim + coordinate
    n = 50
    x = model.sample(n, seed=11)
    tokens, _ = model.tokenize(x)
    drawn = torch.zeros(n, 2, dtype=torch.long)
    with torch.no_grad():
        for j in range(2):
            logits = model.next_logits(drawn[:, :j])[:, -1].double()
            drawn[:, j] = pyprobtf.ops.sample_logits(logits, seed=torch.full((n,), 11),
                                                     offset=torch.arange(n) * 2 + j)
    assert torch.equal(drawn, tokens)


@needs_sampling
def test_ar_trajectory_draws_one_coordinate_at_a_time():
    model = _trained_ar()
    u = model.base.sample((10,))
    traj = model.trajectory(u)
    assert traj.labels == ["z", "x_1", "x"]
    x = model.transform(u)
    assert torch.equal(traj.states[0], u)
    assert torch.allclose(traj.states[1][:, 0], x[:, 0]) and torch.allclose(traj.states[-1], x)
    # the undrawn coordinate is its uniform spread over the box
    box = model.low[1] + u[:, 1] * model.vocab * model.width[1]
    assert torch.allclose(traj.states[1][:, 1], box, atol=1e-5)


@needs_sampling
def test_ar_greedy_and_top_k_one_take_the_mode_bin():
    model = _trained_ar()
    u = model.base.sample((200,))
    tokens, _ = model.tokenize(model.transform(u, top_k=1))
    greedy, _ = model.tokenize(model.transform(u, temperature=0.0))
    assert torch.equal(tokens, greedy)
    assert tokens[:, 0].unique().numel() == 1  # the first coordinate's mode bin, whatever u


@needs_sampling
def test_ar_loss_is_the_nll_and_outside_points_have_no_density():
    model = _trained_ar()
    x = toy("8gaussians", 300, seed=4)
    with torch.no_grad():
        assert abs(float(model.loss(x)) + float(model.log_prob(x).mean())) < 1e-4
    far = torch.tensor([[100.0, 0.0], [0.0, 0.0]])
    lp = model.log_prob(far)
    assert lp[0] == -math.inf and torch.isfinite(lp[1])
    with pytest.raises(ValueError, match="`x` must lie in the model's box"):
        model.inverse(far)
    assert torch.isfinite(model.loss(far))  # training clamps outside values into the edge bins


def test_ar_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`bins` must be >= 1"):
        Autoregressive(dim=2, bins=0)
    with pytest.raises(ValueError, match="`d_model` must be a multiple of `heads`"):
        Autoregressive(dim=2, d_model=30, heads=4)
    with pytest.raises(ValueError, match="`bounds` must be finite with low < high"):
        Autoregressive(dim=2, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="`bounds` is for continuous data"):
        Autoregressive(dim=2, vocab_size=4, bounds=(0, 1))
    with pytest.raises(ValueError, match=r"`top_p` must be a finite number in \(0, 1\]"):
        Autoregressive(dim=2, top_p=0.0)
    model = _ar()
    with pytest.raises(RuntimeError, match="the bins are not set yet"):
        model.transform(torch.rand(3, 2))
    model.initialize(toy("8gaussians", 100))
    with pytest.raises(ValueError, match=r"`z` must hold uniforms in \[0, 1\)"):
        model.transform(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"`z` must have shape \(batch, 2\)"):
        model.transform(torch.rand(3, 3))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['top_q'\]"):
        model.sample(3, top_q=0.5)
    with pytest.raises(ValueError, match="`temperature`"):
        model.sample(3, temperature=-1.0)
    with pytest.raises(ValueError, match="`data` must have shape"):
        fit(_ar(), torch.randn(10, 3), steps=1, progress=False)


# ----------------------------------------------------------------------------- Autoregressive, tokens


@needs_sampling
def test_ar_tokens_pmf_sums_to_one_and_sampling_matches_it():
    torch.manual_seed(0)
    model = _ar(dim=2, vocab_size=4)
    data = torch.randint(0, 4, (2000, 2)).float()
    data[:, 1] = (data[:, 0] + (torch.rand(2000) < 0.3).float()) % 4  # a dependence to learn
    fit(model, data, steps=30, batch_size=128, progress=False)
    assert model.capabilities == frozenset()  # a pmf, not a density
    every = torch.tensor(list(itertools.product(range(4), repeat=2))).float()
    for options in ({}, {"temperature": 0.5, "top_k": 2}):
        with torch.no_grad():
            pmf = model.log_prob(every, **options).double().exp()
        assert abs(float(pmf.sum()) - 1) < 1e-5
        x = model.sample(20000, seed=0, **options)
        assert torch.equal(x, x.round())
        freq = torch.zeros(16, dtype=torch.float64)
        freq.index_add_(0, (x[:, 0] * 4 + x[:, 1]).long(), torch.ones(20000, dtype=torch.float64))
        assert torch.allclose(freq / 20000, pmf, atol=0.012)
    with pytest.raises(ValueError, match=r"`x` must hold integer tokens in \[0, 4\)"):
        model.loss(torch.tensor([[0.5, 1.0]]))
    assert model.log_prob(torch.tensor([[4.0, 0.0]]))[0] == -math.inf
    with pytest.raises(NotImplementedError, match="inverse"):
        model.inverse(every)


# ----------------------------------------------------------------------------- VQVAE


@needs_vq
@pytest.mark.parametrize("prior", ["autoregressive", "uniform"])
def test_vqvae_trains_samples_and_reports_its_codebook(prior):
    from pyprobtf.families import VQVAE

    torch.manual_seed(0)
    model = VQVAE(dim=2, prior=prior, hidden=(32, 32), num_codes=16, prior_d_model=16, prior_heads=2,
                  prior_layers=1)
    data = toy("8gaussians", 4000, seed=1)
    result = fit(model, data, steps=30, batch_size=128, progress=False)
    assert math.isfinite(result.final_loss)
    assert model.base.sample((3,)).shape == (3, model.slots)
    report = check_transform(model)
    assert report == {"reproducible": 1.0}
    usage = model.codebook_usage(data)
    assert 1 <= usage["codes_used"] <= 16 and 1 <= usage["perplexity"] <= usage["codes_used"] + 1e-9
    assert usage["usage"] == usage["codes_used"] / 16
    err = model.reconstruction_error(data)
    with torch.no_grad():
        assert abs(err - float((model.reconstruct(data) - data).square().mean())) < 1e-6
    idx = model.encode(data[:10])
    assert idx.shape == (10, model.slots) and idx.dtype == torch.long
    assert torch.allclose(model.decode_indices(idx), model.reconstruct(data[:10]))
    u = model.base.sample((5,))
    if prior == "uniform":
        assert torch.equal(model.transform(u), model.decode_indices((u * 16).floor().long()))
    else:
        # the prior's sampling options reach sample_logits: top_k=1 draws the prior's mode, whatever u
        assert model.transform(u, top_k=1).unique(dim=0).shape[0] == 1
        assert Tempered(model, temperature=0.0).sample(4, seed=1).unique(dim=0).shape[0] == 1
    traj = model.trajectory(u)
    assert traj.labels == ["z", "x"] and torch.equal(traj.states[1], model.transform(u))


@needs_vq
def test_vqvae_bad_input_names_the_argument():
    from pyprobtf.families import VQVAE

    with pytest.raises(ValueError, match="`prior` must be one of"):
        VQVAE(dim=2, prior="gaussian")
    with pytest.raises(ValueError, match="`num_codes` must be >= 1"):
        VQVAE(dim=2, num_codes=0)
    model = VQVAE(dim=2)
    with pytest.raises(ValueError, match=r"`z` must hold uniforms in \[0, 1\)"):
        model.transform(torch.full((2, model.slots), 1.5))
    with pytest.raises(ValueError, match="`indices` must be a tensor of shape"):
        model.decode_indices(torch.zeros(3, model.slots + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="`data` must have shape"):
        fit(model, torch.randn(10, 5), steps=1, progress=False)
