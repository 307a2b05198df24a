"""Issue 7's acceptance on 8gaussians: each family trained by fit(..., max_seconds=60) from its defaults.

Every family puts at least 90% of its samples within 3 std of a mode (the autoregressive
model at least 95%) with every mode holding 8% to 17% of them; the VAE's ELBO is higher
with a learned RealNVP prior than with the fixed Gaussian prior. One test per family
(the VAE's trains two models). Training uses one CPU thread: on a shared 2-core machine
torch's default of two threads can be many times slower (the threads wait for each other).
"""

import pytest
import torch

import pyprobtf
from pyprobtf import fit
from pyprobtf import families as fam
from pyprobtf.data import toy, toy_modes
from pyprobtf.metrics import mode_coverage, mode_quality

# Opt-in (pytest -m acceptance): each case trains for a fixed 60 s, so its result depends on how busy the
# machine is; ScoreGAN sits at its 90% target (89.6-91.7% measured) and CI cannot hold it there.
pytestmark = [pytest.mark.slow, pytest.mark.acceptance]

SECONDS = 60

HAS_SAMPLING = hasattr(pyprobtf.ops, "sample_logits")
try:
    import pyprobtf.nn  # noqa: F401

    HAS_VQ = True
except ImportError:
    HAS_VQ = False

FAMILIES = {
    "Autoencoder": (lambda: fam.Autoencoder(dim=2), 0.90, None),
    "VAE": (lambda: fam.VAE(dim=2), 0.90, None),
    "GAN": (lambda: fam.GAN(dim=2), 0.90, None),
    "Autoregressive": (lambda: fam.Autoregressive(dim=2), 0.95,
                       None if HAS_SAMPLING else "needs pyprobtf.ops.sample_logits (issue 5)"),
    "VQVAE": (lambda: fam.VQVAE(dim=2), 0.90,
              None if HAS_SAMPLING and HAS_VQ else "needs pyprobtf.nn.VectorQuantizer (issue 4) and sample_logits"),
    "DiscriminatorFlow": (lambda: fam.DiscriminatorFlow(dim=2), 0.90, None),
    "ScoreGAN": (lambda: fam.ScoreGAN(dim=2), 0.90, None),
}


def _train(build, seed=0):
    torch.manual_seed(seed)
    model = build()
    result = fit(model, toy("8gaussians", 100_000, seed=seed), max_seconds=SECONDS, progress=False, seed=seed,
                 num_threads=1)
    return model, result


def _modes(model, seed=1):
    centres, std = toy_modes("8gaussians")
    samples = model.sample(20_000, seed=seed)
    return mode_quality(samples, centres, std), mode_coverage(samples, centres)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_8gaussians_in_60_seconds(name):
    build, target, skip = FAMILIES[name]
    if skip:
        pytest.skip(skip)
    model, result = _train(build)
    quality, coverage = _modes(model)
    print(f"\n{name}: {result.steps} steps in {result.seconds:.0f} s; {quality:.2%} within 3 std; "
          f"modes {coverage.min():.2%}..{coverage.max():.2%}")
    assert quality >= target, f"{name}: {quality:.2%} of samples within 3 std of a mode (target {target:.0%})"
    assert coverage.min() >= 0.08 and coverage.max() <= 0.17, \
        f"{name}: modes hold {coverage.tolist()} of the samples (each must be in [8%, 17%])"
    if name == "VAE":
        flow, flow_result = _train(lambda: fam.VAE(dim=2, prior="realnvp"))
        test = toy("8gaussians", 20_000, seed=99)
        with torch.no_grad():
            gauss_elbo = float(model.elbo(test, n_samples=8, seed=0).mean())
            flow_elbo = float(flow.elbo(test, n_samples=8, seed=0).mean())
        flow_quality, _ = _modes(flow)
        print(f"VAE test ELBO: Gaussian prior {gauss_elbo:.3f} nats ({result.steps} steps), RealNVP prior "
              f"{flow_elbo:.3f} nats ({flow_result.steps} steps, {flow_quality:.2%} within 3 std); true NLL "
              f"{-float(pyprobtf.data.toy_log_prob('8gaussians', test).mean()):.3f}")
        assert flow_elbo > gauss_elbo, "the learned RealNVP prior does not improve the VAE's ELBO"
