"""The decoder and adversarial families (issue 7): Autoencoder, VAE, GAN, particle models, Tempered.

Fast tests: each family trains for a few steps; what is checked does not depend on
how well it learned (shapes, identities that hold for any weights, the protocol's
checks, errors). The 60-second acceptance runs are in test_families_acceptance.py.
"""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from pyprobtf import fit
from pyprobtf.data import toy
from pyprobtf.families import GAN, VAE, Autoencoder, DiscriminatorFlow, RealNVP, ScoreGAN, Tempered
from pyprobtf.families.autoencoder import sliced_wasserstein_to_normal
from pyprobtf.families.tempered import TemperedNormal, chi2_cdf, chi2_ppf
from pyprobtf.testing import check_density_normalization, check_sample_reproducible, check_transform

LATENT_FAMILIES = [Autoencoder, VAE, GAN, DiscriminatorFlow, ScoreGAN]


def _quick_fit(model, name="8gaussians", steps=20, batch_size=64, n=2000):
    return fit(model, toy(name, n, seed=1), steps=steps, batch_size=batch_size, progress=False, seed=0)


def _small(family, dim=2, **kw):
    """A small instance (fast to train) with the family's other defaults."""
    width = {"hidden": (32, 32)}
    if family is ScoreGAN:
        width["score_hidden"] = (32, 32)
    if family is DiscriminatorFlow:
        width.update(steps=4, particles=32)
    return family(dim=dim, **width, **kw)


# ----------------------------------------------------------------------------- the protocol, every family


@pytest.mark.parametrize("family", LATENT_FAMILIES, ids=lambda f: f.__name__)
def test_defaults_build_for_any_dim(family):
    for dim in (1, 2, 5):
        model = family(dim=dim)
        z = model.base.sample((3,))
        assert z.shape == (3, model.latent_dim)
        assert model.transform(z).shape == (3, dim)
        assert model.sample(4, seed=0).shape == (4, dim)


@pytest.mark.parametrize("family", LATENT_FAMILIES, ids=lambda f: f.__name__)
def test_trains_samples_and_passes_the_checks(family):
    torch.manual_seed(0)
    model = _small(family)
    result = _quick_fit(model)
    assert result.steps == 20 and math.isfinite(result.final_loss)
    # bounds: the VAE's density (decoder noise included) reaches beyond its decoder means
    report = check_transform(model, n=16, density_atol=0.05, density_bounds=[(-4.5, 4.5), (-4.5, 4.5)], n_grid=90)
    assert report["reproducible"] == 1.0
    # the standardisation was fitted to the data: samples come back in data units
    assert model.scaler.fitted and float(model.scaler.scale.mean()) > 1.0
    traj = model.trajectory(model.base.sample((5,)))
    assert traj.labels[0] == "z" and traj.labels[-1] == "x"
    assert traj.states[-1].shape == (5, 2)
    assert torch.allclose(traj.states[-1], model.transform(traj.states[0]), atol=1e-5)


@pytest.mark.parametrize("family", LATENT_FAMILIES, ids=lambda f: f.__name__)
def test_sampling_is_reproducible_and_seed_independent_of_global_rng(family):
    model = _small(family)
    _quick_fit(model, steps=5)
    a = model.sample(32, seed=7)
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(model.sample(32, seed=7), a)
    assert not torch.equal(model.sample(32, seed=8), a)


