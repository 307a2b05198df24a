"""The op registry: every op declared once, kernels registered per backend, one place that picks the backend.

An op module declares its op with :func:`define` (name, the order in which
``backend="auto"`` tries backends on each device type, the benchmark that
times it and the self-check cases that verify it) and registers its
reference implementation as the ``reference`` kernel: the spec, and the
default. Backend modules (``_native`` for ``cpp`` and ``cuda``, ``_triton``, ``_fast_torch``)
register their kernels for the op's entry points with :func:`register_kernel`.
:func:`resolve` turns ``backend=`` into the backend that runs a call, and
:func:`kernel` hands back its function.

Kernels of the ``reference`` and ``torch`` backends return their results; the
compiled ones (``cpp``, ``triton``, ``cuda``) fill outputs that the op
allocates (through torch: CUDA-graph safe) and see 2-D strided views.

GPU kernels are trusted on a device only after they passed their self-check
there (:mod:`pyprobtf.ops._selfcheck`); ``auto`` skips a kernel that failed,
with one warning, and takes the next backend.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from pyprobtf.ops import _backends

BACKEND_NAMES = _backends.BACKEND_NAMES
# Backends whose kernels return their results (the others fill preallocated outputs).
FUNCTIONAL = ("reference", "torch")


@dataclasses.dataclass(frozen=True)
class Op:
    """One public op: what ``auto`` prefers, what verifies it and what times it."""

    name: str
    auto: Mapping[str, Sequence[str]]  # device type -> backends, fastest first (measured by `benchmark`)
    entries: tuple[str, ...]  # kernel entry points a backend must register to run the op
    benchmark: str  # module of benchmarks/ that times every backend against the peers
    checks: str  # key of pyprobtf.testing.ops.REGISTRY: the cases of `pyprobtf check` and the self-check
    custom_ops: tuple[str, ...]  # its torch.library ops, "pyprobtf::name"

    def backends(self) -> tuple[str, ...]:
        """The backends that registered every entry point of the op."""
        return tuple(b for b in BACKEND_NAMES if all((e, b) in _KERNELS for e in self.entries))


OPS: dict[str, Op] = {}
_KERNELS: dict[tuple[str, str], Callable] = {}


def define(name: str, *, auto: Mapping[str, Sequence[str]], benchmark: str, entries: Sequence[str] | None = None,
           checks: str | None = None, custom_ops: Sequence[str] | None = None) -> Op:
    """Declare op ``name``; returns its :class:`Op`."""
    op = Op(name, dict(auto), tuple(entries or (name,)), benchmark, checks or name,
            tuple(custom_ops or (f"pyprobtf::{name}",)))
    OPS[name] = op
    return op


def register_kernel(entry: str, backend: str):
    """Register the decorated function as ``backend``'s kernel for entry point ``entry``."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKEND_NAMES}")

    def wrap(fn: Callable) -> Callable:
        _KERNELS[(entry, backend)] = fn
        return fn

    return wrap


def kernel(entry: str, backend: str) -> Callable:
    """The kernel ``backend`` registered for ``entry`` (after :func:`resolve` chose the backend)."""
    return _KERNELS[(entry, backend)]


def check_backend(op: str, backend) -> str:
    """``backend`` if it names a backend (or ``"auto"``); a ValueError naming ``op`` otherwise."""
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"{op}: `backend` must be one of {('auto',) + BACKEND_NAMES}; got {backend!r}")
    return backend


@functools.cache
def _warn_unverified(op: str, backend: str) -> None:
    warnings.warn(
        f"{op}: the {backend} backend has not been verified on a GPU by this project (see GPU_VERIFIED in "
        "pyprobtf/ops/_backends.py); check its results, e.g. with `pyprobtf check --device cuda`",
        RuntimeWarning,
        stacklevel=5,
    )


def _device_key(device_type: str) -> tuple[str, int]:
    index = torch.cuda.current_device() if device_type == "cuda" and torch.cuda.is_available() else -1
    return device_type, index


def resolve(op: str, backend: str, device_type: str) -> str:
    """The backend that runs ``op`` on ``device_type`` tensors for the requested ``backend``."""
    return _resolve(op, backend, *_device_key(device_type))


@functools.lru_cache(maxsize=None)
def _resolve(op: str, backend: str, device_type: str, device_index: int) -> str:
    check_backend(op, backend)
    statuses = _backends.available_backends()
    if backend == "auto":
        for name in OPS[op].auto.get(device_type, ()):
            if name not in OPS[op].backends() or device_type not in statuses[name].devices:
                continue
            if _needs_self_check(name, device_type) and not _self_checked(op, name, device_type, device_index):
                continue
            return name
        return "reference"
    if backend not in OPS[op].backends():
        raise _backends.BackendUnavailableError(f"{op}: backend {backend!r} has no kernel for this op")
    if backend in FUNCTIONAL:
        return backend
    status = statuses[backend]
    if device_type not in status.devices:
        where = f"runs on {', '.join(status.devices)} only" if status.devices else "is unavailable"
        raise _backends.BackendUnavailableError(
            f"{op}: backend {backend!r} cannot run on {device_type} tensors here: it {where} ({status.detail})"
        )
    if backend in _backends.GPU_BACKENDS and device_type != "cpu" and not _backends.is_gpu_verified(op, backend):
        _warn_unverified(op, backend)
    return backend


# Which (backend, device type) pairs `auto` uses only after a self-check on the device.
# Tests add ("cpp", "cpu") to exercise the machinery without a GPU.
SELF_CHECKED = {("triton", "cuda"), ("cuda", "cuda")}


def _needs_self_check(backend: str, device_type: str) -> bool:
    return (backend, device_type) in SELF_CHECKED


def _self_checked(op: str, backend: str, device_type: str, device_index: int) -> bool:
    from pyprobtf.ops import _selfcheck

    device = torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type)
    return _selfcheck.passed(OPS[op], backend, device)


def clear_cache() -> None:
    """Forget every backend choice (after a change to the registry, the self-check cache or the machine)."""
    _resolve.cache_clear()
    _warn_unverified.cache_clear()


def use_custom_op(*tensors: torch.Tensor) -> bool:
    """Whether a call must go through the registered torch custom op.

    torch.compile, fake tensors, tensor subclasses and functorch transforms need
    the custom op; plain eager calls take the cheaper autograd.Function path.
    """
    if torch.compiler.is_compiling():
        return True
    for t in tensors:
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return True
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return True
    return False


def eager_autograd(forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """An ``apply`` running ``forward`` with the custom op's own autograd formula, for eager calls.

    A ``torch.library`` custom op costs tens of microseconds per eager call; an
    ``autograd.Function`` a few. Both paths share ``setup_context`` and
    ``backward`` (the formula given to ``register_autograd``); ``ctx.eager`` is
    True on this path, where a gradient may alias another tensor.
    """

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward(*inputs)
            ctx.eager = True
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return Function.apply
