"""Registers, spills, local and shared memory of every GPU kernel, compiled ahead of time on a CPU-only machine.

Triton: every ``triton.jit`` kernel of ``pyprobtf.kernels`` is compiled with
``triton.compile`` for each GPU target (sm_80, sm_86, sm_89, sm_90 and the newer
ones the installed Triton can compile for), once per specialisation its
launchers produce. The specialisations are not listed by hand: the launch
functions themselves run on ``meta`` tensors (no memory, no device) over a grid
of inputs (dtypes, row lengths, layouts, flags); each ``kernel[grid](...)``
call is caught and turned into (signature, constexprs, attributes, options)
by Triton's own binder, exactly as the JIT would on a GPU. ptxas' ``-v`` report
gives registers, spills, stack and local memory; the compiled metadata gives the
dynamic shared memory Triton launches with.

The grid of launcher inputs is a product of axes (``OPS``). ``--coverage full``
compiles every combination; ``pairwise`` (the committed table) every pair of
axis values in at least one case; ``each`` (the CI test) every axis value in at
least one case.

CUDA: ``cuobjdump --dump-resource-usage`` on the built ``pyprobtf._C_cuda``
module reads every kernel of every architecture it carries; the module must
carry machine code (and PTX) for each entry of CMakeLists.txt's default
``PYPROBTF_CUDA_ARCHITECTURES``.

Limits checked (``--check``): no compile error; no spill stores or loads and no
local memory, and no stack frame unless the kernel is in ``ALLOWED_STACK`` with a reason; shared
memory per block within ``TRITON_SHARED_LIMIT`` / ``CUDA_SHARED_LIMIT``.

Run it with TRITON_INTERPRET unset or 0 (the script sets 0 for itself before
importing triton): the interpreter's kernels cannot be compiled.

``--out DIR`` writes DIR/kernel-resources.{json,md}; with ``--update`` the parts
this run does not compute are kept from the table already there, each part with
its own record of the run that produced it, so the Triton and CUDA parts can be
refreshed separately and still make one table. Within the Triton part each op
has its own record too: ``--ops X --update`` replaces op X's rows and keeps the
other ops' rows, and the markdown says which run produced which op's rows:

    python scripts/kernel_resources.py --skip cuda --update --out benchmarks/results --check
    python scripts/kernel_resources.py --skip cuda --update --ops lincomb --out benchmarks/results
    python scripts/kernel_resources.py --skip triton --update --out benchmarks/results --check
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

if __name__ == "__main__":  # run as a script (its own process); imported, e.g. by tests, it changes nothing
    os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: the interpreter's kernels cannot compile
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v report on stdout, parsed below
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning

ROOT = Path(__file__).resolve().parents[1]

# The four targets every kernel must compile for (A100, consumer Ampere, Ada, Hopper),
# then newer ones, kept when the installed Triton compiles a trivial kernel for them.
REQUIRED_TARGETS = (80, 86, 89, 90)
NEWER_TARGETS = (100, 103, 110, 120, 121)

# Shared memory per block. Triton kernels use dynamic shared memory and Triton's
# launcher opts in above 48 KiB, so the bound is the opt-in maximum of the smallest
# target: 99 KiB on sm_86, sm_89 and sm_120 (sm_80: 163 KiB, sm_90: 227 KiB).
TRITON_SHARED_LIMIT = 99 * 1024
# The CUDA kernels use static __shared__ arrays only (launched with 0 dynamic bytes),
# which CUDA caps at 48 KiB per block on every architecture.
CUDA_SHARED_LIMIT = 48 * 1024

# CUDA kernels allowed a stack frame (never local memory; Triton kernels get no
# allowance): {demangled name prefix: (bytes, targets or None for all, why)}.
ALLOWED_STACK: dict[str, tuple[int, tuple | None, str]] = {
    "void ptf::(anonymous namespace)::lincomb_kernel<": (
        32, None, "with NOISE, randn's cosf keeps a 32-byte frame for its Payne-Hanek reduction of huge "
                  "arguments (ptxas -v: 0 bytes spilled); its argument is 2 pi u, in [0, 2 pi), so that path "
                  "never runs"),
}


def _allowed_stack(kernel: str, target: str) -> int:
    return max([limit for prefix, (limit, targets, _) in ALLOWED_STACK.items()
                if kernel.startswith(prefix) and (targets is None or target in targets)], default=0)

KERNEL_MODULES = ("affine_coupling", "lincomb", "sampling", "vq_nearest")
FLOATS = ("float32", "float64", "float16", "bfloat16")


# ----------------------------------------------------------------------------- launcher inputs


def _pow2s(lo: int, hi: int) -> list[int]:
    return [1 << i for i in range(lo.bit_length() - 1, hi.bit_length())]


def _matrix(torch, rows, cols, dtype, layout):
    """A (rows, cols) meta tensor: contiguous, or every other column of a wider one."""
    if layout == "contiguous":
        return torch.empty(rows, cols, dtype=dtype, device="meta")
    return torch.empty(rows, 2 * cols, dtype=dtype, device="meta")[:, ::2]


def _affine_axes(k):
    # Row lengths 1 .. 2 MAX_BLOCK_F: every tile width, and rows that need several tiles.
    return dict(dtype=FLOATS, scale_fn=tuple(range(6)), inverse=(False, True),
                cols=tuple(_pow2s(1, 2 * k.MAX_BLOCK_F)), rows=(1, 37), layout=("contiguous", "strided"),
                grad_shift=(True, False), element_ladj=(False, True))


def _affine_drive(torch, k, c):
    dtype = getattr(torch, c["dtype"])
    x, t, a = (_matrix(torch, c["rows"], c["cols"], dtype, c["layout"]) for _ in range(3))
    ladj_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    y = torch.empty(x.shape, dtype=dtype, device="meta")
    gx, gs = torch.empty_like(y), torch.empty_like(y)
    gt = torch.empty_like(y) if c["grad_shift"] else None
    # Row sums always (so every case reaches each kernel); with element_ladj, per-element ones too.
    for ladj_shape in (x.shape[:1], x.shape) if c["element_ladj"] else (x.shape[:1],):
        ladj = torch.empty(ladj_shape, dtype=ladj_dtype, device="meta")
        k.forward(x, t, a, y, ladj, c["scale_fn"], 2.0, c["inverse"])
        k.backward(y, ladj, x, t, a, gx, gt, gs, c["scale_fn"], 2.0, c["inverse"])


def _lincomb_axes(k):
    return dict(dtype=FLOATS, n=(1, 2, 3, 4), row_coeff=tuple(range(16)),
                noise=("none", "number", "row_std", "row_seed", "row_std_row_seed"),
                cols=tuple(_pow2s(1, 2 * k.MAX_BLOCK_F)), rows=(1, 37), layout=("contiguous", "strided"),
                seed=(1, 12345, 2**40 + 3, -(2**62)), offset=(0, 1, 7, 2**33 + 5))


def _lincomb_drive(torch, k, c):
    dtype = getattr(torch, c["dtype"])
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rows, n = c["rows"], c["n"]
    inputs = [_matrix(torch, rows, c["cols"], dtype, c["layout"]) for _ in range(n)]
    out = _matrix(torch, rows, c["cols"], dtype, c["layout"])
    vec = torch.empty(rows, dtype=compute, device="meta")
    coeff_rows = [vec if c["row_coeff"] >> i & 1 else None for i in range(n)]
    noise = c["noise"] != "none"
    noise_rows = vec if "row_std" in c["noise"] else None
    seed_rows = torch.empty(rows, dtype=torch.int64, device="meta") if "row_seed" in c["noise"] else None
    seed = c["seed"] if noise and seed_rows is None else 0
    k.lincomb(inputs, [0.5] * n, coeff_rows, out, noise, 1.0, noise_rows, seed, seed_rows, c["offset"])


def _sampling_axes(k):
    # Row lengths up to 2^20 (a 1M-token vocabulary: 256 chunks of CHUNK columns).
    return dict(dtype=FLOATS, cols=tuple(_pow2s(1, 1 << 20)), call=("sample", "filter"),
                uniform=("given", "one_seed", "row_seed"), top_k=("off", "number", "tensor"),
                top_p=("off", "number", "tensor"), rows=(1, 5), layout=("contiguous", "strided"))


def _sampling_drive(torch, k, c):
    dtype = getattr(torch, c["dtype"])
    rows, cols = c["rows"], c["cols"]
    logits = _matrix(torch, rows, cols, dtype, c["layout"])

    def param(kind, off, on, tensor_dtype):
        """(tensor or None, number): the filter off, on with one number, or per row."""
        if kind == "tensor":
            return torch.empty(rows, dtype=tensor_dtype, device="meta"), 0
        return None, on if kind == "number" else off

    params = {"temperature": (None, 1.0), "min_p": (None, 0.0),
              "top_k": param(c["top_k"], 0, max(1, cols // 2), torch.int64),
              "top_p": param(c["top_p"], 1.0, 0.9, torch.float64)}
    uniform = torch.empty(rows, dtype=torch.float64, device="meta") if c["uniform"] == "given" else None
    seed_rows = torch.empty(rows, dtype=torch.int64, device="meta") if c["uniform"] == "row_seed" else None
    seed = (seed_rows, 0 if seed_rows is not None else 12345)
    offset = (seed_rows, 0) if seed_rows is not None else (None, 3)
    status = torch.empty(rows, dtype=torch.int32, device="meta")
    if c["call"] == "sample":
        tokens = torch.empty(rows, dtype=torch.int64, device="meta")
        logprobs = torch.empty(rows, dtype=torch.float32 if dtype != torch.float64 else dtype, device="meta")
        k.run(logits, params, uniform, seed, offset, tokens, logprobs, status, None)
    else:
        filtered = torch.empty(rows, cols, dtype=dtype, device="meta")
        k.run(logits, params, uniform, seed, offset, None, None, status, filtered)


def _vq_axes(k):
    # k up to 64 nearest codes (CAND up to 128 candidates per row).
    return dict(dtype=FLOATS, metric=(0, 1, 2), fast=(False, True), k=(1, 4, 5, 8, 16, 32, 64),
                rows=(1, 37), dim=(1, 16, 100), layout=("contiguous", "strided"))


def _vq_drive(torch, k, c):
    dtype = getattr(torch, c["dtype"])
    x = _matrix(torch, c["rows"], c["dim"], dtype, c["layout"])
    codebook = _matrix(torch, max(c["k"], 300), c["dim"], dtype, c["layout"])
    indices = torch.empty(c["rows"], c["k"], dtype=torch.int64, device="meta")
    dist = torch.empty(c["rows"], c["k"], dtype=torch.float32, device="meta")
    k.forward(x, codebook, indices, dist, c["metric"], c["fast"])


OPS = {
    "affine_coupling": (_affine_axes, _affine_drive),
    "lincomb": (_lincomb_axes, _lincomb_drive),
    "sampling": (_sampling_axes, _sampling_drive),
    "vq_nearest": (_vq_axes, _vq_drive),
}


def cover(axes: dict, coverage: str) -> list[dict]:
    """Cases over ``axes``: every combination (full), every pair of values (pairwise), every value (each)."""
    names = list(axes)
    if coverage == "full":
        return [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    if coverage == "each":
        longest = max(len(v) for v in axes.values())
        return [{n: axes[n][i % len(axes[n])] for n in names} for i in range(longest)]
    if coverage != "pairwise":
        raise ValueError(f"cover: `coverage` must be full, pairwise or each; got {coverage!r}")
    # Greedy pairwise covering: each new case starts from an uncovered pair and
    # takes, axis by axis, the value covering the most uncovered pairs.
    uncovered = {((a, i), (b, j)) for ai, a in enumerate(names) for b in names[ai + 1:]
                 for i in range(len(axes[a])) for j in range(len(axes[b]))}
    cases = []
    while uncovered:
        (a, i), (b, j) = min(uncovered)
        choice = {a: i, b: j}
        for n in names:
            if n in choice:
                continue

            def gain(v):
                return sum(((m, choice[m]), (n, v)) in uncovered or ((n, v), (m, choice[m])) in uncovered
                           for m in choice)

            choice[n] = max(range(len(axes[n])), key=lambda v: (gain(v), -v))
        for ai, a in enumerate(names):
            for b in names[ai + 1:]:
                uncovered.discard(((a, choice[a]), (b, choice[b])))
        cases.append({n: axes[n][choice[n]] for n in names})
    return cases


# ----------------------------------------------------------------------------- specialisations


def triton_kernels(module) -> dict:
    """{name: JITFunction} of the module's kernels (its triton.jit functions launched with a grid)."""
    from triton.runtime.jit import JITFunction

    found = {}
    for name, value in vars(module).items():
        if isinstance(value, JITFunction) and name.endswith("_kernel"):
            found[name] = value
    return found