@pytest.mark.parametrize("family", LATENT_FAMILIES, ids=lambda f: f.__name__)
def test_bad_input_names_the_argument(family):
    model = _small(family)
    with pytest.raises(ValueError, match="`data` must have shape"):
        fit(model, torch.randn(100, 3), steps=2, progress=False)
    bad = toy("8gaussians", 256, seed=0)
    bad[5, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 0.*NaN or infinite values, in data rows \[5"):
        fit(_small(family), bad, steps=3, batch_size=256, progress=False)
    with pytest.raises(ValueError, match="`z` must have shape"):
        model.transform(torch.randn(4, model.latent_dim + 1))
    with pytest.raises(TypeError, match="`z` must be a torch.Tensor"):
        model.transform([[0.0, 0.0]])
    with pytest.raises(ValueError, match="`n` must be >= 0"):
        model.sample(-1)
    with pytest.raises(ValueError, match="`dim` must be >= 1"):
        family(dim=0)
    with pytest.raises(ValueError, match="`hidden`"):
        family(dim=2, hidden=(0,))
    with pytest.raises(ValueError, match="`activation`"):
        family(dim=2, activation="swishy")


@pytest.mark.parametrize("family", [Autoencoder, VAE, GAN, ScoreGAN], ids=lambda f: f.__name__)
def test_latent_dim_and_wrong_base(family):
    model = family(dim=5, latent_dim=3)
    assert model.latent_dim == 3 and model.sample(2, seed=0).shape == (2, 5)
    with pytest.raises(ValueError, match="`latent_dim` must be >= 1"):
        family(dim=2, latent_dim=0)
    if family is not Autoencoder:  # the autoencoder's base is always the fitted Gaussian
        with pytest.raises(ValueError, match=r"`base` must have dim=latent_dim=3"):
            family(dim=5, latent_dim=3, base=RealNVP(dim=2))
        with pytest.raises(ValueError, match=r"event shape \(latent_dim,\) = \(3,\)"):
            family(dim=5, latent_dim=3, base=Independent(Normal(torch.zeros(2), torch.ones(2)), 1))


# ----------------------------------------------------------------------------- Autoencoder


def test_autoencoder_base_is_the_gaussian_of_the_codes():
    torch.manual_seed(0)
    model = Autoencoder(dim=2, hidden=(32, 32), latent_momentum=0.9)
    data = toy("moons", 4000, seed=0)
    _quick_fit(model, "moons", steps=30)
    tracked = model.base
    assert isinstance(tracked, MultivariateNormal)
    model.fit_latent(data)
    codes = model.encode(data)
    exact = model.base
    assert torch.allclose(exact.loc, codes.mean(0), atol=1e-5)
    assert torch.allclose(exact.covariance_matrix, torch.cov(codes.T, correction=0), atol=1e-4)
    # the moving averages of the last training batches are close to the exact moments
    assert torch.allclose(tracked.loc, exact.loc, atol=0.2 * float(exact.stddev.max()))
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.fit_latent(data[:1])


@pytest.mark.parametrize("denoising,corruption", [(None, 0.0), ("gaussian", 0.3), ("mask", 0.5)])
def test_autoencoder_corruptions(denoising, corruption):
    model = Autoencoder(dim=4, denoising=denoising, corruption=corruption)
    y = torch.ones(2000, 4)
    c = model.corrupt(y)
    if denoising is None:
        assert torch.equal(c, y)
    elif denoising == "gaussian":
        assert abs(float((c - y).std()) - corruption) < 0.02
    else:
        assert set(c.unique().tolist()) <= {0.0, 1.0} and abs(float((c == 0).float().mean()) - corruption) < 0.03
    _quick_fit(Autoencoder(dim=2, denoising=denoising, corruption=corruption, hidden=(16,)), steps=3)


def test_autoencoder_bad_options():
    with pytest.raises(ValueError, match="`denoising` must be one of"):
        Autoencoder(dim=2, denoising="blur")
    with pytest.raises(ValueError, match=r"`corruption` must be a finite number in \[0, 1\)"):
        Autoencoder(dim=2, denoising="mask", corruption=1.0)
    with pytest.raises(ValueError, match="`latent_penalty`"):
        Autoencoder(dim=2, latent_penalty=-1)


def test_sliced_wasserstein_to_normal_is_small_for_normal_codes():
    torch.manual_seed(0)
    near = float(sliced_wasserstein_to_normal(torch.randn(4000, 3), 64))
    far = float(sliced_wasserstein_to_normal(3 * torch.randn(4000, 3) + 1, 64))
    assert near < 0.01 < 1.0 < far


# ----------------------------------------------------------------------------- VAE


def test_vae_elbo_is_below_the_importance_weighted_bound():
    torch.manual_seed(0)
    model = VAE(dim=2, hidden=(32, 32))
    _quick_fit(model, steps=40)
    x = toy("8gaussians", 500, seed=3)
    with torch.no_grad():
        elbo = float(model.elbo(x, n_samples=20, seed=0).mean())
        iw1 = float(model.log_prob(x, n_samples=1, seed=0).mean())
        iw100 = float(model.log_prob(x, n_samples=100, seed=0).mean())
        loss = float(model.loss(x))
    # K = 1 is the ELBO (in expectation); the bound grows with K; the loss is -ELBO
    tol = 0.02 * abs(elbo) + 0.05  # Monte Carlo error
    assert abs(iw1 - elbo) < tol
    assert iw100 > elbo + tol
    assert abs(-loss - elbo) < tol


    # exp(IW bound) is an unbiased estimate of p(x), so it integrates to 1 up to Monte Carlo noise. That noise
    # has no finite variance when q(z|x) is narrower than the posterior, so the normalising constants are checked
    # with q(z|x) = p(z) (a zeroed encoder: mean 0, log-std 0) and a trained decoder.
    with torch.no_grad():
        last = model.encoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 6 * math.atanh(1 / 6), 6 * math.atanh(1 / 6)]))
        model.decoder_log_std.fill_(math.log(0.3))
    check_density_normalization(_ImportanceWeighted(model, 128), bounds=[(-6, 6), (-6, 6)], n_grid=72, atol=0.02)


