"""affine_coupling's C++ backward with the gradients autograd really passes, and its float32 "exp" fast path.

`(y.sum() + ladj.sum()).backward()` hands the backward an expanded grad_y (strides 0); other graphs hand
transposed or sliced ones. The kernel copies a strided grad_y row into a buffer and runs its vectorised
loop: the gradients must be the very same as with the contiguous grad_y, for every thread count.
The float32 "exp" forward-direction backward has an AVX-512 loop of its own on CPUs that have it: its
exp must be bit-identical to the one the forward uses.
"""

from __future__ import annotations

import pytest
import torch

from pyprobtf.ops import affine_coupling, available_backends

pytestmark = pytest.mark.skipif("cpu" not in available_backends()["cpp"].devices, reason="no C++ backend")

SCALE_FNS = ("exp", "softclamp", "sigmoid", "softclip", "sigmoid_eps", "inv_sigmoid")


def _grad_y(kind: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    if kind == "expanded":  # what y.sum() gives
        return torch.randn((), generator=gen).to(dtype).expand(rows, cols)
    if kind == "row-broadcast":  # one value per row
        return torch.randn(rows, 1, generator=gen).to(dtype).expand(rows, cols)
    if kind == "transposed":
        return torch.randn(cols, rows, generator=gen).to(dtype).t()
    return torch.randn(rows, 2 * cols, generator=gen).to(dtype)[:, ::2]  # "sliced"


def _grads(x, t, a, gy, gl, scale_fn, inverse):
    xr, tr, ar = (u.detach().requires_grad_() for u in (x, t, a))
    y, ladj = affine_coupling(xr, tr, ar, scale_fn=scale_fn, inverse=inverse, backend="cpp")
    return torch.autograd.grad((y, ladj), (xr, tr, ar), (gy, gl))


@pytest.mark.parametrize("kind", ["expanded", "row-broadcast", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(33, 70), (3, 5000), (300, 3), (257, 130)])  # the last one runs in parallel
def test_strided_grad_y_gives_the_contiguous_result(kind, dtype, shape):
    gen = torch.Generator().manual_seed(0)
    x, t, a = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    gy = _grad_y(kind, *shape, dtype)
    gl = torch.randn(shape[0], generator=gen).to(torch.float64 if dtype == torch.float64 else torch.float32)
    threads = torch.get_num_threads()
    try:
        for scale_fn in SCALE_FNS:
            for inverse in (False, True):
                want = _grads(x, t, a, gy.contiguous(), gl, scale_fn, inverse)
                for n in (1, 2):
                    torch.set_num_threads(n)
                    got = _grads(x, t, a, gy, gl, scale_fn, inverse)
                    for name, g, w in zip(("grad x", "grad shift", "grad scale"), got, want):
                        assert torch.equal(g, w), f"{name}, {scale_fn}, inverse={inverse}, {n} threads"
                torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)


def test_float32_exp_backward_uses_the_forward_exp_bit_for_bit():
    # The forward with x = 1, shift = 0 gives y = exp(a); the backward with grad_y = 1 gives grad_x = exp(a),
    # through the backward's own loop. Values cover the subnormal and overflow ranges, NaN and +-inf;
    # 1001 columns leave a tail that is not a multiple of any vector width.
    a = torch.cat([torch.linspace(-110.0, 95.0, 4000), torch.randn(4000) * 5,
                   torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -87.4, 88.7, -104.0, 89.0])])
    a = torch.cat([a, torch.zeros(9 * 1001 - a.numel())]).reshape(9, 1001)
    x, t = torch.ones_like(a), torch.zeros_like(a)
    y, _ = affine_coupling(x, t, a, backend="cpp")
    ar = a.clone().requires_grad_()
    yr, ladj = affine_coupling(x, t, ar, backend="cpp")
    (gx_times_x,) = torch.autograd.grad((yr, ladj), (ar,), (torch.ones_like(a), torch.zeros(9)))
    # grad_scale = grad_y * exp(a) * x + grad_ladj = exp(a) here.
    assert torch.equal(gx_times_x.view(torch.int32), y.view(torch.int32))
