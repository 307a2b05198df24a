"""Benchmark: vq_nearest (nearest-codebook search) against torch.cdist + argmin and FAISS.

Contenders, timed side by side in one process on the same tensors:
- cdist+argmin: ``torch.cdist(x, codebook).argmin(1)``, how vector-quantize-pytorch
  searches (the N x K distance matrix in memory); ``topk`` for k > 1; half
  precision cast to float32 on CPU, where cdist has no half kernel;
- torch.compile(cdist), torch.compile(expanded): the same search compiled by
  Inductor (mode="default", dynamic=False), written with torch.cdist or as
  ||x||^2 - 2 x E^T + ||e||^2 (a matrix product, then argmin or topk); the
  first call (compilation) is reported as "compile s", not timed. Default in
  full runs; --quick runs them only with --compile;
- pyprobtf[<backend>]: every backend available on the device (not Triton's CPU
  interpreter), with precision "exact" and, for Triton, "fast" (TF32);
- faiss IndexFlatL2 (optional `bench` extra; faiss-cpu on CPU, faiss GPU if
  installed): search only, the index built beforehand (a VQ layer would rebuild
  it every step; at these sizes ``add`` is a copy of the codebook);
- on CPU, the same at one thread (pyprobtf and FAISS), which is less sensitive to
  other load on the machine.

Peak memory is the extra memory of one call: on CPU the rise of the peak resident
set (VmHWM) in a fresh subprocess per contender; on CUDA torch's peak allocation.

Usage: python benchmarks/bench_vq.py [--device cpu|cuda] [--quick] [--out DIR] [--compile | --no-compile]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyprobtf  # noqa: E402
from pyprobtf.ops import vq_nearest  # noqa: E402

NAME = "vq_nearest"


# ----------------------------------------------------------------------------- contenders
# Each maker takes (x, codebook, k) and returns a function that runs one search, or None.


def _cdist(x, e, k):
    # torch.cdist has no half-precision CPU kernel: cast, as a user would (the cast is timed).
    cast = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)

    def distances():
        return torch.cdist(x.float(), e.float()) if cast else torch.cdist(x, e)

    if k == 1:
        return lambda: distances().argmin(dim=1)
    return lambda: distances().topk(k, dim=1, largest=False)


def _compiled(form):
    """torch.compile (Inductor, mode="default", dynamic=False) of the plain search in one of two forms:
    "cdist" as _cdist writes it, or "expanded", ||x||^2 - 2 x E^T + ||e||^2 as a matrix product."""
    def make(x, e, k):
        cast = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)

        def search(x, e):
            if cast:
                x, e = x.float(), e.float()
            if form == "cdist":
                distances = torch.cdist(x, e)
            else:
                distances = (x * x).sum(1, keepdim=True) - 2 * x @ e.T + (e * e).sum(1)
            return distances.argmin(dim=1) if k == 1 else distances.topk(k, dim=1, largest=False)
        compiled = torch.compile(search, mode="default", dynamic=False)
        return lambda: compiled(x, e)
    return make


def _ours(backend, precision="exact"):
    def make(x, e, k):
        return lambda: vq_nearest(x, e, k=k, backend=backend, precision=precision)
    return make


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 (a broken peer install must not stop the benchmark)
        return False


def _faiss(x, e, k):
    import faiss
    import numpy as np

    if x.dtype != torch.float32:
        return None
    dim = x.shape[1]
    if x.is_cuda:
        if not hasattr(faiss, "StandardGpuResources"):
            return None
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(resources, dim)
        index.add(e.cpu().numpy())
        queries = x.cpu().numpy()  # faiss's Python API copies host arrays to the device itself
        return lambda: index.search(queries, k)
    index = faiss.IndexFlatL2(dim)
    index.add(np.ascontiguousarray(e.numpy()))
    queries = np.ascontiguousarray(x.numpy())
    return lambda: index.search(queries, k)


COMPILED = {"torch.compile(cdist)": "cdist", "torch.compile(expanded)": "expanded"}


def _contenders(device: str, compile_peer: bool = True):
    statuses = pyprobtf.ops.available_backends()
    names = [("cdist+argmin", _cdist)]
    if compile_peer:
        names += [(name, _compiled(form)) for name, form in COMPILED.items()]
    for backend in ("cpp", "cuda", "triton"):
        if device not in statuses[backend].devices or (device == "cpu" and backend == "triton"):
            continue  # Triton on CPU is the interpreter: for tests, not speed
        names.append((f"pyprobtf[{backend}]", _ours(backend)))
        if backend == "triton":
            names.append((f"pyprobtf[{backend}] fast", _ours(backend, "fast")))
    if _faiss_available():
        names.append(("faiss IndexFlatL2", _faiss))
    return names


# ----------------------------------------------------------------------------- cases


def _cases(device: str, quick: bool):
    """(N, K, D, dtype, k); the first is the issue's CPU target."""
    if quick:
        return [(4096, 256, 64, torch.float32, 1), (2048, 300, 33, torch.float32, 4)]
    if device == "cpu":
        return [
            (65536, 1024, 64, torch.float32, 1),
            (65536, 256, 64, torch.float32, 1),
            (65536, 4096, 64, torch.float32, 1),
            (65536, 1024, 16, torch.float32, 1),
            (16384, 1024, 256, torch.float32, 1),
            (65536, 1024, 64, torch.float32, 8),
            (65536, 1024, 64, torch.bfloat16, 1),
        ]
    return [
        (65536, 1024, 64, torch.float32, 1),
        (65536, 4096, 64, torch.float32, 1),
        (65536, 16384, 64, torch.float32, 1),
        (262144, 8192, 256, torch.float32, 1),
        (65536, 4096, 64, torch.bfloat16, 1),
        (65536, 4096, 64, torch.float32, 8),
    ]