class _ImportanceWeighted:
    """The VAE's importance-weighted log-density with K draws and fresh noise per call (for quadrature)."""

    def __init__(self, model, k):
        self.model, self.k, self.dim, self.dtype, self.device = model, k, model.dim, model.dtype, model.device

    def log_prob(self, x):
        return self.model.log_prob(x, n_samples=self.k, seed=None)


def test_vae_closed_form_kl_matches_the_monte_carlo_kl():
    torch.manual_seed(0)
    analytic = VAE(dim=2, hidden=(32, 32))
    _quick_fit(analytic, steps=10)
    # The same weights with the prior given as a Distribution: the KL term is then estimated by sampling.
    sampled = VAE(dim=2, hidden=(32, 32), base=Independent(Normal(torch.zeros(2), torch.ones(2)), 1))
    sampled.load_state_dict(analytic.state_dict())
    assert analytic.standard_normal_base and not sampled.standard_normal_base
    x = toy("8gaussians", 2000, seed=5)
    with torch.no_grad():
        a = float(analytic.elbo(x, n_samples=8, seed=1).mean())
        b = float(sampled.elbo(x, n_samples=8, seed=1).mean())
    assert abs(a - b) < 0.05


def test_vae_with_a_learned_prior_trains_the_prior():
    torch.manual_seed(0)
    model = VAE(dim=2, prior="realnvp", hidden=(32, 32), prior_hidden=(16, 16), prior_layers=2)
    assert isinstance(model.prior, RealNVP) and not model.standard_normal_base
    before = [p.detach().clone() for p in model.prior.parameters()]
    _quick_fit(model, steps=10)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.prior.parameters()))
    assert changed > len(before) // 2
    assert torch.isfinite(model.elbo(toy("8gaussians", 50, seed=2))).all()
    with pytest.raises(ValueError, match="`prior='realnvp'` or `base`, not both"):
        VAE(dim=2, prior="realnvp", base=RealNVP(dim=2))
    with pytest.raises(ValueError, match="`prior` must be one of"):
        VAE(dim=2, prior="vampprior")


def test_vae_options():
    model = VAE(dim=3, decoder_std=0.5)
    assert torch.allclose(model.decoder_log_std, torch.full((3,), math.log(0.5)))
    assert not any(p is model.decoder_log_std for p in model.parameters())
    with pytest.raises(ValueError, match="`decoder_std` must be 'learned' or a positive number"):
        VAE(dim=2, decoder_std="fixed")
    with pytest.raises(ValueError, match="`n_samples` must be >= 1"):
        VAE(dim=2).log_prob(torch.zeros(2, 2), n_samples=0)
    noisy = VAE(dim=2).sample(500, seed=0, noise=True)
    clean = VAE(dim=2).sample(500, seed=0)
    assert float((noisy - clean).std()) > 0.05


# ----------------------------------------------------------------------------- GAN


