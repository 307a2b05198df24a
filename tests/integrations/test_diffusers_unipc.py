"""FusedUniPCMultistepScheduler against diffusers' UniPCMultistepScheduler, on the same inputs and model."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _peers import small_unet_model

diffusers = pytest.importorskip("diffusers")
ours = pytest.importorskip("pyprobtf.integrations.diffusers")

Parent = diffusers.UniPCMultistepScheduler
Fused = ours.FusedUniPCMultistepScheduler

# float32: the fused updates take float64 host coefficients where diffusers computes h, the rks and the
# rhos (a small linear solve) in float32 tensors, and the fused pass sums the terms in another order: the
# two differ by float32 rounding, accumulated over the steps, and amplified by the update itself where it
# is ill-conditioned (large steps from a large sigma_max, order 3, predict_x0=False). The measure of that
# rounding is diffusers' own float32 error, OWN = max |want - want64| / (1 + |want64|) against its float64
# run (want64). Criterion at every step: |got - want| <= (TOL32 + 2 OWN) (1 + |want|), and the fused run no
# farther from want64 than diffusers' is (+ TOL32). Worst seen over CONFIGS x (vectors 25 steps, images
# 10 steps): 5.6e-6 where OWN < 3e-6 (26 of the 32 cases); elsewhere 3.0e-4 where OWN = 2.8e-4
# (predict_x0=False, v_prediction, Karras, order 3, images, 10 steps).
TOL32 = 2e-5
ATOL32 = RTOL32 = TOL32
# float64 states and float64 sigmas on both sides (diffusers then computes its coefficients in float64
# too): the same formulae, only the order of the float64 operations differs. Worst seen over the whole
# option grid (vectors 25 steps, images 10 steps): 1.3e-11 (relative to 1 + |x|); 1.7e-6 with
# predict_x0=False and flow sigmas, where the first sigma is 1 - 1e-6 and the update multiplies by
# alpha_t / alpha_s0 ~ 4e4 (diffusers' own float32 run is off by 15x its float64 one there).
TOL64 = 1e-9
TOL64_NOISE_PREDICTION_FLOW_SIGMAS = 1e-5


def smooth_model(x, t):
    """A deterministic stand-in for a network: smooth in x, depends on t."""
    return 0.8 * torch.tanh(x) + 0.1 * math.sin(float(t) / 100.0)


def run(scheduler, x, model, steps, float64_sigmas=False):
    """The denoising loop of a diffusers pipeline; returns every step's ``prev_sample``."""
    scheduler.set_timesteps(steps)
    if float64_sigmas:
        scheduler.sigmas = scheduler.sigmas.double()
    x = x * scheduler.init_noise_sigma
    samples = []
    for t in scheduler.timesteps:
        result = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x)
        assert type(result) is diffusers.schedulers.scheduling_utils.SchedulerOutput
        x = result.prev_sample
        samples.append(x)
    return samples


def pair(**config):
    parent = Parent(**config)
    fused = Fused.from_config(parent.config)
    assert isinstance(fused, Parent) and fused.config == parent.config
    return parent, fused


def worst(got, want):
    """Largest |got - want| / (1 + |want|) over all steps."""
    return max(((g.double() - w.double()).abs() / (1 + w.double().abs())).max().item() for g, w in zip(got, want))


def assert_steps_close(got, want, atol, rtol):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, i=i: f"step {i}: {m}")


# Each option the parent has, at least once; predict_x0=False with flow sigmas is in the grids below
# (ill-conditioned: diffusers' own float32 result is far from its float64 one there).
CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True, "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1},
    {"solver_order": 3, "use_beta_sigmas": True},
    {"use_beta_sigmas": True, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "v_prediction", "use_karras_sigmas": True, "solver_order": 3,
     "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "sample", "final_sigmas_type": "sigma_min"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"disable_corrector": [0, 3, 7]},
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "solver_order": 3},
]


