"""pyprobtf.testing's adapters and checks on other libraries' objects (each adapter against the library itself,
on the same inputs), the result objects, the hypothesis strategies for users' inputs, and ``pyprobtf verify``
on the command line. The mutation suite is in tests/test_verify_mutations.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from torch.distributions import constraints

from pyprobtf.testing import (
    CheckResult,
    VerificationError,
    as_subject,
    check_invertibility,
    check_log_det,
    check_transform,
    model_inputs,
    support_values,
    verify,
    verify_invertibility,
)

zuko = pytest.importorskip("zuko")
nflows = pytest.importorskip("nflows")
nf = pytest.importorskip("normflows")

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-12  # the adapter calls the library's own methods: only the reshaping differs


def _zuko_maf():
    torch.manual_seed(0)
    return zuko.flows.MAF(3, hidden_features=[16]).double()


def _nflows_maf():
    from nflows.flows import MaskedAutoregressiveFlow

    torch.manual_seed(0)
    # float32: nflows' own .double() leaves its MADE masks in float32 (verify casts them too)
    return MaskedAutoregressiveFlow(features=3, hidden_features=16, num_layers=2, num_blocks_per_layer=1)


def _normflows_realnvp():
    torch.manual_seed(0)
    flows = []
    for i in range(2):
        net = nf.nets.MLP([2, 16, 4], init_zeros=False)
        flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(4, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(4, trainable=False), flows).double()


# ----------------------------------------------------------------------------- adapters against the libraries


def test_zuko_adapter_matches_zuko():
    flow = _zuko_maf()
    s = as_subject(flow)
    assert s.dim == 3 and s.interface.startswith("lazy distribution MAF()")
    dist = flow()
    z = torch.randn(7, 3, dtype=torch.float64)
    x, ladj = s.forward(z)
    torch.testing.assert_close(x, dist.transform.inv(z), rtol=TOL, atol=TOL)
    torch.testing.assert_close(s.log_prob(x), dist.log_prob(x), rtol=TOL, atol=TOL)
    # log p(F(z)) = log base(z) - log|det dF/dz|: the direction and the sign of the log-determinant
    torch.testing.assert_close(s.log_prob(x), dist.base.log_prob(z) - ladj, rtol=1e-10, atol=1e-10)
    torch.manual_seed(5)
    torch.testing.assert_close(s.sample(4, 5), dist.sample((4,)), rtol=0, atol=0)


def test_nflows_adapter_matches_nflows():
    flow = _nflows_maf()
    s = as_subject(flow)
    assert s.dim == 3 and s.interface.startswith("nflows Flow")
    z = torch.randn(7, 3)
    x, ladj = s.forward(z)
    torch.testing.assert_close(x, flow._transform.inverse(z)[0], rtol=0, atol=0)
    torch.testing.assert_close(s.log_prob(x), flow.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(s.log_prob(x), flow._distribution.log_prob(z) - ladj, rtol=1e-5, atol=1e-5)
    torch.manual_seed(2)
    torch.testing.assert_close(s.sample(4, 2), flow.sample(4), rtol=0, atol=0)


def test_normflows_adapter_matches_normflows():
    flow = _normflows_realnvp()
    s = as_subject(flow)
    assert s.dim == 4 and s.interface.startswith("normflows NormalizingFlow")
    z = torch.randn(7, 4, dtype=torch.float64)
    x, ladj = s.forward(z)
    torch.testing.assert_close(x, flow.forward(z), rtol=TOL, atol=TOL)
    torch.testing.assert_close(s.log_prob(x), flow.log_prob(x), rtol=TOL, atol=TOL)
    torch.testing.assert_close(s.log_prob(x), flow.q0.log_prob(z) - ladj, rtol=1e-9, atol=1e-9)


def test_torch_transform_and_distribution_adapters_match_torch():
    t = torch.distributions.ComposeTransform([torch.distributions.AffineTransform(0.5, 2.0),
                                              torch.distributions.SigmoidTransform()])
    s = as_subject(t, dim=2)
    z = torch.randn(5, 2, dtype=torch.float64)
    x, ladj = s.forward(z)
    torch.testing.assert_close(x, t(z), rtol=0, atol=0)
    torch.testing.assert_close(ladj, t.log_abs_det_jacobian(z, t(z)).sum(1), rtol=0, atol=0)
    d = torch.distributions.LogNormal(torch.tensor(0.3), torch.tensor(0.7))
    sd = as_subject(d)
    assert sd.dim == 1
    v = d.sample((6,)).reshape(6, 1)
    torch.testing.assert_close(sd.log_prob(v), d.log_prob(v[:, 0]), rtol=0, atol=0)


@pytest.mark.parametrize("factory", [_zuko_maf, _nflows_maf, _normflows_realnvp], ids=["zuko", "nflows", "normflows"])
def test_verify_passes_on_peer_flows(factory):
    report = verify(factory())
    assert report.passed, report.table()
    ran = {r.check for r in report.results if r.passed is not None}
    assert {"invertibility", "log_det", "sample_log_prob", "batch_invariance", "dtype_agreement"} <= ran


def test_verify_zuko_transform_and_torch_distributions():
    assert verify(zuko.transforms.MonotonicAffineTransform(torch.tensor(0.3), torch.tensor(0.5)), dim=2).passed
    mvn = torch.distributions.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.5, 2.0]]))
    report = verify(mvn)
    assert report.passed and report.results[2].passed, report.table()  # density by quadrature in 2-D
    assert verify(torch.distributions.Gamma(torch.tensor(3.0), torch.tensor(2.0))).passed


def test_callable_pair_and_result_objects():
    f = lambda z: (2 * z + 1, torch.full((z.shape[0],), 2 * torch.log(torch.tensor(2.0)).item()))  # noqa: E731
    inv = lambda x: ((x - 1) / 2, torch.full((x.shape[0],), -2 * torch.log(torch.tensor(2.0)).item()))  # noqa: E731
    report = verify((f, inv), dim=2)
    assert report.passed, report.table()
    r = verify_invertibility(f, dim=2, inverse=lambda x: ((x - 1) / 2 + 1e-3, None))
    assert isinstance(r, CheckResult) and r.passed is False and r.interface.startswith("callable")
    assert "invertibility VIOLATED" in r.message() and r.error > r.bound
    with pytest.raises(VerificationError, match="invertibility"):
        r.raise_if_failed()
    assert "invertibility" in report.table() and "PASS" in report.table()


def test_existing_checks_accept_other_libraries():
    flow = _zuko_maf()
    assert check_invertibility(flow) < 1e-7
    assert check_log_det(flow) < 1e-6
    report = check_transform(torch.distributions.TransformedDistribution(
        torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0)), [torch.distributions.TanhTransform()]))
    assert {"invertibility", "log_det", "density_normalization", "sample_log_prob"} <= set(report)


def test_wrong_objects_are_type_and_value_errors():
    with pytest.raises(TypeError, match="as_subject: `obj` must be"):
        as_subject(42)
    with pytest.raises(ValueError, match="pass `dim`"):
        as_subject(torch.distributions.ExpTransform())
    with pytest.raises(ValueError, match="`dim` must be a positive int"):
        as_subject(torch.distributions.ExpTransform(), dim=0)
    with pytest.raises(ValueError, match="verify: `checks`"):
        verify(_zuko_maf(), checks=["nope"])


# ----------------------------------------------------------------------------- strategies


@settings(max_examples=25, deadline=None)
@given(model_inputs(3, support=constraints.positive))
def test_model_inputs_stay_in_the_support(x):
    assert x.shape[1] == 3 and x.dtype in (torch.float32, torch.float64)
    assert bool((x > 0).all()) and bool(torch.isfinite(x).all())


@settings(max_examples=25, deadline=None)
@given(model_inputs(2, support=constraints.unit_interval, dtypes=(torch.float64,)))
def test_model_inputs_reach_the_edges(x):
    assert bool(((x >= 0) & (x <= 1)).all())


def test_support_values_are_near_the_edges():
    v = support_values(constraints.interval(-1.0, 2.0), 200)
    assert bool(((v > -1) & (v < 2)).all())
    assert float(torch.minimum(v + 1, 2 - v).max()) <= 0.31  # within a tenth of the width of an edge
    assert float(support_values(constraints.real, 100).abs().min()) >= 10


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def in_tests(monkeypatch):
    monkeypatch.chdir(ROOT / "tests")
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


def _main(capsys, *args):
    from pyprobtf.cli import main

    status = main(["verify", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_verify_zuko_flow_passes_and_a_broken_one_fails(in_tests, capsys):
    status, out, err = _main(capsys, "verify_examples:zuko_flow")
    assert status == 0, out + err
    assert "lazy distribution MAF()" in out and "PASS" in out and "FAIL" not in out
    status, out, err = _main(capsys, "verify_examples:broken_zuko_flow", "--checks", "density_normalization,log_det")
    assert status == 1, out + err
    assert "density_normalization  FAIL" in out and "density_normalization VIOLATED: measured 1" in out


def test_cli_verify_as_a_command_exits_1_on_a_broken_flow():
    """The real command line, as in a user's CI (one check, to keep it short)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}")
    r = subprocess.run([sys.executable, "-m", "pyprobtf", "verify", "verify_examples:broken_flow", "--checks",
                        "log_det"], capture_output=True, text=True, env=env, cwd=ROOT / "tests", timeout=300)
    assert r.returncode == 1 and "log_det                FAIL" in r.stdout and "log_det VIOLATED" in r.stdout, \
        r.stdout + r.stderr


def test_cli_verify_steps(in_tests, capsys):
    status, out, _ = _main(capsys, "verify_examples:euler", "--step", "ode", "--order", "2")
    assert status == 1 and "ode_order VIOLATED" in out
    status, out, _ = _main(capsys, "verify_examples:rk4", "--step", "ode", "--order", "4")
    assert status == 0 and "ode_order" in out and "PASS" in out


@pytest.mark.parametrize("args,message", [
    (("nocolon",), "MODULE:OBJECT"),
    (("no_such_module_xyz:f",), "cannot import module"),
    (("verify_examples:nothing",), "has no attribute"),
    (("torch.distributions:ExpTransform",), "pass `dim`"),
    (("verify_examples:zuko_flow", "--checks", "bogus"), "--checks"),
    (("verify_examples:euler", "--step", "ode"), "--order"),
    (("verify_examples:good_flow", "--dim", "0"), "--dim"),
])
def test_cli_usage_errors_exit_2(in_tests, capsys, args, message):
    status, _, err = _main(capsys, *args)
    assert status == 2 and message in err and "Traceback" not in err, err
