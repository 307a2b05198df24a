"""The ``triton`` backend: Triton kernels of ``pyprobtf.kernels``.

Compiled for CUDA tensors; on a machine without CUDA, run on CPU tensors by
Triton's interpreter (for testing: slow). The launch functions in
``kernels/<op>.py`` take the same arguments as the native backends' kernels.
"""

from __future__ import annotations

from pyprobtf.ops._backends import triton_interpreter, triton_kernels
from pyprobtf.ops._registry import register_kernel


def _register(entries: tuple[str, ...], module: str, launch: str) -> None:
    def run(*args) -> bool:
        # Triton's interpreter chosen for this launch only, on machines without a GPU (see triton_interpreter).
        with triton_interpreter():
            getattr(getattr(triton_kernels(), module), launch)(*args)
        return True  # the sampling kernels leave the status check to the op

    for entry in entries:
        register_kernel(entry, "triton")(run)


_register(("affine_coupling",), "affine_coupling", "forward")
_register(("affine_coupling_backward",), "affine_coupling", "backward")
_register(("lincomb",), "lincomb", "lincomb")
_register(("sample_logits", "filter_logits"), "sampling", "run")
_register(("vq_nearest",), "vq_nearest", "forward")
