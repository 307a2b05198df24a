"""Benchmark: pyprobtf.integrations (diffusers, k-diffusion, torchdiffeq) against the code they replace.

Part 1, "step": the sampling loop with the model replaced by an identity (the
network costs nothing), so only the schedulers' / samplers' own work is timed:
diffusers' schedulers against the Fused* subclasses (a 25-step pipeline loop:
set_timesteps, scale_model_input, step), k-diffusion's samplers against
pyprobtf.integrations.k_diffusion's, at 4x64x64 latents, batch 1 and 16. The
numbers are per step.

Part 2, "end-to-end": the same loops with a small diffusers UNet2DModel (random
weights, 4x32x32 latents) in them, batch 1 and 16: the wall-clock ratio a user gets, and the share
of the time the network takes (the network alone, 25 calls, over the loop).

Part 3, "odeint": torchdiffeq's odeint against pyprobtf.integrations.torchdiffeq
on a neural ODE (an MLP field, 2-D and 64-d states, batch 256): dopri5 and rk4,
time and function evaluations (NFE).

Needs diffusers, torchdiffeq and k-diffusion's sampling module (k-diffusion installed
with --no-deps, plus scipy, torchsde, tqdm; loaded without its package __init__).

Usage: python benchmarks/bench_diffusion_stack.py [--device cpu|cuda] [--quick] [--out DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "diffusion_stack"


def _k_diffusion_sampling():
    """k-diffusion's sampling.py without its package __init__ (see bench_solvers._k_diffusion_sampling)."""
    import bench_solvers

    return bench_solvers._k_diffusion_sampling()