def _id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def assert_matches_within_float32_rounding(config, x, steps, model=smooth_model):
    parent, fused = pair(**config)
    want, got = run(parent, x, model, steps), run(fused, x, model, steps)
    want64 = run(Parent(**config), x.double(), model, steps, float64_sigmas=True)
    own = worst(want, want64)
    assert_steps_close(got, want, TOL32 + 2 * own, TOL32 + 2 * own)
    assert worst(got, want64) <= own + TOL32
    return worst(got, want), own


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
@pytest.mark.parametrize("shape,steps", [((3, 7), 25), ((2, 4, 8, 8), 10)], ids=["vector-25", "image-10"])
def test_every_step_matches_diffusers_float32(config, shape, steps):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(config)))
    error, own = assert_matches_within_float32_rounding(config, x, steps)
    if own < 3e-6:  # well-conditioned: the plain float32 tolerance
        assert error <= TOL32


def test_thresholding_clamps_between_fused_updates_as_diffusers():
    # diffusers' thresholding needs (B, C, ...) samples
    for config in ({"prediction_type": "sample"}, {"solver_order": 3, "use_karras_sigmas": True}):
        parent, fused = pair(thresholding=True, sample_max_value=1.5, **config)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
        assert_steps_close(run(fused, x, smooth_model, 10), run(parent, x, smooth_model, 10), TOL32, TOL32)


def test_image_shaped_25_steps_and_vectors_10_steps():
    for shape, steps in (((2, 3, 8, 8), 25), ((5, 3), 10)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(steps))
        assert_matches_within_float32_rounding({"solver_order": 3, "use_karras_sigmas": True}, x, steps)


GRID = st.fixed_dictionaries({
    "solver_order": st.sampled_from([1, 2, 3]),
    "solver_type": st.sampled_from(["bh1", "bh2"]),
    "predict_x0": st.booleans(),
    "prediction_type": st.sampled_from(["epsilon", "v_prediction", "sample", "flow_prediction"]),
    "sigmas": st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                               "use_flow_sigmas"]),
    "final_sigmas_type": st.sampled_from(["zero", "sigma_min"]),
    "timestep_spacing": st.sampled_from(["linspace", "leading", "trailing"]),
    "lower_order_final": st.booleans(),
    "disable_corrector": st.sampled_from([[], [1, 2]]),
})


def _config(options):
    config = dict(options)
    sigmas = config.pop("sigmas")
    if sigmas is not None:
        config[sigmas] = True
    return config


@settings(max_examples=40)
@given(options=GRID, steps=st.sampled_from([10, 25]), image=st.booleans())
def test_float64_matches_diffusers_over_the_option_grid(options, steps, image):
    config = _config(options)
    x = torch.randn((2, 2, 4, 4) if image else (3, 5), generator=torch.Generator().manual_seed(steps),
                    dtype=torch.float64)
    try:
        want = run(Parent(**config), x, smooth_model, steps, float64_sigmas=True)
    except (ValueError, RuntimeError) as error:  # a setting the parent rejects, or its singular solve
        with pytest.raises(type(error)):
            run(Fused(**config), x, smooth_model, steps, float64_sigmas=True)
        return
    got = run(Fused(**config), x, smooth_model, steps, float64_sigmas=True)
    tol = TOL64_NOISE_PREDICTION_FLOW_SIGMAS if not config["predict_x0"] and config.get("use_flow_sigmas") else TOL64
    for g, w in zip(got, want):  # NaN where diffusers' own arithmetic gives NaN (bh1 or eps into a zero sigma)
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, atol=tol, rtol=tol, equal_nan=True)


@settings(max_examples=25)
@given(options=GRID, steps=st.sampled_from([10, 25]))
def test_float32_matches_diffusers_over_the_option_grid(options, steps):
    config = _config(options)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(steps))
    try:
        want = run(Parent(**config), x, smooth_model, steps)
    except (ValueError, RuntimeError) as error:
        with pytest.raises(type(error)):
            run(Fused(**config), x, smooth_model, steps)
        return
    got = run(Fused(**config), x, smooth_model, steps)
    if all(torch.isfinite(w).all() for w in want):
        assert_matches_within_float32_rounding(config, x, steps)
    else:  # a zero final sigma where the parent gives NaN: the fused scheduler returns the parent's result
        for g, w in zip(got, want):
            torch.testing.assert_close(g.isnan(), w.isnan())


