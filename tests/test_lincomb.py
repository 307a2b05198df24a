"""lincomb: every backend against the float64 reference (with and without
noise, numbers and per-row coefficients, every layout and dtype), the noise
stream against Triton's known-answer vectors, batch and thread invariance,
noise moments, out= and aliasing, gradients, bad input, opcheck and compile.

Triton tests are marked `triton` and run in a pytest run of their own
(`pytest -m triton`), under the interpreter on CPU; GPU tests are marked `gpu`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobtf import reference
from pyprobtf.ops import BackendUnavailableError, _backends, _registry, available_backends, lincomb
from pyprobtf.ops._backends import triton_interpreting
from pyprobtf.reference import philox
from pyprobtf.reference.lincomb import noise as reference_noise
from pyprobtf.testing import DTYPES, LAYOUTS, batch_shapes, make_tensor
from pyprobtf.testing.ops import LINCOMB_NOISE_ATOL as NOISE_ATOL
from pyprobtf.testing.ops import check_lincomb

CPU_BACKENDS = ["reference", "cpp", "torch"]
GPU_BACKENDS = ["reference", "cuda", "triton"]
TRITON_EXAMPLES = int(os.environ.get("PYPROBTF_TRITON_EXAMPLES", "25"))

KAT = json.loads((Path(__file__).resolve().parent / "data" / "philox_kat.json").read_text())["vectors"]


def triton_device() -> str:
    return "cpu" if triton_interpreting() else "cuda"


# The check itself (check_lincomb) lives in pyprobtf.testing.ops, shared with `pyprobtf check`.
CASE = {
    "n": st.integers(1, 4),
    "layouts": st.lists(st.sampled_from(LAYOUTS), min_size=4, max_size=4),
    "coeff_tensors": st.lists(st.booleans(), min_size=4, max_size=4),
    "noise": st.sampled_from(["none", "number", "tensor"]),
    "seed_kind": st.sampled_from(["int", "tensor"]),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "offset": st.one_of(st.integers(0, 1000), st.integers(0, 2**63 - 1)),
    "out_kind": st.sampled_from(["new", "alias", "strided"]),
    "ex_seed": st.integers(0, 2**16),
}
case = st.fixed_dictionaries({"dtype": st.sampled_from(DTYPES), "shape": batch_shapes(), **CASE})
# Small cases for Triton's interpreter (slow; no bfloat16 there).
triton_case = st.fixed_dictionaries({
    "dtype": st.sampled_from([torch.float32, torch.float64, torch.float16]),
    "shape": batch_shapes(max_batch=5, max_event_dims=2, max_event=6),
    **CASE,
})


# ----------------------------------------------------------------------------- backends vs reference


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(c=case)
def test_matches_reference(backend, c):
    check_lincomb(backend, "cpu", **c)


@pytest.mark.parametrize("cols", [511, 512, 513, 4095, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("noise", ["none", "number", "tensor"])
def test_cpp_long_rows_and_chunks(cols, noise):
    # Rows cut into several tiles and noise chunks; both seed kinds.
    for seed_kind in ("int", "tensor"):
        check_lincomb("cpp", "cpu", torch.float32, (3, cols), 3, ["contiguous", "sliced", "offset", "contiguous"],
                      [True, False, False, False], noise, seed_kind, 11, 5, "new")


@pytest.mark.triton
@settings(max_examples=TRITON_EXAMPLES)
@given(c=triton_case)
def test_triton_matches_reference(c):
    check_lincomb("triton", triton_device(), **c)


@pytest.mark.triton
@pytest.mark.parametrize("shape, seed", [((3, 2500), torch.tensor([5, -7, 2**40])), ((2, 3000), 12345),
                                         ((70, 3), torch.arange(70)), ((1, 9000), 2**63 + 1)])
def test_triton_agrees_with_cpp(shape, seed):
    # The two backends cut the work differently (Triton: 1024-column tiles, C++: 4096-element
    # tiles and 512-column noise chunks); noise and results agree up to float rounding.
    x, d = (make_tensor(shape, torch.float32, seed=i) for i in range(2))
    c = make_tensor(shape[:1], torch.float32, seed=3)
    args = dict(noise_std=0.8, seed=seed, offset=2**35 + 3)
    cpp = lincomb([x, d], [c, -0.5], backend="cpp", **args)
    tri = lincomb([x.to(triton_device()), d.to(triton_device())], [c.to(triton_device()), -0.5], backend="triton",
                  noise_std=0.8, seed=seed.to(triton_device()) if isinstance(seed, torch.Tensor) else seed,
                  offset=2**35 + 3)
    torch.testing.assert_close(tri.cpu(), cpp, rtol=2e-6, atol=0.8 * NOISE_ATOL + 1e-6)


@pytest.mark.triton
def test_triton_float64_coefficients_keep_their_precision():
    # Python floats reach the kernel as float64 (Triton passes them as float32 by default).
    x, d = (make_tensor((3, 5), torch.float64, seed=i, device=triton_device()) for i in range(2))
    got = lincomb([x, d], [0.1, 1 / 3], backend="triton").cpu()
    torch.testing.assert_close(got, 0.1 * x.cpu() + d.cpu() / 3, rtol=1e-14, atol=1e-15)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@given(c=case)
def test_gpu_matches_reference(backend, c):
    check_lincomb(backend, "cuda", **c)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 70001), (100003, 3), (1, 1), (2, 3 * 2**20 + 1)])
def test_gpu_large_shapes(backend, shape):
    check_lincomb(backend, "cuda", torch.float32, shape, 4, ["contiguous", "sliced", "transposed", "offset"],
                  [True, False, True, False], "tensor", "int", 5, 2**33, "new")
    check_lincomb(backend, "cuda", torch.bfloat16, shape, 2, ["contiguous"] * 4, [False] * 4, "number", "tensor", 5,
                  0, "alias")


# ----------------------------------------------------------------------------- the noise stream


def test_reference_noise_is_the_contract():
    # Flat index i gets N(seed, offset + i); per-row seeds: element j of row b gets N(seed[b], offset + j).
    shape, offset = (3, 4, 5), 2**33 + 7
    eps = reference_noise(shape, 2**63 + 5, offset)
    want = philox.randn(torch.tensor(-(2**63) + 5), offset + torch.arange(60)).reshape(shape)
    assert torch.equal(eps, want)
    seeds = torch.tensor([5, -1, 2**40])
    eps = reference_noise(shape, seeds, offset)
    for b in range(3):
        assert torch.equal(eps[b].reshape(-1), philox.randn(seeds[b], offset + torch.arange(20)))


def _kat_noise(backend, device, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """lincomb's noise at every (seed, counter) of the known-answer file, and Triton's values."""
    got, want = [], []
    for row in KAT:
        zero = torch.zeros(1, 1, device=device)
        seed = torch.tensor([row["seed"] % 2**64 - (2**64 if row["seed"] % 2**64 >= 2**63 else 0)], device=device) \
            if per_row else row["seed"]
        got.append(lincomb([zero], [0.0], noise_std=1.0, seed=seed, offset=row["counter"], backend=backend))
        want.append(row["randn"])
    return torch.cat([g.reshape(1).cpu() for g in got]), torch.tensor(want, dtype=torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("per_row", [False, True])
def test_noise_known_answers(backend, per_row):
    # The vectors were generated by triton.language.randn itself (tests/data/make_philox_kat.py).
    got, want = _kat_noise(backend, "cpu", per_row)
    torch.testing.assert_close(got, want, rtol=0, atol=NOISE_ATOL)


@pytest.mark.triton
@pytest.mark.parametrize("per_row", [False, True])
def test_triton_noise_known_answers(per_row):
    got, want = _kat_noise("triton", triton_device(), per_row)
    torch.testing.assert_close(got, want, rtol=0, atol=NOISE_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("per_row", [False, True])
def test_gpu_noise_known_answers(backend, per_row):
    got, want = _kat_noise(backend, "cuda", per_row)
    torch.testing.assert_close(got, want, rtol=0, atol=NOISE_ATOL)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_cpp_simd_philox_words_are_exact(isa):
    # The C++ backend draws runs of consecutive counters with explicit AVX-512/AVX2 code
    # (csrc/cpu/philox_simd.cpp): every implementation gives exactly the reference's words,
    # including the tails and counters whose low word wraps.
    module = _backends.cpp_module()
    code = {"portable": 1, "avx2": 2, "avx512": 3}[isa]
    n = 1003
    for seed, counter in [(0, 0), (-1, 2**32 - 37), (2**62 + 12345, 2**63 - 100), (42, 2**40 + 3)]:
        w0 = torch.empty(n, dtype=torch.int32)
        w1 = torch.empty(n, dtype=torch.int32)
        if not module.philox_words(code, seed, counter, n, w0.data_ptr(), w1.data_ptr()):
            pytest.skip(f"this CPU has no {isa}")
        want = philox.philox4x32_10(torch.tensor(seed), counter + torch.arange(n))
        assert torch.equal(w0.long() & 0xFFFFFFFF, want[0])
        assert torch.equal(w1.long() & 0xFFFFFFFF, want[1])


def test_cpp_noise_equals_reference_over_many_counters():
    # The vectorised log and cosine over the whole range of uniforms (every cosine quadrant),
    # across a low-word wrap of the counter.
    n = 1 << 16
    zero = torch.zeros(1, n)
    for seed in (0, 12345, -(2**40)):
        got = lincomb([zero], [0.0], noise_std=1.0, seed=seed, offset=2**32 - 1000, backend="cpp")
        want = philox.randn(torch.tensor(seed), 2**32 - 1000 + torch.arange(n))
        torch.testing.assert_close(got.reshape(-1), want, rtol=0, atol=NOISE_ATOL)


def test_cpp_noise_at_the_clamped_uniform():
    # tl.randn clamps u0 at 1e-7 (words 0 whose 31-bit value is at most 214): about one counter
    # in ten million. Find some with the fast word generator and compare with the reference.
    module = _backends.cpp_module()
    chunk, hits, start = 1 << 22, [], 0
    while len(hits) < 2 and start < 1 << 28:
        w0 = torch.empty(chunk, dtype=torch.int32)
        w1 = torch.empty(chunk, dtype=torch.int32)
        module.philox_words(0, 5, start, chunk, w0.data_ptr(), w1.data_ptr())
        nonneg = torch.where(w0 < 0, ~w0, w0)
        hits += (start + torch.nonzero(nonneg <= 214).flatten()).tolist()
        start += chunk
    assert hits, "no clamped uniform found"
    for counter in hits:
        got = lincomb([torch.zeros(1, 1)], [0.0], noise_std=1.0, seed=5, offset=counter, backend="cpp")
        want = philox.randn(torch.tensor(5), torch.tensor(counter))
        torch.testing.assert_close(got.reshape(()), want, rtol=0, atol=NOISE_ATOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noise_moments(backend):
    n = 1 << 20 if backend == "cpp" else 1 << 17  # the reference's Philox is slow (16-bit partial products)
    eps = lincomb([torch.zeros(4, n // 4)], [0.0], noise_std=1.0, seed=2024, backend=backend).double()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2 / n)
    # kurtosis 3 (a Gaussian, not just any unit-variance noise) within ~5 standard errors
    assert abs((eps**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # rows with per-row seeds are uncorrelated
    rows = lincomb([torch.zeros(2, n // 2)], [0.0], noise_std=1.0, seed=torch.tensor([1, 2]), backend=backend)
    corr = (rows[0].double() * rows[1].double()).mean().item()
    assert abs(corr) < 5 / math.sqrt(n // 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noise_std_scales_the_noise(backend):
    x = torch.zeros(3, 100)
    unit = lincomb([x], [0.0], noise_std=1.0, seed=9, backend=backend)
    scaled = lincomb([x], [0.0], noise_std=torch.tensor([0.0, 2.0, 0.5]), seed=9, backend=backend)
    torch.testing.assert_close(scaled, unit * torch.tensor([[0.0], [2.0], [0.5]]))
    # noise_std=0 draws no noise, whatever the seed
    assert torch.equal(lincomb([x], [1.0], noise_std=0.0, seed=9, backend=backend), x)


# ----------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("cols", [3, 300, 5000])
def test_cpp_batch_and_thread_invariant(cols):
    # With per-row seeds a row's result is bit-identical whatever rows surround it,
    # the batch size and the thread count.
    x, d = (make_tensor((64, cols), torch.float32, seed=i) for i in range(2))
    seeds = torch.arange(64) * 7919
    full = lincomb([x, d], [1.0, -0.3], noise_std=0.5, seed=seeds, offset=17, backend="cpp")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lincomb([x, d], [1.0, -0.3], noise_std=0.5, seed=seeds, offset=17, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(full, one)
    for rows in (slice(5, 6), slice(0, 7), slice(30, 64)):
        part = lincomb([x[rows], d[rows]], [1.0, -0.3], noise_std=0.5, seed=seeds[rows], offset=17, backend="cpp")
        assert torch.equal(part, full[rows])
    # one integer seed: the result does not depend on the thread count either
    full = lincomb([x, d], [1.0, -0.3], noise_std=0.5, seed=3, backend="cpp")
    try:
        torch.set_num_threads(1)
        one = lincomb([x, d], [1.0, -0.3], noise_std=0.5, seed=3, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(full, one)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_integer_seed_noise_follows_the_flat_index(backend):
    # One seed: the (B, ...) state's flat index is the counter, so a reshape of the
    # state does not change its noise, and offsets continue the stream.
    x = torch.zeros(4, 6)
    whole = lincomb([x], [0.0], noise_std=1.0, seed=3, offset=10, backend=backend)
    reshaped = lincomb([x.reshape(2, 12)], [0.0], noise_std=1.0, seed=3, offset=10, backend=backend)
    tail = lincomb([x[2:]], [0.0], noise_std=1.0, seed=3, offset=22, backend=backend)
    assert torch.equal(whole.reshape(2, 12), reshaped)
    assert torch.equal(whole[2:], tail)


# ----------------------------------------------------------------------------- out= and aliasing


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_and_overlapping_out(backend):
    x = make_tensor((6, 9), torch.float64, seed=1)
    d = make_tensor((6, 9), torch.float64, seed=2)
    want = reference.lincomb([x, d], [0.5, 2.0], 0.25, 4)
    # out is an input: an in-place update
    y = x.clone()
    assert lincomb([y, d], [0.5, 2.0], noise_std=0.25, seed=4, out=y, backend=backend) is y
    torch.testing.assert_close(y, want, rtol=1e-12, atol=0.25 * NOISE_ATOL)
    # out is the second input
    e = d.clone()
    lincomb([x, e], [0.5, 2.0], noise_std=0.25, seed=4, out=e, backend=backend)
    torch.testing.assert_close(e, want, rtol=1e-12, atol=0.25 * NOISE_ATOL)
    # out overlaps an input shifted by one row: computed into a fresh tensor, then copied
    buf = torch.cat([x, torch.zeros(1, 9, dtype=torch.float64)])
    lincomb([buf[:6], d], [0.5, 2.0], noise_std=0.25, seed=4, out=buf[1:], backend=backend)
    torch.testing.assert_close(buf[1:], want, rtol=1e-12, atol=0.25 * NOISE_ATOL)
    # out is a strided view that cannot be seen as (B, F)
    big = torch.zeros(6, 3, 6, dtype=torch.float64)
    out = big[:, :, ::2]
    lincomb([x.reshape(6, 3, 3), d.reshape(6, 3, 3)], [0.5, 2.0], noise_std=0.25, seed=4, out=out, backend=backend)
    torch.testing.assert_close(out.reshape(6, 9), want, rtol=1e-12, atol=0.25 * NOISE_ATOL)
    assert torch.all(big[:, :, 1::2] == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0,), (1,), (5,), (3, 1, 0, 2)])
def test_empty_and_degenerate_shapes(backend, shape):
    x = make_tensor(shape, torch.float32, seed=1)
    got = lincomb([x, x], [1.0, 2.0], noise_std=0.5, seed=1, backend=backend)
    assert got.shape == x.shape
    want = reference.lincomb([x, x], [1.0, 2.0], 0.5, 1)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2 * NOISE_ATOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_and_inf_propagate(backend):
    x = make_tensor((4, 5), torch.float32, seed=1)
    d = make_tensor((4, 5), torch.float32, seed=2)
    x[0, 1] = math.nan
    d[1, 2] = math.inf
    got = lincomb([x, d], [1.0, 0.5], noise_std=0.1, seed=3, backend=backend)
    want = reference.lincomb([x, d], [1.0, 0.5], 0.1, 3)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    assert got.isnan().sum() == 1 and got.isinf().sum() == 1


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_gradients_match_reference(backend, path):
    shape = (4, 3, 2)
    x, d, e = (make_tensor(shape, torch.float64, seed=i).requires_grad_() for i in range(3))
    c = make_tensor((4,), torch.float64, seed=5).requires_grad_()
    s = make_tensor((4,), torch.float64, seed=6, low=0.1, high=1.0).requires_grad_()
    seeds = torch.tensor([3, 1, 4, 1])
    g = make_tensor(shape, torch.float64, seed=7)
    if path == "eager":
        out = lincomb([x, d, e], [1.0, c, -0.5], noise_std=s, seed=seeds, offset=9, backend=backend)
    else:
        out = torch.ops.pyprobtf.lincomb(
            [x, d, e], [1.0, 0.0, -0.5], [c], [1], 0.0, s, 0, seeds, 9, backend)
    got = torch.autograd.grad(out, (x, d, e, c, s), g)
    want_out = reference.lincomb([x, d, e], [1.0, c, -0.5], s, seeds, 9)
    want = torch.autograd.grad(want_out, (x, d, e, c, s), g)
    for a, b in zip(got[:4], want[:4]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # d out / d noise_std is the noise itself, equal to the reference's up to its float32 rounding
    noise_atol = NOISE_ATOL * g.abs().reshape(4, -1).sum(1).max().item()
    torch.testing.assert_close(got[4], want[4], rtol=0, atol=noise_atol)


@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_gradcheck_and_gradgradcheck(path):
    shape = (3, 4)
    x, d = (make_tensor(shape, torch.float64, seed=i).requires_grad_() for i in range(2))
    c = make_tensor((3,), torch.float64, seed=5).requires_grad_()
    s = make_tensor((3,), torch.float64, seed=6, low=0.1, high=1.0).requires_grad_()

    if path == "eager":
        def fn(x, d, c, s):
            return lincomb([x, d], [c, 2.0], noise_std=s, seed=5, backend="cpp")
    else:
        def fn(x, d, c, s):
            return torch.ops.pyprobtf.lincomb([x, d], [0.0, 2.0], [c], [0], 0.0, s, 5, None, 0, "cpp")

    torch.autograd.gradcheck(fn, (x, d, c, s))
    torch.autograd.gradgradcheck(fn, (x, d, c, s))


def test_no_grad_skips_autograd_and_out_refuses_grad():
    x = torch.ones(2, 3, requires_grad=True)
    with torch.no_grad():
        y = lincomb([x], [2.0])
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="`out=` does not support automatic differentiation"):
        lincomb([x], [2.0], out=torch.empty(2, 3))


# ----------------------------------------------------------------------------- backends and dispatch


def test_auto_picks_cpp_on_cpu():
    assert available_backends()["cpp"].available
    assert _registry.resolve("lincomb", "auto", "cpu") == "cpp"


def test_unavailable_backend_says_why():
    if available_backends()["cuda"].available:
        pytest.skip("the cuda backend is available here")
    x = torch.zeros(2, 3)
    with pytest.raises(BackendUnavailableError, match="cuda.*cannot run on cpu"):
        lincomb([x], [1.0], backend="cuda")


# ----------------------------------------------------------------------------- bad input


def _bad_calls():
    x = torch.zeros(3, 4)
    return [
        (lambda: lincomb(x, [1.0]), TypeError, r"`tensors` must be a list or tuple of 1 to 4 tensors; got Tensor"),
        (lambda: lincomb([], []), ValueError, r"`tensors` must hold 1 to 4 tensors; got 0"),
        (lambda: lincomb([x] * 5, [1.0] * 5), ValueError, r"`tensors` must hold 1 to 4 tensors; got 5"),
        (lambda: lincomb([x, x[:, :2]], [1.0, 1.0]), ValueError,
         r"`tensors\[1\]` must have the shape of `tensors\[0\]`, \(3, 4\); got \(3, 2\)"),
        (lambda: lincomb([x, x.double()], [1.0, 1.0]), TypeError,
         r"`tensors\[1\]` must have the dtype of `tensors\[0\]`, torch.float32; got torch.float64"),
        (lambda: lincomb([x, x.to("meta")], [1.0, 1.0]), ValueError, r"`tensors\[1\]` must be on the device"),
        (lambda: lincomb([x.long()], [1.0]), TypeError, r"`tensors\[0\]` must have dtype float32"),
        (lambda: lincomb([x[0, 0]], [1.0]), ValueError, r"`tensors\[0\]` must have at least 1 dimension"),
        (lambda: lincomb([x, x], [1.0]), ValueError, r"`coeffs` must have one entry per tensor \(2\); got 1"),
        (lambda: lincomb([x], 1.0), TypeError, r"`coeffs` must be a list or tuple"),
        (lambda: lincomb([x], ["2"]), TypeError, r"`coeffs\[0\]` must be a real number or a tensor of shape \(B,\)"),
        (lambda: lincomb([x], [torch.ones(4)]), ValueError,
         r"`coeffs\[0\]` must be a number or a tensor of shape \(B,\) = \(3,\).*got shape \(4,\)"),
        (lambda: lincomb([x], [torch.ones(3, 1)]), ValueError, r"`coeffs\[0\]`.*got shape \(3, 1\)"),
        (lambda: lincomb([x], [torch.ones(3, dtype=torch.int64)]), TypeError,
         r"`coeffs\[0\]` must be a floating-point tensor"),
        (lambda: lincomb([x], [torch.ones(3, device="meta")]), ValueError, r"`coeffs\[0\]` must be on the device"),
        (lambda: lincomb([x], [1.0], noise_std=-0.1, seed=0), ValueError,
         r"`noise_std` must be non-negative and finite; got -0.1"),
        (lambda: lincomb([x], [1.0], noise_std=math.nan, seed=0), ValueError, r"`noise_std` must be non-negative"),
        (lambda: lincomb([x], [1.0], noise_std=torch.ones(2), seed=0), ValueError, r"`noise_std`.*got shape \(2,\)"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed=1.5), TypeError,
         r"`seed` must be an integer, an integer tensor of shape \(B,\) or None; got float"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed="7"), TypeError, r"`seed` must be an integer"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed=True), TypeError, r"`seed` must be an integer"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed=2**64), ValueError,
         r"`seed` must be an int in \[-2\^63, 2\^64\); got 18446744073709551616"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed=torch.ones(3)), TypeError,
         r"`seed` must be an integer tensor of dtype int64, int32, int16, int8, uint8; got torch.float32"),
        (lambda: lincomb([x], [1.0], noise_std=1.0, seed=torch.ones(2, dtype=torch.int64)), ValueError,
         r"`seed` must be a number or a tensor of shape \(B,\)"),
        (lambda: lincomb([x], [1.0], offset=2**64), ValueError, r"`offset` must be an int in \[-2\^63, 2\^64\)"),
        (lambda: lincomb([x], [1.0], offset=-(2**63) - 1), ValueError, r"`offset` must be an int in"),
        (lambda: lincomb([x], [1.0], offset=1.0), TypeError, r"`offset` must be an int; got float"),
        (lambda: lincomb([x], [1.0], out=torch.zeros(3, 5)), ValueError, r"`out` must have the shape of"),
        (lambda: lincomb([x], [1.0], out=torch.zeros(3, 4).double()), TypeError, r"`out` must have the dtype"),
        (lambda: lincomb([x], [1.0], out=torch.zeros(3, 1).expand(3, 4)), ValueError,
         r"`out` must not have several elements in one memory location"),
        (lambda: lincomb([x], [1.0], backend="numba"), ValueError, r"`backend` must be one of"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input(index):
    call, error, match = _bad_calls()[index]
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(backend, dtype):
    x, d, e = (make_tensor((5, 3), dtype, layout, seed=i).requires_grad_()
               for i, layout in enumerate(["contiguous", "sliced", "transposed"]))
    c = make_tensor((5,), dtype, seed=7).requires_grad_()
    s = make_tensor((5,), dtype, seed=8, low=0.0, high=1.0).requires_grad_()
    op = torch.ops.pyprobtf.lincomb.default
    torch.library.opcheck(op, ([x, d, e], [1.0, -2.0, 0.0], [c], [2], 0.5, None, 7, None, 3, backend))
    torch.library.opcheck(op, ([x, d], [1.0, 0.0], [c], [1], 0.0, s, 0, torch.arange(5), 0, backend))
    out = torch.empty(5, 3, dtype=dtype)
    torch.library.opcheck(torch.ops.pyprobtf.lincomb_out.default,
                          ([x.detach(), d.detach()], [1.0, 2.0], [], [], 0.5, None, 1, None, 0, backend, out))


def test_torch_compile_fullgraph():
    def step(x, d, seeds):
        y = lincomb([x, d], [1.0, -0.25], noise_std=0.5, seed=seeds, offset=6)
        return lincomb([y, d], [2.0, 1.0])

    compiled = torch.compile(step, fullgraph=True)
    x, d = (make_tensor((4, 6), torch.float32, seed=i) for i in range(2))
    seeds = torch.arange(4)
    torch.testing.assert_close(compiled(x, d, seeds), step(x, d, seeds))


def test_torch_compile_out_and_gradients():
    def update(x, d, c):
        return lincomb([x, d], [1.0, c], noise_std=0.1, seed=3).square().sum()

    x, d = (make_tensor((4, 6), torch.float32, seed=i).requires_grad_() for i in range(2))
    c = torch.rand(4, requires_grad=True)
    want = torch.autograd.grad(update(x, d, c), (x, d, c))
    got = torch.autograd.grad(torch.compile(update, fullgraph=True)(x, d, c), (x, d, c))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)

    def in_place(x, d):
        lincomb([x, d], [1.0, 0.5], out=x)
        return x

    x0, d0 = (make_tensor((4, 6), torch.float32, seed=i) for i in range(2))
    got = torch.compile(in_place, fullgraph=True)(x0.clone(), d0)
    torch.testing.assert_close(got, x0 + 0.5 * d0)