def _inputs(n, codes, dim, dtype, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen).to(device=device, dtype=dtype)
    e = torch.randn(codes, dim, generator=gen).to(device=device, dtype=dtype)
    return x, e


# ----------------------------------------------------------------------------- memory


def _peak_cpu_bytes_in_subprocess(name: str, n, codes, dim, dtype, k, threads) -> float | None:
    """Extra peak resident memory of one call, measured in a fresh process (no allocator history)."""
    cmd = [sys.executable, __file__, "--measure-memory", name, str(n), str(codes), str(dim),
           str(dtype).removeprefix("torch."), str(k), str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _measure_memory_here(name, n, codes, dim, dtype, k, threads) -> float:
    torch.set_num_threads(threads)
    x, e = _inputs(n, codes, dim, getattr(torch, dtype), "cpu")
    fn = dict(_contenders("cpu"))[name](x, e, k)
    fn()  # warm-up: lazy initialisation is not the op's memory

    def read(field):
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = read("VmRSS")
    fn()
    return float(read("VmHWM") - before)


def _peak_cuda_bytes(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


# ----------------------------------------------------------------------------- run


def _tf32_matmul_flops(n, codes, dim, device) -> float:
    """Measured TF32 matrix-multiply rate (FLOP/s) for an (n, dim) x (dim, codes) product."""
    x, e = _inputs(n, codes, dim, torch.float32, device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seconds = _common.measure(lambda: x @ e.T)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * n * codes * dim / seconds


def run(device: str = "cpu", quick: bool = False, compile_peer: bool | None = None):
    """(rows, columns, notes) of the benchmark on ``device``; ``compile_peer`` (default: not ``quick``) adds
    the torch.compile contenders."""
    if compile_peer is None:
        compile_peer = not quick
    min_run_time = 0.1 if quick else 0.5
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    measure_memory = not quick and (device == "cuda" or os.path.exists("/proc/self/clear_refs"))
    threads = torch.get_num_threads()
    rows = []
    contenders = _contenders(device, compile_peer)
    compile_failure = None
    for n, codes, dim, dtype, k in _cases(device, quick):
        x, e = _inputs(n, codes, dim, dtype, device)
        flops = 2.0 * n * codes * dim
        tf32 = _tf32_matmul_flops(n, codes, dim, device) if device == "cuda" and not quick else None
        timings, compile_s = {}, {}
        if any(name in COMPILED for name, _ in contenders):
            torch._dynamo.reset()  # a fresh compile per case, never a recompilation limit
        for name, make in contenders:
            if name in COMPILED and compile_failure is not None:
                continue
            fn = make(x, e, k)
            if fn is None:
                continue
            if name in COMPILED:
                compile_s[name], compile_failure = _common.first_call(fn)
                if compile_failure is not None:
                    print(f"torch.compile failed, its rows are skipped: {compile_failure}", file=sys.stderr)
                    contenders = [c for c in contenders if c[0] not in COMPILED]
                    compile_s.clear()
                    timings = {t: v for t, v in timings.items() if t not in COMPILED}
                    continue
            timings[name] = (_common.measure(fn, min_run_time=min_run_time), fn, threads)
        if device == "cpu" and not quick and (n, codes, dim, k) == (65536, 1024, 64, 1) and dtype == torch.float32:
            # One thread each: the per-core comparison, least disturbed by other load.
            torch.set_num_threads(1)
            try:
                import faiss

                faiss.omp_set_num_threads(1)
            except Exception:  # noqa: BLE001
                pass
            for name, make in contenders:
                if name.startswith("pyprobtf") or name.startswith("faiss") or name.startswith("cdist"):
                    fn = make(x, e, k)
                    if fn is not None:
                        timings[f"{name} (1 thread)"] = (_common.measure(fn, min_run_time=min_run_time), fn, 1)
            torch.set_num_threads(threads)
            try:
                import faiss

                faiss.omp_set_num_threads(threads)
            except Exception:  # noqa: BLE001
                pass
        base = {t: v[0] for t, v in ((1, timings.get("cdist+argmin (1 thread)")), (threads, timings["cdist+argmin"]))
                if v is not None}
        for name, (seconds, fn, used_threads) in timings.items():
            row = {
                "N": n, "K": codes, "D": dim, "k": k, "dtype": str(dtype).removeprefix("torch."), "impl": name,
                "threads": used_threads if device == "cpu" else None,
                "ms": seconds * 1e3, "GFLOP/s": flops / seconds / 1e9,
                "speedup vs cdist": base[used_threads] / seconds if used_threads in base else None,
            }
            for compiled in compile_s:
                if used_threads == threads:
                    row[f"speedup vs {compiled}"] = timings[compiled][0] / seconds
            row["compile s"] = compile_s.get(name)
            if tf32 is not None:
                row["% of TF32 mm"] = 100.0 * flops / seconds / tf32
            if measure_memory:
                if device == "cuda":
                    peak = None if name.startswith("faiss") else _peak_cuda_bytes(fn)
                else:
                    base_name = name.removesuffix(" (1 thread)")
                    peak = _peak_cpu_bytes_in_subprocess(base_name, n, codes, dim, dtype, k, used_threads)
                row["peak extra MiB"] = None if peak is None else peak / 2**20
            rows.append(row)

    columns = ["N", "K", "D", "k", "dtype", "impl", "threads", "ms", "GFLOP/s", "speedup vs cdist"]
    if any(r["impl"] in COMPILED for r in rows):
        columns += [f"speedup vs {name}" for name in COMPILED] + ["compile s"]
    if device == "cuda" and not quick:
        columns.append("% of TF32 mm")
    if measure_memory:
        columns.append("peak extra MiB")
    notes = [
        "GFLOP/s counts 2 N K D flops (the distance part) for every contender.",
        "speedup vs cdist: against torch.cdist + argmin (topk for k > 1) at the same thread count.",
        "faiss: IndexFlatL2.search on a prebuilt index (k = 1 uses FAISS's BLAS path for large N).",
    ]
    if compile_peer and compile_failure is None:
        notes.append(
            "torch.compile(cdist) and torch.compile(expanded): the plain search compiled by Inductor "
            "(mode='default', dynamic=False, compiled afresh per case), as torch.cdist(x, E) or as "
            "(x*x).sum(1, keepdim=True) - 2 x @ E.T + (E*E).sum(1), then argmin (topk for k > 1), half "
            "precision cast to float32 on CPU as for cdist; 'compile s' is the first call (compilation "
            "included, Inductor's on-disk cache possibly warm), excluded from 'ms'. 'speedup vs "
            "torch.compile(...)': that contender's time / this time, at the default thread count (Inductor "
            "compiles its thread count into the code, so the compiled contenders have no 1-thread rows).")
    elif compile_peer:
        notes.append(f"torch.compile failed on this machine, its rows are absent: {compile_failure}")
    else:
        notes.append("torch.compile contenders not run (--quick runs them only with --compile).")
    if measure_memory and device == "cpu":
        notes.append("peak extra MiB: rise of the peak resident set during one call after a warm-up call, "
                     "each contender in a fresh process.")
    if device == "cpu":
        load = "" if load_before is None else (
            f" Load average (1 min) at the start: {load_before:.1f}, at the end: {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores.")
        notes.append("The machine may be shared: compare rows of one run (ratios), and prefer the 1-thread rows "
                     "for per-core speed." + load)
    return rows, columns, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="two small cases, short timings (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the torch.compile contenders (default: yes, but not with --quick: compiling "
                             "takes longer than the rest of a quick run)")
    parser.add_argument("--measure-memory", nargs=7, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        name, n, codes, dim, dtype, k, threads = args.measure_memory
        print(_measure_memory_here(name, int(n), int(codes), int(dim), dtype, int(k), int(threads)))
        return 0
    pinned = _common.pin_allocator()
    rows, columns, notes = run(args.device, args.quick, args.compile)
    if pinned and args.device == "cpu":
        notes.append(_common.ALLOCATOR_NOTE + " (timings only: memory is measured in unpinned subprocesses)")
    _common.publish(NAME, args.device, rows, columns, notes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
