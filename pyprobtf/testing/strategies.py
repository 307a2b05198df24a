"""Hypothesis strategies and tensor builders for property tests of ops."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# How a test tensor is laid out in memory:
#   contiguous: a fresh tensor;
#   sliced:     every other element of the last dimension of a larger tensor;
#   transposed: a permuted view of a tensor stored with its dimensions reversed;
#   offset:     a narrowed view that starts inside a larger tensor's storage.
LAYOUTS = ("contiguous", "sliced", "transposed", "offset")


@st.composite
def batch_shapes(draw, *, min_batch: int = 0, max_batch: int = 9, max_event_dims: int = 2, max_event: int = 9):
    """Shapes ``(B, *event)``: B in [min_batch, max_batch], up to ``max_event_dims`` event sizes, some 0 or 1."""
    batch = draw(st.integers(min_batch, max_batch))
    event = draw(st.lists(st.integers(0, max_event), min_size=0, max_size=max_event_dims))
    return (batch, *event)


def make_tensor(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    layout: str = "contiguous",
    *,
    seed: int = 0,
    low: float = -2.0,
    high: float = 2.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A tensor of ``shape`` with values uniform in [low, high), laid out as ``layout`` (see LAYOUTS).

    Values are drawn in float64 from a seeded generator and rounded to ``dtype``,
    so the same seed gives the same numbers whatever the layout.
    """
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    if layout == "contiguous" or len(shape) == 0:
        out = values.to(dtype)
    elif layout == "sliced":
        big = torch.zeros(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype)
        out = big[..., 1::2]
        out.copy_(values)
    elif layout == "transposed":
        order = list(range(len(shape)))[::-1]
        out = values.permute(order).contiguous().to(dtype).permute(order)
    elif layout == "offset":
        big = torch.zeros(shape[0] + 2, *shape[1:], dtype=dtype)
        out = big.narrow(0, 1, shape[0])
        out.copy_(values)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    assert out.shape == torch.Size(shape) and out.dtype == dtype
    if torch.device(device).type != "cpu":
        # Keep the layout on the device: copy into a view of the same shape and strides.
        dev = torch.empty_strided(out.size(), out.stride(), dtype=dtype, device=device)
        dev.copy_(out)
        out = dev
    return out


def numel(shape) -> int:
    return math.prod(shape)
