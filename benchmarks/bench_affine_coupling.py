"""Benchmark: affine_coupling (forward + log-det, backward, both) against eager PyTorch, torch.compile and peers.

Contenders, timed side by side in one process on the same tensors:
- eager: the plain math as a user writes it, y = x * exp(s) + shift and ladj = s.sum(1) with s = s(scale)
  (pyprobtf.reference.affine_coupling: for float32 its dtype casts are no-ops, so the autograd graph is
  exactly that of the two-line version);
- torch.compile: the same function compiled by Inductor (default mode, dynamic=False, compiled per case);
- pyprobtf[<backend>]: every backend available on the device (not Triton's CPU interpreter);
- peers (optional `bench` extra), each the elementwise part of its own coupling layer,
  given precomputed shift and scale: normflows AffineCoupling ("exp" and "sigmoid"
  maps), nflows AffineCouplingTransform (sigmoid(a + 2) + 1e-3), zuko
  MonotonicAffineTransform (a soft-clipped log-scale, compared with "softclamp").

Three passes per case, each its own row:
- "forward": one call under torch.no_grad();
- "backward (graph kept)": the graph is recorded once, then torch.autograd.grad of (y, ladj) for the three
  inputs with retain_graph=True is timed alone (the same for every contender: no forward inside);
- "forward+backward": recording the graph and torch.autograd.grad, both timed, as in a training step.

Timing: the contenders of a case run in interleaved rounds (a block of calls of a few milliseconds each,
the order rotated every round); a time is the fastest block over the rounds, a speedup the ratio of two
such times. On a machine shared with other jobs (more runnable threads than cores) a block can lose whole
scheduler time slices, and with two threads every parallel region waits for the slower one: the fastest
block is the one that ran undisturbed, which the median is not when most blocks are disturbed.

glibc's allocator: by default this script pins glibc malloc's thresholds (see _common.pin_allocator) so
that no contender pays page faults depending on what ran before it. A user's process does not do that, so
the 4096x256 float32 "exp" case is also run first with glibc's default allocator ("glibc default" rows):
with its dynamic thresholds, freed multi-MB tensors go back to the OS and every fresh output is
page-faulted in again, which costs the fused kernels (which only write fresh outputs) a larger share of
their time than eager PyTorch.

Which backward figure was right (issue 15): the README's 2.01x (measured 2026-11-22 on an Intel Xeon) and
the later 1.6-1.7x time the same thing, autograd.grad with retain_graph=True on a kept graph (this script
did so before too). They differ by (1) the machine, now an AMD EPYC (Zen 4), on which the old C++
backward was bound by its exp arithmetic, not by memory: 0.50 ms at 4096x256 on one thread against
0.35-0.41 ms for a copy of the same bytes (now 0.38 ms, with an AVX-512 loop); (2) load: the old script
published medians of 2-thread timings on a 2-core machine shared with other jobs, which other jobs inflate
unevenly; (3) a backward started by `(y.sum() + ladj.sum()).backward()`, as one tries it first, hands the
kernel an expanded grad_y (strides 0), which the old kernel ran through its strided loop (0.93 ms against
0.50 ms; now staged per row, 0.37 ms).

Usage: python benchmarks/bench_affine_coupling.py [--device cpu|cuda] [--quick] [--threads N] [--no-compile]
       [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf import reference  # noqa: E402
from pyprobtf.ops import affine_coupling  # noqa: E402
from pyprobtf.ops.affine_coupling import _affine_coupling_op, _forward  # noqa: E402

NAME = "affine_coupling"
PASSES = ("forward", "backward (graph kept)", "forward+backward")
EAGER, COMPILED = "eager", "torch.compile"


# ----------------------------------------------------------------------------- contenders
# Each maker takes (x, shift, scale) and returns (forward() -> (y, ladj), inputs that get gradients).


def _eager(scale_fn):
    def make(x, t, a):
        return (lambda: reference.affine_coupling(x, t, a, scale_fn, 2.0, False)), (x, t, a)
    return make


def _compiled(scale_fn):
    def make(x, t, a):
        def plain(x, t, a):
            return reference.affine_coupling(x, t, a, scale_fn, 2.0, False)

        compiled = torch.compile(plain, dynamic=False)
        return (lambda: compiled(x, t, a)), (x, t, a)
    return make


def _ours(scale_fn, backend):
    def make(x, t, a):
        return (lambda: affine_coupling(x, t, a, scale_fn=scale_fn, backend=backend)), (x, t, a)
    return make


def _normflows(scale_map):
    def make(x, t, a):
        from normflows.flows.affine.coupling import AffineCoupling

        # normflows reads shift and scale interleaved from its network's output.
        param = torch.stack([t.detach(), a.detach()], dim=2).reshape(x.shape[0], -1).requires_grad_()
        layer = AffineCoupling(_Constant(param), scale_map=scale_map)
        z1 = x[:, :1]
        return (lambda: _normflows_call(layer, z1, x)), (x, param)
    return make


class _Constant(torch.nn.Module):
    """A "network" that returns precomputed parameters, so only the coupling itself is timed."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, _):
        return self.value


