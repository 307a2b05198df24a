"""Backends: which exist on this machine, and which were verified on which GPU.

- ``reference``: pure PyTorch (``pyprobtf.reference``), the spec; runs anywhere.
- ``torch``: the fast PyTorch path (``pyprobtf.ops._fast_torch``): the op's
  contract in the compute dtype, with no host synchronisation; what ``auto``
  uses on a GPU whose kernels are not verified.
- ``cpp``: C++17 kernels in ``pyprobtf._C`` (CPU tensors).
- ``triton``: Triton kernels in ``pyprobtf.kernels``; compiled for CUDA tensors,
  or run by Triton's interpreter on CPU tensors (for testing: slow).
- ``cuda``: CUDA kernels in ``pyprobtf._C_cuda`` (CUDA tensors).

Which backend runs a call is decided in :mod:`pyprobtf.ops._registry`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import os
import sys

import torch

BACKEND_NAMES = ("reference", "torch", "cpp", "triton", "cuda")
GPU_BACKENDS = ("triton", "cuda")

# (op, backend) -> the GPUs its test suite passed on, as "GPU name, date (what ran)".
# An entry is added only from a run of scripts/gpu_verify.sh on that GPU (its
# summary, benchmarks/results/gpu-verify-<gpu>.md). Empty: no GPU has been lent
# to this project yet. On a user's GPU, `auto` uses a kernel after it passed its
# self-check there (pyprobtf/ops/_selfcheck.py).
GPU_VERIFIED: dict[tuple[str, str], tuple[str, ...]] = {}


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
    """Whether pyprobtf's Triton kernels run in Triton's interpreter (on CPU tensors, machines without CUDA)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or not torch.cuda.is_available()


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


@contextlib.contextmanager
def triton_interpreter():
    """Triton's interpreter for pyprobtf's kernels on CPU, for the duration of the block.

    The interpreter must be chosen before triton is imported, and Triton reads
    the choice (TRITON_INTERPRET) again while it runs a kernel; so pyprobtf
    sets it around its own imports and launches only, never at ``import
    pyprobtf``, leaving the rest of the process's Triton code as it was.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.cuda.is_available():
        yield
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        del os.environ["TRITON_INTERPRET"]


@functools.cache
def _load_triton():
    """pyprobtf.kernels, compiled for the GPU, or for Triton's interpreter on a machine without CUDA."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed"
    if not triton_interpreting():
        return importlib.import_module("pyprobtf.kernels"), ""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        kernels = importlib.import_module("pyprobtf.kernels")
        if type(kernels.affine_coupling._forward_kernel).__name__ != "InterpretedFunction":
            return None, ("no CUDA device, and pyprobtf's Triton kernels were imported before TRITON_INTERPRET=1 "
                          "was set: they can only be compiled for a GPU")
        return kernels, ""
    if "triton" in sys.modules:
        return None, ("no CUDA device, and triton was imported before pyprobtf could choose its interpreter: "
                      "set TRITON_INTERPRET=1 before importing triton to run pyprobtf's Triton kernels on CPU")
    with triton_interpreter():
        return importlib.import_module("pyprobtf.kernels"), ""


@functools.cache
def available_backends() -> dict[str, BackendStatus]:
    """Which backends can run on this machine, on which device types, and why the others cannot."""
    has_cuda = torch.cuda.is_available()
    everywhere = ("cpu", "cuda") if has_cuda else ("cpu",)
    status = {"reference": BackendStatus(everywhere, "pure PyTorch, the spec"),
              "torch": BackendStatus(everywhere, "fast PyTorch path, no host synchronisation")}

    cpp, why = _load_cpp()
    if cpp is not None:
        status["cpp"] = BackendStatus(("cpu",), "C++17 kernels" + (", OpenMP" if cpp.openmp() else ", no OpenMP"))
    else:
        status["cpp"] = BackendStatus((), why)

    if importlib.util.find_spec("triton") is None:
        status["triton"] = BackendStatus((), "triton is not installed")
    elif has_cuda:
        status["triton"] = BackendStatus(("cuda",), "compiled Triton kernels")
    else:  # loaded on first use (see _load_triton)
        status["triton"] = BackendStatus(("cpu",), "Triton's interpreter on CPU: for testing, slow")

    cuda, why = _load_cuda()
    if cuda is not None:
        status["cuda"] = BackendStatus(("cuda",), f"CUDA kernels for sm_{cuda.architectures}")
    else:
        status["cuda"] = BackendStatus((), why)
    return status


def is_gpu_verified(op: str, backend: str) -> bool:
    return bool(GPU_VERIFIED.get((op, backend)))


def _require(loaded):
    module, why = loaded
    if module is None:
        raise BackendUnavailableError(why)
    return module


def cpp_module():
    return _require(_load_cpp())


def cuda_module():
    return _require(_load_cuda())


def triton_kernels():
    return _require(_load_triton())
