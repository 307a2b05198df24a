"""Triton lincomb's noise: its own Box-Muller cosine (``_cos_turn``, no huge-argument
reduction) against float64 cos, and the noise over many counters against the reference.

Marked `triton`: run with `pytest -m triton` (under the interpreter on CPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from pyprobtf.ops import lincomb
from pyprobtf.ops._backends import triton_interpreting
from pyprobtf.reference import philox
from pyprobtf.testing.ops import LINCOMB_NOISE_ATOL as NOISE_ATOL

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
kernels = pytest.importorskip("pyprobtf.kernels.lincomb")


@triton.jit
def _cos_kernel(TH, OUT, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(OUT + i, kernels._cos_turn(tl.load(TH + i, mask=i < n)), mask=i < n)


def _device() -> str:
    return "cpu" if triton_interpreting() else "cuda"


def _cos_turn(th: torch.Tensor) -> torch.Tensor:
    """The kernel's cosine on a float32 tensor, through a one-line Triton kernel."""
    out = torch.empty_like(th)
    _cos_kernel[(triton.cdiv(th.numel(), 1024),)](th, out, th.numel(), BLOCK=1024)
    return out


def test_cos_turn_is_within_two_ulp_of_cos():
    # Every angle Box-Muller makes is fl(fl(2 pi) * u), u a multiple of 4.66e-10 in [0, 1):
    # an even grid over [0, 2 pi], the ends and both sides of each quadrant boundary.
    grid = torch.linspace(0.0, 2 * math.pi, 1 << 16, dtype=torch.float64)
    edges = torch.tensor([k * math.pi / 4 for k in range(9)], dtype=torch.float64)
    th = torch.cat([grid, edges]).float()
    th = torch.cat([th, th.nextafter(torch.tensor(0.0)), th.nextafter(torch.tensor(7.0))]).clamp(0.0, 6.2831855)
    got = _cos_turn(th.to(_device())).cpu().double()
    want = torch.cos(th.double())
    error = (got - want).abs().max().item()
    assert error <= 2 * 2.0**-24, f"max |_cos_turn - cos| = {error:.3g}"


def test_triton_noise_equals_reference_over_many_counters():
    # Every cosine quadrant and the whole range of uniforms, across a low-word wrap of the counter,
    # for one seed per call and one seed per row.
    n = 1 << 14
    zero = torch.zeros(1, n, device=_device())
    for seed in (0, 12345, -(2**40)):
        want = philox.randn(torch.tensor(seed), 2**32 - 1000 + torch.arange(n))
        got = lincomb([zero], [0.0], noise_std=1.0, seed=seed, offset=2**32 - 1000, backend="triton")
        torch.testing.assert_close(got.cpu().reshape(-1), want, rtol=0, atol=NOISE_ATOL)
        got = lincomb([zero], [0.0], noise_std=1.0, seed=torch.tensor([seed], device=_device()),
                      offset=2**32 - 1000, backend="triton")
        torch.testing.assert_close(got.cpu().reshape(-1), want, rtol=0, atol=NOISE_ATOL)
