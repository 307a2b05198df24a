"""Benchmark: affine_coupling (forward + log-det, and backward) against eager PyTorch and peers.

Contenders, timed side by side in one process on the same tensors:
- eager: the same math as plain PyTorch ops (pyprobtf.reference.affine_coupling);
- pyprobtf[<backend>]: every backend available on the device (not Triton's CPU interpreter);
- peers (optional `bench` extra), each the elementwise part of its own coupling layer,
  given precomputed shift and scale: normflows AffineCoupling ("exp" and "sigmoid"
  maps), nflows AffineCouplingTransform (sigmoid(a + 2) + 1e-3), zuko
  MonotonicAffineTransform (a soft-clipped log-scale, compared with "softclamp").

"backward" is the time of torch.autograd.grad through a recorded graph for all
three inputs (retain_graph=True), so the forward is not timed twice.

Usage: python benchmarks/bench_affine_coupling.py [--device cpu|cuda] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf import reference  # noqa: E402
from pyprobtf.ops import affine_coupling  # noqa: E402
from pyprobtf.ops.affine_coupling import _affine_coupling_op, _forward  # noqa: E402

NAME = "affine_coupling"


# ----------------------------------------------------------------------------- contenders
# Each maker takes (x, shift, scale) and returns (forward() -> (y, ladj), inputs that get gradients).


def _eager(scale_fn):
    def make(x, t, a):
        return (lambda: reference.affine_coupling(x, t, a, scale_fn, 2.0, False)), (x, t, a)
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


def _time(make, x, t, a, min_run_time):
    inputs = [u.detach().clone().requires_grad_() for u in (x, t, a)]
    forward, grad_inputs = make(*inputs)
    with torch.no_grad():
        fwd = _common.measure(forward, min_run_time=min_run_time)
    y, ladj = forward()
    gy, gl = torch.randn_like(y), torch.randn_like(ladj)
    bwd = _common.measure(
        lambda: torch.autograd.grad((y, ladj), grad_inputs, (gy, gl), retain_graph=True), min_run_time=min_run_time
    )
    return fwd, bwd


def _cases(device: str, quick: bool):
    # (rows, cols, dtype, scale_fn); 4096 x 256 float32 is the target shape.
    cases = [(4096, 256, torch.float32, fn) for fn in ("exp", "softclamp", "sigmoid")]
    if device == "cpu":
        cases += [(65536, 2, torch.float32, "exp"), (512, 8192, torch.float32, "exp"),
                  (4096, 256, torch.bfloat16, "exp")]
    else:
        cases += [(65536, 1024, torch.float32, "exp"), (65536, 1024, torch.bfloat16, "exp"),
                  (65536, 2, torch.float32, "exp")]
    return cases[:2] if quick else cases


def run(device: str = "cpu", quick: bool = False):
    """(rows, columns, notes) of the benchmark on ``device``."""
    statuses = pyprobtf.ops.available_backends()
    backends = [b for b in ("cpp", "triton", "cuda") if device in statuses[b].devices]
    if device == "cpu" and "triton" in backends:
        backends.remove("triton")  # the interpreter is for tests, not speed
    min_run_time = 0.1 if quick else 0.5
    bandwidth = _common.copy_bandwidth(device) if device == "cuda" else None
    rows = []
    for n_rows, n_cols, dtype, scale_fn in _cases(device, quick):
        gen = torch.Generator().manual_seed(0)
        x, t, a = (torch.randn(n_rows, n_cols, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        contenders = [("eager", _eager(scale_fn))] + [(f"pyprobtf[{b}]", _ours(scale_fn, b)) for b in backends]
        contenders += [(p, m) for p, m in PEERS[scale_fn] if _peer_available(p) and dtype == torch.float32]
        timings = {name: _time(make, x, t, a, min_run_time) for name, make in contenders}
        eager_fwd, eager_bwd = timings["eager"]
        for name, (fwd, bwd) in timings.items():
            row = {
                "shape": f"{n_rows}x{n_cols}", "dtype": str(dtype).removeprefix("torch."), "scale_fn": scale_fn,
                "impl": name, "forward ms": fwd * 1e3, "backward ms": bwd * 1e3,
                "fwd speedup vs eager": eager_fwd / fwd, "bwd speedup vs eager": eager_bwd / bwd,
            }
            if bandwidth is not None and name.startswith("pyprobtf"):
                elem = torch.finfo(dtype).bits // 8
                # Bytes the op must move: forward reads x, shift, scale and writes y;
                # backward reads x, scale, grad_y and writes grad_x, grad_scale.
                row["fwd % of copy BW"] = 100 * 4 * n_rows * n_cols * elem / fwd / bandwidth
                row["bwd % of copy BW"] = 100 * 5 * n_rows * n_cols * elem / bwd / bandwidth
            rows.append(row)

    notes = []
    if bandwidth is not None:
        notes.append(f"measured device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    notes += _dispatch_overhead(device, backends)
    notes.append("zuko's MonotonicAffineTransform soft-clips its log-scale as a / (1 + |a / log(1e-3)|), "
                 "compared here with scale_fn='softclamp' (tanh): the same amount of work, not the same function.")
    return rows, COLUMNS + (["fwd % of copy BW", "bwd % of copy BW"] if bandwidth else []), notes


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


COLUMNS = ["shape", "dtype", "scale_fn", "impl", "forward ms", "backward ms", "fwd speedup vs eager",
           "bwd speedup vs eager"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="two cases, short timings (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    pinned = _common.pin_allocator()
    rows, columns, notes = run(args.device, args.quick)
    if pinned and args.device == "cpu":
        notes.append(_common.ALLOCATOR_NOTE)
    _common.publish(NAME, args.device, rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
