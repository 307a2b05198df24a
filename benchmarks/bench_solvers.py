"""Benchmark: fused solver-step updates (pyprobtf.ops.lincomb) against eager PyTorch and the peers' samplers.

Part 1, "update": one solver step's state arithmetic, with the model's outputs
precomputed (only the update is timed), side by side:
- eager: the same update written in PyTorch the way k-diffusion (Euler, Heun,
  DPM-Solver++(2M), Euler-ancestral: sampling.py), diffusers (DDIMScheduler.step)
  and torchdiffeq (rk4_alt_step_func plus the solver's y0 + dy) write it, noise
  from torch.randn_like; Euler-Maruyama and Langevin as the textbook update
  ``x + f dt + g sqrt(dt) * randn_like(x)``;
- torch.compile: the eager update compiled by Inductor (mode="default",
  dynamic=False), split into one compiled function per stretch between model
  calls (Heun: 2, RK4: 4) so that the states a model reads are written; its
  noise is torch.randn_like, which Inductor draws inside its kernel. Its first
  call (the compilation) is reported as "compile s", not timed. Default in full
  runs; --quick runs it only with --compile;
- pyprobtf[<backend>]: the public step function of pyprobtf.solvers, whose state
  updates are lincomb passes with the noise drawn inside the kernel.
"passes" counts the full-size tensors each implementation reads and writes
(eager: per op; ours: per lincomb), and "% of copy BW" (GPU) relates ours to a
device-to-device copy.

Part 2, "sampler" (optional `bench` extra): whole sampling loops on a cheap model
(the exact denoiser of N(0, I) data, D(x, sigma) = x / (1 + sigma^2), one pass),
k-diffusion's sample_euler / sample_heun / sample_dpmpp_2m / sample_euler_ancestral
and torchdiffeq's fixed-grid odeint (euler, midpoint, rk4 on dx/dt = -x) against
pyprobtf.solvers' loops on the same grids. k-diffusion's package imports its
training stack (torchvision, clip, kornia, wandb, ...); install it with
``pip install --no-deps k-diffusion`` next to scipy, torchsde and tqdm: this script
loads only its sampling module (see _k_diffusion_sampling).

Usage: python benchmarks/bench_solvers.py [--device cpu|cuda] [--quick] [--out DIR] [--threads N]
       [--compile | --no-compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf import solvers  # noqa: E402

NAME = "solvers"
# (B, C, H, W) = 4M float32 elements: a batch of latent-diffusion states, the target size.
SHAPE = (16, 4, 256, 256)
QUICK_SHAPE = (4, 4, 64, 64)


# ----------------------------------------------------------------------------- eager updates
# Each maker gets the state x and three "model outputs" a, b, c shaped like it, and returns
# (eager update, our update, passes eager, passes ours). Sigmas are 0-d tensors in the eager
# k-diffusion code (k-diffusion indexes a sigma tensor), Python floats in ours. The eager update is
# written as functions of tensors, one per stretch between model calls, each decorated with `wrap`:
# unchanged for eager, torch.compile for the compiled contender.


def _t(v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=like.dtype, device=like.device)


def _append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:  # k-diffusion's utils.append_dims
    return v[(...,) + (None,) * (ndim - v.ndim)]


def _to_d(x, sigma, denoised):  # k-diffusion's sampling.to_d
    return (x - denoised) / _append_dims(sigma, x.ndim)


class _Outputs:
    """A "model" that returns precomputed outputs in turn: only the update is timed."""

    def __init__(self, *outputs):
        self.outputs = outputs
        self.i = -1

    def __call__(self, x, t):
        self.i = (self.i + 1) % len(self.outputs)
        return self.outputs[self.i]


def _plain(fn):
    return fn


def _euler(x, a, b, c, backend, wrap=_plain):
    s, s_next = 2.0, 1.6
    sigma, sigma_next = _t(s, x), _t(s_next, x)

    @wrap
    def update(x, a):
        d = _to_d(x, sigma, a)
        return x + d * (sigma_next - sigma)
    field = solvers.edm_field(_Outputs(a))
    return (lambda: update(x, a)), (lambda: solvers.euler_step(field, x, s, s_next, backend=backend)), 10, 3


def _heun(x, a, b, c, backend, wrap=_plain):
    s, s_next = 2.0, 1.6
    sigma, sigma_next = _t(s, x), _t(s_next, x)

    # sample_heun's body (s_churn = 0), split at its second model call (b = model(x_2)).
    @wrap
    def before_model(x, a):
        d = _to_d(x, sigma, a)
        dt = sigma_next - sigma
        return d, dt, x + d * dt

    @wrap
    def after_model(x, d, dt, x_2, b):
        d_2 = _to_d(x_2, sigma_next, b)
        d_prime = (d + d_2) / 2
        return x + d_prime * dt

    def update():
        d, dt, x_2 = before_model(x, a)
        return after_model(x, d, dt, x_2, b)
    field = solvers.edm_field(_Outputs(a, b))
    return update, (lambda: solvers.heun_step(field, x, s, s_next, backend=backend)), 25, 8


def _dpmpp_2m(x, a, b, c, backend, wrap=_plain):
    s_prev, s, s_next = 2.6, 2.0, 1.6
    sigmas = torch.tensor([s_prev, s, s_next], dtype=x.dtype, device=x.device)

    @wrap
    def update(x, a, b):  # sample_dpmpp_2m's second-order branch
        sigma_fn = (lambda t: t.neg().exp())
        t_fn = (lambda sigma: sigma.log().neg())
        t, t_next = t_fn(sigmas[1]), t_fn(sigmas[2])
        h = t_next - t
        h_last = t - t_fn(sigmas[0])
        r = h_last / h
        denoised_d = (1 + 1 / (2 * r)) * a - (1 / (2 * r)) * b
        return (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
    field = solvers.edm_field(_Outputs(a))
    return (lambda: update(x, a, b)), \
        (lambda: solvers.dpmpp_2m_step(field, x, s, s_next, (b, s_prev), backend=backend)[0]), 14, 4


def _euler_ancestral(x, a, b, c, backend, wrap=_plain):
    s, s_next = 2.0, 1.6
    sigma = _t(s, x)
    down, up = solvers.ancestral_sigmas(s, s_next)
    sigma_down, sigma_up = _t(down, x), _t(up, x)

    @wrap
    def update(x, a):  # sample_euler_ancestral's body, default noise sampler
        d = _to_d(x, sigma, a)
        y = x + d * (sigma_down - sigma)
        return y + torch.randn_like(y) * 1.0 * sigma_up
    field = solvers.edm_field(_Outputs(a))
    return (lambda: update(x, a)), \
        (lambda: solvers.euler_ancestral_step(field, x, s, s_next, seed=1, backend=backend)), 18, 3


def _euler_maruyama(x, a, b, c, backend, wrap=_plain):
    dt, g = 0.01, 0.5

    @wrap
    def update(x, a):
        return x + a * dt + g * math.sqrt(dt) * torch.randn_like(x)
    drift = _Outputs(a)
    return (lambda: update(x, a)), \
        (lambda: solvers.euler_maruyama_step(drift, lambda x, t: g, x, 0.0, dt, seed=1, backend=backend)), 12, 3


def _langevin(x, a, b, c, backend, wrap=_plain):
    step = 0.01

    @wrap
    def update(x, a):
        return x + step * a + math.sqrt(2 * step) * torch.randn_like(x)
    score = _Outputs(a)
    return (lambda: update(x, a)), (lambda: solvers.langevin_step(score, x, 0.0, step, seed=1, backend=backend)), \
        12, 3


def _ddim(x, a, b, c, backend, wrap=_plain, eta=0.0):
    schedule = solvers.vp_linear()
    t, t_prev = 0.5, 0.45
    alpha_prod_t, alpha_prod_t_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)

    @wrap
    def update(x, a):  # diffusers DDIMScheduler.step, prediction_type="epsilon", no clipping
        beta_prod_t = 1 - alpha_prod_t
        pred_original_sample = (x - beta_prod_t ** 0.5 * a) / alpha_prod_t ** 0.5
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** 0.5
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * a
        prev_sample = alpha_prod_t_prev ** 0.5 * pred_original_sample + pred_sample_direction
        if eta > 0:
            prev_sample = prev_sample + std_dev_t * torch.randn_like(x)
        return prev_sample
    model = _Outputs(a)
    ours = (lambda: solvers.ddim_step(model, x, t, t_prev, schedule, eta=eta, seed=1, backend=backend))
    return (lambda: update(x, a)), ours, (20 if eta > 0 else 14), 3


def _rk4(x, a, b, c, backend, wrap=_plain):
    t0, dt = 0.0, 0.1
    k1, k2, k3, k4 = (a, b, c, x)

    # torchdiffeq's rk4_alt_step_func (the 3/8 rule) with k1..k4 given, then the solver's y0 + dy, split at
    # its model calls: each stage state is written, as the next model call reads it.
    @wrap
    def stage_2(x, k1):
        return x + dt * k1 * (1 / 3)

    @wrap
    def stage_3(x, k1, k2):
        return x + dt * (k2 - k1 * (1 / 3))

    @wrap
    def stage_4(x, k1, k2, k3):
        return x + dt * (k1 - k2 + k3)

    @wrap
    def last(x, k1, k2, k3, k4):
        dy = (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
        return x + dy

    def update():
        return stage_2(x, k1), stage_3(x, k1, k2), stage_4(x, k1, k2, k3), last(x, k1, k2, k3, k4)
    field = _Outputs(k1, k2, k3, k4)
    return update, (lambda: solvers.rk4_step(field, x, t0, t0 + dt, backend=backend)), 46, 14


UPDATES = {
    "euler (EDM)": _euler,
    "heun (EDM)": _heun,
    "dpmpp_2m (EDM)": _dpmpp_2m,
    "euler_ancestral (EDM)": _euler_ancestral,
    "ddim eta=0 (VP)": _ddim,
    "ddim eta=1 (VP)": (lambda *args, **kwargs: _ddim(*args, **kwargs, eta=1.0)),
    "rk4": _rk4,
    "euler_maruyama": _euler_maruyama,
    "langevin": _langevin,
}
QUICK_UPDATES = ("heun (EDM)", "euler_maruyama")


# ----------------------------------------------------------------------------- torch.compile


EAGER, COMPILED = "eager", "torch.compile"
# Full-size tensors the compiled updates read and write when Inductor fuses each compiled function into
# one kernel (as its generated code does here): the inputs, the outputs, and for Heun and RK4 the
# states written at the model calls (split there: the next model call reads them).
COMPILED_PASSES = {
    "euler (EDM)": 3, "heun (EDM)": 4 + 5, "dpmpp_2m (EDM)": 4, "euler_ancestral (EDM)": 3, "ddim eta=0 (VP)": 3,
    "ddim eta=1 (VP)": 3, "rk4": 3 + 4 + 5 + 6, "euler_maruyama": 3, "langevin": 3,
}
_NOISE = "noise: torch.randn_like, drawn inside the compiled kernel (Inductor's RNG)"
COMPILED_NOTES = {
    "heun (EDM)": "2 compiled functions, split at the second model call",
    "euler_ancestral (EDM)": _NOISE, "ddim eta=1 (VP)": _NOISE, "euler_maruyama": _NOISE, "langevin": _NOISE,
    "rk4": "4 compiled functions, split at the model calls",
}


def _compile(fn):
    return torch.compile(fn, mode="default", dynamic=False)


# ----------------------------------------------------------------------------- peers' samplers


def _k_diffusion_sampling():
    """k-diffusion's sampling.py, loaded without its package __init__ (which imports the training stack).

    Its only package-internal import is utils.append_dims, provided here as k-diffusion defines it.
    Needs k-diffusion (installed with --no-deps), scipy, torchsde, torchdiffeq and tqdm.
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    package = types.ModuleType("_k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("_k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"_k_diffusion": package, "_k_diffusion.utils": utils})
    module_spec = importlib.util.spec_from_file_location("_k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["_k_diffusion.sampling"] = module
    module_spec.loader.exec_module(module)
    return module


def _available(loader) -> bool:
    try:
        loader()
        return True
    except Exception:  # noqa: BLE001 (a missing or broken peer must not stop the benchmark)
        return False


def _samplers(x0, n_steps, backend):
    """(sampler, peer, peer function, our function) for the installed peers."""
    rows = []

    def denoiser_ours(x, sigma):
        return x * (1.0 / (1.0 + sigma * sigma))

    def denoiser_peer(x, sigma):  # k-diffusion passes sigma as a (B,) tensor
        return x * _append_dims(1.0 / (1.0 + sigma * sigma), x.ndim)

    if _available(_k_diffusion_sampling):
        kd = _k_diffusion_sampling()
        sigmas_list = solvers.karras_sigmas(n_steps, 0.002, 80.0)
        sigmas = torch.tensor(sigmas_list, dtype=x0.dtype, device=x0.device)
        field = solvers.edm_field(denoiser_ours, backend=backend)
        for name, peer, ours in [
            ("euler", kd.sample_euler, lambda: solvers.sample_ode(field, x0, sigmas_list, method="euler",
                                                                  backend=backend)),
            ("heun", kd.sample_heun, lambda: solvers.sample_ode(field, x0, sigmas_list, method="heun",
                                                                backend=backend)),
            ("dpmpp_2m", kd.sample_dpmpp_2m, lambda: solvers.sample_ode(field, x0, sigmas_list, method="dpmpp_2m",
                                                                        backend=backend)),
            ("euler_ancestral", kd.sample_euler_ancestral,
             lambda: solvers.sample_euler_ancestral(field, x0, sigmas_list, seed=1, backend=backend)),
        ]:
            rows.append((f"{name} (EDM, {n_steps} steps)", "k-diffusion",
                         (lambda peer=peer: peer(denoiser_peer, x0, sigmas, disable=True)), ours))
    if _available(lambda: importlib.import_module("torchdiffeq")):
        from torchdiffeq import odeint

        times = solvers.uniform_times(n_steps, 0.0, 1.0)
        t = torch.tensor(times, dtype=x0.dtype, device=x0.device)
        for method in ("euler", "midpoint", "rk4"):
            rows.append((f"{method} (dx/dt = -x, {n_steps} steps)", "torchdiffeq",
                         (lambda method=method: odeint(lambda t, x: -x, x0, t, method=method)[-1]),
                         (lambda method=method: solvers.sample_ode(lambda x, t: -x, x0, times, method=method,
                                                                   backend=backend))))
    return rows


# ----------------------------------------------------------------------------- run


def run(device: str = "cpu", quick: bool = False, compile_peer: bool | None = None):
    """(rows, columns, notes) of the benchmark on ``device``; ``compile_peer`` (default: not ``quick``) adds
    the torch.compile contender."""
    if compile_peer is None:
        compile_peer = not quick
    statuses = pyprobtf.ops.available_backends()
    backends = [b for b in ("cpp", "triton", "cuda") if device in statuses[b].devices]
    if device == "cpu" and "triton" in backends:
        backends.remove("triton")  # the interpreter is for tests, not speed
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    min_run_time = 0.05 if quick else 0.5
    shape = QUICK_SHAPE if quick else SHAPE
    gen = torch.Generator().manual_seed(0)
    x, a, b, c = (torch.randn(shape, generator=gen).to(device) for _ in range(4))
    bandwidth = _common.copy_bandwidth(device) if device == "cuda" else None
    nbytes = x.numel() * x.element_size()
    rows = []
    copy_ms = _common.measure(lambda: x.clone(), min_run_time=min_run_time) * 1e3
    rows.append({"part": "update", "step": "copy (x.clone())", "impl": "eager", "ms": copy_ms, "passes": 2})
    compile_failure = None
    with torch.no_grad():
        for name in (QUICK_UPDATES if quick else UPDATES):
            make = UPDATES[name]
            eager, _, eager_passes, _ = make(x, a, b, c, "reference")
            timings = [(EAGER, _common.measure(eager, min_run_time=min_run_time), eager_passes)]
            compile_s = None
            if compile_peer and compile_failure is None:
                torch._dynamo.reset()  # a fresh compile per step, never a recompilation limit
                compiled = make(x, a, b, c, "reference", wrap=_compile)[0]
                compile_s, compile_failure = _common.first_call(compiled)
                if compile_failure is None:
                    timings.append((COMPILED, _common.measure(compiled, min_run_time=min_run_time),
                                    COMPILED_PASSES[name]))
                else:
                    print(f"torch.compile failed, its rows are skipped: {compile_failure}", file=sys.stderr)
            for backend in backends:
                _, ours, _, our_passes = make(x, a, b, c, backend)
                timings.append((f"pyprobtf[{backend}]", _common.measure(ours, min_run_time=min_run_time),
                                our_passes))
            eager_s = timings[0][1]
            compiled_s = timings[1][1] if len(timings) > 1 and timings[1][0] == COMPILED else None
            for impl, seconds, passes in timings:
                row = {"part": "update", "step": name, "impl": impl, "ms": seconds * 1e3,
                       "speedup vs eager": eager_s / seconds, "passes": passes}
                if compiled_s is not None:
                    row["speedup vs torch.compile"] = compiled_s / seconds
                if impl == COMPILED:
                    row["compile s"] = compile_s
                    row["note"] = COMPILED_NOTES.get(name)
                if bandwidth is not None and impl not in (EAGER, COMPILED):
                    row["% of copy BW"] = 100 * passes * nbytes / seconds / bandwidth
                rows.append(row)

        n_steps = 2 if quick else 10
        x0 = x * 80.0
        for step, peer_name, peer, ours_fn in _samplers(x0, n_steps, backends[0] if backends else "reference"):
            if quick and rows[-1].get("part") == "sampler":
                break  # one peer comparison is enough for a smoke run
            peer_s = _common.measure(peer, min_run_time=min_run_time)
            ours_s = _common.measure(ours_fn, min_run_time=min_run_time)
            rows.append({"part": "sampler", "step": step, "impl": peer_name, "ms": peer_s * 1e3,
                         "speedup vs eager": 1.0})
            rows.append({"part": "sampler", "step": step, "impl": f"pyprobtf[{backends[0]}]", "ms": ours_s * 1e3,
                         "speedup vs eager": peer_s / ours_s})

    notes = [
        f"state: {tuple(shape)} float32 ({x.numel()} elements, {nbytes / 2**20:.2f} MiB per tensor); "
        f"one copy (x.clone(), 2 passes) took {copy_ms:.3f} ms.",
        "update rows: model outputs precomputed, only the state arithmetic is timed; 'speedup vs eager' is "
        "eager time / this time. The eager k-diffusion Euler and Heun updates here omit the "
        "torch.randn_like(x) that k-diffusion's sample_euler and sample_heun draw every step even when "
        "s_churn = 0 (the sampler rows include it).",
        "sampler rows: 'speedup vs eager' is the peer's time / ours, same grid, same cheap model "
        "(k-diffusion gets sigma as a (B,) tensor, as it passes it; ours a float).",
        "torchdiffeq's fixed-grid 'rk4' is the 3/8-rule variant; pyprobtf's is the classical one (same cost "
        "in field evaluations and order).",
    ]
    if compile_peer and compile_failure is None:
        notes.append(
            "torch.compile rows: the eager update's own code compiled by Inductor (mode='default', "
            "dynamic=False, compiled afresh per step), split at the model calls where a step has several "
            "(Heun, RK4), so that the states a model reads are written; 'compile s' is its first call "
            "(compilation included, Inductor's on-disk cache possibly warm), excluded from 'ms'; "
            "'speedup vs torch.compile' is the compiled time / this time. Its noise comes from "
            "torch.randn_like, which Inductor draws inside the kernel (not the same numbers as eager).")
    elif compile_peer:
        notes.append(f"torch.compile failed on this machine, its rows are absent: {compile_failure}")
    else:
        notes.append("torch.compile contender not run (--quick runs it only with --compile).")
    if load_before is not None:
        notes.append(_common.load_note(load_before))
    if bandwidth is not None:
        notes.append(f"measured device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    if not any(r["part"] == "sampler" for r in rows):
        notes.append("peers not installed (k-diffusion with --no-deps, scipy, torchsde, tqdm; torchdiffeq): "
                     "sampler rows skipped")
    columns = ["part", "step", "impl", "ms", "speedup vs eager", "passes"]
    if any(COMPILED == r["impl"] for r in rows):
        columns.insert(columns.index("speedup vs eager") + 1, "speedup vs torch.compile")
        columns += ["compile s", "note"]
    columns += ["% of copy BW"] if bandwidth else []
    return rows, columns, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="two updates, a small state, short timings")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's); the results file is then solvers-threadsN-*")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the torch.compile contender (default: yes, but not with --quick: compiling "
                             "takes longer than the rest of a quick run)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pinned = _common.pin_allocator()
    rows, columns, notes = run(args.device, args.quick, args.compile)
    if pinned and args.device == "cpu":
        notes.append(_common.ALLOCATOR_NOTE)
    name = NAME if args.threads is None else f"{NAME}-threads{args.threads}"
    _common.publish(name, args.device, rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
