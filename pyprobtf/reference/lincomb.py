"""Reference lincomb: out = sum_i coeffs[i] * tensors[i] + noise_std * eps, eps from the Philox stream.

The noise stream (docs/ARCHITECTURE.md, lincomb):
- ``seed`` an integer: the element with flat index ``i`` gets ``N(seed, offset + i)``;
- ``seed`` a ``(B,)`` tensor: element ``j`` (flat index within its row) of row ``b``
  gets ``N(seed[b], offset + j)``;
- ``N(seed, c)`` is ``triton.language.randn(seed, c)`` (:func:`pyprobtf.reference.philox.randn`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from pyprobtf.reference import philox
from pyprobtf.seeds import signed_int64  # noqa: F401  (the bits Philox's key is cut from)

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32




def noise(shape, seed, offset: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 noise ``eps`` that lincomb adds, for a state of ``shape`` ``(B, ...)``."""
    rows = shape[0]
    per_row = math.prod(shape[1:])
    if isinstance(seed, torch.Tensor):
        counter = offset + torch.arange(per_row, dtype=torch.int64, device=device)
        eps = philox.randn(seed.to(device=device, dtype=torch.int64)[:, None], counter[None, :])
    else:
        counter = offset + torch.arange(rows * per_row, dtype=torch.int64, device=device)
        eps = philox.randn(torch.tensor(signed_int64(seed), dtype=torch.int64, device=device), counter)
    return eps.reshape(shape)


def lincomb(
    tensors: Sequence[torch.Tensor],
    coeffs: Sequence[float | torch.Tensor],
    noise_std: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """The contract, computed in float32 (float64 for float64 tensors), returned in the tensors' dtype.

    A coefficient or ``noise_std`` is a number or a ``(B,)`` tensor (one value per row).
    Noise is added when ``noise_std`` is a tensor or a nonzero number; ``seed`` is then required.
    """
    first = tensors[0]
    compute = _compute_dtype(first.dtype)
    row_shape = (first.shape[0],) + (1,) * (first.dim() - 1)

    def per_row(c):
        return c.to(compute).reshape(row_shape) if isinstance(c, torch.Tensor) else c

    out = torch.zeros(first.shape, dtype=compute, device=first.device)
    for c, t in zip(coeffs, tensors):
        out = out + per_row(c) * t.to(compute)
    if isinstance(noise_std, torch.Tensor) or noise_std != 0:
        if seed is None or (isinstance(seed, numbers.Number) and not isinstance(seed, numbers.Integral)):
            raise ValueError("lincomb: noise needs an integer or tensor `seed`")
        eps = noise(first.shape, seed, offset, first.device)
        out = out + per_row(noise_std) * eps.to(compute)
    return out.to(first.dtype)