@pytest.mark.parametrize("loss", ["non-saturating", "minimax"])
@pytest.mark.parametrize("gp", [0.0, 1.0])
def test_gan_players_get_only_their_own_gradients(loss, gp):
    """One objective for fit, but D's gradient is L_D's alone and G's is L_G's alone."""
    torch.manual_seed(0)
    model = GAN(dim=2, hidden=(16, 16), loss=loss, gradient_penalty=gp)
    x = toy("8gaussians", 64, seed=0)
    model.initialize(x)
    torch.manual_seed(1)
    model.loss(x).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # The same step by hand: the D loss with the fake batch detached, the G loss with D frozen.
    torch.manual_seed(1)
    y = model.scaler(x)
    fake = model.generator(model.base.sample((64,)))
    d = model.discriminator
    loss_d = torch.nn.functional.softplus(-d(y)).mean() + torch.nn.functional.softplus(d(fake.detach())).mean()
    if gp:
        yy = y.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(yy).sum(), yy, create_graph=True)
        loss_d = loss_d + 0.5 * gp * g.square().sum(1).mean()
    grads_d = torch.autograd.grad(loss_d, list(d.parameters()))
    logit = d(fake).squeeze(1)
    loss_g = -torch.nn.functional.softplus(logit).mean() if loss == "minimax" else \
        torch.nn.functional.softplus(-logit).mean()
    grads_g = torch.autograd.grad(loss_g, list(model.generator.parameters()))
    for (name, _), g in zip(d.named_parameters(), grads_d):
        assert torch.allclose(got["discriminator." + name], g, atol=1e-6), name
    for (name, _), g in zip(model.generator.named_parameters(), grads_g):
        assert torch.allclose(got["generator." + name], g, atol=1e-6), name
    with pytest.raises(ValueError, match="`loss` must be one of"):
        GAN(dim=2, loss="wasserstein")


def test_gan_learned_prior_gets_gradients_through_the_generator():
    model = GAN(dim=2, hidden=(16,), base=RealNVP(dim=2, layers=2, hidden=(8,)))
    x = toy("8gaussians", 64, seed=0)
    model.initialize(x)
    model.loss(x).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.prior.parameters())


# ----------------------------------------------------------------------------- particle models


def test_discriminator_flow_pool_moves_one_step_per_training_step():
    torch.manual_seed(0)
    model = DiscriminatorFlow(dim=2, steps=3, particles=8, hidden=(16,), step_size=0.5, max_step=None)
    x = toy("8gaussians", 64, seed=0)
    model.initialize(x)
    model.train()
    model.loss(x)
    assert bool(model.pool_ready)
    pool = model.pool.clone()
    model.loss(x)  # same weights: stage k+1 is now stage k moved by step k's logit gradient
    for k in range(2):
        heads = torch.full((8,), k)
        grad = torch.autograd.functional.vjp(lambda v: model.discriminator(v, heads), pool[k], torch.ones(8))[1]
        assert torch.allclose(model.pool[k + 1], pool[k] + 0.5 * grad, atol=1e-5)
    # F is the flow: K steps from z, each along the discriminator's gradient at that step
    z = torch.randn(5, 2)
    traj = model.trajectory(z)
    assert len(traj) == 4 and traj.labels == ["z", "step 1", "step 2", "x"]
    y = z
    for k in range(3):
        y = y + model.velocity(y, k)
    assert torch.allclose(model.scaler.inverse(y), traj.states[-1], atol=1e-5)
    # max_step bounds every move
    model.max_step = 1e-3
    assert float(model.velocity(10 * torch.randn(50, 2), 1).norm(dim=1).max()) <= 1e-3 * 1.01  # (y + move) - y rounds
    with pytest.raises(ValueError, match="`steps` must be >= 1"):
        DiscriminatorFlow(dim=2, steps=0)
    with pytest.raises(ValueError, match="`step_size`"):
        DiscriminatorFlow(dim=2, step_size=0.0)
    with pytest.raises(ValueError, match="`max_step`"):
        DiscriminatorFlow(dim=2, max_step=-1.0)


