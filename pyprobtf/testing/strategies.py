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


# ----------------------------------------------------------------------------- inputs for users' models


def _edge_values(support, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` float64 values inside ``support`` and close to its edges (or very large, for unbounded sides)."""
    from torch.distributions import constraints

    lower = getattr(support, "lower_bound", None)
    upper = getattr(support, "upper_bound", None)
    if support is constraints.unit_interval:
        lower, upper = 0.0, 1.0
    if support is constraints.positive:
        lower = 0.0
    gap = 10 ** (torch.rand(n, generator=gen, dtype=torch.float64) * -11 - 1)  # 1e-12 .. 1e-1
    big = 10 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 3 + 1)  # 10 .. 1e4
    side = torch.rand(n, generator=gen) < 0.5
    if isinstance(lower, (int, float)) and isinstance(upper, (int, float)):
        width = upper - lower
        return torch.where(side, lower + gap * width, upper - gap * width)
    if isinstance(lower, (int, float)):
        return torch.where(side, lower + gap, lower + big)
    if isinstance(upper, (int, float)):
        return torch.where(side, upper - gap, upper - big)
    if support is not constraints.real and not isinstance(support, type(constraints.real)):
        raise ValueError(f"support_values: `support` must be real or an interval-like constraint; got {support}")
    return torch.where(side, big, -big)


def _inside(support, n: int, gen: torch.Generator) -> torch.Tensor:
    from torch.distributions import transform_to

    return transform_to(support)(torch.randn(n, generator=gen, dtype=torch.float64) * 1.5)


@st.composite
def model_inputs(draw, dim: int, *, dtypes=(torch.float64, torch.float32), layouts=LAYOUTS, min_batch: int = 1,
                 max_batch: int = 17, support=None, edge_fraction: float = 0.25):
    """A ``(B, dim)`` batch for property tests of a user's model: B in ``[min_batch, max_batch]``, a dtype of
    ``dtypes``, a memory layout of ``layouts`` (see :data:`LAYOUTS`), values inside ``support`` (a
    ``torch.distributions.constraints`` object, default the real line) with about ``edge_fraction`` of them
    near the support's edges (within 1e-12 to 1e-1 of a bound, or 10 to 1e4 in size on an unbounded side).

    Example:
        >>> from hypothesis import given
        >>> @given(model_inputs(2, support=torch.distributions.constraints.positive))
        ... def test_my_transform(x):
        ...     assert torch.isfinite(my_transform(x)).all()
    """
    from torch.distributions import constraints

    support = constraints.real if support is None else support
    batch = draw(st.integers(min_batch, max_batch))
    dtype = draw(st.sampled_from(tuple(dtypes)))
    layout = draw(st.sampled_from(tuple(layouts)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n = batch * dim
    values = _inside(support, n, gen)
    edges = torch.rand(n, generator=gen) < edge_fraction
    values = torch.where(edges, _edge_values(support, n, gen), values).reshape(batch, dim)
    out = make_tensor((batch, dim), dtype, layout, seed=seed)
    with torch.no_grad():
        out.copy_(values)
    return out


def support_values(support, n: int = 64, *, seed: int = 0) -> torch.Tensor:
    """``n`` float64 values inside ``support`` and close to its edges (what :func:`model_inputs` mixes in)."""
    return _edge_values(support, n, torch.Generator().manual_seed(seed))