def test_degenerate_final_steps_return_the_parents_result():
    """A zero final sigma with bh1, with predict_x0=False, or of order 2 gives the parent's (NaN) result."""
    for config in ({"solver_type": "bh1"}, {"predict_x0": False}, {"lower_order_final": False}):
        parent, fused = pair(**config)
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
        want, got = run(parent, x, smooth_model, 10), run(fused, x, smooth_model, 10)
        assert not torch.isfinite(want[-1]).all()
        assert_steps_close(got[:-1], want[:-1], ATOL32, RTOL32)
        torch.testing.assert_close(got[-1], want[-1], atol=ATOL32, rtol=RTOL32, equal_nan=True)


def test_from_config_of_another_scheduler_swaps_in():
    for other in (diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                          prediction_type="v_prediction", timestep_spacing="trailing"),
                  diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, solver_order=2),
                  diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)):
        parent = Parent.from_config(other.config)
        fused = Fused.from_config(other.config)
        assert fused.config == parent.config
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
        assert_steps_close(run(fused, x, smooth_model, 12), run(parent, x, smooth_model, 12), ATOL32, RTOL32)


def test_unet_pipeline_loop_matches_diffusers():
    model = small_unet_model()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        # orders 1, 2, 3, 3, 2, 1: the order-3 corrector (two passes) runs at step 4
        parent, fused = pair(solver_order=3, prediction_type="v_prediction", use_karras_sigmas=True)
        assert_steps_close(run(fused, x, model, 6), run(parent, x, model, 6), 1e-4, 1e-4)


def test_fused_settings_never_run_the_parents_updates(monkeypatch):
    """Per step: 1 lincomb pass for the conversion (none when it is the model output itself), 1 for the
    corrector (2 at order 3: five tensors), 1 for the predictor; the parent's updates never run."""
    calls = []
    lincomb = ours.lincomb
    monkeypatch.setattr(ours, "lincomb", lambda *a, **k: calls.append(1) or lincomb(*a, **k))
    for name in ("multistep_uni_p_bh_update", "multistep_uni_c_bh_update"):
        monkeypatch.setattr(Parent, name, lambda *a, name=name, **k: pytest.fail(f"the parent's {name} ran"))
    for config, conversion in (({}, 1), ({"solver_order": 3, "lower_order_final": False,
                                          "final_sigmas_type": "sigma_min"}, 1),
                               ({"predict_x0": False, "final_sigmas_type": "sigma_min"}, 0),
                               ({"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5}, 0)):
        fused = Fused(**config)
        fused.set_timesteps(8)
        x = torch.randn(2, 3, 4)
        orders = []
        for i, t in enumerate(fused.timesteps):
            calls.clear()
            corrector = 0 if i == 0 else (2 if fused.this_order == 3 else 1)
            x = fused.step(smooth_model(x, t), t, x).prev_sample
            orders.append(fused.this_order)
            assert len(calls) == conversion + corrector + 1, (config, i)
        assert max(orders) == fused.config.solver_order and torch.isfinite(x).all()


def test_solver_p_and_deprecated_call_forms_run_the_parents_code():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    parent = Parent(solver_p=diffusers.DDIMScheduler())
    fused = Fused(solver_p=diffusers.DDIMScheduler())
    assert_steps_close(run(fused, x, smooth_model, 8), run(parent, x, smooth_model, 8), TOL32, TOL32)
    parent, fused = pair()
    for s in (parent, fused):
        s.set_timesteps(5)
        s._step_index = 0
    t = parent.timesteps[0]
    with pytest.warns(FutureWarning):
        got = fused.convert_model_output(smooth_model(x, t), t, x)
    torch.testing.assert_close(got, parent.convert_model_output(smooth_model(x, t), sample=x))


def test_exported():
    assert "FusedUniPCMultistepScheduler" in ours.__all__
    assert "FusedUniPCMultistepScheduler" in ours.__doc__
