"""Issue 6 acceptance: each family trained from its defaults by ``fit(..., max_seconds=90)`` on the CPU.

Slow (about two minutes each, training included): marked ``slow``, run by ``make test``
like every other test. The tasks and their measurements are benchmarks/bench_families.py's
``run_task`` (the benchmark prints and records the same numbers). Training uses one
torch thread: on a CPU shared with other jobs two OpenMP threads can run these small
networks several times slower, and the time budget would then buy far fewer steps.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest


BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_families.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_families", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_realnvp_on_moons():
    row = _bench().run_task("realnvp-moons", seconds=90, num_threads=1, mass_grid=200)
    assert row["test_nll"] <= 1.08, row
    assert abs(row["mass"] - 1) <= 0.01, row


@pytest.mark.slow
def test_flow_matching_on_checkerboard():
    row = _bench().run_task("flowmatching-checkerboard", seconds=90, num_threads=1, mass_grid=60)
    assert abs(row["test_nll"] - math.log(8)) <= 0.25, row
    # The board's density jumps at every square's edge: a 60 x 60 midpoint rule over a smooth learned
    # density that rounds those edges is only good to a few percent (measured 1.03).
    assert abs(row["mass"] - 1) <= 0.05, row


@pytest.mark.slow
def test_diffusion_on_eight_gaussians():
    # 20000 steps (its default) take 55-90 s on this 2-core machine, depending on the day: the cap must not cut them.
    row = _bench().run_task("diffusion-8gaussians", seconds=150, num_threads=1, mass_grid=60)
    assert row["quality"] >= 0.95, row
    assert 0.09 <= row["coverage_min"] and row["coverage_max"] <= 0.16, row
    assert abs(row["gap"]) <= 0.3, row
    assert abs(row["mass"] - 1) <= 0.02, row
