"""The ``pyprobtf`` command line.

    pyprobtf zoo [--dataset D] [--families A,B] [--steps N] [--seconds S] [--seed S] [--device D] [--out DIR]
                                                           train, measure and draw every family
    pyprobtf check [OP ...] [--device cpu|cuda|all] [--dtype D]   verify every backend of this install
    pyprobtf bench [NAME ...] [--device D] [--quick] [--out DIR]   run the op benchmarks
    pyprobtf verify MODULE:OBJECT [--dim D] [--dtype float64] [--step ode|sde --order P]
                                                           check a flow, distribution, transform or sampler

User errors (unknown names, unwritable folders, a device that is not there)
print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """A mistake in how the command was called: reported in one line, exit status 2."""


def _device_list(device: str) -> list[str]:
    import torch

    if device == "all":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    return [device]


# ----------------------------------------------------------------------------- zoo


def _zoo_settings(args) -> tuple[list[str] | None, int]:
    """(family names or None for the default set, the seed as a signed 64-bit int); UsageError otherwise."""
    import math

    from pyprobtf import seeds

    families = None
    if args.families is not None:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        if not families:
            raise UsageError(f"--families must name at least one family; got {args.families!r}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1; got {args.steps}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a positive finite number; got {args.seconds}")
    try:
        seed = seeds.signed_int64(seeds.check_seed(args.seed, "--seed", "seed"))
    except ValueError:
        raise UsageError(f"--seed must be an integer in [-2^63, 2^64); got {args.seed}") from None
    return families, seed


def _one_line_error(parser: argparse.ArgumentParser):
    """A parser's `error` that prints one line (no usage block) and exits with status 2."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    return error


def cmd_zoo(args) -> int:
    from pyprobtf import zoo

    if args.seconds is None:
        args.seconds = 20.0 if args.dataset == "digits" else 12.0
    families, seed = _zoo_settings(args)
    try:
        families = zoo.check_arguments(args.dataset, families)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    (device,) = _device_list(args.device)
    out = _writable_dir(Path(args.out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("drawing zoo.png needs matplotlib: pip install 'pyprobtf[viz]'") from None
    print(f"pyprobtf zoo: {len(families)} families on {args.dataset}, {args.seconds:g} s of training each"
          + (f" (at most {args.steps} steps)" if args.steps else "") + f", device {device}", flush=True)
    report = zoo.run_zoo(args.dataset, families=families, steps=args.steps, seconds=args.seconds, seed=seed,
                         device=device, out=out, progress=not args.quiet)
    print()
    print(report.table)
    print()
    for kind, note in zoo.NLL_NOTES.items():
        if any(r.nll_kind == kind for r in report.results):
            print(f"NLL from {kind}: {note}")
    if args.dataset == "digits":
        from pyprobtf.zoo_images import READING

        print(READING)
    else:
        print("Lower is better for every metric but samples/s; the data row is a second draw of the data itself "
              "(the floor that sampling noise sets).")
    print(f"\nwrote {out / 'zoo.png'} and {out / 'results.json'} in {report.seconds:.0f} s")
    return 0


# ----------------------------------------------------------------------------- check


def cmd_check(args) -> int:
    import pyprobtf
    from pyprobtf.ops import _registry
    from pyprobtf.testing import ops as selfcheck

    unknown = [op for op in args.ops if op not in _registry.OPS]
    if unknown:
        raise UsageError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(sorted(_registry.OPS))}")
    # Ops that share their cases (sample_logits and filter_logits) are checked once.
    case_sets = sorted({_registry.OPS[op].checks for op in (args.ops or _registry.OPS)})
    devices = _device_list(args.device)
    print(f"pyprobtf {pyprobtf.__version__}: checking every backend against the reference")
    for name, status in pyprobtf.ops.available_backends().items():
        print(f"  {name:9s} {status!r}")
    print()

    def show(r):
        mark = "PASS" if r.passed else "FAIL"
        print(f"{r.op:18s} {r.backend:9s} {r.device:5s} {r.dtype:9s} {mark}  {r.cases:4d} cases  {r.seconds:6.1f} s"
              + (f"\n    {r.detail}" if r.detail else ""), flush=True)

    print(f"{'op':18s} {'backend':9s} {'dev':5s} {'dtype':9s} result")
    import torch

    dtypes = [getattr(torch, d) for d in args.dtype] if args.dtype else selfcheck.DTYPES
    results = selfcheck.run_checks(case_sets, devices, dtypes, progress=show)
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed" + (f", {len(failed)} FAILED" if failed else ""))
    if "cuda" in devices:
        _show_gpu_verdicts(args.ops or sorted(_registry.OPS))
    return 1 if failed else 0


def _show_gpu_verdicts(ops) -> None:
    """What ``backend="auto"`` uses on this GPU: each GPU kernel's self-check verdict (cached on disk)."""
    import torch

    from pyprobtf.ops import _backends, _registry, _selfcheck

    device = torch.device("cuda", torch.cuda.current_device())
    print(f"\nself-check verdicts on {torch.cuda.get_device_name(device)} (cache: {_selfcheck.cache_path()}):")
    for name in ops:
        op = _registry.OPS[name]
        for backend in _backends.GPU_BACKENDS:
            if "cuda" not in _backends.available_backends()[backend].devices:
                continue
            verdict = _selfcheck.verdict(op, backend, device)
            text = "self-checks off" if verdict is None else \
                ("passed" if verdict["passed"] else f"FAILED: {verdict['error']}")
            print(f"  {name:18s} {backend:7s} {text}")
        print(f"  {name:18s} auto -> {_registry.resolve(name, 'auto', 'cuda')}")


# ----------------------------------------------------------------------------- bench


def _benchmark_modules() -> dict[str, object]:
    """name -> module for every benchmarks/bench_<name>.py (shipped as pyprobtf.benchmarks)."""
    package = importlib.import_module("pyprobtf.benchmarks")
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))
    return {name.removeprefix("bench_"): importlib.import_module(f"pyprobtf.benchmarks.{name}") for name in names}


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {str(path)!r}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"the output folder {str(path)!r} is not writable")
    return path


