"""pyprobtf.integrations.diffusers against the diffusers schedulers they subclass, on the same inputs and model."""

import math

import pytest
import torch

from _peers import small_unet_model

diffusers = pytest.importorskip("diffusers")
ours = pytest.importorskip("pyprobtf.integrations.diffusers")

# Float32 rounding: host float64 coefficients against diffusers' float32 tensor arithmetic, accumulated over
# the steps, on states of scale up to sigma_max (about 15). Worst seen: about 1e-6 relative.
ATOL, RTOL = 2e-5, 2e-5
ours_lincomb = ours.lincomb


def smooth_model(x, t):
    """A deterministic stand-in for a network: smooth in x, depends on t."""
    return 0.8 * torch.tanh(x) + 0.1 * math.sin(float(t) / 100.0)


def run(scheduler, x, model, steps, collect=None, **step_kwargs):
    """The denoising loop of a diffusers pipeline."""
    scheduler.set_timesteps(steps)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching has neither
    scale = getattr(scheduler, "scale_model_input", lambda y, t: y)
    for t in scheduler.timesteps:
        out = model(scale(x, t), t)
        result = scheduler.step(out, t, x, **step_kwargs)
        if collect is not None:
            collect.append(result)
        x = result.prev_sample
    return x


def pair(name, **config):
    if name == "DDIMScheduler":  # diffusers' DDIM clips by default, an option that runs the parent's step
        config.setdefault("clip_sample", False)
    parent = getattr(diffusers, name)(**config)
    fused = getattr(ours, "Fused" + name).from_config(parent.config)
    assert isinstance(fused, type(parent)) and fused.config == parent.config
    return parent, fused


CONFIGS = [
    ("EulerDiscreteScheduler", {}),
    ("EulerDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction"}),  # deterministic only at eta... see below
    ("HeunDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {"prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("HeunDiscreteScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun", "prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "zero"}),
    ("DPMSolverMultistepScheduler", {"solver_order": 1, "prediction_type": "sample"}),
    ("DPMSolverMultistepScheduler", {"lower_order_final": False, "final_sigmas_type": "sigma_min",
                                     "timestep_spacing": "trailing"}),
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing",
                       "set_alpha_to_one": False}),
    ("DDIMScheduler", {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}),
    ("FlowMatchEulerDiscreteScheduler", {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": False, "invert_sigmas": False,
                                         "use_karras_sigmas": True}),
]


@pytest.mark.parametrize("name,config", CONFIGS)
def test_every_tested_config_takes_the_fused_update(name, config, monkeypatch):
    """The equivalence tests compare the fused step, not the parent's fallback, for every config."""
    calls = []
    monkeypatch.setattr(ours, "lincomb", lambda *a, **k: calls.append(1) or ours_lincomb(*a, **k))
    _, fused = pair(name, **config)
    run(fused, torch.randn(3, 7), smooth_model, 3)
    assert len(calls) >= 3


