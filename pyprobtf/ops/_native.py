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


def vec_or_none(t: torch.Tensor | None) -> tuple[int, int]:
    """:func:`vec` of ``t``, or (0, 0) for an absent per-row tensor."""
    return (0, 0) if t is None else vec(t)


def _row_param(tensor: torch.Tensor | None, number) -> tuple[int, int, int | float]:
    """A per-row parameter as (pointer, stride, number): the tensor when given, else the number."""
    return (tensor.data_ptr(), tensor.stride(0), 0) if tensor is not None else (0, 0, number)


def sampling_args(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered) -> tuple:
    """The native sampling kernels' common arguments; ``params`` maps names to (tensor or None, number)."""
    p = {name: _row_param(*value) for name, value in params.items()}
    return (
        mat(logits), logits.shape[0], logits.shape[1], DTYPE_CODES[logits.dtype],
        p["temperature"], p["top_k"], p["top_p"], p["min_p"],
        vec_or_none(uniform), _row_param(*seed), _row_param(*offset),
        0 if tokens is None else tokens.data_ptr(), 0 if logprobs is None else logprobs.data_ptr(),
        status.data_ptr(), 0 if filtered is None else filtered.data_ptr(),
    )
