"""lincomb's fast path (the common eager call, straight to a native kernel) against its general path.

The fast path must give the general path's result bit for bit, and must decline every call it does not
cover (so that the general path validates it and raises its own errors).
"""

import itertools
import sys

import pytest
import torch

from pyprobtf.ops import _registry, lincomb

impl = sys.modules["pyprobtf.ops.lincomb"]

pytestmark = pytest.mark.skipif(_registry.resolve("lincomb", "auto", "cpu") in _registry.FUNCTIONAL,
                                reason="no native lincomb backend on the CPU")


def _general(tensors, coeffs, noise_std, seed, offset):
    return impl._dispatch(*impl._normalise(tensors, coeffs, noise_std, seed, offset, None, "auto"), "auto", None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_fast_path_matches_the_general_path_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    cases = itertools.product([(1, 4, 8, 8), (3, 5), (2, 1, 7)], [1, 2, 3, 4], [0.0, 0.7],
                              [None, 5, -3, 2**63 - 1, -2**63], [0, 17, -5])
    for shape, n, noise, seed, offset in cases:
        if noise and seed is None:
            continue
        tensors = [torch.randn(shape, generator=gen).to(dtype) for _ in range(n)]
        coeffs = [float(c) for c in torch.randn(n, generator=gen)]
        fast = impl._fast_lincomb(tensors, coeffs, noise, seed, offset)
        assert fast is not None, (shape, n, noise, seed, offset)
        want = _general(tensors, coeffs, noise, seed, offset)
        assert fast.shape == want.shape and fast.dtype == want.dtype and fast.is_contiguous()
        assert torch.equal(fast, want), (shape, n, noise, seed, offset)


def test_fast_path_declines_what_it_does_not_cover():
    x = torch.randn(2, 3)
    declined = [
        ([x], [1], 0.0, None, 0),  # an int coefficient (the general path converts it)
        ([x], [True], 0.0, None, 0),  # a bool: the general path's TypeError
        ([x], [torch.ones(2)], 0.0, None, 0),  # per-row coefficients
        ([x.t()], [1.0], 0.0, None, 0),  # not contiguous
        ([x, x.double()], [1.0, 1.0], 0.0, None, 0),  # mixed dtypes: the general path's TypeError
        ([x, torch.randn(3, 2)], [1.0, 1.0], 0.0, None, 0),  # mixed shapes
        ([x.to(torch.int32)], [1.0], 0.0, None, 0),
        ([torch.randn(0, 3)], [1.0], 0.0, None, 0),
        ([x], [1.0], float("nan"), 1, 0),
        ([x], [1.0], -1.0, 1, 0),
        ([x], [1.0], 0.5, None, 0),  # noise with a drawn per-row seed
        ([x], [1.0], 0.0, 2**64 - 1, 0),  # a seed outside [-2^63, 2^63): the general path reduces it
        ([x], [1.0], 0.0, None, 2**63),
        ([x], [1.0], 0.0, None, 2**64),  # out of range: the general path's ValueError
        (x, [1.0], 0.0, None, 0),
        ([x, x, x, x, x], [1.0] * 5, 0.0, None, 0),
        ([x], [1.0, 2.0], 0.0, None, 0),
    ]
    for args in declined:
        assert impl._fast_lincomb(*args) is None, args


def test_fast_path_gradients_are_the_coefficients_times_the_upstream_gradient():
    torch.manual_seed(0)
    a, b = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    c = torch.randn(3, 4, dtype=torch.float64)  # no gradient wanted
    with torch.enable_grad():
        out = impl._fast_lincomb([a, b, c], [1.0, -0.3, 2.0], 0.5, 7, 0)
        assert out is not None and out.requires_grad
        torch.testing.assert_close(out.detach(), lincomb([a.detach(), b.detach(), c], [1.0, -0.3, 2.0],
                                                         noise_std=0.5, seed=7), rtol=0, atol=0)
        g = torch.randn(3, 4, dtype=torch.float64)
        ga, gb = torch.autograd.grad(out, (a, b), g)
    torch.testing.assert_close(ga, g, rtol=0, atol=0)
    torch.testing.assert_close(gb, -0.3 * g, rtol=1e-15, atol=0)
    fn = lambda a, b: lincomb([a, b, c], [1.0, -0.3, 2.0], noise_std=0.5, seed=7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b)) and torch.autograd.gradgradcheck(fn, (a, b))


def test_invalid_calls_still_raise_the_general_errors():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="coeffs"):
        lincomb([x], [True])
    with pytest.raises(ValueError, match="noise_std"):
        lincomb([x], [1.0], noise_std=-1.0, seed=1)
    with pytest.raises(ValueError, match="offset"):
        lincomb([x], [1.0], offset=2**64)
    with pytest.raises(TypeError, match="tensors\\[1\\]"):
        lincomb([x, x.double()], [1.0, 1.0])
