"""Tolerances per dtype, and an assert_close that explains its failures."""

from __future__ import annotations

import torch

# (rtol, atol) for a result computed in float32 (float64 for float64 inputs)
# and rounded to the output dtype, against a float64 evaluation of the spec on
# the same (already rounded) inputs: a few units in the last place of the
# output dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 1e-6),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 8e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for results of ``dtype``."""
    return TOLERANCES[dtype]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    scale: torch.Tensor | None = None,
    equal_nan: bool = True,
    what: str = "result",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * scale`` elementwise.

    ``scale`` defaults to ``|expected|``; pass the magnitude of the terms that
    were added when the result can cancel (e.g. ``|x e^s| + |shift|``), since
    rounding errors scale with the terms, not with their sum. NaN must match
    NaN where ``equal_nan``. On failure the message gives the worst element.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    s = e.abs() if scale is None else scale.detach().to(torch.float64).cpu().expand_as(e)
    nan_a, nan_e = a.isnan(), e.isnan()
    if equal_nan and not torch.equal(nan_a, nan_e):
        where = (nan_a != nan_e).nonzero()[0].tolist()
        raise AssertionError(f"{what}: NaN pattern differs, first at index {where}: got {a[tuple(where)]}, "
                             f"expected {e[tuple(where)]}")
    ok = nan_a & nan_e if equal_nan else torch.zeros_like(nan_a)
    same_inf = torch.isinf(a) & (a == e)
    err = (a - e).abs()
    bound = atol + rtol * s
    bad = ~(ok | same_inf | (err <= bound))
    if bad.any():
        excess = torch.where(bad, err / bound, torch.zeros_like(err))
        idx = tuple(int(i) for i in divmod_index(int(excess.argmax()), a.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements out of tolerance (rtol={rtol}, atol={atol}); "
            f"worst at {idx}: got {a[idx].item()!r}, expected {e[idx].item()!r}, "
            f"error {err[idx].item():.3g} > bound {bound[idx].item():.3g}"
        )


def divmod_index(flat: int, shape) -> list[int]:
    """Multi-index of flat position ``flat`` in a tensor of ``shape``."""
    idx = []
    for size in reversed(tuple(shape)):
        flat, r = divmod(flat, size)
        idx.append(r)
    return idx[::-1]