def _normflows_call(layer, z1, x):
    (_, y), ladj = layer([z1, x])
    return y, ladj


def _nflows():
    def make(x, t, a):
        from nflows.transforms.coupling import AffineCouplingTransform

        features = x.shape[1]
        layer = AffineCouplingTransform(
            mask=torch.tensor([1] * features + [-1]),  # all `features` transformed, one identity feature
            transform_net_create_fn=lambda i, o: torch.nn.Identity(),
        )
        params = torch.cat([t.detach(), a.detach()], dim=1).requires_grad_()  # nflows: [shift | scale]
        return (lambda: layer._coupling_transform_forward(x, params)), (x, params)
    return make


def _zuko():
    def make(x, t, a):
        from zuko.transforms import MonotonicAffineTransform

        def forward():
            y, ladj = MonotonicAffineTransform(t, a).call_and_ladj(x)
            return y, ladj.sum(-1)
        return forward, (x, t, a)
    return make


PEERS = {
    "exp": [("normflows", _normflows("exp"))],
    "sigmoid": [("normflows", _normflows("sigmoid")), ("nflows", _nflows())],
    "softclamp": [("zuko", _zuko())],
}


def _peer_available(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001 (a broken peer install must not stop the benchmark)
        return False


# ----------------------------------------------------------------------------- timing


def _pass_functions(make, x, t, a, gy, gl):
    """The three timed functions of one contender: forward, backward alone (graph kept), forward+backward."""
    inputs = [u.detach().clone().requires_grad_() for u in (x, t, a)]
    forward, grad_inputs = make(*inputs)

    def forward_only():
        with torch.no_grad():
            return forward()

    graph = forward()  # recorded once; the backward-alone timing reuses it

    def backward_only():
        return torch.autograd.grad(graph, grad_inputs, (gy, gl), retain_graph=True)

    def forward_backward():
        return torch.autograd.grad(forward(), grad_inputs, (gy, gl))

    return dict(zip(PASSES, (forward_only, backward_only, forward_backward)))


def _interleaved(fns: dict, rounds: int, block: float) -> dict:
    """Seconds per call of each function, one list entry per round; blocks of >= `block` s, order rotated."""
    calls = {}
    for key, fn in fns.items():
        fn()  # warm-up: compilation, allocator caches, lazy imports
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        calls[key] = max(1, int(block / once))
    keys = list(fns)
    times = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            fn, n = fns[key], calls[key]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[key].append((time.perf_counter() - start) / n)
    return times


def _cases(device: str, quick: bool):
    # (rows, cols, dtype, scale_fn); 4096 x 256 float32 is the target shape.
    if quick:
        return [(512, 64, torch.float32, "exp")]
    cases = [(4096, 256, torch.float32, fn) for fn in ("exp", "softclamp", "sigmoid")]
    if device == "cpu":
        cases += [(65536, 2, torch.float32, "exp"), (512, 8192, torch.float32, "exp"),
                  (4096, 256, torch.bfloat16, "exp")]
    else:
        cases += [(65536, 1024, torch.float32, "exp"), (65536, 1024, torch.bfloat16, "exp"),
                  (65536, 2, torch.float32, "exp")]
    return cases


def _ms(seconds: float) -> float:
    return seconds * 1e3


def run_case(device, n_rows, n_cols, dtype, scale_fn, backends, *, compile_peer: bool, rounds: int, block: float,
             allocator: str):
    """Rows (one per pass) of one case, every contender timed side by side."""
    torch._dynamo.reset()  # a fresh compile per case, never a recompilation limit
    gen = torch.Generator().manual_seed(0)
    x, t, a, gy = (torch.randn(n_rows, n_cols, generator=gen).to(device=device, dtype=dtype) for _ in range(4))
    gl = torch.randn(n_rows, generator=gen).to(device=device, dtype=torch.float64 if dtype == torch.float64
                                                else torch.float32)
    contenders = [(EAGER, _eager(scale_fn))]
    if compile_peer:
        contenders.append((COMPILED, _compiled(scale_fn)))
    ours = [f"pyprobtf[{b}]" for b in backends]
    contenders += [(name, _ours(scale_fn, b)) for name, b in zip(ours, backends)]
    peers = [(p, m) for p, m in PEERS[scale_fn] if _peer_available(p) and dtype == torch.float32]
    contenders += peers
    fns = {}
    for name, make in contenders:
        for pass_name, fn in _pass_functions(make, x, t, a, gy, gl).items():
            fns[(name, pass_name)] = fn
    # The traffic floor of the fused backward: a copy moving its bytes (it reads x, scale, grad_y and writes
    # grad_x, grad_scale: 5 elements each; the copy reads 2.5 and writes 2.5).
    src = torch.empty(n_rows * n_cols * 5 // 2, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    fns[("copy of the same bytes", PASSES[1])] = lambda: dst.copy_(src)
    times = _interleaved(fns, rounds, block)

    def best(key):
        return min(times[key])

    def speedup(base, key):
        return best(base) / best(key)

    rows = []
    for pass_name in PASSES:
        row = {"shape": f"{n_rows}x{n_cols}", "dtype": str(dtype).removeprefix("torch."), "scale_fn": scale_fn,
               "allocator": allocator, "pass": pass_name, "eager ms": _ms(best((EAGER, pass_name)))}
        if compile_peer:
            row["torch.compile ms"] = _ms(best((COMPILED, pass_name)))
        for name in ours:
            row[f"{name} ms"] = _ms(best((name, pass_name)))
            row[f"{name} vs eager"] = speedup((EAGER, pass_name), (name, pass_name))
            if compile_peer:
                row[f"{name} vs torch.compile"] = speedup((COMPILED, pass_name), (name, pass_name))
        if pass_name == PASSES[1]:
            row["copy of the same bytes ms"] = _ms(best(("copy of the same bytes", pass_name)))
        row["peers ms (vs eager)"] = ", ".join(
            f"{p} {_ms(best((p, pass_name))):.3g} ({speedup((EAGER, pass_name), (p, pass_name)):.2f}x)"
            for p, _ in peers)
        rows.append(row)
    return rows


def _backends_on(device: str):
    statuses = pyprobtf.ops.available_backends()
    backends = [b for b in ("cpp", "triton", "cuda") if device in statuses[b].devices]
    if device == "cpu" and "triton" in backends:
        backends.remove("triton")  # the interpreter is for tests, not speed
    return backends


def _columns(backends, compile_peer: bool):
    columns = ["shape", "dtype", "scale_fn", "allocator", "pass", "eager ms"]
    columns += ["torch.compile ms"] if compile_peer else []
    for b in backends:
        columns += [f"pyprobtf[{b}] ms", f"pyprobtf[{b}] vs eager"]
        columns += [f"pyprobtf[{b}] vs torch.compile"] if compile_peer else []
    return columns + ["copy of the same bytes ms", "peers ms (vs eager)"]


def run(device: str = "cpu", quick: bool = False, compile_peer: bool = True, default_allocator_first: bool = False):
    """(rows, columns, notes) of the benchmark on ``device``."""
    backends = _backends_on(device)
    rounds, block = (3, 0.002) if quick else (40, 0.005)
    load_before = os.getloadavg()[0]
    rows = []
    cases = _cases(device, quick)
    if default_allocator_first:
        # Before anything pins glibc's thresholds: what a user's process sees.
        rows += run_case(device, *cases[0], backends, compile_peer=compile_peer, rounds=rounds, block=block,
                         allocator="glibc default")
    pinned = device == "cpu" and _common.pin_allocator()
    for case in cases:
        rows += run_case(device, *case, backends, compile_peer=compile_peer, rounds=rounds, block=block,
                         allocator="pinned" if pinned else "default")
    notes = [
        f"torch threads: {torch.get_num_threads()}; {rounds} interleaved rounds per case; times are the fastest "
        f"block of calls (>= {block * 1e3:.0f} ms) over the rounds, speedups their ratios. "
        + _common.load_note(load_before),
        "backward (graph kept): torch.autograd.grad(..., retain_graph=True) on a graph recorded once, timed alone "
        "for every contender. copy of the same bytes: a tensor copy reading and writing the bytes the fused "
        "backward must move (x, scale, grad_y in; grad_x, grad_scale out), the floor of its time; eager PyTorch's "
        "backward moves at least 11 such tensors (three products and a sum) against 5.",
    ]
    notes += _dispatch_overhead(device, backends)
    if pinned:
        notes.append(_common.ALLOCATOR_NOTE)
    notes.append("zuko's MonotonicAffineTransform soft-clips its log-scale as a / (1 + |a / log(1e-3)|), "
                 "compared here with scale_fn='softclamp' (tanh): the same amount of work, not the same function.")
    return rows, _columns(backends, compile_peer), notes


def _dispatch_overhead(device: str, backends) -> list[str]:
    """Per-call cost of the three call paths on a tiny input, where it dominates."""
    if not backends:
        return []
    backend = backends[0]
    x, t, a = (torch.randn(256, 2, device=device) for _ in range(3))
    us = {
        "kernel launch only (no checks, no autograd)": _common.measure(
            lambda: _forward(x, t, a, "exp", 2.0, False, backend)),
        "public op, eager path (checks + autograd.Function)": _common.measure(
            lambda: affine_coupling(x, t, a, backend=backend)),
        "registered custom op (torch.compile's path)": _common.measure(
            lambda: _affine_coupling_op(x, t, a, "exp", 2.0, False, backend)),
        "eager PyTorch reference": _common.measure(lambda: reference.affine_coupling(x, t, a)),
    }
    parts = ", ".join(f"{k}: {v * 1e6:.1f} us" for k, v in us.items())
    return [f"per-call cost at 256x2 float32 with backend={backend!r}: {parts}. The eager path is kept because "
            "the custom op costs more per call; torch.compile uses the custom op."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="one small case, short timings (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile contender")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # The glibc-default rows only mean something in a fresh process whose allocator nothing pinned yet.
    rows, columns, notes = run(args.device, args.quick, not args.no_compile,
                               default_allocator_first=args.device == "cpu" and not args.quick)
    _common.publish(NAME, args.device, rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
