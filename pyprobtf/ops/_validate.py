"""Argument checks shared by the ops.

Every check runs in Python before any kernel launch, and every error names the
op, the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def tensor(op: str, name: str, value, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, min_dim: int = 0):
    """A tensor of one of ``dtypes`` with at least ``min_dim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{op}: `{name}` must have dtype {_dtype_names(dtypes)}; got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{op}: `{name}` must have at least {min_dim} dimension(s); got shape {tuple(value.shape)}"
        )
    return value


def same_as(op: str, name: str, value, ref_name: str, ref: torch.Tensor):
    """A tensor with the shape, dtype and device of ``ref``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor; got {type(value).__name__}")
    if value.shape != ref.shape:
        raise ValueError(
            f"{op}: `{name}` must have the shape of `{ref_name}`, {tuple(ref.shape)}; got {tuple(value.shape)}"
        )
    if value.dtype != ref.dtype:
        raise TypeError(f"{op}: `{name}` must have the dtype of `{ref_name}`, {ref.dtype}; got {value.dtype}")
    if value.device != ref.device:
        raise ValueError(
            f"{op}: `{name}` must be on the device of `{ref_name}`, {ref.device}; got {value.device}"
        )
    return value


def choice(op: str, name: str, value, choices: Sequence):
    if value not in choices:
        raise ValueError(f"{op}: `{name}` must be one of {tuple(choices)}; got {value!r}")
    return value


def boolean(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be True or False; got {value!r}")
    return value


def as_float(op: str, name: str, value) -> float:
    """A real number as a float64; an int too large for one is a ValueError naming the argument."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{op}: `{name}` must fit in a float64 (|value| <= 1.8e308); got an integer of "
                         f"{int(value).bit_length()} bits") from None


def positive_finite(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: `{name}` must be a real number; got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: `{name}` must be positive and finite; got {value}")
    return value


def integer(op: str, name: str, value, low: int, high: int | None = None) -> int:
    """An int (not a bool) in [low, high] (no upper limit when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: `{name}` must be an integer; got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{op}: `{name}` must be {expected}; got {value}")
    return value
