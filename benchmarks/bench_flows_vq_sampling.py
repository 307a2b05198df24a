"""Benchmark: the pyprobtf drop-ins against the libraries they replace, in realistic layers.

Side by side in one process, the peer as its users run it and the adapter
loaded with the peer's state_dict, on the same inputs:

- flows: one training step (zero_grad, -log_prob(x).mean(), backward; no
  optimizer step) of a RealNVP-style flow, batch 4096, d = 2, 64, 256:
  ``zuko.flows.RealNVP`` (3 couplings, hidden (64, 64)) vs
  ``pyprobtf.integrations.zuko.RealNVP``; an nflows ``Flow`` of 3
  ``AffineCouplingTransform`` (ResidualNet, 64 hidden, 2 blocks) vs the same
  flow built from ``pyprobtf.integrations.nflows.AffineCouplingTransform``;
- vector quantization: ``VectorQuantize(dim=64, accept_image_fmap=True)``
  training forward + backward on an image feature map (32, 64, 32, 32) with
  1024 and 8192 codes, and ``ResidualVQ`` (8 levels, 1024 codes) on the same map
  as (32, 1024, 64) sequences: vector-quantize-pytorch vs
  pyprobtf.integrations.vector_quantize_pytorch;
- FAISS: ``IndexFlatL2.search`` of 65536 queries at k = 1 and 10, d = 16, 64,
  128, against 1024 and 65536 database vectors: faiss-cpu vs
  pyprobtf.integrations.faiss.

These are the sizes of the issue that asked for the benchmark. ``--reduced``
runs smaller ones for a shared 2-core machine, where the full run takes hours
(batch 8 for the VQ rows, 8192 queries against 65536 database vectors);
``--quick`` is a tiny smoke run.

Time: the peer and the adapter of a row run in interleaved rounds (a block of
calls of at least --block seconds each, the order alternated every round); a
time is the fastest block over the rounds (rows whose calls take seconds: one
warm-up and at most 3 rounds, see LONG_CALL_S), the speed-up the ratio of two
such times. On a machine shared with other jobs a block can lose whole scheduler
time slices, and with two threads every parallel region waits for the slower
thread: timing one contender after the other then turns a burst of load into a
2x "speed-up" either way, and the median of mostly disturbed blocks is not the
undisturbed time the fastest block is. Peak
memory (flows and VQ rows): the rise of the peak resident set (VmHWM) over one
call after a warm-up, in a fresh subprocess per contender. Threads: every
contender uses the same count (--threads, default all cores; FAISS's OpenMP
pool set to it too).

Usage: python benchmarks/bench_flows_vq_sampling.py [--quick | --reduced] [--threads N] [--parts flows,vq,faiss]
       [--rounds R] [--block S] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "flows_vq_sampling"
COLUMNS = ["case", "shape", "peer", "peer s", "pyprobtf s", "speed-up", "peer MiB", "pyprobtf MiB",
           "peer tensor MiB", "pyprobtf tensor MiB"]


# ----------------------------------------------------------------------------- cases
# Each builder takes (params, which) with which in {"peer", "ours"} and returns a function running one call.


def _flow_data(batch, features):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, features, generator=g) @ (torch.randn(features, features, generator=g) / features**0.5)


def _zuko(params, which):
    import zuko

    from pyprobtf.integrations import zuko as pzuko

    torch.manual_seed(0)
    peer = zuko.flows.RealNVP(params["d"], transforms=3, hidden_features=(64, 64))
    flow = peer
    if which == "ours":
        flow = pzuko.RealNVP(params["d"], transforms=3, hidden_features=(64, 64))
        flow.load_state_dict(peer.state_dict())
    x = _flow_data(params["batch"], params["d"])

    def step():
        flow.zero_grad(set_to_none=True)
        loss = -flow().log_prob(x).mean()
        loss.backward()
    return step


def _nflows(params, which):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import ResidualNet
    from nflows.transforms import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform as PeerCoupling

    from pyprobtf.integrations.nflows import AffineCouplingTransform

    def build(cls):
        torch.manual_seed(0)
        layers = [cls((torch.arange(params["d"]) + i) % 2, lambda i_, o_: ResidualNet(i_, o_, 64, num_blocks=2))
                  for i in range(3)]
        return Flow(CompositeTransform(layers), StandardNormal([params["d"]]))

    peer = build(PeerCoupling)
    flow = peer
    if which == "ours":
        flow = build(AffineCouplingTransform)
        flow.load_state_dict(peer.state_dict())
    x = _flow_data(params["batch"], params["d"])

    def step():
        flow.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x).mean()
        loss.backward()
    return step


def _vq(params, which):
    import vector_quantize_pytorch as vqp

    from pyprobtf.integrations import vector_quantize_pytorch as ours

    torch.manual_seed(0)
    peer = vqp.VectorQuantize(dim=64, codebook_size=params["codes"], decay=0.8, commitment_weight=1.0,
                              accept_image_fmap=True)
    vq = peer
    if which == "ours":
        vq = ours.VectorQuantize(dim=64, codebook_size=params["codes"], decay=0.8, commitment_weight=1.0,
                                 accept_image_fmap=True)
        vq.load_state_dict(peer.state_dict())
    x = torch.randn(params["batch"], 64, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def step():
        x.grad = None
        quantized, _, commit_loss = vq(x)
        (quantized.square().mean() + commit_loss).backward()
    return step


def _rvq(params, which):
    import vector_quantize_pytorch as vqp

    from pyprobtf.integrations import vector_quantize_pytorch as ours

    torch.manual_seed(0)
    peer = vqp.ResidualVQ(dim=64, num_quantizers=8, codebook_size=params["codes"], decay=0.8)
    rvq = peer
    if which == "ours":
        rvq = ours.ResidualVQ(dim=64, num_quantizers=8, codebook_size=params["codes"], decay=0.8)
        rvq.load_state_dict(peer.state_dict())
    x = torch.randn(params["batch"], params["seq"], 64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)

    def step():
        x.grad = None
        quantized, _, commit_losses = rvq(x)
        (quantized.square().mean() + commit_losses.sum()).backward()
    return step


def _faiss(params, which):
    import faiss

    from pyprobtf.integrations import faiss as pfaiss

    g = torch.Generator().manual_seed(2)
    xb = torch.rand(params["nb"], params["d"], generator=g).numpy()
    xq = torch.rand(params["nq"], params["d"], generator=g).numpy()
    index = (faiss.IndexFlatL2 if which == "peer" else pfaiss.IndexFlatL2)(params["d"])
    index.add(xb)
    return lambda: index.search(xq, params["k"])


BUILDERS = {"zuko": _zuko, "nflows": _nflows, "VectorQuantize": _vq, "ResidualVQ": _rvq, "faiss": _faiss}
PEER_NAMES = {"zuko": "zuko", "nflows": "nflows", "VectorQuantize": "vector-quantize-pytorch",
              "ResidualVQ": "vector-quantize-pytorch", "faiss": "faiss-cpu"}


# The row groups --parts selects, by builder.
PARTS = {"flows": ("zuko", "nflows"), "vq": ("VectorQuantize", "ResidualVQ"), "faiss": ("faiss",)}


def cases(quick: bool, parts=tuple(PARTS), reduced: bool = False) -> list[tuple[str, dict, bool]]:
    """(builder, params, measure memory) of the rows in ``parts``."""
    builders = {b for part in parts for b in PARTS[part]}
    return [case for case in _all_cases(quick, reduced) if case[0] in builders]


def _all_cases(quick: bool, reduced: bool) -> list[tuple[str, dict, bool]]:
    sizes = REDUCED_SIZES if reduced else ISSUE_SIZES
    if quick:
        return [("zuko", {"batch": 256, "d": 8}, True), ("nflows", {"batch": 256, "d": 8}, False),
                ("VectorQuantize", {"batch": 1, "codes": 64}, False),
                ("faiss", {"nq": 256, "nb": 128, "d": 16, "k": 10}, False)]
    out = []
    for builder in ("zuko", "nflows"):
        out += [(builder, {"batch": 4096, "d": d}, True) for d in (2, 64, 256)]
    out += [("VectorQuantize", {"batch": sizes["vq_batch"], "codes": codes}, True) for codes in (1024, 8192)]
    out += [("ResidualVQ", {"batch": sizes["vq_batch"], "seq": 1024, "codes": 1024}, True)]
    for nb, nq in ((1024, 65536), (65536, sizes["faiss_nq_large"])):
        for d in (16, 64, 128):
            out += [("faiss", {"nq": nq, "nb": nb, "d": d, "k": k}, False) for k in (1, 10)]
    return out


# The issue's sizes, and (--reduced) smaller ones for a shared 2-core machine: the VQ batch (images of
# 32 x 32 for VectorQuantize, their 1024 positions as a sequence for ResidualVQ) and the queries searched
# against 65536 database vectors (always 65536 against 1024).
ISSUE_SIZES = {"vq_batch": 32, "faiss_nq_large": 65536}
REDUCED_SIZES = {"vq_batch": 8, "faiss_nq_large": 8192}


def _shape(builder, p) -> str:
    if builder in ("zuko", "nflows"):
        return f"B={p['batch']} d={p['d']}"
    if builder == "VectorQuantize":
        return f"({p['batch']}, 64, 32, 32), {p['codes']} codes"
    if builder == "ResidualVQ":
        return f"({p['batch']}, {p['seq']}, 64), 8 x {p['codes']} codes"
    return f"nq={p['nq']} nb={p['nb']} d={p['d']} k={p['k']}"


# ----------------------------------------------------------------------------- memory


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def _peak_bytes_in_subprocess(builder, params, which, threads) -> float | None:
    cmd = [sys.executable, __file__, "--measure-memory", json.dumps([builder, params, which, threads])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _tensor_peak_bytes(fn) -> float:
    """Largest rise of the bytes held by torch tensors during one call (after a warm-up), from
    torch.profiler's allocation records: exact and repeatable, unlike the resident set, which
    moves with glibc's heap layout. Blind to memory a library allocates outside torch (FAISS,
    the C++ vq_nearest's scratch), hence kept for the flow rows, whose kernels allocate none."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    held = lowest = rise = 0
    for event in events:
        held += event.self_cpu_memory_usage
        lowest = min(lowest, held)
        rise = max(rise, held - lowest)
    return float(rise)


