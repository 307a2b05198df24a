"""pyprobtf.fit: the loss goes down, the time budget stops cleanly, checkpoints resume exactly,
bad data gives clear errors, and DistributedDataParallel (2 processes, gloo) keeps ranks identical."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyprobtf
from pyprobtf import ProbabilityTransform, fit
from pyprobtf.data import toy
from pyprobtf.families import FlowMatching, RealNVP
from pyprobtf.training import load_checkpoint, step_seed

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: the networks here are small, and on a shared 2-core machine a second OpenMP thread
    made these tests several times slower (oversubscription), not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_realnvp():
    return RealNVP(dim=2, layers=4, hidden=(32, 32))


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_lowers_the_loss_and_reports_history():
    data = toy("moons", 4000)
    model = small_realnvp()
    result = fit(model, data, steps=300, batch_size=256, lr=3e-3, progress=False, log_every=50)
    assert result.steps == 300 and result.stopped == "steps"
    assert [s for s, _ in result.history] == [50, 100, 150, 200, 250, 300]
    first, last = result.history[0][1], result.history[-1][1]
    assert last < first - 0.3, result.history  # NLL of moons drops from ~2.8 to below ~1.7
    assert not model.training  # left in eval mode


def test_fit_is_reproducible_from_its_seed_and_leaves_the_global_rng_alone():
    data = toy("moons", 1000)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = small_realnvp()
        torch.manual_seed(123)
        before = torch.get_rng_state()
        fit(model, data, steps=20, batch_size=64, seed=5, progress=False)
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(model.state_dict())
    assert states_equal(*weights)
    torch.manual_seed(0)
    other = small_realnvp()
    fit(other, data, steps=20, batch_size=64, seed=6, progress=False)
    assert not states_equal(weights[0], other.state_dict())


def test_time_budget_stops_cleanly_and_anneals_the_learning_rate():
    model = FlowMatching(dim=2, hidden=(32, 32))
    result = fit(model, toy("moons", 2000), steps=10**7, batch_size=64, max_seconds=1.5, progress=False)
    assert result.stopped == "time"
    assert 0 < result.steps < 10**7
    assert 1.5 <= result.seconds < 5.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_resume_gives_the_uninterrupted_run(tmp_path):
    data = toy("8gaussians", 2000)
    torch.manual_seed(0)
    straight = small_realnvp()
    fit(straight, data, steps=40, batch_size=64, seed=1, progress=False)

    torch.manual_seed(0)
    ckpt = tmp_path / "run.pt"
    _fit_until(small_realnvp(), data, ckpt, 20)  # a job killed after 20 of its 40 steps
    torch.manual_seed(99)  # the resuming model's own initial weights must not matter
    resumed = small_realnvp()
    result = fit(resumed, data, steps=40, batch_size=64, seed=1, progress=False, checkpoint=ckpt)
    assert result.steps == 40 and result.history[-1][0] == 40
    assert states_equal(resumed.state_dict(), straight.state_dict())
    saved = load_checkpoint(ckpt)
    assert saved["step"] == 40 and saved["family"] == "RealNVP" and saved["config"]["seed"] == 1
    # Resuming a finished run does nothing more.
    again = fit(resumed, data, steps=40, batch_size=64, seed=1, progress=False, checkpoint=ckpt)
    assert again.steps == 40 and states_equal(resumed.state_dict(), straight.state_dict())


def _fit_until(model, data, path, stop_at):
    """Run the 40-step schedule but stop after ``stop_at`` steps, as a killed job would."""

    class Stop(Exception):
        pass

    original = model.loss
    calls = {"n": 0}

    def loss(batch):
        if calls["n"] == stop_at:
            raise Stop
        calls["n"] += 1
        return original(batch)

    model.loss = loss
    with pytest.raises(Stop):
        fit(model, data, steps=40, batch_size=64, seed=1, progress=False, checkpoint=path, checkpoint_every=10)
    assert load_checkpoint(path)["step"] == stop_at


def test_checkpoint_of_another_family_is_refused(tmp_path):
    ckpt = tmp_path / "fm.pt"
    fit(FlowMatching(dim=2, hidden=(16,)), toy("moons", 500), steps=3, batch_size=32, progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="holds a FlowMatching, not a RealNVP"):
        fit(small_realnvp(), toy("moons", 500), steps=3, batch_size=32, progress=False, checkpoint=ckpt)


class Shift(ProbabilityTransform):
    """x = z + b: a family without data-dependent initialisation."""

    capabilities = frozenset({"inverse", "ladj", "log_prob"})

    def __init__(self):
        super().__init__(2)
        self.b = torch.nn.Parameter(torch.zeros(2))

    def transform_and_ladj(self, z, context=None):
        return z + self.b, z.new_zeros(z.shape[0])

    def inverse_and_ladj(self, x, context=None):
        return x - self.b, x.new_zeros(x.shape[0])

    def loss(self, batch):
        return -self.log_prob(self.split_batch(batch)[0]).mean()


def test_nan_in_a_batch_names_the_step_and_the_rows():
    data = toy("moons", 1000)
    data[417, 1] = float("nan")
    # Without data-dependent initialisation the NaN row shows up in some step's batch.
    with pytest.raises(FloatingPointError, match=r"at step \d+: the batch holds NaN or infinite values, in data "
                                                 r"rows \[417\]"):
        fit(Shift(), data, steps=500, batch_size=16, progress=False)
    # RealNVP initialises its ActNorms from a first batch: the error comes before step 0.
    data[3] = float("inf")
    with pytest.raises(FloatingPointError, match=r"before step 0.*in data rows \[3, 417\]"):
        fit(small_realnvp(), data, steps=500, batch_size=128, progress=False)


def test_divergence_is_reported_with_its_step():
    class Diverging(RealNVP):
        def loss(self, batch):
            value = super().loss(batch)
            self.calls = getattr(self, "calls", 0) + 1
            return value * float("inf") if self.calls == 7 else value

    with pytest.raises(FloatingPointError, match=r"at step 6 on finite data: training diverged"):
        fit(Diverging(dim=2, layers=2, hidden=(8,)), toy("moons", 500), steps=20, batch_size=32, progress=False)


@pytest.mark.parametrize(
    "data, match",
    [
        (torch.randn(100, 3), r"`data` must have shape \(n_samples, 2\) for RealNVP \(event_shape=\(2,\)\); "
                              r"got \(100, 3\)"),
        (torch.randn(100), r"`data` must have shape \(n_samples, 2\).*got \(100,\)"),
        (torch.randn(0, 2), r"got \(0, 2\)"),
        ((torch.randn(10, 2), torch.randn(10, 1), torch.randn(10, 1)), r"x or \(x, context\); got 3"),
    ],
)
def test_wrong_data_is_refused(data, match):
    with pytest.raises(ValueError, match=match):
        fit(small_realnvp(), data, steps=1, progress=False)


def test_bad_options_are_refused():
    data = toy("moons", 100)
    with pytest.raises(TypeError, match="unknown option"):
        fit(small_realnvp(), data, steps=1, progress=False, learning_rate=1e-3)
    with pytest.raises(ValueError, match="fit: `steps` must be >= 0; got -1"):
        fit(small_realnvp(), data, steps=-1, progress=False)
    with pytest.raises(ValueError, match=r"fit: `max_seconds` must be a number > 0 or None; got 0.0"):
        fit(small_realnvp(), data, steps=1, max_seconds=0, progress=False)
    with pytest.raises(TypeError, match="must be a pyprobtf ProbabilityTransform"):
        fit(torch.nn.Linear(2, 2), data, steps=1, progress=False)


def test_conditional_data_and_numpy_input():
    model = FlowMatching(dim=2, hidden=(16,), context_dim=1)
    x = toy("moons", 300)
    fit(model, (x.numpy(), torch.randn(300, 1)), steps=3, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="as many rows"):
        fit(model, (x, torch.randn(299, 1)), steps=1, progress=False)
    # Beyond the row count, fit leaves the context to the model's loss, which names the problem.
    with pytest.raises(ValueError, match=r"FlowMatching\.(initialize|loss): `context` .* is required"):
        fit(model, x, steps=1, progress=False)


def test_progress_bar_draws_loss_and_finishes(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    fit(small_realnvp(), toy("moons", 500), steps=20, batch_size=32, progress=True)
    text = buffer.getvalue()
    assert "fit RealNVP" in text and "20/20" in text and "loss" in text and "stopped steps" in text


def test_progress_bar_projects_the_total_under_a_time_budget():
    from pyprobtf._progress import ProgressBar

    buffer = io.StringIO()
    bar = ProgressBar(10**6, "fit X", file=buffer)
    bar.update(10, fraction=0.5, loss=1.5)  # half the time budget used after 10 steps: about 20 in all
    assert bar._bar.total == 20
    bar.close(15, fraction=1.0, loss=1.25, stopped="time")
    text = buffer.getvalue()
    assert "15/15" in text and "loss 1.25 stopped time" in text and "100%" in text
    ProgressBar(5, enabled=False).close(5)  # a disabled bar draws nothing and needs nothing


def test_num_threads_is_restored():
    before = torch.get_num_threads()
    fit(small_realnvp(), toy("moons", 200), steps=2, batch_size=16, progress=False, num_threads=1)
    assert torch.get_num_threads() == before


def test_step_seeds_differ_by_rank_and_step():
    seeds = {step_seed(0, r, s) for r in range(3) for s in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


def test_distributed_training_keeps_both_ranks_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "_ddp_fit_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    for name in ("realnvp", "diffusion"):
        assert r0[name]["steps"] == r1[name]["steps"] == 25
        assert states_equal(r0[name]["state"], r1[name]["state"]), name
        # The ranks drew different batches: their losses differ, their weights do not.
        assert r0[name]["history"] != r1[name]["history"]
    for name in ("dataset", "dataloader"):
        assert r0[name]["steps"] == r1[name]["steps"] and states_equal(r0[name]["state"], r1[name]["state"]), name
        assert r0[name]["history"] != r1[name]["history"], name
    # fit shards a Dataset: in its first epoch the two processes read disjoint items (the data-dependent
    # initialisation reads first: 512 items drawn with replacement; then 4 steps x 2 micro-batches x 32).
    read0, read1 = r0["dataset"]["read"][-256:], r1["dataset"]["read"][-256:]
    assert len(set(read0)) == len(set(read1)) == 256 and not set(read0) & set(read1)
    # fit called set_epoch on the user's DistributedSampler at the second pass (8 batches each).
    assert r0["dataloader"]["epoch"] == r1["dataloader"]["epoch"] == 1
    # The data-dependent initialisation was broadcast from rank 0 too (sigma_data is a buffer).
    assert torch.equal(r0["diffusion"]["state"]["sigma_data"], r1["diffusion"]["state"]["sigma_data"])
    # ... and the weights moved away from rank 1's own initial ones.
    torch.manual_seed(101)
    own = RealNVP(dim=2, layers=4, hidden=(32, 32)).state_dict()
    assert not states_equal(own, r1["realnvp"]["state"])


def test_fit_is_exported():
    assert pyprobtf.fit is fit
