"""The ``torch`` backend (pyprobtf.ops._fast_torch): what the op tests do not cover.

tests/test_affine_coupling.py, test_lincomb.py, test_sampling.py and
test_vq_nearest.py hold this backend to the project's checks through the
public ops (``backend="torch"``), like every other backend. Here: bit-identical
Philox noise, the same sampled tokens and vq indices as the reference (ties
included), the vq fallback for rows the float32 scan cannot certify, and that
no function reads a value back to the host.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyprobtf.testing.ops as check_ops
import pyprobtf.testing.sampling as check_sampling
from pyprobtf import reference
from pyprobtf.ops import _fast_torch as fast
from pyprobtf.reference.lincomb import noise as reference_noise
from pyprobtf.testing import DTYPES, batch_shapes, make_tensor

SCALE_FNS = ("exp", "softclamp", "sigmoid", "softclip", "sigmoid_eps", "inv_sigmoid")
METRICS = ("l2", "cosine", "dot")


# ----------------------------------------------------------------------------- lincomb


@given(shape=batch_shapes(min_batch=1, max_batch=5), seed=st.integers(-(2**63), 2**64 - 1),
       offset=st.integers(-(2**63), 2**63 - 1), per_row=st.booleans(), data=st.data())
def test_noise_is_bit_identical(shape, seed, offset, per_row, data):
    if per_row:
        seed = torch.tensor(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=shape[0],
                                               max_size=shape[0])), dtype=torch.int64)
    want = reference_noise(shape, seed, offset)
    got = fast._noise(shape, seed, offset, "cpu")
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_noise_counter_words_wrap():
    # Counters crossing 2^32 (the high word changes) and 2^64 (wrapping), keys with both halves set.
    for seed in (0, -1, 2**63 - 1, -(2**63), 0xDEADBEEFCAFEF00D - 2**64):
        for offset in (2**32 - 7, -7, 2**63 - 3):
            assert torch.equal(fast._noise((2, 9), seed, offset, "cpu"), reference_noise((2, 9), seed, offset))


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_same_tokens_as_reference(dtype):
    """Tokens bit for bit: the same e and the same cumulative sums in vocabulary order as the reference,
    on 6 rows of every kind of logits, each twice with its own uniform, Python and per-row parameters,
    a top_k above the topk limit."""
    cols = 5000
    logits = torch.cat([check_sampling.make_logits(6, cols, dtype, "contiguous", kind, seed=3)
                        for kind in check_sampling.KINDS]).repeat(2, 1)
    rows = logits.shape[0]
    uniform = torch.rand(rows, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_row_k = torch.tensor([0, 1, 7, 4500, 5000, 40]).repeat(rows // 6)
    per_row_t = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.8], dtype=torch.float64).repeat(rows // 6)
    # (float64 masses summed in another order move a top-p cut only within ~1e-12 of a boundary: none here)
    for params in [(1.0, 0, 1.0, 0.0), (0.7, 40, 1.0, 0.0), (1.3, 4500, 1.0, 0.05), (per_row_t, per_row_k, 1.0, 0.0),
                   (0.8, 0, 0.9, 0.0), (1.0, 50, 0.7, 0.02), (per_row_t, per_row_k, 0.5, 0.0),
                   (0.0, 0, 1.0, 0.0), (per_row_t, 3, 1.0, torch.full((rows,), 0.1, dtype=torch.float64))]:
        want = reference.sample_logits(logits, uniform, *params)
        got = fast.sample_logits(logits, uniform, *params)
        assert torch.equal(got[0], want[0]), params
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- vq_nearest


@given(dtype=st.sampled_from(DTYPES), n=st.integers(0, 50), codes=st.integers(1, 300), dim=st.integers(1, 40),
       k=st.integers(1, 8), metric=st.sampled_from(METRICS), seed=st.integers(0, 2**16))
def test_vq_nearest_same_indices_as_reference(dtype, n, codes, dim, k, metric, seed):
    """Random data (no float64 near-ties): exactly the reference's indices and distances."""
    k = min(k, codes)
    x = make_tensor((n, dim), dtype, seed=seed)
    codebook = make_tensor((codes, dim), dtype, seed=seed + 1)
    want = reference.vq_nearest(x, codebook, metric, k)
    got = fast.vq_nearest(x, codebook, metric, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _brute_force(x, codebook, metric, k):
    """The k best by float64 distances computed pair by pair (equal codes give equal distances), stable."""
    x64, e64 = x.double(), codebook.double()
    dot = (x64[:, None, :] * e64[None, :, :]).sum(-1)
    xsq, esq = (x64 * x64).sum(1), (e64 * e64).sum(1)
    if metric == "l2":
        d = (xsq[:, None] - 2.0 * dot + esq[None, :]).clamp_min(0.0)
    elif metric == "cosine":
        d = 1.0 - dot / (xsq.sqrt().clamp_min(1e-12)[:, None] * esq.sqrt().clamp_min(1e-12)[None, :])
    else:
        d = -dot
    return torch.sort(d, dim=1, stable=True).indices[:, :k]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_vq_nearest_ties_to_lower_index(metric, k, dtype):
    """Planted exact ties (duplicated codes, some rows equal to a code): the lower index first, in order."""
    gen = torch.Generator().manual_seed(7)
    codebook = torch.randn(60, 6, generator=gen).to(dtype)
    codebook[[17, 33, 59]] = codebook[4].clone()
    codebook[[40, 41]] = codebook[2].clone()
    x = torch.randn(30, 6, generator=gen).to(dtype)
    x[:10] = codebook[4] + 0.01 * torch.randn(10, 6, generator=gen).to(dtype)
    x[10:15] = codebook[2]
    got = fast.vq_nearest(x, codebook, metric, k)[0].reshape(30, k)
    assert torch.equal(got, _brute_force(x, codebook, metric, k))


@pytest.mark.parametrize("metric", METRICS)
def test_vq_nearest_uncertified_rows_are_exact(metric):
    """More codes within the scan's error window than candidates: the exact float64 pass answers those rows."""
    gen = torch.Generator().manual_seed(3)
    codebook = torch.randn(400, 8, generator=gen)
    codebook[100:300] = codebook[7].clone()  # 201 equal codes: far more than the candidates kept
    x = torch.randn(50, 8, generator=gen)
    x[:12] = codebook[7] + 1e-3 * torch.randn(12, 8, generator=gen)
    assert 12 <= fast._exact_capacity(50)
    for k in (1, 4):
        got = fast.vq_nearest(x, codebook, metric, k)[0].reshape(50, k)
        assert torch.equal(got, _brute_force(x, codebook, metric, k))


def test_vq_nearest_rows_beyond_the_exact_capacity():
    """Documented corner: uncertified rows beyond `_exact_capacity(n)` keep the best of their candidates,
    re-scored in float64: within the contract's tolerance, but not necessarily the lowest tied index."""
    gen = torch.Generator().manual_seed(5)
    n = 200
    codebook = torch.randn(300, 8, generator=gen)
    codebook[50:250] = codebook[3].clone()
    x = codebook[3] + 1e-4 * torch.randn(n, 8, generator=gen)
    capacity = fast._exact_capacity(n)
    assert capacity < n
    indices, dist = fast.vq_nearest(x, codebook, "l2", 2)
    check_ops.check_vq_nearest_result(x, codebook, indices, dist, "l2", 2)
    want = _brute_force(x, codebook, "l2", 2)
    assert torch.equal(indices[:capacity], want[:capacity])  # the first `capacity` rows: exact


def test_vq_nearest_fixed_cases():
    """The fixed cases `pyprobtf check` runs on every backend (up to 1000 codes of 130 dimensions), in float32
    (the other dtypes run through the hypothesis tests above)."""
    for case in check_ops.REGISTRY["vq_nearest"]("torch", "cpu", torch.float32):
        case()


def test_vq_nearest_bound_follows_matmul_precision():
    """Under TF32/bfloat16 matmul settings the scan's bound widens (the answer stays the float64 one)."""
    previous = torch.get_float32_matmul_precision()
    try:
        roundings = []
        for precision in ("highest", "high", "medium"):
            torch.set_float32_matmul_precision(precision)
            roundings.append(fast._matmul_rounding())
            x, codebook = make_tensor((20, 16), seed=1), make_tensor((70, 16), seed=2)
            assert torch.equal(fast.vq_nearest(x, codebook)[0], reference.vq_nearest(x, codebook)[0])
        assert roundings[1] >= 2.0**-9 and roundings[2] >= 2.0**-7
    finally:
        torch.set_float32_matmul_precision(previous)


# ----------------------------------------------------------------------------- no host synchronisation

_READBACKS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


@contextlib.contextmanager
def _count_readbacks():
    """Counts calls that read a tensor's values back to the host (on CUDA, each one waits for the device)."""
    calls: list[str] = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in _READBACKS:
            mp.setattr(torch.Tensor, name, counting(f"Tensor.{name}", getattr(torch.Tensor, name)))
        mp.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
        mp.setattr(torch, "masked_select", counting("torch.masked_select", torch.masked_select))
        yield calls


def test_the_counter_sees_readbacks():
    t = torch.ones(3)
    with _count_readbacks() as calls:
        bool(t[0] > 0), t.sum().item(), torch.nonzero(t), int(t[0]), t.tolist()
    assert len(calls) >= 5, calls


def test_no_host_synchronisation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, generator=gen)
    shift, scale, grad = (torch.randn(6, 5, 4, generator=gen) for _ in range(3))
    rows_t = torch.rand(6, generator=gen, dtype=torch.float64)
    logits = torch.randn(6, 300, generator=gen)
    logits[:, 5] = logits[:, 9]
    codebook = torch.randn(100, 4, generator=gen)
    codebook[10:60] = codebook[3].clone()  # uncertified rows: the exact pass runs
    points = torch.cat([codebook[3] + 1e-3 * torch.randn(5, 4, generator=gen), torch.randn(20, 4, generator=gen)])
    per_row = (torch.tensor([0.0, 1.0, 0.5, 2.0, 1.0, 0.7], dtype=torch.float64), torch.tensor([0, 1, 3, 300, 5, 9]),
               torch.tensor([1.0, 0.5, 0.9, 0.3, 1.0, 0.7], dtype=torch.float64),
               torch.tensor([0.0, 0.1, 0.0, 0.5, 0.2, 0.0], dtype=torch.float64))
    with _count_readbacks() as calls:
        for scale_fn in SCALE_FNS:
            for inverse in (False, True):
                fast.affine_coupling(x, shift, scale, scale_fn, 2.0, inverse)
                fast.affine_coupling_backward(grad, rows_t.float(), x, shift, scale, scale_fn, 2.0, inverse)
        fast.lincomb([x, shift, scale], [0.5, rows_t.float(), -1.0], 0.3, 2**63 + 5, 2**40)
        fast.lincomb([x.half()], [rows_t.float()], rows_t.float(), torch.arange(6), 7)
        for params in [(1.0, 0, 1.0, 0.0), (0.7, 50, 0.9, 0.05), (1.0, 0, 0.8, 0.0), (0.0, 0, 1.0, 0.0), per_row]:
            fast.sample_logits(logits, rows_t, *params)
            fast.filter_logits(logits.half(), *params)
        for metric in METRICS:
            for k in (1, 3):
                fast.vq_nearest(points, codebook, metric, k)
                fast.vq_nearest(points.double(), codebook.double(), metric, k)
    assert calls == [], calls


@pytest.mark.parametrize("metric", METRICS)
def test_vq_nearest_zero_dimensions(metric):
    """D = 0: every code ties, for any number of rows (beyond the exact pass's capacity too)."""
    x, codebook = torch.zeros(500, 0), torch.zeros(30, 0)
    for k in (1, 4):
        want = reference.vq_nearest(x, codebook, metric, k)
        got = fast.vq_nearest(x, codebook, metric, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