def _emit(rows: list, row: dict) -> None:
    """Keep a result row and show it at once (a long run reports as it goes)."""
    rows.append(row)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, file=sys.stderr, flush=True)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _paired(fns: dict, repeats: int, device: str) -> dict:
    """Median seconds of each callable, run alternately ``repeats`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _alternating(fns: dict, repeats: int, block_s: float, device: str, budget_s: float) -> dict:
    """Median seconds per call of each callable, timed in alternating blocks of several calls.

    A block repeats one callable enough times to last about ``block_s`` (calibrated on the
    slowest); the callables take turns block by block, so a change of machine load between
    blocks hits both sides alike, which timing one side fully before the other does not.
    Fewer blocks when ``repeats`` of them would take over ``budget_s``; a callable too slow
    for even that (k-diffusion's Brownian tree at batch 16) is timed once more, alternately.
    """
    first = {name: _timed(fn, device) for name, fn in fns.items()}  # warm-up: lazy imports, caches
    slowest = max(first.values())
    if 2 * len(fns) * slowest > budget_s:
        return {name: _timed(fn, device) for name, fn in fns.items()}
    calls = max(1, int(block_s / max(slowest, 1e-9)))
    repeats = max(1, min(repeats, int(budget_s / (len(fns) * calls * slowest))))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ----------------------------------------------------------------------------- loops


def diffusers_loop(scheduler, model, x, steps):
    scheduler.set_timesteps(steps, device=x.device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    generator = torch.Generator(x.device).manual_seed(0)
    scale = getattr(scheduler, "scale_model_input", None)  # flow matching has none
    kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
    for t in scheduler.timesteps:
        out = model(x if scale is None else scale(x, t), t)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


DIFFUSERS = [  # (label, class name, config, model evaluations per step)
    ("Euler", "EulerDiscreteScheduler", {}, 1),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}, 1),
    ("Heun", "HeunDiscreteScheduler", {}, 2),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {}, 1),
    ("DPM-Solver++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 1),
    # clip_sample=False as Stable Diffusion's DDIM config (diffusers' default, True, runs the parent's step)
    ("DDIM eta=0", "DDIMScheduler", {"clip_sample": False}, 1),
    ("flow-match Euler", "FlowMatchEulerDiscreteScheduler", {}, 1),
    ("UniPC bh2 order 2", "UniPCMultistepScheduler", {}, 1),
    ("UniPC bh2 order 3", "UniPCMultistepScheduler", {"solver_order": 3}, 1),
]
K_DIFFUSION = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_lms",
               "sample_dpmpp_2m", "sample_dpmpp_2m_sde"]
E2E_DIFFUSERS = ["DPM-Solver++ 2M"]
E2E_K_DIFFUSION = ["sample_euler_ancestral"]


def _unet(quick: bool, device: str):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    size = 8 if quick else 32
    channels = (8, 16) if quick else (32, 64)
    unet = UNet2DModel(sample_size=size, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=channels, norm_num_groups=4 if quick else 8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet.eval().to(device), size


def _schedulers(label):
    import diffusers

    from pyprobtf.integrations import diffusers as fused

    _, cls, config, nfe = next(d for d in DIFFUSERS if d[0] == label)
    parent = getattr(diffusers, cls)(**config)
    return parent, getattr(fused, "Fused" + cls).from_config(parent.config), nfe


def run(device: str = "cpu", quick: bool = False, parts=("step", "end-to-end", "odeint"), batches=None):
    from pyprobtf.integrations import k_diffusion as ours_kd
    from pyprobtf.integrations import torchdiffeq as ours_tde

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    steps = 3 if quick else 25
    step_repeats, step_block_s, budget_s = (3, 0.01, 2.0) if quick else (9, 0.05, 20.0)
    batches = batches or ((1, 2) if quick else (1, 16))
    side = 8 if quick else 64
    rows, notes = [], []
    kd = _k_diffusion_sampling()

    def identity(x, t):
        return x

    with torch.no_grad():
        # ---------------------------------------------------------------- part 1: step overhead
        for batch in batches if "step" in parts else ():
            x = torch.randn(batch, 4, side, side, device=device)
            for label, *_ in (DIFFUSERS[:2] if quick else DIFFUSERS):
                parent, fused, nfe = _schedulers(label)
                got = _alternating({"peer": lambda: diffusers_loop(parent, identity, x, steps),
                                    "ours": lambda: diffusers_loop(fused, identity, x, steps)},
                                   step_repeats, step_block_s, device, budget_s)
                peer_s, ours_s = got["peer"], got["ours"]
                _emit(rows, {"part": "step", "library": "diffusers", "sampler": label, "batch": batch,
                             "peer ms/step": peer_s / steps * 1e3, "pyprobtf ms/step": ours_s / steps * 1e3,
                             "speedup": peer_s / ours_s})
            sigmas = kd.get_sigmas_karras(steps, 0.03, 14.6, device=device)
            x_kd = x * sigmas[0]
            for name in (K_DIFFUSION[:2] if quick else K_DIFFUSION):
                peer, ours = getattr(kd, name), getattr(ours_kd, name)
                got = _alternating({"peer": lambda: peer(identity, x_kd, sigmas, disable=True),
                                    "ours": lambda: ours(identity, x_kd, sigmas, disable=True)},
                                   step_repeats, step_block_s, device, budget_s)
                peer_s, ours_s = got["peer"], got["ours"]
                _emit(rows, {"part": "step", "library": "k-diffusion", "sampler": name, "batch": batch,
                             "peer ms/step": peer_s / steps * 1e3, "pyprobtf ms/step": ours_s / steps * 1e3,
                             "speedup": peer_s / ours_s})

        # ---------------------------------------------------------------- part 2: end to end with a UNet
        unet, size = _unet(quick, device) if "end-to-end" in parts else (None, None)

        def unet_model(x, t):
            return unet(x, t).sample

        def unet_denoiser(x, sigma):  # k-diffusion's eps wrapper: D = x - sigma * eps(x / sqrt(sigma^2 + 1), t)
            s = sigma.reshape(-1, 1, 1, 1)
            return x - s * unet((x / (s * s + 1).sqrt()), sigma * 40.0).sample

        repeats = 1 if quick else 7  # medians: a loop with the network varies by a few % between runs
        for batch in batches if "end-to-end" in parts else ():
            x = torch.randn(batch, 4, size, size, device=device)
            t_model = torch.full((batch,), 500.0, device=device)
            for label in E2E_DIFFUSERS[:1] if quick else E2E_DIFFUSERS:
                parent, fused, nfe = _schedulers(label)
                got = _paired({"peer": lambda: diffusers_loop(parent, unet_model, x, steps),
                               "ours": lambda: diffusers_loop(fused, unet_model, x, steps),
                               "model": lambda: [unet_model(x, t_model) for _ in range(steps * nfe)]},
                              repeats, device)
                _emit(rows, {"part": "end-to-end", "library": "diffusers", "sampler": label, "batch": batch,
                             "peer ms": got["peer"] * 1e3, "pyprobtf ms": got["ours"] * 1e3,
                             "speedup": got["peer"] / got["ours"], "model share": got["model"] / got["peer"]})
            sigmas = kd.get_sigmas_karras(steps, 0.03, 14.6, device=device)
            x_kd = x * sigmas[0]
            for name in E2E_K_DIFFUSION[:1] if quick else E2E_K_DIFFUSION:
                peer, ours = getattr(kd, name), getattr(ours_kd, name)
                got = _paired({"peer": lambda: peer(unet_denoiser, x_kd, sigmas, disable=True),
                               "ours": lambda: ours(unet_denoiser, x_kd, sigmas, disable=True),
                               "model": lambda: [unet_denoiser(x_kd, sigmas[0] * x_kd.new_ones(batch))
                                                 for _ in range(steps)]},
                              repeats, device)
                _emit(rows, {"part": "end-to-end", "library": "k-diffusion", "sampler": name, "batch": batch,
                             "peer ms": got["peer"] * 1e3, "pyprobtf ms": got["ours"] * 1e3,
                             "speedup": got["peer"] / got["ours"], "model share": got["model"] / got["peer"]})

        # ---------------------------------------------------------------- part 3: torchdiffeq on a neural ODE
        import torchdiffeq

        for dim in ((2,) if quick else (2, 64)) if "odeint" in parts else ():
            torch.manual_seed(dim)
            hidden = 32 if quick else 128
            net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(),
                                      torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                      torch.nn.Linear(hidden, dim)).to(device)
            counter = {"n": 0}

            def field(t, y, net=net, counter=counter):
                counter["n"] += 1
                return net(torch.cat([y, t.expand(y.shape[0], 1).to(y.dtype)], 1))

            y0 = torch.randn(32 if quick else 256, dim, device=device)
            t = torch.linspace(0.0, 1.0, 5, device=device)
            for method, options, tol in [("dopri5", None, (1e-5, 1e-6)), ("rk4", {"step_size": 0.05}, (1e-7, 1e-9))]:
                calls = {}
                for impl, solve in (("torchdiffeq", torchdiffeq.odeint), ("pyprobtf", ours_tde.odeint)):
                    counter["n"] = 0
                    solve(field, y0, t, rtol=tol[0], atol=tol[1], method=method, options=options)
                    calls[impl] = counter["n"]
                got = _alternating({"peer": lambda: torchdiffeq.odeint(field, y0, t, rtol=tol[0], atol=tol[1],
                                                                       method=method, options=options),
                                    "ours": lambda: ours_tde.odeint(field, y0, t, rtol=tol[0], atol=tol[1],
                                                                    method=method, options=options)},
                                   step_repeats, step_block_s, device, budget_s)
                peer_s, ours_s = got["peer"], got["ours"]
                _emit(rows, {"part": "odeint", "library": "torchdiffeq", "sampler": f"{method} {dim}-d",
                             "batch": y0.shape[0], "peer ms": peer_s * 1e3, "pyprobtf ms": ours_s * 1e3,
                             "speedup": peer_s / ours_s, "peer NFE": calls["torchdiffeq"],
                             "pyprobtf NFE": calls["pyprobtf"]})

    notes.append(f"{steps} steps per loop; latents {4}x{side}x{side} (part 1)" + (
        f", UNet2DModel at 4x{size}x{size} (part 2: blocks {unet.config.block_out_channels}, one resnet per "
        "block, random weights)." if unet is not None else "."))
    if "step" in parts:
        notes.append("step: the whole pipeline loop (set_timesteps, scale_model_input, step) with an identity model, "
                     f"per step; speedup = peer time / pyprobtf time: medians of {step_repeats} alternating blocks of "
                     f"about {step_block_s * 1e3:.0f} ms each (peer, ours, peer, ...; fewer where they would take over "
                     f"{budget_s:.0f} s, one alternating call after a warm-up where one call takes over "
                     f"{budget_s / 4:.0f} s), in one process.")
        notes.append("k-diffusion's sample_euler, sample_heun and sample_dpm_2 draw randn_like(x) at every step, "
                     "used only when churning (s_churn > 0; here 0): part of the cost their users pay, which "
                     "pyprobtf's do not.")
    if "end-to-end" in parts:
        notes.append(f"end-to-end: median of {repeats} alternating runs; model share = the network alone (the same "
                     "number of calls) over the peer's loop time: the most any scheduler can save is 1 - model share.")
    if load_before is not None:
        notes.append(_common.load_note(load_before))
    columns = ["part", "library", "sampler", "batch", "peer ms/step", "pyprobtf ms/step", "peer ms", "pyprobtf ms",
               "speedup", "model share", "peer NFE", "pyprobtf NFE"]
    return rows, columns, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, three steps, short timings")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's); the results file is then "
                             f"{NAME}-threadsN-*")
    parser.add_argument("--parts", default="step,end-to-end,odeint",
                        help="comma-separated subset of step,end-to-end,odeint (the file name then names them)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16)")
    args = parser.parse_args(argv)
    parts = tuple(args.parts.split(","))
    batches = None if args.batches is None else tuple(int(b) for b in args.batches.split(","))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pinned = _common.pin_allocator()
    rows, columns, notes = run(args.device, args.quick, parts, batches)
    if pinned and args.device == "cpu":
        notes.append(_common.ALLOCATOR_NOTE)
    name = NAME if args.threads is None else f"{NAME}-threads{args.threads}"
    if args.parts != parser.get_default("parts"):
        name += "-" + "-".join(parts)
    if batches is not None:
        name += "-batch" + "-".join(map(str, batches))
    _common.publish(name, args.device, rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