def launcher_specialisations(coverage: str, ops=tuple(OPS)) -> tuple[list[dict], dict]:
    """Every distinct (kernel, signature, constexprs, attributes, options) the launchers produce."""
    import importlib

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", REQUIRED_TARGETS[0], 32))
    specs: dict = {}
    cases_per_op = {}
    launches = []

    def record(fn, grid):
        def launch(*args, **kwargs):
            launches.append((fn, args, kwargs))
        return launch

    original = JITFunction.__getitem__
    JITFunction.__getitem__ = record
    try:
        for op in ops:
            axes_of, drive = OPS[op]
            module = importlib.import_module(f"pyprobtf.kernels.{op}")
            cases = cover(axes_of(module), coverage)
            cases_per_op[op] = len(cases)
            for case in cases:
                launches.clear()
                drive(torch, module, case)
                for fn, args, kwargs in launches:
                    # What JITFunction.run does before compiling, with the same flags.
                    kwargs = dict(kwargs, debug=False, instrumentation_mode="", fpsan_homomorphic_casts=False)
                    binder = create_function_from_signature(fn.signature, fn.params, backend)
                    bound, specialization, options = binder(*args, **kwargs)
                    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                                          options)
                    launch_options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
                    key = (op, fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                           repr(sorted(attrs.items())), repr(sorted(launch_options.items())))
                    if key not in specs:
                        specs[key] = dict(op=op, kernel=fn.__name__, fn=fn, signature=signature,
                                          constexprs=constexprs, attrs=attrs, launch_options=launch_options,
                                          label=_label(fn, signature, constexprs, attrs))
    finally:
        JITFunction.__getitem__ = original
    return list(specs.values()), cases_per_op


