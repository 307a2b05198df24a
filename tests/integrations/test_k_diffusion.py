"""pyprobtf.integrations.k_diffusion against k-diffusion's own samplers, on the same inputs and model."""

import pytest
import torch
from _peers import k_diffusion_sampling

from pyprobtf.integrations import k_diffusion as ours

# Float32 rounding: coefficients in float64 on the host vs k-diffusion's float32 tensor arithmetic,
# accumulated over the steps. Worst seen: about 2e-6 relative to the state's scale.
ATOL, RTOL = 2e-5, 2e-5

MU, S = 0.5, 0.8  # data ~ N(MU, S^2) per coordinate: its denoiser is exact and the sampled law is known


def gaussian_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, S^2), x = x0 + sigma eps; sigma is k-diffusion's (B,) tensor."""
    s2 = (sigma * sigma).reshape(-1, *([1] * (x.dim() - 1)))
    return (S * S * x + s2 * MU) / (S * S + s2)


def _sigmas(n=12):
    return k_diffusion_sampling().get_sigmas_karras(n, 0.02, 20.0)


DETERMINISTIC = [
    ("sample_euler", {}),
    ("sample_heun", {}),
    ("sample_dpm_2", {}),
    ("sample_lms", {}),
    ("sample_lms", {"order": 2}),
    ("sample_dpmpp_2m", {}),
    ("sample_euler_ancestral", {"eta": 0.0}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
]


@pytest.mark.parametrize("name,kwargs", DETERMINISTIC)
@pytest.mark.parametrize("shape", [(16, 5), (2, 3, 8, 8)])
def test_deterministic_samplers_match_k_diffusion(name, kwargs, shape):
    kd = k_diffusion_sampling()
    sigmas = _sigmas()
    x = torch.randn(shape) * sigmas[0]
    seen_ours, seen_peer = [], []
    peer = getattr(kd, name)(gaussian_denoiser, x, sigmas, disable=True, callback=seen_peer.append, **kwargs)
    out = getattr(ours, name)(gaussian_denoiser, x, sigmas, disable=True, callback=seen_ours.append, **kwargs)
    torch.testing.assert_close(out, peer, atol=ATOL, rtol=RTOL)
    assert [d["i"] for d in seen_ours] == [d["i"] for d in seen_peer]
    for a, b in zip(seen_ours, seen_peer):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        torch.testing.assert_close(a["denoised"], b["denoised"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(torch.as_tensor(a["sigma_hat"]), torch.as_tensor(b["sigma_hat"]))


def test_extra_args_and_sigma_rows_reach_the_model():
    calls = []

    def model(x, sigma, *, scale):
        calls.append((sigma.shape, scale))
        return gaussian_denoiser(x, sigma) * scale

    x = torch.randn(3, 4) * 20.0
    ours.sample_euler(model, x, _sigmas(4), extra_args={"scale": 0.5})
    assert calls and all(c == (torch.Size([3]), 0.5) for c in calls)


@pytest.mark.parametrize("name,kwargs", [("sample_euler_ancestral", {}), ("sample_euler_ancestral", {"eta": 0.5}),
                                         ("sample_dpmpp_2m_sde", {}), ("sample_dpmpp_2m_sde", {"solver_type": "heun"})])
def test_given_noise_sampler_gives_k_diffusion_numbers(name, kwargs):
    kd = k_diffusion_sampling()
    sigmas = _sigmas(8)
    x = torch.randn(4, 6) * sigmas[0]
    noises = torch.randn(len(sigmas), 4, 6)

    def noise_sampler_factory():
        it = iter(noises)
        return lambda sigma, sigma_next: next(it)

    peer = getattr(kd, name)(gaussian_denoiser, x, sigmas, disable=True, noise_sampler=noise_sampler_factory(),
                             **kwargs)
    out = getattr(ours, name)(gaussian_denoiser, x, sigmas, disable=True, noise_sampler=noise_sampler_factory(),
                              **kwargs)
    torch.testing.assert_close(out, peer, atol=ATOL, rtol=RTOL)


STOCHASTIC = [
    ("sample_euler_ancestral", {}),
    ("sample_dpmpp_2m_sde", {}),
    ("sample_euler", {"s_churn": 5.0}),
    ("sample_heun", {"s_churn": 5.0, "s_tmin": 0.05, "s_tmax": 10.0}),
    ("sample_dpm_2", {"s_churn": 5.0}),
]


def _euler_ancestral_moments(sigmas):
    """Exact mean and variance of the Euler-ancestral chain on the Gaussian problem (its steps are linear).

    x - D = sigma^2 (x - MU) / (S^2 + sigma^2), so a step is x' = x + k (x - MU) + sigma_up xi with
    k = (sigma_down - sigma) sigma / (S^2 + sigma^2), starting from N(0, sigmas[0]^2).
    """
    mean, var = 0.0, sigmas[0] ** 2
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        down, up = ours.get_ancestral_step(sigma, sigma_next)
        k = (down - sigma) * sigma / (S * S + sigma * sigma)
        mean, var = mean + k * (mean - MU), (1 + k) ** 2 * var + up * up
    return mean, var


def test_euler_ancestral_has_the_exact_chain_moments():
    sigmas = _sigmas(16)
    mean, var = _euler_ancestral_moments(sigmas.double().tolist())
    x = torch.randn(8192, 4) * sigmas[0]
    out = ours.sample_euler_ancestral(gaussian_denoiser, x, sigmas, disable=True, seed=5)
    # 32768 values: standard errors of mean and variance about 0.004 and 0.003 here; bounds at ~5 of them
    assert abs(out.mean().item() - mean) < 0.02
    assert abs(out.var().item() - var) < 0.02
    assert abs(var - S * S) > 0.1  # the chain's own law (16 steps), not the data's: the check has teeth


@pytest.mark.parametrize("name,kwargs", STOCHASTIC)
def test_stochastic_samplers_match_k_diffusion_marginals(name, kwargs):
    """Final mean and variance over 16384 draws: the same as k-diffusion's (same grid, same model)."""
    kd = k_diffusion_sampling()
    sigmas = _sigmas(16)
    x = torch.randn(4096, 4) * sigmas[0]
    peer = getattr(kd, name)(gaussian_denoiser, x, sigmas, disable=True, **kwargs)
    out = getattr(ours, name)(gaussian_denoiser, x, sigmas, disable=True, seed=11, **kwargs)
    # 16384 values each: standard error of a mean difference < 0.01, of a variance difference < 0.01
    assert abs(out.mean().item() - peer.mean().item()) < 0.04
    assert abs(out.var().item() - peer.var().item()) < 0.04
    deterministic = ours.sample_euler(gaussian_denoiser, x, sigmas, disable=True)
    assert (out - deterministic).abs().mean() > 0.05  # noise was added


@pytest.mark.parametrize("name", ["sample_euler_ancestral", "sample_dpmpp_2m_sde"])
def test_seeded_runs_reproduce_and_per_sample_seeds_are_batch_invariant(name):
    sampler = getattr(ours, name)
    sigmas = _sigmas(6)
    x = torch.randn(6, 2, 4, 4) * sigmas[0]
    a = sampler(gaussian_denoiser, x, sigmas, disable=True, seed=3)
    b = sampler(gaussian_denoiser, x, sigmas, disable=True, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, sampler(gaussian_denoiser, x, sigmas, disable=True, seed=4))
    seeds = torch.arange(100, 106)
    full = sampler(gaussian_denoiser, x, sigmas, disable=True, seed=seeds)
    part = sampler(gaussian_denoiser, x[[4, 1]], sigmas, disable=True, seed=seeds[[4, 1]])
    torch.testing.assert_close(part, full[[4, 1]], atol=1e-6, rtol=1e-6)
    torch.manual_seed(9)
    c = sampler(gaussian_denoiser, x, sigmas, disable=True)
    torch.manual_seed(9)
    assert torch.equal(c, sampler(gaussian_denoiser, x, sigmas, disable=True))


def test_unet_denoiser_matches_k_diffusion():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()

    def denoiser(x, sigma):  # EDM-style wrapper: c_skip x + c_out F(c_in x, c_noise)
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (1 + s * s) + s / (1 + s * s).sqrt() * unet(x / (1 + s * s).sqrt(), sigma.log() / 4).sample

    kd = k_diffusion_sampling()
    sigmas = _sigmas(6)
    x = torch.randn(2, 2, 8, 8) * sigmas[0]
    for name in ("sample_heun", "sample_dpmpp_2m"):
        with torch.no_grad():
            peer = getattr(kd, name)(denoiser, x, sigmas, disable=True)
            out = getattr(ours, name)(denoiser, x, sigmas, disable=True)
        torch.testing.assert_close(out, peer, atol=1e-4, rtol=1e-4)


def test_bad_seed_names_the_argument():
    sigmas = _sigmas(3)
    with pytest.raises(TypeError, match="seed"):
        ours.sample_euler_ancestral(gaussian_denoiser, torch.randn(2, 3), sigmas, disable=True, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        ours.sample_euler_ancestral(gaussian_denoiser, torch.randn(2, 3), sigmas, disable=True,
                                    seed=torch.arange(3))
