"""One seed domain for every op, family and :func:`pyprobtf.fit`.

A seed is a Python int in ``[-2^63, 2^64)``: every signed and every unsigned
64-bit value. It is taken modulo ``2^64``, so a negative seed and its unsigned
two's-complement twin (``-1`` and ``2^64 - 1``) give the same numbers, as they
do in ``torch.manual_seed``. Anything outside that range is a ``ValueError``
(never silently wrapped: ``2^64`` does not mean ``0``); a bool or a non-integer
is a ``TypeError``. Philox counters (the ``offset`` of ``lincomb`` and
``sample_logits``) follow the same rule: :func:`check_counter`.

Per-row seed (and offset) tensors have an integer dtype whose every value is an
int64: ``int8``, ``int16``, ``int32``, ``int64`` or ``uint8``
(:data:`INTEGER_TENSOR_DTYPES`); each value is read as a 64-bit two's-complement
word, so the tensor value ``-1`` is the seed ``2^64 - 1`` exactly as the Python
int ``-1`` is. ``uint16``, ``uint32``, ``uint64``, floating, complex and bool
tensors are a ``TypeError``.
"""

from __future__ import annotations

import numbers

import torch

SEED_MIN = -(2**63)
SEED_END = 2**64

# Integer tensor dtypes whose values all convert to int64 exactly.
INTEGER_TENSOR_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

__all__ = ["INTEGER_TENSOR_DTYPES", "SEED_END", "SEED_MIN", "check_counter", "check_seed", "check_seed_tensor",
           "signed_int64"]


def check_seed(seed, where: str, name: str = "seed") -> int:
    """``seed`` as its canonical value in ``[0, 2^64)``; errors name ``where`` and ``name``.

    Example:
        >>> check_seed(-1, "sample")
        18446744073709551615
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}: `{name}` must be an int; got {type(seed).__name__}")
    seed = int(seed)
    if not SEED_MIN <= seed < SEED_END:
        raise ValueError(f"{where}: `{name}` must be an int in [-2^63, 2^64); got {seed}")
    return seed % SEED_END


def check_counter(offset, where: str, name: str = "offset") -> int:
    """A Philox counter: the seed rule (ints in ``[-2^63, 2^64)``, modulo ``2^64``), canonical in ``[0, 2^64)``.

    Counter arithmetic (``offset + i``) is modulo ``2^64`` on every backend.

    Example:
        >>> check_counter(-1, "lincomb")
        18446744073709551615
    """
    return check_seed(offset, where, name)


def signed_int64(value: int) -> int:
    """``value`` modulo ``2^64`` as a signed 64-bit int (what an int64 kernel argument holds).

    Example:
        >>> signed_int64(2**64 - 1)
        -1
    """
    value %= SEED_END
    return value - SEED_END if value >= 2**63 else value


def check_seed_tensor(seed, where: str, name: str = "seed") -> torch.Tensor:
    """A seed (or counter) tensor of one of :data:`INTEGER_TENSOR_DTYPES`, returned as int64.

    Shape and device are the caller's to check.

    Example:
        >>> check_seed_tensor(torch.tensor([1, -1], dtype=torch.int32), "sample").dtype
        torch.int64
    """
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor; got {type(seed).__name__}")
    if seed.dtype not in INTEGER_TENSOR_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in INTEGER_TENSOR_DTYPES)
        raise TypeError(f"{where}: `{name}` must be an integer tensor of dtype {names}; got {seed.dtype}")
    return seed.to(torch.int64)