def _measure_memory_here(builder, params, which, threads) -> float:
    _set_threads(threads)
    fn = BUILDERS[builder](params, which)
    fn()  # warm-up: lazy initialisation and the first gradient buffers are not one step's memory

    def read(field):
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = read("VmRSS")
    fn()
    return float(read("VmHWM") - before)


# ----------------------------------------------------------------------------- run


# A row whose single call takes longer than this is timed over at most LONG_CALL_ROUNDS rounds, after one
# warm-up call instead of two (the issue's FAISS rows against 65536 vectors take about a minute per faiss call
# on 2 cores: seven rounds of them would take hours).
LONG_CALL_S = 2.0
LONG_CALL_ROUNDS = 3


def _fastest_interleaved(fns: dict, rounds: int, block: float) -> tuple[dict, int]:
    """Seconds per call of each function: the fastest of ``rounds`` blocks of >= ``block`` s, order rotated;
    and the number of rounds run (fewer for long calls, see LONG_CALL_S)."""
    calls, first = {}, {}
    for key, fn in fns.items():
        start = time.perf_counter()
        fn()  # warm-up: lazy initialisation, allocator caches, the first gradient buffers
        first[key] = time.perf_counter() - start
        if first[key] < LONG_CALL_S:
            fn()
        start = time.perf_counter()
        fn()
        calls[key] = max(1, int(block / max(time.perf_counter() - start, 1e-7)))
    if max(first.values()) >= LONG_CALL_S:
        rounds = min(rounds, LONG_CALL_ROUNDS)
    keys = list(fns)
    best = dict.fromkeys(keys, float("inf"))
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            for _ in range(calls[key]):
                fns[key]()
            best[key] = min(best[key], (time.perf_counter() - start) / calls[key])
    return best, rounds


