"""One seed domain for every op, family and :func:`pyprobtf.fit`.

A seed is a Python int in ``[-2^63, 2^64)``: every signed and every unsigned
64-bit value. It is taken modulo ``2^64``, so a negative seed and its unsigned
two's-complement twin (``-1`` and ``2^64 - 1``) give the same numbers, as they
do in ``torch.manual_seed``. Anything outside that range is a ``ValueError``
(never silently wrapped: ``2^64`` does not mean ``0``); a bool or a non-integer
is a ``TypeError``.
"""

from __future__ import annotations

import numbers

SEED_MIN = -(2**63)
SEED_END = 2**64

__all__ = ["SEED_END", "SEED_MIN", "check_seed"]


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
