"""Backends: which exist on this machine, which were verified on which GPU,
and which one ``backend="auto"`` picks.

Every op has four backends:

- ``reference``: pure PyTorch (``pyprobtf.reference``), the spec; runs anywhere.
- ``cpp``: C++17 kernels in ``pyprobtf._C`` (CPU tensors).
- ``triton``: Triton kernels in ``pyprobtf.kernels``; compiled for CUDA tensors,
  or run by Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1``.
- ``cuda``: CUDA kernels in ``pyprobtf._C_cuda`` (CUDA tensors).

GPU code that has never run on a GPU is not trusted: ``auto`` only picks a
GPU backend for an op after its tests passed on a real GPU, as recorded in
``GPU_VERIFIED``. Naming a backend explicitly always runs it (with a warning
when it is unverified), or raises :class:`BackendUnavailableError` saying why
it cannot run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import warnings
from collections.abc import Mapping, Sequence

import torch

BACKEND_NAMES = ("reference", "cpp", "triton", "cuda")
GPU_BACKENDS = ("triton", "cuda")

# (op, backend) -> the GPUs its test suite passed on, as "GPU name, date (what ran)".
# An entry is added only by someone who ran `pytest -m gpu` and the triton run
# on that GPU. Empty: no GPU has been lent to this project yet, so on CUDA
# tensors `auto` uses the reference (PyTorch) implementation.
GPU_VERIFIED: dict[tuple[str, str], tuple[str, ...]] = {
    ("affine_coupling", "triton"): (),
    ("affine_coupling", "cuda"): (),
    ("lincomb", "triton"): (),
    ("lincomb", "cuda"): (),
    ("sample_logits", "triton"): (),
    ("sample_logits", "cuda"): (),
    ("filter_logits", "triton"): (),
    ("filter_logits", "cuda"): (),

    ("vq_nearest", "triton"): (),
    ("vq_nearest", "cuda"): (),
}

# op -> device type -> backends in order of measured speed (fastest first).
# Filled by each op module through `register_op`, citing the benchmark behind it.
_AUTO_ORDER: dict[str, Mapping[str, Sequence[str]]] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was named explicitly but cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Where a backend can run on this machine, and why not elsewhere."""

    devices: tuple[str, ...]
    detail: str

    @property
    def available(self) -> bool:
        return bool(self.devices)

    def __repr__(self) -> str:
        where = ", ".join(self.devices) if self.devices else "unavailable"
        return f"<{where}: {self.detail}>"


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _load_cpp():
    try:
        return importlib.import_module("pyprobtf._C"), ""
    except ImportError as exc:  # e.g. an install without the compiled extension
        return None, f"pyprobtf._C could not be imported ({exc}); reinstall pyprobtf to build it"


def _archs_cover(architectures: str, capability: int) -> bool:
    """Whether code built for CMake CUDA architectures like "90" or "80-real,90" runs on ``capability``.

    "NN-real" is machine code for one major version (minor NN % 10 or newer);
    "NN" and "NN-virtual" include PTX, which the driver compiles for any newer GPU.
    """
    for arch in architectures.split(","):
        number, _, kind = arch.strip().partition("-")
        if not number.isdigit() or int(number) > capability:
            continue
        if kind != "real" or int(number) // 10 == capability // 10:
            return True
    return False


@functools.cache
def _load_cuda():
    try:
        module = importlib.import_module("pyprobtf._C_cuda")
    except ImportError:
        return None, (
            "pyprobtf._C_cuda was not built: no CUDA compiler was found when pyprobtf was installed "
            "(install with PYPROBTF_CUDA=ON to require it)"
        )
    if not torch.cuda.is_available():
        return None, f"pyprobtf._C_cuda is built (sm_{module.architectures}) but torch sees no CUDA device"
    count, error = module.device_count()
    if count == 0:
        return None, f"pyprobtf._C_cuda is built but the CUDA runtime finds no device ({error or 'none'})"
    major, minor = torch.cuda.get_device_capability()
    if not _archs_cover(module.architectures, major * 10 + minor):
        return None, (
            f"pyprobtf._C_cuda was built for sm_{module.architectures}, which cannot run on this "
            f"sm_{major}{minor} GPU; reinstall with PYPROBTF_CUDA_ARCHITECTURES={major}{minor}"
        )
    return module, ""


