"""Bad input on the ops: one seed domain, temperatures that overflow float32, huge top_k,
lincomb's noise_std rows, overlapping `out` and overflowing coefficients, and the extra
memory of sample_logits on rows of ties (docs/RELIABILITY.md)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pyprobtf import seeds
from pyprobtf.ops import filter_logits, lincomb, sample_logits
from pyprobtf.ops._backends import triton_interpreting
from pyprobtf.reference import philox

CPU_BACKENDS = ["reference", "cpp"]


def _triton_device() -> str:
    return "cpu" if triton_interpreting() else "cuda"


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed, canonical", [(0, 0), (-1, 2**64 - 1), (-(2**63), 2**63), (2**64 - 1, 2**64 - 1),
                                             (2**63, 2**63)])
def test_check_seed_takes_the_domain_modulo_2_64(seed, canonical):
    assert seeds.check_seed(seed, "f") == canonical
    assert seeds.signed_int64(canonical) == seeds.signed_int64(seed)


@pytest.mark.parametrize("seed, error, match", [
    (2**64, ValueError, r"f: `seed` must be an int in \[-2\^63, 2\^64\); got 18446744073709551616"),
    (-(2**63) - 1, ValueError, r"f: `seed` must be an int in"),
    (2**70, ValueError, r"f: `seed` must be an int in"),
    (True, TypeError, r"f: `seed` must be an int; got bool"),
    (1.0, TypeError, r"f: `seed` must be an int; got float"),
    ("3", TypeError, r"f: `seed` must be an int; got str"),
])
def test_check_seed_rejects(seed, error, match):
    with pytest.raises(error, match=match):
        seeds.check_seed(seed, "f")


def test_seed_tensor_dtypes():
    for dtype in seeds.INTEGER_TENSOR_DTYPES:
        assert seeds.check_seed_tensor(torch.tensor([1, 2], dtype=dtype), "f").dtype == torch.int64
    for dtype in (torch.uint16, torch.uint32, torch.uint64, torch.float32, torch.bool):
        with pytest.raises(TypeError, match=r"f: `seed` must be an integer tensor of dtype int64, int32"):
            seeds.check_seed_tensor(torch.tensor([1, 0], dtype=dtype), "f")


def _sample(seed, offset=0, backend="cpp", rows=4):
    logits = torch.randn(rows, 50, generator=torch.Generator().manual_seed(1))
    return sample_logits(logits, seed=seed, offset=offset, backend=backend)


def _noise(seed, offset=0, backend="cpp", shape=(3, 5)):
    return lincomb([torch.zeros(shape)], [0.0], noise_std=1.0, seed=seed, offset=offset, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_seed_domain_for_lincomb_and_sample_logits(backend):
    for op in (_sample, _noise):
        assert torch.equal(op(-1, backend=backend), op(2**64 - 1, backend=backend))
        assert torch.equal(op(5, offset=-1, backend=backend), op(5, offset=2**64 - 1, backend=backend))
        for bad in (2**64, -(2**63) - 1):
            with pytest.raises(ValueError, match=r"`seed` must be an int in \[-2\^63, 2\^64\)"):
                op(bad, backend=backend)
            with pytest.raises(ValueError, match=r"`offset` must be an int in \[-2\^63, 2\^64\)"):
                op(5, offset=bad, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_rule_for_seed_tensors(backend):
    for op in (_sample, _noise):
        rows = 4 if op is _sample else 3
        want = op(torch.arange(rows, dtype=torch.int64), backend=backend)
        assert torch.equal(op(torch.arange(rows, dtype=torch.uint8), backend=backend), want)
        assert torch.equal(op(torch.arange(rows, dtype=torch.int16), backend=backend), want)
        for dtype in (torch.uint32, torch.uint64, torch.float64):
            with pytest.raises(TypeError, match=r"`seed` must be an integer tensor of dtype"):
                op(torch.arange(rows).to(dtype), backend=backend)


def _wrapped_noise(seed: int, offset: int, n: int) -> torch.Tensor:
    counters = [seeds.signed_int64(offset + i) for i in range(n)]
    return philox.randn(torch.tensor(seeds.signed_int64(seed)), torch.tensor(counters))


@pytest.mark.parametrize("backend", CPU_BACKENDS + [pytest.param("triton", marks=pytest.mark.triton)])
def test_lincomb_counters_wrap_modulo_2_64(backend):
    device = _triton_device() if backend == "triton" else "cpu"
    offset = 2**64 - 7  # the 15 counters run through 2^64 - 1 back to 0
    got = lincomb([torch.zeros(3, 5, device=device)], [0.0], noise_std=1.0, seed=11, offset=offset, backend=backend)
    torch.testing.assert_close(got.cpu().reshape(-1), _wrapped_noise(11, offset, 15), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- sample_logits: temperature, top_k


@pytest.mark.parametrize("backend", CPU_BACKENDS + [pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("op", [sample_logits, filter_logits])
def test_temperature_that_overflows_float32_is_rejected(backend, op):
    device = _triton_device() if backend == "triton" else "cpu"
    logits = torch.randn(3, 20, device=device)
    extra = {"seed": 1} if op is sample_logits else {}
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number >= 0 .* got 1e\+39 \(it overflows"):
        op(logits, temperature=1e39, backend=backend, **extra)
    per_row = torch.tensor([1.0, 1e39, 2.0], dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number >= 0 .*got 1e\+39 at row 1"):
        op(logits, temperature=per_row, backend=backend, **extra)
    # The largest float32 is a temperature like any other; float64 logits take 1e39.
    op(logits, temperature=3.4028234663852886e38, backend=backend, **extra)
    op(logits.double(), temperature=1e39, backend=backend, **extra)


def test_float64_logits_with_a_huge_temperature_agree_across_backends():
    logits = torch.randn(6, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = sample_logits(logits, temperature=1e300, top_k=7, seed=3, backend="reference", return_logprobs=True)
    got = sample_logits(logits, temperature=1e300, top_k=7, seed=3, backend="cpp", return_logprobs=True)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(want[1], torch.full((6,), -math.log(7), dtype=torch.float64))  # uniform over 7


@pytest.mark.parametrize("backend", CPU_BACKENDS + [pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("top_k", [2**63 - 1, 2**63, 2**64, 2**200])
def test_huge_top_k_keeps_every_token(backend, top_k):
    device = _triton_device() if backend == "triton" else "cpu"
    logits = torch.randn(3, 20, device=device)
    assert torch.equal(filter_logits(logits, top_k=top_k, backend=backend),
                       filter_logits(logits, top_k=0, backend=backend))
    assert torch.equal(sample_logits(logits, top_k=top_k, seed=4, backend=backend),
                       sample_logits(logits, top_k=0, seed=4, backend=backend))


# ----------------------------------------------------------------------------- lincomb


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, -math.inf])
def test_lincomb_noise_std_rows_are_checked_like_the_number(backend, bad):
    x = torch.randn(3, 4)
    noise = torch.tensor([0.1, bad, 0.2])
    with pytest.raises(ValueError, match=rf"lincomb: `noise_std` must be non-negative and finite; got {bad} at row 1"):
        lincomb([x], [1.0], noise_std=noise, seed=0, backend=backend)
    with pytest.raises(ValueError, match=r"`noise_std` must be non-negative and finite"):  # also with gradients
        lincomb([x.requires_grad_()], [1.0], noise_std=noise, seed=0, backend=backend)


@pytest.mark.parametrize("shape, strides", [((3, 4), (1, 1)), ((2, 3), (1, 1)), ((4, 2), (1, 3)), ((3, 3), (2, 1))])
def test_lincomb_out_with_overlapping_elements_is_rejected(shape, strides):
    out = torch.zeros(64).as_strided(shape, strides)
    with pytest.raises(ValueError, match=r"`out` must not have several elements in one memory location"):
        lincomb([torch.randn(shape)], [1.0], out=out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lincomb_out_with_an_unusual_layout_that_does_not_overlap(backend):
    out = torch.zeros(64).as_strided((3, 2), (2, 3))  # offsets 0 2 4 / 3 5 7: distinct
    x = torch.randn(3, 2)
    lincomb([x], [2.0], out=out, backend=backend)
    torch.testing.assert_close(out, 2.0 * x)


@pytest.mark.parametrize("kwargs, name", [
    (dict(coeffs=[10**400]), r"coeffs\[0\]"),
    (dict(coeffs=[1.0, -(10**309)]), r"coeffs\[1\]"),
    (dict(coeffs=[1.0], noise_std=10**400, seed=0), "noise_std"),
])
def test_lincomb_number_too_large_for_a_float_names_the_argument(kwargs, name):
    tensors = [torch.randn(2, 3) for _ in kwargs["coeffs"]]
    with pytest.raises(ValueError, match=rf"lincomb: `{name}` must fit in a float64"):
        lincomb(tensors, **kwargs)


def test_sample_logits_number_too_large_for_a_float_names_the_argument():
    with pytest.raises(ValueError, match=r"sample_logits: `temperature` must fit in a float64"):
        sample_logits(torch.randn(2, 3), temperature=10**400)


# ----------------------------------------------------------------------------- sample_logits on ties


def test_cpp_streams_selection_over_many_ties():
    """Rows with more than 2^16 tied candidates take the streaming selection: same kept set and tokens."""
    gen = torch.Generator().manual_seed(0)
    cols = (1 << 16) + 4001
    for levels, dtype in [(1, torch.float32), (3, torch.bfloat16)]:
        logits = torch.randint(0, levels, (3, cols), generator=gen).to(dtype) * 0.5
        logits[1, ::3] = -math.inf
        for kw in [dict(top_k=5, top_p=0.5), dict(top_k=60000, top_p=0.3), dict(top_k=2000, top_p=0.9, min_p=0.5)]:
            want = filter_logits(logits, **kw, backend="reference")
            assert torch.equal(filter_logits(logits, **kw, backend="cpp").isfinite(), want.isfinite()), kw
            u = torch.rand(3, generator=gen, dtype=torch.float64)
            assert torch.equal(sample_logits(logits, **kw, uniform=u, backend="cpp"),
                               sample_logits(logits, **kw, uniform=u, backend="reference")), kw


_MEMORY_SCRIPT = """
import resource, sys, torch
from pyprobtf.ops import sample_logits
cols = int(sys.argv[1])
logits = torch.zeros(1, cols)  # every logit tied
sample_logits(logits[:, :1000], seed=0, top_k=5, backend="cpp")
for kw in (dict(top_k=5), dict(top_p=0.5)):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_logits(logits, seed=0, backend="cpp", **kw)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024 / cols)
"""


def test_cpp_extra_memory_on_an_all_equal_row_is_bounded():
    """Extra peak memory per column, all logits equal (was ~40 bytes per column: every tie copied)."""
    cols = 1 << 22
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(cols)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    per_column = [float(v) for v in out.stdout.split()]
    # The documented bound: the per-chunk histograms, 2048 bins x 12 bytes per 16384 columns (1.5 bytes per
    # column), plus a few MiB of fixed scratch.
    assert all(v < 1.5 + (8 << 20) / cols for v in per_column), per_column
