"""Reference counter-based random numbers, bit-compatible with triton.language.random.

``philox4x32_10(seed, counter)`` is Philox4x32 with 10 rounds, key
``(lo32(seed), hi32(seed))`` and counter ``(lo32(c), hi32(c), 0, 0)``: the
four words ``tl.randint4x(seed, c)`` returns for a 64-bit offset ``c``.
Seeds and counters are taken modulo 2^64 (negative integers by two's complement).

Written with int64 tensors and 16-bit partial products, so every step is
exact in plain PyTorch on any device.
"""

from __future__ import annotations

import math

import torch

# Philox4x32-10 constants (Salmon et al., 2011), shared by every implementation.
MASK32 = 0xFFFFFFFF
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57


def _umulhi(a: int, b: torch.Tensor) -> torch.Tensor:
    """High 32 bits of the 64-bit product of the constant ``a`` and uint32 values ``b`` (in int64)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    # a*b = a_hi*b_hi*2^32 + (a_hi*b_lo + a_lo*b_hi)*2^16 + a_lo*b_lo; each partial product < 2^32.
    mid = a_hi * b_lo + a_lo * b_hi + ((a_lo * b_lo) >> 16)  # < 2^34: exact in int64
    return (a_hi * b_hi + (mid >> 16)) & MASK32


def _mullo(a: int, b: torch.Tensor) -> torch.Tensor:
    """Low 32 bits of ``a * b``."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    return (a_lo * b + ((a_hi * (b & 0xFFFF)) << 16)) & MASK32


def _split64(value) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo32, hi32) of 64-bit integers given as int64 tensors (two's complement)."""
    lo = value & MASK32
    hi = (value >> 32) & MASK32  # arithmetic shift, then masked: the unsigned high word
    return lo, hi


def philox4x32_10(seed: torch.Tensor | int, counter: torch.Tensor | int) -> tuple[torch.Tensor, ...]:
    """The four Philox words (as int64 tensors holding uint32 values), broadcast over seed and counter."""
    seed = torch.as_tensor(seed, dtype=torch.int64) if not isinstance(seed, torch.Tensor) else seed.long()
    counter = torch.as_tensor(counter, dtype=torch.int64) if not isinstance(counter, torch.Tensor) else counter.long()
    seed, counter = torch.broadcast_tensors(seed, counter)
    k0, k1 = _split64(seed)
    c0, c1 = _split64(counter)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        old0, old2 = c0, c2
        c0 = _umulhi(ROUND_B, old2) ^ c1 ^ k0
        c2 = _umulhi(ROUND_A, old0) ^ c3 ^ k1
        c1 = _mullo(ROUND_B, old2)
        c3 = _mullo(ROUND_A, old0)
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def uniform_float(word: torch.Tensor) -> torch.Tensor:
    """tl.rand's float32 in [0, 1) from a word: as int32, bit-flipped when negative, times 4.6566127342e-10."""
    as_int32 = torch.where(word >= 2**31, word - 2**32, word)
    nonneg = torch.where(as_int32 < 0, -as_int32 - 1, as_int32)
    return nonneg.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def randn(seed, counter) -> torch.Tensor:
    """tl.randn(seed, counter): Box-Muller on the first two words, in float32."""
    w0, w1, _, _ = philox4x32_10(seed, counter)
    u0 = torch.clamp(uniform_float(w0), min=1.0e-7)
    theta = torch.tensor(2 * math.pi, dtype=torch.float32) * uniform_float(w1)
    return torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(theta)


def uniform53(seed, counter) -> torch.Tensor:
    """A float64 in [0, 1) with 53 random bits: ((w0 >> 5) * 2^26 + (w1 >> 6)) * 2^-53."""
    w0, w1, _, _ = philox4x32_10(seed, counter)
    bits = ((w0 >> 5) << 26) | (w1 >> 6)
    return bits.to(torch.float64) * 2.0**-53