@functools.cache
def _load_triton():
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return None, f"triton is not installed ({exc})"
    return importlib.import_module("pyprobtf.kernels"), ""


@functools.cache
def available_backends() -> dict[str, BackendStatus]:
    """Which backends can run on this machine, on which device types, and why the others cannot."""
    has_cuda = torch.cuda.is_available()
    status = {"reference": BackendStatus(("cpu", "cuda") if has_cuda else ("cpu",), "pure PyTorch, the spec")}

    cpp, why = _load_cpp()
    if cpp is not None:
        status["cpp"] = BackendStatus(("cpu",), "C++17 kernels" + (", OpenMP" if cpp.openmp() else ", no OpenMP"))
    else:
        status["cpp"] = BackendStatus((), why)

    kernels, why = _load_triton()
    if kernels is None:
        status["triton"] = BackendStatus((), why)
    elif triton_interpreting():
        status["triton"] = BackendStatus(("cpu",), "interpreter on CPU (TRITON_INTERPRET=1): for testing, slow")
    elif has_cuda:
        status["triton"] = BackendStatus(("cuda",), "compiled Triton kernels")
    else:
        status["triton"] = BackendStatus(
            (), "no CUDA device, and TRITON_INTERPRET=1 was not set before triton was imported"
        )

    cuda, why = _load_cuda()
    if cuda is not None:
        status["cuda"] = BackendStatus(("cuda",), f"CUDA kernels for sm_{cuda.architectures}")
    else:
        status["cuda"] = BackendStatus((), why)
    return status


def register_op(op: str, auto_order: Mapping[str, Sequence[str]]) -> None:
    """Record the order in which ``auto`` tries backends for ``op`` on each device type."""
    _AUTO_ORDER[op] = auto_order


def is_gpu_verified(op: str, backend: str) -> bool:
    return bool(GPU_VERIFIED.get((op, backend)))


@functools.cache
def _warn_unverified(op: str, backend: str) -> None:
    warnings.warn(
        f"{op}: the {backend} backend has not been verified on a GPU yet (see GPU_VERIFIED in "
        "pyprobtf/ops/_backends.py); check its results, e.g. with `pyprobtf check`",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.lru_cache(maxsize=None)
def resolve(op: str, backend: str, device_type: str) -> str:
    """The concrete backend that runs ``op`` on ``device_type`` for the requested ``backend``."""
    statuses = available_backends()
    if backend == "auto":
        for name in _AUTO_ORDER[op].get(device_type, ()):
            if device_type not in statuses[name].devices:
                continue
            if device_type != "cpu" and name in GPU_BACKENDS and not is_gpu_verified(op, name):
                continue
            return name
        return "reference"
    if backend not in BACKEND_NAMES:
        raise ValueError(f"{op}: `backend` must be 'auto' or one of {BACKEND_NAMES}; got {backend!r}")
    if backend == "reference":
        return backend
    status = statuses[backend]
    if device_type not in status.devices:
        where = f"runs on {', '.join(status.devices)} only" if status.devices else "is unavailable"
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} cannot run on {device_type} tensors here: it {where} ({status.detail})"
        )
    if device_type != "cpu" and backend in GPU_BACKENDS and not is_gpu_verified(op, backend):
        _warn_unverified(op, backend)
    return backend


def cpp_module():
    module, why = _load_cpp()
    if module is None:
        raise BackendUnavailableError(why)
    return module


def cuda_module():
    module, why = _load_cuda()
    if module is None:
        raise BackendUnavailableError(why)
    return module


def triton_kernels():
    module, why = _load_triton()
    if module is None:
        raise BackendUnavailableError(why)
    return module


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
