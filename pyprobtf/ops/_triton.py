"""The ``triton`` backend: Triton kernels of ``pyprobtf.kernels``.

Compiled for CUDA tensors; on a machine without CUDA, run on CPU tensors by
Triton's interpreter (for testing: slow). The launch functions in
``kernels/<op>.py`` take the same arguments as the other compiled backends.
"""

from __future__ import annotations

import functools

from pyprobtf.ops._backends import triton_interpreter, triton_kernels
from pyprobtf.ops._registry import register_kernel


def _launch(fn):
    """Run a launch with Triton's interpreter chosen when there is no GPU (see triton_interpreter)."""

    @functools.wraps(fn)
    def run(*args):
        with triton_interpreter():
            return fn(triton_kernels(), *args)

    return run


@register_kernel("affine_coupling", "triton")
@_launch
def affine_coupling(kernels, *args):
    kernels.affine_coupling.forward(*args)


@register_kernel("affine_coupling_backward", "triton")
@_launch
def affine_coupling_backward(kernels, *args):
    kernels.affine_coupling.backward(*args)


@register_kernel("lincomb", "triton")
@_launch
def lincomb(kernels, *args):
    kernels.lincomb.lincomb(*args)


@register_kernel("sample_logits", "triton")
@register_kernel("filter_logits", "triton")
@_launch
def sampling(kernels, *args) -> bool:
    kernels.sampling.run(*args)
    return True


@register_kernel("vq_nearest", "triton")
@_launch
def vq_nearest(kernels, *args):
    kernels.vq_nearest.forward(*args)