def _label(fn, signature, constexprs, attrs) -> str:
    """The specialisation in words: constexpr values, pointer dtypes, arguments specialised on their value."""
    parts = []
    for (index,), value in sorted(constexprs.items()):
        name = fn.arg_names[index]
        if signature[name] == "constexpr" and fn.params[index].is_constexpr:
            parts.append(f"{name}={getattr(value, 'name', value)}")
    for (index,), value in sorted(constexprs.items()):
        name = fn.arg_names[index]
        if not fn.params[index].is_constexpr:
            parts.append(f"{name}=={value}")
    dtypes = sorted({t for t in signature.values() if t.startswith("*")})
    ints = sorted({f"{n}:{t}" for n, t in signature.items() if t in ("i64", "u64")})
    divisible = sum(1 for v in attrs.values() if ["tt.divisibility", 16] in v)
    return " ".join(parts + ["ptr " + "/".join(d[1:] for d in dtypes)] + ints + [f"div16 x{divisible}"])


# ----------------------------------------------------------------------------- compiling


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_LMEM = re.compile(r"(\d+) bytes lmem")


def parse_ptxas(log: str) -> list[dict]:
    """Entry functions of a ptxas -v report: registers, spills, stack, local and static shared bytes."""
    entries = []
    current = None
    for line in log.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            current = dict(function=m.group(1), arch=m.group(2), regs=None, stack=0, spill_stores=0,
                           spill_loads=0, local=0, static_shared=0)
            entries.append(current)
            continue
        if current is None:
            continue
        m = _PTXAS_FRAME.search(line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _PTXAS_USED.search(line)
        if m:
            current["regs"] = int(m.group(1))
            s = _PTXAS_SMEM.search(line)
            current["static_shared"] = int(s.group(1)) if s else 0
            lm = _PTXAS_LMEM.search(line)
            current["local"] = int(lm.group(1)) if lm else 0
            current = None  # the "Used" line closes an entry's report
    return entries


_SPECS: list = []


def _compile_triton(job) -> dict:
    index, cap = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    spec = _SPECS[index]
    target = GPUTarget("cuda", cap, 32)
    options = make_backend(target).parse_options(dict(spec["launch_options"]))
    row = dict(index=index, target=f"sm_{cap}", num_warps=options.num_warps, num_stages=options.num_stages)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with redirect_stdout(log):
            compiled = triton.compile(ASTSource(spec["fn"], spec["signature"], spec["constexprs"], spec["attrs"]),
                                      target=target, options=options.__dict__)
    except Exception as exc:  # any compile failure is a result to report, not a crash
        cause = f" (from {type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        row["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}{cause[:1500]}"
        return row
    entries = [e for e in parse_ptxas(log.getvalue()) if e["function"] == spec["kernel"]]
    if len(entries) != 1:
        row["error"] = f"expected one ptxas report for {spec['kernel']}, found {len(entries)}"
        return row
    e = entries[0]
    row["compile_s"] = round(time.perf_counter() - start, 2)
    row.update(regs=e["regs"], spill_stores=e["spill_stores"], spill_loads=e["spill_loads"], stack=e["stack"],
               local=e["local"], shared=compiled.metadata.shared + e["static_shared"])
    return row