def test_discriminator_flow_rsample_is_differentiable():
    model = DiscriminatorFlow(dim=2, steps=2, hidden=(8,))
    x = model.as_distribution().rsample((4,))
    x.sum().backward()
    assert any(p.grad is not None for p in model.discriminator.parameters())


def test_score_gan_generator_moves_towards_the_data_score():
    """The generator's loss gradient on its samples is the denoisers' difference (DMD), normalised."""
    torch.manual_seed(0)
    model = ScoreGAN(dim=2, hidden=(16,), score_hidden=(16,))
    x = toy("8gaussians", 64, seed=0)
    model.initialize(x)
    loss = model.loss(x)
    assert torch.isfinite(loss)
    loss.backward()
    for part in (model.generator, model.data_score, model.fake_score):
        assert all(p.grad is not None for p in part.parameters())


# ----------------------------------------------------------------------------- Tempered


def test_chi2_quantiles():
    q = torch.tensor([1e-6, 0.1, 0.5, 0.9, 0.999999])
    for k in (1, 2, 7, 64):
        assert torch.allclose(chi2_cdf(chi2_ppf(q, k), k), q.double(), rtol=1e-9, atol=1e-12)
    assert abs(float(chi2_ppf(torch.tensor(0.5), 2)) - 2 * math.log(2)) < 1e-10  # exponential median


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.7), (1.3, 0.5)])
def test_tempered_normal_is_a_normalised_density_with_the_right_samples(temperature, top_p):
    loc = torch.tensor([0.5, -1.0], dtype=torch.float64)
    tril = torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    dist = TemperedNormal(loc, scale_tril=tril, temperature=temperature, top_p=top_p)
    mass = check_density_normalization(dist, bounds=[(-5, 6), (-7, 5)], n_grid=400, atol=2e-3)
    assert abs(mass - 1) < 2e-3
    torch.manual_seed(0)
    z = dist.sample((20000,))
    eps = torch.linalg.solve_triangular(tril, ((z - loc) / temperature).T, upper=False).T
    r_sq = eps.square().sum(1)
    # the kept ball holds everything, and a share q of the draws lies in the ball of base mass q * top_p
    assert float(r_sq.max()) <= float(chi2_ppf(torch.tensor(top_p), 2)) + 1e-9
    inner = float(chi2_ppf(torch.tensor(0.5 * top_p), 2))
    assert abs(float((r_sq <= inner).double().mean()) - 0.5) < 0.015
    assert torch.isfinite(dist.log_prob(z)).all()


def test_tempered_models():
    torch.manual_seed(0)
    flow = RealNVP(dim=2, layers=2, hidden=(8,))
    cold = Tempered(flow, temperature=0.5, top_p=0.8)
    check_transform(cold.double(), density_atol=0.03)
    # a Gaussian base scaled by T: the standard deviation of a linear map's samples halves
    gan = GAN(dim=2, hidden=(8,))
    z_std = Tempered(gan, temperature=0.5).base.sample((20000,)).std(0)
    assert torch.allclose(z_std, torch.full((2,), 0.5), atol=0.02)
    # a learned prior is tempered recursively (its own base is)
    vae = VAE(dim=2, prior="realnvp", prior_layers=1, prior_hidden=(8,))
    base = Tempered(vae, temperature=0.5).base
    assert isinstance(base.model, Tempered) and base.model.temperature == 0.5
    assert Tempered(vae, temperature=0.5).sample(3, seed=0).shape == (3, 2)
    # the autoencoder's fitted full-covariance Gaussian
    assert isinstance(Tempered(Autoencoder(dim=3), top_p=0.5).base, TemperedNormal)
    with pytest.raises(ValueError, match="`top_k` applies to token families"):
        Tempered(gan, top_k=5)
    with pytest.raises(ValueError, match="`temperature`"):
        Tempered(gan, temperature=0.0)
    with pytest.raises(ValueError, match="`top_p`"):
        Tempered(gan, top_p=0.0)
    with pytest.raises(TypeError, match="`model` must be a ProbabilityTransform"):
        Tempered(torch.nn.Linear(2, 2))
    assert check_sample_reproducible(Tempered(gan, temperature=0.7, top_p=0.9))