def cmd_bench(args) -> int:
    modules = _benchmark_modules()
    unknown = [n for n in args.names if n not in modules]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(modules)}")
    (device,) = _device_list(args.device)
    out = _writable_dir(Path(args.out)) if args.out else None
    # By default the op benchmarks (those the registered ops name); the others train models
    # or time whole libraries for minutes: run them by name.
    from pyprobtf.ops import _registry

    op_benchmarks = sorted({op.benchmark.removeprefix("bench_") for op in _registry.OPS.values()})
    for name in args.names or op_benchmarks:
        print(f"\n=== {name} ({device}) ===", flush=True)
        argv = ["--device", device] + (["--quick"] if args.quick else []) + (["--out", str(out)] if out else [])
        start = time.perf_counter()
        status = modules[name].main(argv)
        print(f"({name}: {time.perf_counter() - start:.0f} s)")
        if status:
            return status
    return 0


# ----------------------------------------------------------------------------- verify


def _load_object(spec: str):
    """``MODULE:OBJECT`` (a dotted module or a path to a .py file; OBJECT may be dotted) -> the object."""
    import importlib.util

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"the object must be given as MODULE:OBJECT (e.g. my_flows:flow); got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"no such file {module_name!r}")
        sys.path.insert(0, str(path.resolve().parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's module failed to import: say why, in one line
            raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _is_factory(obj) -> bool:
    """A class, or a function that needs no argument: called to build the object to check."""
    import inspect

    if inspect.isclass(obj):
        return True
    if inspect.isfunction(obj):
        params = inspect.signature(obj).parameters.values()
        return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in params)
    return False


def cmd_verify(args) -> int:
    import torch

    from pyprobtf.testing import verification as checks

    obj = _load_object(args.object)
    if args.dim is not None and args.dim < 1:
        raise UsageError(f"--dim must be a positive int; got {args.dim}")
    names = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    if names and any(c not in checks.CHECKS for c in names):
        raise UsageError(f"--checks: choose from {', '.join(checks.CHECKS)}; got {args.checks!r}")
    if args.step is None and _is_factory(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: say why, in one line
            raise UsageError(f"calling the factory {args.object} failed: {type(exc).__name__}: {exc}") from None
    print(f"pyprobtf verify {args.object}: {type(obj).__name__}", flush=True)
    if args.step is not None:
        order = args.order if args.order is not None else getattr(obj, "order", None)
        if order is None:
            raise UsageError("--step needs the claimed order: --order P (or an `order` attribute on the step)")
        if not callable(obj):
            raise UsageError(f"--step: {args.object} is not callable (a {type(obj).__name__})")
        found = [checks.verify_ode_order(obj, order)] if args.step == "ode" else \
            [checks.verify_sde_weak_order(obj, order, seed=args.seed),
             checks.verify_sde_stationary(obj, order, seed=args.seed)]
        report = checks.Report(found[0].interface, found)
    else:
        try:
            checks.as_subject(obj, dim=args.dim)  # an unusable object is a usage error, not a failed check
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        report = checks.verify(obj, dim=args.dim, dtype=getattr(torch, args.dtype), seed=args.seed, checks=names,
                               rtol=args.rtol, ladj_rtol=args.ladj_rtol)
    print(f"interface: {report.interface}\n")
    print(report.table())
    ran = [r for r in report.results if r.passed is not None]
    failed = report.failed
    print(f"\n{len(ran) - len(failed)} of {len(ran)} checks passed"
          + (f", {len(failed)} FAILED" if failed else "")
          + (f" ({len(report.results) - len(ran)} not applicable)" if len(ran) < len(report.results) else ""))
    for r in failed:
        print(f"  {r.message()}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyprobtf", description="pyprobtf: generative models as probability "
                                     "transformation functions, with fast fused ops.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    zoo = sub.add_parser("zoo", help="train every family on a 2-D dataset, measure them and draw zoo.png")
    from pyprobtf.data import TOY_DATASETS
    from pyprobtf.zoo import FAMILIES

    zoo.add_argument("--dataset", default="moons", help=f"one of {', '.join(TOY_DATASETS)} (default: moons)")
    zoo.add_argument("--families", default=None,
                     help=f"comma-separated, from {', '.join(FAMILIES)} (default: the first eight)")
    zoo.add_argument("--steps", type=int, default=None, help="at most this many training steps per family")
    zoo.add_argument("--seconds", type=float, default=None,
                     help="training time per family (default: 12; 20 on digits)")
    zoo.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the sampling")
    zoo.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: train and sample on the GPU")
    zoo.add_argument("--out", default=".", help="folder for zoo.png and results.json (default: here)")
    zoo.add_argument("--quiet", action="store_true", help="no progress bars")
    zoo.set_defaults(run=cmd_zoo)
    zoo.error = _one_line_error(zoo)

    check = sub.add_parser("check", help="check every available backend of every op against its reference")
    check.add_argument("ops", nargs="*", metavar="OP", help="ops to check (default: all)")
    check.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    check.add_argument("--dtype", action="append", choices=["float32", "float64", "float16", "bfloat16"],
                       help="dtypes to check (repeatable; default: all four)")
    check.set_defaults(run=cmd_check)

    bench = sub.add_parser("bench", help="run the op benchmarks and write their tables")
    bench.add_argument("names", nargs="*", metavar="NAME",
                       help="benchmarks to run (default: every op benchmark; the families ones only by name)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None,
                       help="default: cuda when available, else cpu")
    bench.add_argument("--quick", action="store_true", help="few cases, short timings")
    bench.add_argument("--out", default=None, help="results folder (default: benchmarks/results in the source tree)")
    bench.set_defaults(run=cmd_bench)

    ver = sub.add_parser("verify", help="check a flow, distribution, transform or sampler from any library "
                         "(zuko, nflows, normflows, torch.distributions, pyprobtf, a callable)")
    ver.add_argument("object", metavar="MODULE:OBJECT",
                     help="the object, or a class or function without arguments that builds it; MODULE may be a "
                          "dotted name (importable from here) or a path to a .py file")
    ver.add_argument("--dim", type=int, default=None, help="input size, for transforms and callables")
    ver.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                     help="cast a copy of the object to this dtype first (default: float64)")
    ver.add_argument("--seed", type=int, default=0, help="seed of every random draw of the checks")
    ver.add_argument("--checks", default=None, help="comma-separated subset of the checks (default: all)")
    ver.add_argument("--rtol", type=float, default=None, help="invertibility tolerance (default: 1e-7 in float64)")
    ver.add_argument("--ladj-rtol", type=float, default=None,
                     help="log-determinant tolerance (default: 1e-6 in float64)")
    ver.add_argument("--step", choices=["ode", "sde"], default=None,
                     help="OBJECT is a solver step: ode: step(field, x, t, t_next); sde: step(drift, diffusion, "
                          "x, t, t_next, seed=)")
    ver.add_argument("--order", type=float, default=None, help="the step's claimed (weak) order")
    ver.set_defaults(run=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "device", "") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"pyprobtf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyprobtf {args.command}: interrupted", file=sys.stderr)
        return 130