def run(quick: bool, threads: int, parts=tuple(PARTS), rounds: int = 7, block: float = 0.05, reduced: bool = False):
    _set_threads(threads)
    if quick:
        rounds, block = 2, 0.005
    load_before = os.getloadavg()[0]
    rows, shortened = [], []
    for builder, params, with_memory in cases(quick, parts, reduced):
        fns = {which: BUILDERS[builder](params, which) for which in ("peer", "ours")}
        times, rounds_run = _fastest_interleaved(fns, rounds, block)
        if rounds_run < rounds:
            shortened.append(_shape(builder, params))
        del fns
        row = {"case": builder, "shape": _shape(builder, params), "peer": PEER_NAMES[builder],
               "peer s": times["peer"], "pyprobtf s": times["ours"], "speed-up": times["peer"] / times["ours"]}
        if with_memory and sys.platform.startswith("linux"):
            for which, column in (("peer", "peer MiB"), ("ours", "pyprobtf MiB")):
                peak = _peak_bytes_in_subprocess(builder, params, which, threads)
                row[column] = None if peak is None else peak / 2**20
        if with_memory and builder in ("zuko", "nflows"):
            for which, column in (("peer", "peer tensor MiB"), ("ours", "pyprobtf tensor MiB")):
                row[column] = _tensor_peak_bytes(BUILDERS[builder](params, which)) / 2**20
        rows.append(row)
        print(row, flush=True)
    notes = [
        f"{threads} threads for every contender (torch.set_num_threads and faiss.omp_set_num_threads).",
        f"Times: fastest block of calls (>= {block * 1e3:.0f} ms) over {rounds} rounds in which peer and "
        "pyprobtf alternate (a burst of load hits both contenders of a row alike).",
        "speed-up = peer seconds / pyprobtf seconds (above 1: pyprobtf faster).",
        "Flows: one training step = zero_grad + (-log_prob(x).mean()).backward(), no optimizer step; the "
        "coupling networks (MLPs, zuko's and nflows' own) are the same code in both contenders and take most of "
        "the time, so the ratio measures what the fused coupling buys in a whole layer.",
        "VectorQuantize / ResidualVQ: training mode (EMA codebook update included), forward + backward of "
        "quantized.square().mean() + commitment loss.",
        "Peak MiB: rise of the peak resident set over one call after a warm-up, fresh subprocess per contender "
        "(the library's dense N x K distance and one-hot matrices show up here).",
        "Tensor MiB (flow rows): largest rise of the bytes held by torch tensors during one step, from "
        "torch.profiler's allocation records (exact and repeatable; the kernels of these rows allocate nothing "
        "outside torch). The resident-set columns move with glibc's heap layout: zuko's own d=256 step "
        "measured 13.9 MiB in one run and 3.9 MiB in the next.",
        "FAISS rows: search only (index built beforehand); no memory column.",
    ]
    if shortened:
        notes.append(f"Rows whose first call took {LONG_CALL_S:g} s or more: one warm-up call and at most "
                     f"{LONG_CALL_ROUNDS} rounds: {'; '.join(shortened)}.")
    if quick:
        notes.append("--quick: tiny smoke-test sizes, not the issue's.")
    elif reduced:
        notes.append(
            f"--reduced: sizes shrunk from the issue's to fit a shared 2-core machine: FAISS against 65536 database "
            f"vectors with {REDUCED_SIZES['faiss_nq_large']} queries (issue: {ISSUE_SIZES['faiss_nq_large']}); "
            f"VectorQuantize and ResidualVQ batch {REDUCED_SIZES['vq_batch']} (issue: {ISSUE_SIZES['vq_batch']})."
        )
    else:
        notes.append(
            f"The issue's sizes: VectorQuantize and ResidualVQ batch {ISSUE_SIZES['vq_batch']} (images of 32 x 32, "
            f"dim 64); FAISS with {ISSUE_SIZES['faiss_nq_large']} queries against both database sizes."
        )
    notes.append(_common.load_note(load_before))
    return rows, notes


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"--parts: expected a comma-separated subset of {', '.join(PARTS)}, "
                                         f"got {text!r}")
    return parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only (the peers' CPU builds)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="tiny cases, short timings (a smoke run)")
    sizes.add_argument("--reduced", action="store_true",
                       help="VQ batch 8 and 8192 FAISS queries against 65536 vectors (default: the issue's sizes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parts", type=_parts, default=tuple(PARTS),
                        help=f"comma-separated row groups among {', '.join(PARTS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per row")
    parser.add_argument("--block", type=float, default=0.05, help="seconds of calls per timed block")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--measure-memory", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        builder, params, which, threads = json.loads(args.measure_memory)
        print(_measure_memory_here(builder, params, which, threads))
        return 0
    pinned = _common.pin_allocator()
    rows, notes = run(args.quick, args.threads, args.parts, args.rounds, args.block, args.reduced)
    if pinned:
        notes.append(_common.ALLOCATOR_NOTE + " (timings only: memory is measured in unpinned subprocesses)")
    # A subset of the rows gets its own file, so that the full table is not overwritten by part of it.
    # So does a --reduced run, so that it never stands for the issue's sizes.
    name = NAME if set(args.parts) == set(PARTS) else "_".join((NAME, *args.parts))
    if args.reduced:
        name += "_reduced"
    _common.publish(name, args.device, rows, COLUMNS, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
