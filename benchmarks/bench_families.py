"""Acceptance benchmark of the explicit-density families: train each from its defaults with
``fit(..., max_seconds=90)`` on a 2-D toy set and measure it against the true density.

Tasks (issue 6):
- RealNVP on moons: test NLL <= 1.08 nats;
- FlowMatching on checkerboard: ODE NLL within 0.25 nats of the truth, ln 8;
- Diffusion on 8gaussians: >= 95% of samples within 3 std of a mode, every mode holding
  9% to 16% of the samples, ODE NLL within 0.3 nats of the true NLL;
- ContinuousFlow on 8gaussians (no target: reported for completeness).

``run_task`` is also what tests/test_acceptance.py runs. Writes
``benchmarks/results/families-<device>.{md,json}``.

    python benchmarks/bench_families.py                      # 90 s per task, seed 0
    python benchmarks/bench_families.py --seeds 0 1 --threads 1
    python benchmarks/bench_families.py --quick              # seconds per task (a smoke run)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf import metrics  # noqa: E402
from pyprobtf.data import toy, toy_log_prob, toy_modes  # noqa: E402
from pyprobtf.families import ContinuousFlow, Diffusion, FlowMatching, RealNVP  # noqa: E402

TRAIN_SIZE = 100_000
TEST_SEED = 12_345
FAMILIES = {"RealNVP": RealNVP, "FlowMatching": FlowMatching, "Diffusion": Diffusion,
            "ContinuousFlow": ContinuousFlow}
# task -> (family, data set, targets)
TASKS = {
    "realnvp-moons": ("RealNVP", "moons", {"nll_max": 1.08}),
    "flowmatching-checkerboard": ("FlowMatching", "checkerboard", {"gap_max": 0.25}),
    "diffusion-8gaussians": ("Diffusion", "8gaussians", {"gap_max": 0.3, "quality_min": 0.95,
                                                          "coverage_range": (0.09, 0.16)}),
    "continuousflow-8gaussians": ("ContinuousFlow", "8gaussians", {}),
}


# Boxes holding (nearly) all of each data set's mass, for the quadrature of the learned density.
BOXES = {"moons": [(-2.5, 3.5), (-2.0, 2.5)], "checkerboard": [(-3.0, 3.0)] * 2, "8gaussians": [(-3.5, 3.5)] * 2}


def run_task(task: str, *, seconds: float = 90.0, seed: int = 0, n_test: int = 2000, n_samples: int = 5000,
             mass_grid: int = 0, num_threads: int | None = None, progress: bool = False, device: str = "cpu") -> dict:
    """Train the task's family from its defaults for ``seconds`` and measure it; returns one result row.

    ``mass_grid > 0`` also integrates the learned density over the data set's box
    (midpoint rule, ``mass_grid`` points per axis): the NLL is meaningful only if it is ~1.
    """
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)  # for the evaluation too
    try:
        return _run_task(task, seconds, seed, n_test, n_samples, mass_grid, progress, device)
    finally:
        torch.set_num_threads(threads)


def _run_task(task, seconds, seed, n_test, n_samples, mass_grid, progress, device) -> dict:
    family, dataset, targets = TASKS[task]
    torch.manual_seed(seed)
    model = FAMILIES[family](dim=2)
    data = toy(dataset, TRAIN_SIZE, seed=seed)
    result = pyprobtf.fit(model, data, max_seconds=seconds, seed=seed, device=device, progress=progress)
    model.cpu()
    test = toy(dataset, n_test, seed=TEST_SEED)
    start = time.perf_counter()
    nll = metrics.nll(model, test)
    row = {"task": task, "family": family, "data": dataset, "seed": seed, "budget_s": seconds,
           "steps": result.steps, "train_s": round(result.seconds, 1), "stopped": result.stopped,
           "test_nll": nll, "eval_s": None}
    if dataset in ("8gaussians", "checkerboard"):
        true = -float(toy_log_prob(dataset, test).double().mean())
        row.update(true_nll=true, gap=nll - true)
    if dataset == "8gaussians":
        centres, std = toy_modes(dataset)
        samples = model.sample(n_samples, seed=seed)
        coverage = metrics.mode_coverage(samples, centres)
        row.update(quality=metrics.mode_quality(samples, centres, std), coverage_min=float(coverage.min()),
                   coverage_max=float(coverage.max()),
                   energy=metrics.energy_distance(samples, toy(dataset, n_samples, seed=TEST_SEED + 1)))
    if mass_grid:
        row["mass"] = _mass(model, BOXES[dataset], mass_grid)
    row["eval_s"] = round(time.perf_counter() - start, 1)
    row["target"], row["passed"] = _judge(row, targets)
    return row


def _mass(model, box, n_grid: int) -> float:
    axes = [(torch.arange(n_grid, dtype=torch.float64) + 0.5) / n_grid * (hi - lo) + lo for lo, hi in box]
    grid = torch.cartesian_prod(*axes).to(model.dtype)
    cell = math.prod((hi - lo) / n_grid for lo, hi in box)
    log_p = torch.cat([model.log_prob(chunk).detach() for chunk in grid.split(4096)])
    return float(log_p.double().exp().sum()) * cell


def _judge(row: dict, targets: dict) -> tuple[str, bool | None]:
    parts, ok = [], True
    if "nll_max" in targets:
        parts.append(f"NLL <= {targets['nll_max']}")
        ok &= row["test_nll"] <= targets["nll_max"]
    if "gap_max" in targets:
        parts.append(f"abs(NLL - true) <= {targets['gap_max']}")
        ok &= abs(row["gap"]) <= targets["gap_max"]
    if "quality_min" in targets:
        parts.append(f"quality >= {targets['quality_min']}")
        ok &= row["quality"] >= targets["quality_min"]
    if "coverage_range" in targets:
        lo, hi = targets["coverage_range"]
        parts.append(f"every mode in [{lo}, {hi}]")
        ok &= lo <= row["coverage_min"] and row["coverage_max"] <= hi
    return ("; ".join(parts) or "(none)"), (bool(ok) if parts else None)


def run(device: str = "cpu", quick: bool = False, *, seconds: float = 90.0, seeds=(0,), tasks=None,
        num_threads: int | None = None, progress: bool = False) -> list[dict]:
    rows = []
    for task in tasks or TASKS:
        for seed in seeds:
            if quick:
                row = run_task(task, seconds=2.0, seed=seed, n_test=100, n_samples=400,
                               num_threads=num_threads or 1, device=device)
            else:
                row = run_task(task, seconds=seconds, seed=seed, num_threads=num_threads, progress=progress,
                               device=device, mass_grid=100)
            print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            rows.append(row)
    return rows


COLUMNS = ["task", "seed", "budget_s", "steps", "stopped", "test_nll", "true_nll", "gap", "quality", "coverage_min",
           "coverage_max", "energy", "mass", "eval_s", "target", "passed"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="2-second trainings (a smoke run; targets not expected)")
    parser.add_argument("--seconds", type=float, default=90.0, help="training budget per task (default 90)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads while training")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=None, help="folder for the result tables (default benchmarks/results)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args.device, args.quick, seconds=args.seconds, seeds=args.seeds, tasks=args.tasks,
               num_threads=args.threads, progress=args.progress)
    notes = [
        "Each task trains the family from its defaults (Family(dim=2), fit defaults) with "
        f"fit(..., max_seconds={2.0 if args.quick else args.seconds}) on {TRAIN_SIZE} training points, "
        f"torch threads while training: {args.threads or torch.get_num_threads()}.",
        f"Test NLL on toy(name, 2000, seed={TEST_SEED}); ODE families by log_prob (64 RK4 steps, exact divergence).",
        "quality: share of 5000 samples within 3 std (0.6) of their nearest mode; coverage: share nearest each "
        "mode (min and max over the 8 modes); energy: energy distance to 5000 fresh data points.",
        "mass: the learned density integrated over a box holding the data (100 x 100 midpoint rule): "
        "an NLL is only meaningful when this is ~1.",
        "A time budget makes the number of steps depend on the machine's speed and load: see steps.",
    ]
    notes.append(_common.load_note(load_before))
    _common.publish("families", args.device, rows, COLUMNS, notes, Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