def _probe_target(cap: int) -> bool:
    """Whether the installed Triton compiles a trivial kernel for sm_<cap>."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def _probe(X):
        tl.store(X, 1.0)

    try:
        with redirect_stdout(io.StringIO()):
            triton.compile(ASTSource(_probe, {"X": "*fp32"}), target=GPUTarget("cuda", cap, 32))
    except Exception:
        return False
    return True


def triton_table(coverage: str, targets, workers: int, ops=tuple(OPS), deadline=None) -> dict:
    global _SPECS
    import importlib

    import triton

    specs, cases_per_op = launcher_specialisations(coverage, ops)
    _SPECS = specs
    jobs = [(i, cap) for i in range(len(specs)) for cap in targets]
    with tempfile.TemporaryDirectory() as cache:
        # A fresh cache: every kernel goes through ptxas, so every one has its -v report.
        os.environ["TRITON_CACHE_DIR"] = cache
        rows = []
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for row in pool.imap_unordered(_compile_triton, jobs):
                rows.append(row)
                if deadline is not None and time.time() > deadline:
                    pool.terminate()  # what was not compiled is counted as a problem
                    break
    for row in rows:
        spec = specs[row["index"]]
        row.update(op=spec["op"], kernel=spec["kernel"], specialisation=spec["label"])
        del row["index"]
    kernels = {}
    for op in ops:
        kernels[op] = sorted(triton_kernels(importlib.import_module(f"pyprobtf.kernels.{op}")))
    per_op = {op: dict(triton_version=triton.__version__, coverage=coverage, cases=cases_per_op[op],
                       specialisations=sum(1 for s in specs if s["op"] == op),
                       not_compiled=sum(1 for i, _ in jobs if specs[i]["op"] == op)
                       - sum(1 for r in rows if r["op"] == op))
              for op in ops}
    return dict(rows=rows, kernels=kernels, ops=per_op)


# ----------------------------------------------------------------------------- CUDA


def cmake_default_architectures() -> list[str]:
    """The default PYPROBTF_CUDA_ARCHITECTURES of CMakeLists.txt, e.g. ["80-real", ..., "90"]."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r'set\(PYPROBTF_CUDA_ARCHITECTURES\s+"([^"]+)"', text)
    if not m:
        raise RuntimeError("CMakeLists.txt sets no default PYPROBTF_CUDA_ARCHITECTURES")
    return [a.strip() for a in m.group(1).split(";") if a.strip()]


def built_architectures(module: Path) -> list[str]:
    """The CUDA architectures ``module`` (a built pyprobtf._C_cuda) was compiled for, e.g. ["80-real", "90"]."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyprobtf._C_cuda", module)
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)  # imports without a GPU: the CUDA runtime is linked statically
    return [a.strip() for a in built.architectures.split(",") if a.strip()]


def cuobjdump_path() -> str | None:
    """cuobjdump from the CUDA toolkit on PATH, else the one Triton ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    except ImportError:
        return None
    return str(bundled) if bundled.exists() else None


def cuda_module_path() -> Path | None:
    """The built pyprobtf._C_cuda extension: in this tree's pyprobtf/, else the installed one, if any."""
    found = sorted((ROOT / "pyprobtf").glob("_C_cuda*.so"))
    if found:
        return found[0]
    import importlib.util

    spec = importlib.util.find_spec("pyprobtf._C_cuda")
    return Path(spec.origin) if spec is not None and spec.origin else None


_CUOBJ_ARCH = re.compile(r"^arch = (sm_\w+)")
_CUOBJ_FUNCTION = re.compile(r"^\s*Function (\S+):")
_CUOBJ_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_cuobjdump(text: str) -> tuple[list[dict], set[str]]:
    """(kernels of the machine code: function, arch, regs, stack, shared, local; archs that carry PTX)."""
    rows, ptx = [], set()
    kind = arch = function = None
    for line in text.splitlines():
        if line.startswith("Fatbin elf code"):
            kind = "elf"
        elif line.startswith("Fatbin ptx code"):
            kind = "ptx"
        m = _CUOBJ_ARCH.match(line)
        if m:
            arch = m.group(1)
            if kind == "ptx":
                ptx.add(arch)
        m = _CUOBJ_FUNCTION.match(line)
        if m:
            function = m.group(1)
            continue
        m = _CUOBJ_USAGE.search(line)
        if m and function and kind == "elf":
            regs, stack, shared, local = (int(g) for g in m.groups())
            rows.append(dict(function=function, arch=arch, regs=regs, stack=stack, shared=shared, local=local))
            function = None
    return rows, ptx


def _demangle(names: list[str]) -> dict:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def cuda_table(module: Path) -> dict:
    """Every kernel of every architecture in the built module, from ``cuobjdump --dump-resource-usage``.

    cuobjdump gives registers, stack frame, static shared and local memory; a
    spill needs a stack frame, so STACK 0 means no spill (the build log's
    ``ptxas -v`` lines give spill stores and loads too).
    """
    tool = cuobjdump_path()
    done = subprocess.run([tool, "--dump-resource-usage", str(module)], capture_output=True, text=True, check=True)
    found, ptx = parse_cuobjdump(done.stdout)
    names = _demangle(sorted({r["function"] for r in found}))
    rows = [dict(kernel=names[r["function"]], target=r["arch"], regs=r["regs"], spill_stores=None,
                 spill_loads=None, stack=r["stack"], local=r["local"], shared=r["shared"]) for r in found]
    # What this build was asked for (scripts/setup.sh builds sm_90 alone on machines without a GPU).
    archs = built_architectures(module)
    expected_elf = sorted({f"sm_{a.partition('-')[0]}" for a in archs if a.partition("-")[2] != "virtual"})
    expected_ptx = sorted({f"sm_{a.partition('-')[0]}" for a in archs if a.partition("-")[2] != "real"})
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return dict(module=module.name, cuobjdump=version, architectures=archs, expected_elf=expected_elf,
                expected_ptx=expected_ptx, elf_archs=sorted({r["target"] for r in rows}), ptx_archs=sorted(ptx),
                rows=rows)


# ----------------------------------------------------------------------------- checks and output


def problems(table: dict) -> list[str]:
    """Every compile error, spill, local memory use (not allowed by name) and shared memory over the limit."""
    found = []
    for part, limit in (("triton", TRITON_SHARED_LIMIT), ("cuda", CUDA_SHARED_LIMIT)):
        for r in table.get(part, {}).get("rows", []):
            where = f"{part} {r['kernel']} [{r.get('specialisation', '')}] {r['target']}"
            if "error" in r:
                found.append(f"{where}: compile error: {r['error']}")
                continue
            allowed = _allowed_stack(r["kernel"], r["target"])
            if r["spill_stores"] or r["spill_loads"] or r["local"] or r["stack"] > allowed:
                spills = "" if r["spill_stores"] is None else (
                    f"spill stores {r['spill_stores']} B, loads {r['spill_loads']} B, ")
                found.append(f"{where}: {spills}stack {r['stack']} B (allowed {allowed} B), local {r['local']} B")
            if r["shared"] > limit:
                found.append(f"{where}: {r['shared']} B of shared memory, over the {limit} B limit")
    cu = table.get("cuda")
    if cu:
        for arch in cu["expected_elf"]:
            if arch not in cu["elf_archs"]:
                found.append(f"cuda {cu['module']}: no machine code for {arch}")
        for arch in cu["expected_ptx"]:
            if arch not in cu["ptx_archs"]:
                found.append(f"cuda {cu['module']}: no PTX for {arch}")
        if not cu["rows"]:
            found.append(f"cuda {cu['module']}: no kernels found")
    tri = table.get("triton")
    if tri:
        compiled = {(r["op"], r["kernel"]) for r in tri["rows"]}
        for op, names in tri["kernels"].items():
            for name in names:
                if (op, name) not in compiled:
                    found.append(f"triton {op}.{name}: no launcher produced a specialisation of it")
        for op, info in _ops_of(tri).items():
            if info.get("not_compiled"):
                found.append(f"triton {op}: {info['not_compiled']} compiles not done before the deadline")
            for cap in REQUIRED_TARGETS if info.get("all_targets") else ():
                if f"sm_{cap}" not in info["targets"]:
                    found.append(f"triton {op}: target sm_{cap} was not compiled")
    return found


def _summary(rows, key):
    groups = {}
    for r in rows:
        if "error" in r:
            continue
        g = groups.setdefault((key(r), r["target"]), dict(n=0, regs=0, spills=0, local=0, shared=0))
        g["n"] += 1
        g["regs"] = max(g["regs"], r["regs"])
        g["spills"] = max(g["spills"], (r["spill_stores"] or 0) + (r["spill_loads"] or 0))
        g["local"] = max(g["local"], r["local"] + r["stack"])
        g["shared"] = max(g["shared"], r["shared"])
    return groups


def _template(name: str) -> str:
    """A demangled kernel name without its template arguments and parameters."""
    return re.sub(r"\(anonymous namespace\)::", "", name.split("<")[0].split("(")[0])


def write_markdown(table: dict, path: Path) -> None:
    tri, cu = table.get("triton"), table.get("cuda")
    lines = ["# GPU kernel resources, compiled ahead of time (no GPU)", ""]
    def produced(what, run):
        return [f"{what} produced by `python scripts/kernel_resources.py {run['command']}` on "
                f"{run['date']} ({run['machine']}"
                + (f", {run['seconds']:.0f} s)." if "seconds" in run else ").")
                + (f" {run['note']}" if run.get("note") else ""), ""]

    if tri:
        ops = _ops_of(tri)
        runs = {}  # the ops each run produced, runs in order of first op
        for op, info in ops.items():
            runs.setdefault(json.dumps(info["run"], sort_keys=True), []).append(op)
        for key, run_ops in runs.items():
            what = "Triton part" if len(runs) == 1 else "Triton rows of " + ", ".join(run_ops)
            lines += produced(what, json.loads(key))
    if cu:
        lines += produced("CUDA part", cu["run"])
    if tri:
        kernels = sum(len(v) for v in tri["kernels"].values())
        lines += [f"Triton: {sum(i['specialisations'] for i in ops.values())} specialisations of {kernels} kernels "
                  "from the launchers run on meta tensors, per op: its launcher input cases and their coverage, "
                  "the Triton version and the targets compiled:", ""]
        for op, info in ops.items():
            lines.append(f"- {op}: {info['specialisations']} specialisations from {info['cases']} cases "
                         f"({info['coverage']} coverage), Triton {info['triton_version']}, "
                         + ", ".join(info["targets"])
                         + (" (newer targets tried and not supported by this Triton: "
                            + (", ".join(info["unsupported_targets"]) or "none") + ")" if info.get("all_targets")
                            else ""))
        lines.append("")
    if cu:
        lines += [f"CUDA: `cuobjdump --dump-resource-usage` ({cu['cuobjdump']}) on the built `{cu['module']}`: machine "
                  f"code for {', '.join(cu['elf_archs'])}, PTX for {', '.join(cu['ptx_archs']) or 'none'} "
                  f"(CMakeLists.txt's default `{';'.join(cu['architectures'])}`). cuobjdump reports no spill "
                  "counts; a spill needs a stack frame, so STACK 0 means none (the build log's `ptxas -v` lines "
                  "carry the spill bytes)."]
    allowed = "; ".join(f"`{p}...` ({', '.join(t) if t else 'every target'}): {b} B, {why}"
                        for p, (b, t, why) in ALLOWED_STACK.items()) or "none"
    lines += ["", f"Limits: no spill stores/loads, no local memory and no stack frame (allowed by name: "
              f"{allowed}); shared memory per block at most {TRITON_SHARED_LIMIT} B for Triton "
              f"(dynamic, opt-in maximum of sm_86/sm_89) and {CUDA_SHARED_LIMIT} B for CUDA (static). "
              f"Problems found: {len(table['problems'])}.", ""]
    for p in table["problems"][:50]:
        lines.append(f"- {p}")
    if tri:
        lines += ["", "## Triton: maximum per kernel and target", "",
                  "| kernel | target | specialisations | max regs | max spill bytes | max stack+local | max shared |",
                  "|---|---|---|---|---|---|---|"]
        for (k, t), g in sorted(_summary(tri["rows"], lambda r: f"{r['op']}.{r['kernel']}").items()):
            lines.append(f"| {k} | {t} | {g['n']} | {g['regs']} | {g['spills']} | {g['local']} | {g['shared']} |")
    if cu:
        lines += ["", "## CUDA: maximum per kernel template and target", "",
                  "| kernel | target | instances | max regs | max stack+local | max shared |",
                  "|---|---|---|---|---|---|"]
        for (k, t), g in sorted(_summary(cu["rows"], lambda r: _template(r["kernel"])).items()):
            lines.append(f"| `{k}` | {t} | {g['n']} | {g['regs']} | {g['local']} | {g['shared']} |")
    if tri:
        lines += ["", "## Triton: every specialisation", "",
                  "| kernel | specialisation | target | warps | regs | spill st/ld | stack | local | shared |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(tri["rows"], key=lambda r: (r["op"], r["kernel"], r["specialisation"], r["target"])):
            if "error" in r:
                lines.append(f"| {r['op']}.{r['kernel']} | {r['specialisation']} | {r['target']} | "
                             f"{r['num_warps']} | compile error | | | | |")
                continue
            lines.append(f"| {r['op']}.{r['kernel']} | {r['specialisation']} | {r['target']} | {r['num_warps']} | "
                         f"{r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['local']} | "
                         f"{r['shared']} |")
    if cu:
        lines += ["", "## CUDA: every kernel", "",
                  "| kernel | target | regs | stack | local | shared |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(cu["rows"], key=lambda r: (r["kernel"], r["target"])):
            lines.append(f"| `{r['kernel']}` | {r['target']} | {r['regs']} | {r['stack']} | {r['local']} | "
                         f"{r['shared']} |")
    path.write_text("\n".join(lines) + "\n")


def _ops_of(tri: dict) -> dict:
    """{op: its run record, coverage, targets, cases, specialisations, ...} of a Triton part.

    A part written before ops carried their own record gets the part's record for each of its ops.
    """
    if "ops" in tri:
        return tri["ops"]
    ops = {}
    for op in tri.get("kernels", {}):
        rows = [r for r in tri["rows"] if r["op"] == op]
        ops[op] = dict(run=tri.get("run", {}), triton_version=tri.get("triton_version"),
                       coverage=tri.get("coverage"), cases=tri.get("cases_per_op", {}).get(op),
                       specialisations=len({(r["kernel"], r["specialisation"]) for r in rows}),
                       not_compiled=0, targets=tri.get("targets", []),
                       unsupported_targets=tri.get("unsupported_targets", []),
                       all_targets=tri.get("all_targets", False))
    return ops


def _merged_triton(old: dict, new: dict) -> dict:
    """The new Triton part with the rows, kernels and run records of the ops it did not compile, from ``old``."""
    old_tri = old["triton"]
    if "run" not in old_tri:  # a table written before parts carried their own run
        old_tri = dict(old_tri, run={k: old[k] for k in ("command", "date", "machine", "seconds") if k in old})
    kept = {op: info for op, info in _ops_of(old_tri).items() if op not in new["ops"]}
    order = list(OPS)
    ops = {op: (new["ops"] | kept)[op] for op in sorted(new["ops"].keys() | kept.keys(),
                                                        key=lambda o: (order.index(o) if o in order else len(order), o))}
    rows = [r for r in old_tri["rows"] if r["op"] in kept] + new["rows"]
    kernels = {op: (new["kernels"] | old_tri["kernels"])[op] for op in ops}
    return dict(new, ops=ops, rows=rows, kernels=kernels)


def updated_table(path: Path, table: dict) -> dict:
    """``table`` with the parts it lacks (triton, cuda) taken from the table at ``path``, if there is one.

    Each part keeps its own ``run`` (command, date, machine, seconds, note), so one
    file can hold a Triton part and a CUDA part computed at different times. Within
    the Triton part each op has its own record: a run with ``--ops`` replaces those
    ops' rows and keeps the other ops' rows and records.
    """
    if not path.exists():
        return table
    old = json.loads(path.read_text())
    merged = dict(table)
    if "triton" in table and "ops" in table["triton"] and "triton" in old:
        merged["triton"] = _merged_triton(old, table["triton"])
    for part in ("triton", "cuda"):
        if part not in table and part in old:
            kept = dict(old[part])
            if "run" not in kept:  # a table written before parts carried their own run
                kept["run"] = {k: old[k] for k in ("command", "date", "machine", "seconds") if k in old}
            merged[part] = kept
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write kernel-resources.md and .json into this folder")
    parser.add_argument("--json", type=Path, help="write the JSON table to this file (for tests)")
    parser.add_argument("--coverage", choices=("full", "pairwise", "each"), default="pairwise")
    parser.add_argument("--targets", default="all",
                        help="comma-separated compute capabilities for Triton (default: sm_80/86/89/90 and newer)")
    parser.add_argument("--skip", choices=("triton", "cuda"), action="append", default=[])
    parser.add_argument("--cuda-module", type=Path, help="the built _C_cuda extension (default: the one in pyprobtf/)")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--check", action="store_true", help="exit 1 on any problem")
    parser.add_argument("--deadline", type=float, help="stop compiling after this many seconds")
    parser.add_argument("--update", action="store_true",
                        help="with --out: keep the parts of the existing table this run does not compute "
                             "(--skip cuda --update rewrites the Triton part and keeps the CUDA part; with --ops, "
                             "only those ops' Triton rows are rewritten)")
    parser.add_argument("--note", help="a remark on this run, printed with the parts it computed")
    parser.add_argument("--list", action="store_true",
                        help="print the kernels and their launchers' specialisations as JSON, compile nothing")
    args = parser.parse_args(argv)

    if args.list:
        import importlib

        ops = tuple(args.ops.split(","))
        specs, cases = launcher_specialisations(args.coverage, ops)
        kernels = {op: sorted(triton_kernels(importlib.import_module(f"pyprobtf.kernels.{op}"))) for op in ops}
        print(json.dumps(dict(kernels=kernels, cases_per_op=cases,
                              specialisations=[[s["op"], s["kernel"], s["label"]] for s in specs])))
        return 0

    if args.update and not args.out:
        parser.error("--update needs --out (the folder whose table it updates)")
    start = time.time()
    table = dict(command=" ".join(sys.argv[1:] if argv is None else argv),
                 date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU used")

    def run_of_part(part_start):
        run = dict(command=table["command"], date=table["date"], machine=table["machine"],
                   seconds=time.time() - part_start)
        return dict(run, note=args.note) if args.note else run

    if "triton" not in args.skip:
        if args.targets == "all":
            newer = [c for c in NEWER_TARGETS if _probe_target(c)]
            targets = list(REQUIRED_TARGETS) + newer
            unsupported = [f"sm_{c}" for c in NEWER_TARGETS if c not in newer]
        else:
            targets, unsupported = [int(c) for c in args.targets.split(",")], []
        deadline = start + args.deadline if args.deadline else None
        tri = triton_table(args.coverage, targets, args.workers, tuple(args.ops.split(",")), deadline)
        run = run_of_part(start)
        for info in tri["ops"].values():
            info.update(run=run, targets=[f"sm_{c}" for c in targets], unsupported_targets=unsupported,
                        all_targets=args.targets == "all")
        table["triton"] = tri
    if "cuda" not in args.skip:
        cuda_start = time.time()
        module = args.cuda_module or cuda_module_path()
        if module is None or not module.exists():
            parser.error("no built pyprobtf._C_cuda to read (build it, pass --cuda-module, or --skip cuda)")
        if cuobjdump_path() is None:
            parser.error("cuobjdump not found (CUDA toolkit or Triton's NVIDIA backend)")
        table["cuda"] = cuda_table(module)
        table["cuda"]["run"] = run_of_part(cuda_start)
    table["seconds"] = time.time() - start
    if args.update:
        table = updated_table(args.out / "kernel-resources.json", table)
    table["problems"] = problems(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernel-resources.json").write_text(json.dumps(table, indent=1) + "\n")
        write_markdown(table, args.out / "kernel-resources.md")
    if args.json:
        args.json.write_text(json.dumps(table) + "\n")
    for p in table["problems"]:
        print(p)
    print(f"{len(table['problems'])} problems; {table['seconds']:.0f} s")
    return 1 if args.check and table["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
