"""The argument checks of every pyprobtf function.

Each check takes ``(where, name, value, ...)``: ``where`` is the function or class
that was called (``"sample_ode"``, ``"VAE"``, ``"VAE.sample"``), ``name`` the argument.
It returns the value (converted where it says so: a float, an int) or raises

- ``TypeError`` when the value has the wrong type,
- ``ValueError`` when it has the right type but a wrong value,

with the message ``"{where}: `{name}` must be {what was expected}; got {what came}"``.
A bool is never a number; numpy integers and floats are (``numbers.Integral`` /
``numbers.Real``). Seeds and Philox counters have their own rule: :mod:`pyprobtf.seeds`.

Example:
    >>> real("fit", "lr", 1e-3, 0, low_open=True)
    0.001
    >>> integer("fit", "steps", -1, 0)
    Traceback (most recent call last):
    ...
    ValueError: fit: `steps` must be >= 0; got -1
"""

from __future__ import annotations

import builtins
import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

__all__ = ["FLOAT_DTYPES", "as_float", "boolean", "callable_", "choice", "integer", "is_integer", "is_real",
           "module", "optional", "positive_finite", "real", "same_as", "sequence", "shape", "tensor"]


def is_real(value) -> bool:
    """Whether ``value`` is a real number (a Python or numpy int or float; never a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (a Python or numpy int; never a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def tensor(where: str, name: str, value, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, min_dim: int = 0):
    """A tensor of one of ``dtypes`` with at least ``min_dim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{where}: `{name}` must have dtype {_dtype_names(dtypes)}; got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{where}: `{name}` must have at least {min_dim} dimension(s); got shape {tuple(value.shape)}"
        )
    return value


def same_as(where: str, name: str, value, ref_name: str, ref: torch.Tensor):
    """A tensor with the shape, dtype and device of ``ref``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(value).__name__}")
    if value.shape != ref.shape:
        raise ValueError(
            f"{where}: `{name}` must have the shape of `{ref_name}`, {tuple(ref.shape)}; got {tuple(value.shape)}"
        )
    if value.dtype != ref.dtype:
        raise TypeError(f"{where}: `{name}` must have the dtype of `{ref_name}`, {ref.dtype}; got {value.dtype}")
    if value.device != ref.device:
        raise ValueError(
            f"{where}: `{name}` must be on the device of `{ref_name}`, {ref.device}; got {value.device}"
        )
    return value


def choice(where: str, name: str, value, choices: Sequence):
    """One of ``choices`` (a ValueError otherwise, whatever the type: the choices say what is expected)."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except (TypeError, RuntimeError):  # an unhashable or tensor value compared with the choices
        ok = False
    if not ok:
        raise ValueError(f"{where}: `{name}` must be one of {choices}; got {value!r}")
    return value


def boolean(where: str, name: str, value) -> bool:
    """True or False (not 0 or 1, not a numpy bool)."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: `{name}` must be True or False; got {value!r} ({type(value).__name__})")
    return value


def as_float(where: str, name: str, value) -> float:
    """A real number as a float64; an int too large for one is a ValueError naming the argument."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{where}: `{name}` must fit in a float64 (|value| <= 1.8e308); got an integer of "
                         f"{int(value).bit_length()} bits") from None


def positive_finite(where: str, name: str, value) -> float:
    """A real number > 0 and finite, as a float."""
    if not is_real(value):
        raise TypeError(f"{where}: `{name}` must be a real number; got {type(value).__name__}")
    value = as_float(where, name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: `{name}` must be positive and finite; got {value}")
    return value


def integer(where: str, name: str, value, low: int, high: int | None = None) -> int:
    """An int (not a bool) in [low, high] (no upper limit when ``high`` is None), as an int."""
    if not is_integer(value):
        raise TypeError(f"{where}: `{name}` must be an integer; got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}: `{name}` must be {expected}; got {value}")
    return value


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if low == -math.inf and high == math.inf:
        return ""
    if high == math.inf:
        return f" {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def real(where: str, name: str, value, low: float = -math.inf, high: float = math.inf, *,
         low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """A real number in the interval from ``low`` to ``high`` (``low_open``/``high_open``: without that end),
    as a float; finite unless ``finite=False`` (then an infinity inside the interval is accepted). NaN never is.

    Example:
        >>> real("VAE", "beta", 2, 0)
        2.0
        >>> real("fit", "max_seconds", math.inf, 0, low_open=True, finite=False)
        inf
    """
    expected = ("a finite number" if finite else "a number") + _interval(low, high, low_open, high_open)
    if not is_real(value):
        raise TypeError(f"{where}: `{name}` must be {expected}; got {type(value).__name__}")
    value = as_float(where, name, value)
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ((math.isfinite(value) or not finite and not math.isnan(value)) and inside):
        raise ValueError(f"{where}: `{name}` must be {expected}; got {value!r}")
    return value


def optional(check: Callable, where: str, name: str, value, *args, **kwargs):
    """None, or what ``check(where, name, value, *args, **kwargs)`` accepts; its errors add "or None".

    Example:
        >>> optional(real, "fit", "ema", None, 0, 1) is None
        True
    """
    if value is None:
        return None
    try:
        return check(where, name, value, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if "; got " not in message:
            raise
        raise type(exc)(message.replace("; got ", " or None; got ", 1)) from None


def callable_(where: str, name: str, value, signature: str = ""):
    """A callable (a function or an ``nn.Module``); ``signature`` says how it is called, e.g. ``"f(x, t)"``."""
    if not builtins.callable(value):
        what = f"a callable {signature}" if signature else "a callable"
        raise TypeError(f"{where}: `{name}` must be {what}; got {type(value).__name__}")
    return value


def module(where: str, name: str, value) -> nn.Module:
    """A :class:`torch.nn.Module` (a user's network)."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{where}: `{name}` must be a torch.nn.Module; got {type(value).__name__}")
    return value


def sequence(where: str, name: str, value, item: Callable | None = None, *, length: int | None = None,
             min_len: int = 0) -> tuple:
    """A list or tuple (``length`` entries, or at least ``min_len``), each entry checked by
    ``item(where, f"{name}[{i}]", entry)``; returned as a tuple of what ``item`` returns.

    Example:
        >>> sequence("fit", "betas", [0.9, 0.99], lambda w, n, v: real(w, n, v, 0, 1, high_open=True), length=2)
        (0.9, 0.99)
    """
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: `{name}` must be a list or tuple; got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{where}: `{name}` must have {length} entries; got {len(value)}")
    if len(value) < min_len:
        raise ValueError(f"{where}: `{name}` must have at least {min_len} entries; got {len(value)}")
    if item is None:
        return tuple(value)
    return tuple(item(where, f"{name}[{i}]", v) for i, v in enumerate(value))


def shape(where: str, name: str, value, *, example: str = "(2,) or (1, 28, 28)") -> tuple[int, ...]:
    """A shape: a non-empty tuple (list, ``torch.Size``) of positive ints, or one positive int ``d`` for ``(d,)``.

    Example:
        >>> shape("RealNVP", "event_shape", 2)
        (2,)
    """
    expected = f"a non-empty tuple of positive ints, e.g. {example}"
    if is_integer(value):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)) or not all(is_integer(d) for d in value):
        got = type(value).__name__ if not isinstance(value, (tuple, list)) else repr(value)
        raise TypeError(f"{where}: `{name}` must be {expected}; got {got}")
    if not value or any(d < 1 for d in value):
        raise ValueError(f"{where}: `{name}` must be {expected}; got {tuple(value)!r}")
    return tuple(int(d) for d in value)