@pytest.mark.parametrize("name,config", [c for c in CONFIGS if "Ancestral" not in c[0]])
@pytest.mark.parametrize("shape", [(3, 7), (2, 4, 8, 8)])
def test_deterministic_schedulers_match_diffusers(name, config, shape):
    parent, fused = pair(name, **config)
    x = torch.randn(shape)
    seen_parent, seen_fused = [], []
    want = run(parent, x, smooth_model, 10, seen_parent)
    got = run(fused, x, smooth_model, 10, seen_fused)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert len(seen_fused) == len(seen_parent)
    for a, b in zip(seen_fused, seen_parent):
        assert type(a) is type(b)
        if getattr(b, "pred_original_sample", None) is not None:
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name,kwargs,config", [
    ("DDIMScheduler", {"eta": 1.0}, {}),
    ("DDIMScheduler", {"eta": 0.3}, {"prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {}, {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {}, {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
])
def test_given_variance_noise_gives_diffusers_numbers(name, kwargs, config):
    parent, fused = pair(name, **config)
    x = torch.randn(4, 6)
    noises = torch.randn(20, 4, 6)

    def loop(scheduler):
        scheduler.set_timesteps(8)
        y = x * scheduler.init_noise_sigma
        for k, t in enumerate(scheduler.timesteps):
            out = smooth_model(scheduler.scale_model_input(y, t), t)
            y = scheduler.step(out, t, y, variance_noise=noises[k], **kwargs).prev_sample
        return y

    torch.testing.assert_close(loop(fused), loop(parent), atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------- stochastic steps

MU, S = 0.5, 0.8  # data ~ N(MU, S^2): the exact noise prediction is known


def exact_eps_model(scheduler):
    """E[eps | x] for x = x0 + sigma eps (Karras space), fed scale_model_input's x / sqrt(sigma^2 + 1)."""
    sigma_of = dict(zip(scheduler.timesteps.tolist(), scheduler.sigmas[:-1].tolist()))

    def model(x_in, t):
        sigma = sigma_of[float(t)]
        x = x_in * (sigma * sigma + 1) ** 0.5
        return sigma * (x - MU) / (S * S + sigma * sigma)
    return model


def run_exact(scheduler, x, steps, **kwargs):
    scheduler.set_timesteps(steps)
    model = exact_eps_model(scheduler)
    y = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        y = scheduler.step(model(scheduler.scale_model_input(y, t), t), t, y, **kwargs).prev_sample
    return y


@pytest.mark.parametrize("name,kwargs", [("EulerAncestralDiscreteScheduler", {}),
                                         ("EulerDiscreteScheduler", {"s_churn": 3.0})])
def test_stochastic_schedulers_match_diffusers_marginals(name, kwargs):
    parent, fused = pair(name)
    x = torch.randn(4096, 4)
    want = run_exact(parent, x, 20, **kwargs)
    got = run_exact(fused, x, 20, generator=torch.Generator().manual_seed(1), **kwargs)
    # 16384 values each: standard errors of the mean/variance differences below 0.01
    assert abs(got.mean().item() - want.mean().item()) < 0.04
    assert abs(got.var().item() - want.var().item()) < 0.05
    if name == "EulerAncestralDiscreteScheduler":  # its steps are linear here: the chain's law is exact
        mean, var = 0.0, float(fused.sigmas[0]) ** 2
        sigmas = fused.sigmas.double().tolist()
        for sigma, sigma_to in zip(sigmas[:-1], sigmas[1:]):
            up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
            k = ((sigma_to**2 - up**2) ** 0.5 - sigma) * sigma / (S * S + sigma * sigma)
            mean, var = mean + k * (mean - MU), (1 + k) ** 2 * var + up * up
        assert abs(got.mean().item() - mean) < 0.03 and abs(got.var().item() - var) < 0.03
    deterministic = run_exact(pair("EulerDiscreteScheduler")[1], x, 20)
    assert (got - deterministic).abs().mean() > 0.05  # noise was added


def test_generator_reproduces_and_per_sample_generators_are_batch_invariant():
    _, fused = pair("EulerAncestralDiscreteScheduler")
    x = torch.randn(5, 2, 4, 4)
    a = run_exact(fused, x, 6, generator=torch.Generator().manual_seed(7))
    b = run_exact(fused, x, 6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, run_exact(fused, x, 6, generator=torch.Generator().manual_seed(8)))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = run_exact(fused, x, 6, generator=gens([10, 11, 12, 13, 14]))
    part = run_exact(fused, x[[3, 0]], 6, generator=gens([13, 10]))
    torch.testing.assert_close(part, full[[3, 0]], atol=1e-6, rtol=1e-6)


def test_seeds_from_a_generator_as_ints_or_per_row_tensors():
    from pyprobtf.integrations import _noise
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert isinstance(_noise.seed_from_generator(g()), int)
    assert _noise.seed_from_generator(g()) == _noise.seed_from_generator(g())
    rows = _noise.seed_from_generator(g(), 4)
    assert rows.shape == (4,) and rows.dtype == torch.int64 and len(set(rows.tolist())) == 4
    assert torch.equal(rows, _noise.seed_from_generator(g(), 4))
    assert _noise.on_cpu(None) and _noise.on_cpu(g())


@pytest.mark.gpu
def test_cuda_generator_draws_per_sample_seeds_on_the_device():
    _, fused = pair("EulerAncestralDiscreteScheduler")
    x = torch.randn(3, 2, 4, 4, device="cuda")
    gen = lambda: torch.Generator("cuda").manual_seed(7)  # noqa: E731
    a, b = run_exact(fused, x, 6, generator=gen()), run_exact(fused, x, 6, generator=gen())
    assert a.device.type == "cuda" and torch.equal(a, b)
    many = run_exact(fused, x, 6, generator=[torch.Generator("cuda").manual_seed(s) for s in (1, 2, 3)])
    part = run_exact(fused, x[[2]], 6, generator=[torch.Generator("cuda").manual_seed(3)])
    torch.testing.assert_close(part, many[[2]], atol=1e-6, rtol=1e-6)


def test_ddim_eta_and_dpm_sde_marginals_match_diffusers():
    """VP schedulers on the Gaussian problem: the same final mean and variance as diffusers'."""
    for name, kwargs, config in [("DDIMScheduler", {"eta": 1.0}, {}),
                                 ("DPMSolverMultistepScheduler", {}, {"algorithm_type": "sde-dpmsolver++"})]:
        parent, fused = pair(name, **config)

        def vp_eps(scheduler):
            alphas = scheduler.alphas_cumprod

            def model(x, t):  # x = sqrt(ab) x0 + sqrt(1 - ab) eps with x0 ~ N(MU, S^2)
                ab = float(alphas[int(t)])
                var = ab * S * S + (1 - ab)
                return (1 - ab) ** 0.5 * (x - ab**0.5 * MU) / var
            return model

        x = torch.randn(4096, 4)
        outs = []
        for scheduler in (parent, fused):
            scheduler.set_timesteps(20)
            model = vp_eps(scheduler)
            y = x.clone()
            generator = torch.Generator().manual_seed(3)  # one generator for the whole loop, as pipelines do
            for t in scheduler.timesteps:
                y = scheduler.step(model(y, t), t, y, generator=generator, **kwargs).prev_sample
            outs.append(y)
        want, got = outs
        assert abs(got.mean().item() - want.mean().item()) < 0.04, name
        assert abs(got.var().item() - want.var().item()) < 0.05, name


# ----------------------------------------------------------------------------- a real network in the loop


def test_unet_pipeline_loop_matches_diffusers():
    model = small_unet_model()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        for name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler"):
            parent, fused = pair(name)
            torch.testing.assert_close(run(fused, x, model, 5), run(parent, x, model, 5), atol=1e-4, rtol=1e-4)


def test_fallback_options_run_the_parent_step():
    parent, fused = pair("DDIMScheduler", clip_sample=True)
    x = torch.randn(3, 5)
    torch.testing.assert_close(run(fused, x, smooth_model, 6), run(parent, x, smooth_model, 6))
    parent, fused = pair("DPMSolverMultistepScheduler", solver_order=3)
    torch.testing.assert_close(run(fused, x, smooth_model, 6), run(parent, x, smooth_model, 6))


def test_generator_list_of_wrong_length_names_the_argument():
    _, fused = pair("EulerAncestralDiscreteScheduler")
    with pytest.raises(ValueError, match="generator"):
        run_exact(fused, torch.randn(3, 2), 3, generator=[torch.Generator()])
