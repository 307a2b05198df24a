"""affine_coupling: every backend against the float64 reference (values and
gradients), inverse round trips, the log-determinant against the autograd
Jacobian, NaN propagation, batch invariance, bad input, opcheck and compile.

Triton tests are marked `triton` and run in a pytest run of their own
(`pytest -m triton`), under the interpreter on CPU; GPU tests are marked `gpu`.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobtf import reference
from pyprobtf.ops import BackendUnavailableError, affine_coupling, available_backends
from pyprobtf.ops._backends import triton_interpreting
from pyprobtf.testing.ops import check_affine_coupling_backward, check_affine_coupling_forward
from pyprobtf.testing import DTYPES, LAYOUTS, batch_shapes, make_tensor

SCALE_FNS = ("exp", "softclamp", "sigmoid", "softclip", "sigmoid_eps", "inv_sigmoid")
CPU_BACKENDS = ["reference", "cpp", "torch"]
GPU_BACKENDS = ["reference", "cuda", "triton"]
HAS_CUDA = torch.cuda.is_available()
TRITON_EXAMPLES = int(os.environ.get("PYPROBTF_TRITON_EXAMPLES", "25"))


def triton_device() -> str:
    return "cpu" if triton_interpreting() else "cuda"


# The checks themselves live in pyprobtf.testing.ops, shared with `pyprobtf check`.
check_forward = check_affine_coupling_forward
check_backward = check_affine_coupling_backward


def _inputs(shape, dtype, layouts, seed, device="cpu"):
    return tuple(make_tensor(shape, dtype, layout, seed=seed + i, device=device) for i, layout in enumerate(layouts))


_CASE_FIELDS = {
    "dtype": st.sampled_from(DTYPES),
    "shape": batch_shapes(),
    "layouts": st.lists(st.sampled_from(LAYOUTS), min_size=3, max_size=3),
    "scale_fn": st.sampled_from(SCALE_FNS),
    "clamp": st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    "inverse": st.booleans(),
    "seed": st.integers(0, 2**16),
}
case = st.fixed_dictionaries(_CASE_FIELDS)
# ladj="element": the per-element log-determinants, with their gradient in any layout.
element_case = st.fixed_dictionaries({**_CASE_FIELDS, "gl_layout": st.sampled_from(LAYOUTS)})

# Small cases for Triton's interpreter (slow; no bfloat16 there).
_TRITON_FIELDS = {
    "dtype": st.sampled_from([torch.float32, torch.float64, torch.float16]),
    "shape": batch_shapes(max_batch=5, max_event_dims=2, max_event=6),
    "layouts": st.lists(st.sampled_from(LAYOUTS), min_size=3, max_size=3),
    "scale_fn": st.sampled_from(SCALE_FNS),
    "clamp": st.sampled_from([0.5, 2.0]),
    "inverse": st.booleans(),
    "seed": st.integers(0, 2**16),
}
triton_case = st.fixed_dictionaries(_TRITON_FIELDS)
triton_element_case = st.fixed_dictionaries({**_TRITON_FIELDS, "gl_layout": st.sampled_from(LAYOUTS)})


# ----------------------------------------------------------------------------- backends vs reference


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(c=case)
def test_forward_matches_reference(backend, c):
    check_forward(backend, "cpu", **c)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(c=case)
def test_backward_matches_reference(backend, c):
    check_backward(backend, "cpu", **c)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(c=element_case)
def test_element_forward_matches_reference(backend, c):
    c.pop("gl_layout")
    check_forward(backend, "cpu", **c, ladj="element")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(c=element_case)
def test_element_backward_matches_reference(backend, c):
    check_backward(backend, "cpu", **c, ladj="element")


@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("cols", [4095, 4096, 4097, 3 * 4096 + 5])
def test_cpp_long_rows(scale_fn, inverse, cols):
    # Rows longer than one CPU tile are summed from per-tile partials.
    check_forward("cpp", "cpu", torch.float32, (3, cols), ["contiguous"] * 3, scale_fn, 2.0, inverse)
    check_backward("cpp", "cpu", torch.float32, (3, cols), ["sliced"] * 3, scale_fn, 2.0, inverse)
    check_forward("cpp", "cpu", torch.float32, (3, cols), ["sliced"] * 3, scale_fn, 2.0, inverse, ladj="element")
    check_backward("cpp", "cpu", torch.float32, (3, cols), ["contiguous"] * 3, scale_fn, 2.0, inverse,
                   ladj="element", gl_layout="sliced")


@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(70001, 1), (9000, 2), (1500, 31), (300, 32)])
def test_cpp_narrow_rows(scale_fn, inverse, dtype, shape):
    # Densely packed rows of fewer than 32 columns take one flat loop per tile (many tiles here);
    # sliced inputs (row stride != columns) the loop per row.
    check_forward("cpp", "cpu", dtype, shape, ["contiguous"] * 3, scale_fn, 2.0, inverse)
    check_backward("cpp", "cpu", dtype, shape, ["contiguous"] * 3, scale_fn, 2.0, inverse)
    check_backward("cpp", "cpu", dtype, shape, ["contiguous", "sliced", "contiguous"], scale_fn, 2.0, inverse)
    check_forward("cpp", "cpu", dtype, shape, ["contiguous"] * 3, scale_fn, 2.0, inverse, ladj="element")
    check_backward("cpp", "cpu", dtype, shape, ["contiguous"] * 3, scale_fn, 2.0, inverse, ladj="element")


@pytest.mark.triton
@settings(max_examples=TRITON_EXAMPLES)
@given(c=triton_case)
def test_triton_forward_matches_reference(c):
    check_forward("triton", triton_device(), **c)


@pytest.mark.triton
@settings(max_examples=TRITON_EXAMPLES)
@given(c=triton_case)
def test_triton_backward_matches_reference(c):
    check_backward("triton", triton_device(), **c)


@pytest.mark.triton
@settings(max_examples=max(1, TRITON_EXAMPLES // 2))
@given(c=triton_element_case)
def test_triton_element_matches_reference(c):
    gl_layout = c.pop("gl_layout")
    check_forward("triton", triton_device(), **c, ladj="element")
    check_backward("triton", triton_device(), **c, ladj="element", gl_layout=gl_layout)


@pytest.mark.triton
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_every_scale_fn(scale_fn, dtype):
    for inverse in (False, True):
        check_forward("triton", triton_device(), dtype, (3, 5), ["contiguous", "sliced", "contiguous"], scale_fn, 1.5,
                      inverse)
        check_backward("triton", triton_device(), dtype, (3, 5), ["contiguous"] * 3, scale_fn, 1.5, inverse)


@pytest.mark.triton
@pytest.mark.parametrize("inverse", [False, True])
def test_triton_long_rows(inverse):
    # More than one column tile per row: partial sums and the second kernel.
    check_forward("triton", triton_device(), torch.float32, (2, 2500), ["contiguous"] * 3, "softclamp", 2.0, inverse)
    check_backward("triton", triton_device(), torch.float32, (2, 2500), ["sliced"] * 3, "sigmoid", 2.0, inverse)
    check_forward("triton", triton_device(), torch.float32, (2, 2500), ["contiguous"] * 3, "softclamp", 2.0, inverse,
                  ladj="element")
    check_backward("triton", triton_device(), torch.float32, (2, 2500), ["sliced"] * 3, "sigmoid", 2.0, inverse,
                   ladj="element", gl_layout="sliced")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@given(c=case)
def test_gpu_forward_matches_reference(backend, c):
    check_forward(backend, "cuda", **c)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@given(c=case)
def test_gpu_backward_matches_reference(backend, c):
    check_backward(backend, "cuda", **c)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@given(c=element_case)
def test_gpu_element_matches_reference(backend, c):
    gl_layout = c.pop("gl_layout")
    check_forward(backend, "cuda", **c, ladj="element")
    check_backward(backend, "cuda", **c, ladj="element", gl_layout=gl_layout)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(5, 70000), (100000, 3), (1, 1)])
def test_gpu_large_shapes(backend, shape):
    check_forward(backend, "cuda", torch.float32, shape, ["contiguous", "sliced", "transposed"], "softclamp", 2.0, False)
    check_backward(backend, "cuda", torch.float16, shape, ["contiguous"] * 3, "exp", 2.0, True)


# ----------------------------------------------------------------------------- the reference itself


@given(c=case.filter(lambda c: c["dtype"] == torch.float64))
def test_reference_backward_is_the_chain_rule(c):
    # reference.affine_coupling_backward (used by the reference backend and as the
    # kernels' formula) equals autograd through the reference forward.
    x, t, a = _inputs(c["shape"], torch.float64, c["layouts"], c["seed"])
    gy = make_tensor(c["shape"], torch.float64, seed=99)
    gl = make_tensor(c["shape"][:1], torch.float64, seed=98)
    xr, tr, ar = (u.clone().requires_grad_() for u in (x, t, a))
    y, ladj = reference.affine_coupling(xr, tr, ar, c["scale_fn"], c["clamp"], c["inverse"])
    want = torch.autograd.grad((y, ladj), (xr, tr, ar), (gy, gl))
    got = reference.affine_coupling_backward(gy, gl, x, t, a, c["scale_fn"], c["clamp"], c["inverse"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@given(c=element_case.filter(lambda c: c["dtype"] == torch.float64))
def test_reference_backward_is_the_chain_rule_per_element(c):
    x, t, a = _inputs(c["shape"], torch.float64, c["layouts"], c["seed"])
    gy = make_tensor(c["shape"], torch.float64, seed=99)
    gl = make_tensor(c["shape"], torch.float64, c["gl_layout"], seed=98)  # any values, one per element
    xr, tr, ar = (u.clone().requires_grad_() for u in (x, t, a))
    y, ladj = reference.affine_coupling(xr, tr, ar, c["scale_fn"], c["clamp"], c["inverse"], "element")
    assert ladj.shape == x.shape
    want = torch.autograd.grad((y, ladj), (xr, tr, ar), (gy, gl))
    got = reference.affine_coupling_backward(gy, gl, x, t, a, c["scale_fn"], c["clamp"], c["inverse"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("inverse", [False, True])
def test_element_ladj_sums_to_row_ladj(backend, scale_fn, inverse):
    # The per-element log-determinants are log |dy / dx| element by element; their row sums the row's ladj.
    x, t, a = (make_tensor((6, 2, 7), torch.float64, seed=i) for i in range(3))
    y, row = affine_coupling(x, t, a, scale_fn=scale_fn, inverse=inverse, backend=backend)
    y_el, el = affine_coupling(x, t, a, scale_fn=scale_fn, inverse=inverse, ladj="element", backend=backend)
    assert torch.equal(y, y_el) and el.shape == x.shape and el.dtype == torch.float64
    torch.testing.assert_close(el.sum(dim=(1, 2)), row, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_()
    dydx = torch.autograd.grad(
        affine_coupling(xr, t, a, scale_fn=scale_fn, inverse=inverse, backend=backend)[0].sum(), xr)[0]
    torch.testing.assert_close(el, dydx.log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_element_ladj_dtype_and_no_alias(backend, dtype):
    x, t, a = (make_tensor((4, 3), dtype, seed=i) for i in range(3))
    _, el = affine_coupling(x, t, a, ladj="element", backend=backend)
    assert el.dtype == torch.float32 and el.is_contiguous()
    a64 = a.double()
    _, el64 = affine_coupling(x.double(), t.double(), a64, ladj="element", backend=backend)  # "exp": s = scale
    assert torch.equal(el64, a64) and el64.data_ptr() != a64.data_ptr()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_element_gradcheck(backend, path):
    x, t, a = (make_tensor((3, 4), torch.float64, layout, seed=i).requires_grad_() for i, layout in
               enumerate(["contiguous", "sliced", "transposed"]))
    for scale_fn, inverse in (("softclamp", False), ("sigmoid_eps", True)):
        if path == "eager":
            def fn(x, t, a):
                return affine_coupling(x, t, a, scale_fn=scale_fn, inverse=inverse, ladj="element", backend=backend)
        else:
            def fn(x, t, a):
                return torch.ops.pyprobtf.affine_coupling(x, t, a, scale_fn, 2.0, inverse, backend, "element")
        assert torch.autograd.gradcheck(fn, (x, t, a))
        assert torch.autograd.gradgradcheck(fn, (x, t, a))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_undoes_forward(backend, scale_fn, dtype):
    x, t, a = (make_tensor((17, 3, 5), dtype, seed=i) for i in range(3))
    y, ladj = affine_coupling(x, t, a, scale_fn=scale_fn, backend=backend)
    x_back, ladj_back = affine_coupling(y, t, a, scale_fn=scale_fn, inverse=True, backend=backend)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(x_back, x, rtol=rtol, atol=rtol)
    torch.testing.assert_close(ladj_back, -ladj, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("inverse", [False, True])
def test_ladj_is_log_abs_det_jacobian(backend, scale_fn, inverse):
    # For each row b: ladj[b] = log |det dy_b / dx_b|, the Jacobian taken by autograd.
    x, t, a = (make_tensor((4, 2, 3), torch.float64, seed=i) for i in range(3))
    _, ladj = affine_coupling(x, t, a, scale_fn=scale_fn, inverse=inverse, backend=backend)
    for b in range(x.shape[0]):
        def row_map(xb, b=b):
            return affine_coupling(
                xb.reshape(1, 2, 3), t[b : b + 1], a[b : b + 1], scale_fn=scale_fn, inverse=inverse, backend=backend
            )[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(row_map, x[b].reshape(-1))
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0
        torch.testing.assert_close(ladj[b], logdet, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_propagates_like_reference(backend):
    x, t, a = (make_tensor((6, 5), torch.float32, seed=i) for i in range(3))
    x[0, 1] = math.nan  # y NaN there; ladj finite
    t[1, 2] = math.nan  # y NaN there; ladj finite
    a[2, 3] = math.nan  # y NaN there and ladj NaN for row 2 only
    a[3, 0] = math.inf  # exp(inf) = inf: y inf or NaN exactly as the reference says
    for scale_fn in SCALE_FNS:
        for inverse in (False, True):
            y, ladj = affine_coupling(x, t, a, scale_fn=scale_fn, inverse=inverse, backend=backend)
            y_ref, ladj_ref = reference.affine_coupling(x, t, a, scale_fn, 2.0, inverse)
            assert torch.equal(y.isnan(), y_ref.isnan()), (scale_fn, inverse)
            assert torch.equal(y.isinf(), y_ref.isinf()), (scale_fn, inverse)
            assert torch.equal(ladj.isnan(), ladj_ref.isnan()), (scale_fn, inverse)
            finite = y_ref.isfinite()
            torch.testing.assert_close(y[finite], y_ref[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cols", [3, 300, 5000])
def test_cpp_batch_invariant(cols):
    # A row's result is bit-identical whatever rows surround it, the batch size
    # and the thread count.
    x, t, a = (make_tensor((64, cols), torch.float32, seed=i) for i in range(3))
    full_y, full_ladj = affine_coupling(x, t, a, scale_fn="softclamp", backend="cpp")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_y, one_ladj = affine_coupling(x, t, a, scale_fn="softclamp", backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(full_y, one_y) and torch.equal(full_ladj, one_ladj)
    for rows in (slice(5, 6), slice(0, 7), slice(30, 64)):
        y, ladj = affine_coupling(x[rows], t[rows], a[rows], scale_fn="softclamp", backend="cpp")
        assert torch.equal(y, full_y[rows]) and torch.equal(ladj, full_ladj[rows])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0,), (1,), (3, 1, 0, 2)])
def test_empty_and_degenerate_shapes(backend, shape):
    x, t, a = (make_tensor(shape, torch.float32, seed=i) for i in range(3))
    xr = x.clone().requires_grad_()
    y, ladj = affine_coupling(xr, t, a, backend=backend)
    assert y.shape == x.shape and ladj.shape == (shape[0],)
    if len(shape) == 1:  # event of size 1 (no event dims): ladj is the scale itself
        torch.testing.assert_close(ladj, a)
    elif 0 in shape[1:]:
        assert torch.all(ladj == 0)
    (y.sum() + ladj.sum()).backward()
    assert xr.grad.shape == x.shape


def test_gradient_flows_only_where_needed():
    # Only ladj used: the gradient reaching x is zero and scale's is exactly ds/da.
    x, t, a = (make_tensor((3, 4), torch.float64, seed=i).requires_grad_() for i in range(3))
    _, ladj = affine_coupling(x, t, a, scale_fn="exp", backend="cpp")
    ladj.sum().backward()
    assert torch.all(x.grad == 0) and torch.all(t.grad == 0)
    torch.testing.assert_close(a.grad, torch.ones_like(a))


@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("mode", ["sum", "element"])
def test_second_derivatives_match_reference(path, scale_fn, mode):
    # create_graph=True: gradients of gradients (as in gradient penalties) are exact.
    x, t, a = (make_tensor((3, 4), torch.float64, seed=i).requires_grad_() for i in range(3))
    w_ladj = make_tensor((3, 4) if mode == "element" else (3,), torch.float64, seed=5)  # any weights

    def penalty(fn):
        y, ladj = fn(x, t, a)
        grads = torch.autograd.grad((y ** 2).sum() + (w_ladj * ladj ** 2).sum(), (x, t, a), create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in grads), (x, t, a))

    if path == "eager":
        ours = penalty(lambda x, t, a: affine_coupling(x, t, a, scale_fn=scale_fn, inverse=True, ladj=mode,
                                                       backend="cpp"))
    else:
        ours = penalty(lambda x, t, a: torch.ops.pyprobtf.affine_coupling(x, t, a, scale_fn, 2.0, True, "cpp", mode))
    want = penalty(lambda x, t, a: reference.affine_coupling(x, t, a, scale_fn, 2.0, True, mode))
    for o, w in zip(ours, want):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- backends and dispatch


def test_auto_picks_cpp_on_cpu():
    from pyprobtf.ops import _backends, _registry

    assert available_backends()["cpp"].available
    assert _registry.resolve("affine_coupling", "auto", "cpu") == "cpp"


def test_unavailable_backend_says_why():
    x = torch.zeros(2, 3)
    if available_backends()["cuda"].available:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(BackendUnavailableError, match="cuda.*cannot run on cpu"):
        affine_coupling(x, x, x, backend="cuda")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x: (x, x[:, :2], x), ValueError, r"`shift` must have the shape of `x`, \(3, 4\); got \(3, 2\)"),
        (lambda x: (x, x, x.double()), TypeError, r"`scale` must have the dtype of `x`, torch.float32; got torch.float64"),
        (lambda x: (x, x.to("meta"), x), ValueError, r"`shift` must be on the device of `x`"),
        (lambda x: (x.long(), x.long(), x.long()), TypeError, r"`x` must have dtype float32, float64, float16 or bfloat16; got torch.int64"),
        (lambda x: (x.numpy(), x, x), TypeError, r"`x` must be a torch.Tensor; got ndarray"),
        (lambda x: (x[0, 0], x[0, 0], x[0, 0]), ValueError, r"`x` must have at least 1 dimension"),
    ],
)
def test_bad_tensors(make, error, match):
    x = torch.zeros(3, 4)
    with pytest.raises(error, match=match):
        affine_coupling(*make(x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scale_fn": "tanh"}, ValueError,
         r"`scale_fn` must be one of \('exp', 'softclamp', 'sigmoid', 'softclip', 'sigmoid_eps', 'inv_sigmoid'\); "
         r"got 'tanh'"),
        ({"clamp": 0.0}, ValueError, r"`clamp` must be positive and finite; got 0.0"),
        ({"clamp": -1}, ValueError, r"`clamp` must be positive and finite; got -1.0"),
        ({"clamp": math.inf}, ValueError, r"`clamp` must be positive and finite; got inf"),
        ({"clamp": math.nan}, ValueError, r"`clamp` must be positive and finite; got nan"),
        ({"clamp": "2"}, TypeError, r"`clamp` must be a real number; got str"),
        ({"inverse": 1}, TypeError, r"`inverse` must be True or False; got 1"),
        ({"ladj": "rows"}, ValueError, r"affine_coupling: `ladj` must be one of \('sum', 'element'\); got 'rows'"),
        ({"ladj": None}, ValueError, r"`ladj` must be one of \('sum', 'element'\); got None"),
        ({"backend": "numba"}, ValueError, r"`backend` must be one of"),
    ],
)
def test_bad_options(kwargs, error, match):
    x = torch.zeros(3, 4)
    with pytest.raises(error, match=match):
        affine_coupling(x, x, x, **kwargs)


# ----------------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(backend, dtype):
    x, t, a = (make_tensor((5, 3), dtype, layout, seed=i).requires_grad_() for i, layout in
               enumerate(["contiguous", "sliced", "transposed"]))
    torch.library.opcheck(torch.ops.pyprobtf.affine_coupling.default, (x, t, a, "softclamp", 2.0, False, backend))
    torch.library.opcheck(torch.ops.pyprobtf.affine_coupling.default, (x, t, a, "sigmoid", 1.0, True, backend))
    gy = make_tensor((5, 3), dtype, seed=9)
    gl = make_tensor((5,), dtype, seed=10)
    torch.library.opcheck(
        torch.ops.pyprobtf.affine_coupling_backward.default,
        (gy, gl, x.detach(), t.detach(), a.detach(), "exp", 2.0, False, backend),
    )
    # Per-element log-determinants, and their (strided) gradient.
    torch.library.opcheck(torch.ops.pyprobtf.affine_coupling.default,
                          (x, t, a, "softclip", 2.0, True, backend, "element"))
    gl_elements = make_tensor((5, 3), dtype, "transposed", seed=11)
    torch.library.opcheck(
        torch.ops.pyprobtf.affine_coupling_backward.default,
        (gy, gl_elements, x.detach(), t.detach(), a.detach(), "softclamp", 2.0, True, backend),
    )


@pytest.mark.parametrize("mode", ["sum", "element"])
def test_torch_compile_fullgraph(mode):
    def layer(x, t, a):
        y, ladj = affine_coupling(x, t, a, scale_fn="softclamp", ladj=mode)
        return (y * y).sum() + (ladj * ladj).sum()

    compiled = torch.compile(layer, fullgraph=True)
    x, t, a = (make_tensor((8, 6), torch.float32, seed=i).requires_grad_() for i in range(3))
    want = layer(x, t, a)
    want_grads = torch.autograd.grad(want, (x, t, a))
    got = compiled(x, t, a)
    got_grads = torch.autograd.grad(got, (x, t, a))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
