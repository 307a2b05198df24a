"""The mutation suite: deliberately broken flows and samplers (tests/verify_examples.py) must be caught by the
check of the property they break, with a message naming it and the size of the violation; the correct ones
must pass, over several seeds. benchmarks/bench_verify.py runs the same suite over more seeds and reports the
false-positive rate."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import verify_examples as ex  # noqa: E402

from pyprobtf.testing import (  # noqa: E402
    VerificationError,
    assert_log_det_correct,
    verify,
    verify_log_det,
    verify_ode_order,
    verify_sde_stationary,
    verify_sde_weak_order,
)

NUMBER = re.compile(r"measured (-?[0-9.e+-]+|inf) > bound|p-value [0-9.e+-]+ < alpha")


def _step_results(name, seed=0):
    step, kind, order, _ = ex.STEPS[name]
    if kind == "ode":
        return [verify_ode_order(step, order)]
    return [verify_sde_weak_order(step, order, seed=seed, paths=30_000),
            verify_sde_stationary(step, order, seed=seed, paths=8_000)]


def _assert_caught(results, prop):
    failed = [r for r in results if r.passed is False]
    assert any(r.check == prop for r in failed), f"{prop} not caught: {[r.message() for r in results]}"
    for r in failed:
        msg = r.message()
        assert r.check in msg and NUMBER.search(msg), msg  # names the property and the size


@pytest.mark.parametrize("bug", list(ex.BUGS))
def test_broken_flow_is_caught_by_its_property(bug):
    # The check of the broken property alone (the full verify() of every mutant is the acceptance test below).
    report = verify(ex.Coupling(2, bug=bug), checks=[ex.BUGS[bug]])
    assert not report.passed
    _assert_caught(report.results, ex.BUGS[bug])
    with pytest.raises(VerificationError, match=ex.BUGS[bug]):
        report.raise_if_failed()


@pytest.mark.parametrize("name", [n for n, v in ex.STEPS.items() if not v[3]])
def test_broken_step_is_caught(name):
    results = _step_results(name)
    prop = "ode_order" if ex.STEPS[name][1] == "ode" else "sde_weak_order"
    if name == "em_double_variance":
        prop = "sde_stationary"
    _assert_caught(results, prop)


def test_broken_transforms_in_other_interfaces_are_caught():
    _assert_caught(verify(ex.BadExp(), dim=3).results, "log_det")
    _assert_caught(verify(ex.NflowsStyleScale(3, broken=True), dim=3).results, "log_det")
    assert verify(ex.NflowsStyleScale(3), dim=3).passed


@pytest.mark.acceptance
def test_mutation_score_is_at_least_95_percent():
    """Every mutant once, through the full verify(): the share caught by the property it breaks."""
    caught, total = 0, 0
    for bug, prop in ex.BUGS.items():
        total += 1
        caught += any(r.check == prop and r.passed is False for r in verify(ex.Coupling(3, bug=bug)).results)
    for name, (_, kind, _, ok) in ex.STEPS.items():
        if not ok:
            total += 1
            caught += any(r.passed is False for r in _step_results(name, seed=1))
    assert caught / total >= 0.95, f"{caught} of {total} mutants caught"


@pytest.mark.parametrize("dim,seed", [(1, 0), (2, 1), (3, 2), (5, 3)])
def test_correct_flow_passes(dim, seed):
    report = verify(ex.Coupling(dim, seed=seed), seed=seed)
    assert report.passed, report.table()


@pytest.mark.parametrize("name", [n for n, v in ex.STEPS.items() if v[3]])
def test_correct_steps_pass(name):
    for r in _step_results(name, seed=3):
        assert r.passed, r.message()


def test_stochastic_log_det_above_the_exact_dimension():
    """Above exact_max_dim the log-determinant is estimated (Lanczos quadrature): a wrong sign is caught, the
    correct map passes. (Smaller errors than the estimator's confidence half-width, which the message states,
    need the exact Jacobian.)"""
    kw = dict(exact_max_dim=8, n=2, probes=8)
    ok = verify_log_det(ex.Coupling(16), **kw)
    assert ok.passed and "Lanczos" in ok.detail, ok.message()
    with pytest.raises(VerificationError, match="log_det VIOLATED"):
        assert_log_det_correct(ex.Coupling(16, bug="ladj_wrong_sign"), **kw)


def test_float64_default_and_dtype_kept():
    flow = ex.Coupling(2).float()
    assert verify(flow).passed
    assert flow.log_scale.dtype == torch.float32  # verify casts a copy
