"""Marshalling tensors for the native kernels, which see only integers.

A tensor reaches C++ or CUDA as its data pointer and strides (in elements);
the dtype as a small code that csrc/include/pyprobtf/common.h mirrors.
"""

from __future__ import annotations

import math

import torch

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a (B, F) matrix, F the product of the trailing sizes.

    A view when ``t``'s strides allow one (any 2-D strided tensor does);
    otherwise torch copies, so the kernels only ever handle 2-D strides.
    """
    if t.dim() == 2:
        return t
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def mat(t: torch.Tensor) -> tuple[int, int, int]:
    """(pointer, row stride, column stride) of a 2-D tensor."""
    return t.data_ptr(), t.stride(0), t.stride(1)


def vec(t: torch.Tensor) -> tuple[int, int]:
    """(pointer, stride) of a 1-D tensor."""
    return t.data_ptr(), t.stride(0)


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device, as an integer handle."""
    return torch.cuda.current_stream(t.device).cuda_stream


def num_threads() -> int:
    """Thread count for the C++ kernels: torch's own setting, so both agree."""
    return torch.get_num_threads()
