"""sample_logits / filter_logits: every backend against the reference evaluated in
float64 (tokens, log-probabilities, kept sets), planted ties at the top-k and
top-p thresholds, the distribution of seeded draws (chi-square at a fixed
seed), batch invariance, per-row seeds, the 53-bit tail, bad input, opcheck and
torch.compile.

The checks themselves (which steer clear of cases within rounding of a
threshold) live in pyprobtf/testing/sampling.py, shared with `pyprobtf check`.
Triton tests are marked `triton` (interpreter on CPU, small shapes); GPU tests
are marked `gpu`.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobtf import reference
from pyprobtf.ops import BackendUnavailableError, available_backends, filter_logits, sample_logits
from pyprobtf.ops._backends import triton_interpreting
from pyprobtf.reference.sampling import seeded_uniforms
from pyprobtf.testing import DTYPES, LAYOUTS
from pyprobtf.testing.sampling import (
    KINDS, check_sample_logits, check_tail, check_ties, clear_top_p, make_logits, row_values,
)

CPU_BACKENDS = ["reference", "cpp", "torch"]
GPU_BACKENDS = ["reference", "cuda", "triton"]
TRITON_EXAMPLES = int(os.environ.get("PYPROBTF_TRITON_EXAMPLES", "10"))


def triton_device() -> str:
    return "cpu" if triton_interpreting() else "cuda"


def _draw_params(data, rows, temperature, top_k, top_p, min_p):
    """Each parameter a number or, sometimes, a per-row tensor of such numbers."""
    out = []
    for choices, dtype in ((temperature, torch.float64), (top_k, torch.int64), (top_p, torch.float64),
                           (min_p, torch.float64)):
        if data.draw(st.booleans()):
            out.append(data.draw(st.sampled_from(choices)))
        else:
            tensor_dtype = data.draw(st.sampled_from([dtype, torch.int32 if dtype == torch.int64 else torch.float32]))
            out.append(row_values(choices, rows, data.draw(st.integers(0, 99)), dtype).to(tensor_dtype))
    return out


TEMPERATURES = [1.0, 0.0, 0.7, 1.6]
TOP_KS = [0, 1, 2, 5, 50, 2000]
TOP_PS = [1.0, 0.9, 0.5, 0.1, 0.97]
MIN_PS = [0.0, 0.02, 0.3]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(data=st.data())
def test_matches_reference(backend, data):
    rows = data.draw(st.integers(0, 5))
    cols = data.draw(st.sampled_from([1, 2, 3, 7, 64, 65, 200, 1000, 3000]))
    dtype = data.draw(st.sampled_from(DTYPES))
    layout = data.draw(st.sampled_from(LAYOUTS))
    kind = data.draw(st.sampled_from(KINDS))
    seed = data.draw(st.integers(0, 2**16))
    logits = make_logits(rows, cols, dtype, layout, kind, seed)
    params = _draw_params(data, rows, TEMPERATURES, TOP_KS, TOP_PS, MIN_PS)
    uniform = torch.rand(rows, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    check_sample_logits(backend, "cpu", logits, *params, uniform)


LONG_ROW_PARAMS = [(1.0, 50, 0.9, 0.0), (0.8, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05), (1.2, 3000, 0.8, 0.0),
                   (0.5, 20, 1.0, 0.1)]


@pytest.mark.parametrize("cols, params", [(cols, p) for cols in (16385, 40000) for p in LONG_ROW_PARAMS]
                         + [(262144 + 17, p) for p in LONG_ROW_PARAMS[:2]])
def test_cpp_long_rows(cols, params):
    # Several chunks per row; at 262161 columns a single row runs its chunks in parallel.
    for rows, kind, layout, dtype in ((1, "peaked", "contiguous", torch.float32),
                                      (2, "normal", "transposed", torch.bfloat16)):
        logits = make_logits(rows, cols, dtype, layout, kind=kind, seed=cols)
        uniform = torch.rand(rows, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        check_sample_logits("cpp", "cpu", logits, *clear_top_p(logits, params), uniform)


def test_reference_float64_is_exact_on_small_cases():
    # The reference against a direct transcription of the contract, token by token, on tiny rows.
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        cols = int(torch.randint(1, 7, (1,), generator=gen))
        x = torch.round(torch.randn(1, cols, generator=gen, dtype=torch.float64) * 2)
        t, k, p, mp = 0.9, int(torch.randint(0, cols + 1, (1,), generator=gen)), 0.6, 0.05
        pi = torch.softmax(x[0] / t, 0)
        keep = []
        for i in range(cols):
            in_k = k == 0 or k >= cols or pi[i] >= torch.sort(pi, descending=True).values[k - 1]
            survivors = [j for j in range(cols)
                         if k == 0 or k >= cols or pi[j] >= torch.sort(pi, descending=True).values[k - 1]]
            mass_k = sum(pi[j] for j in survivors)
            above = sum(pi[j] for j in survivors if pi[j] > pi[i])
            keep.append(bool(in_k and above < p * mass_k and pi[i] >= mp * pi.max()))
        got, _, _ = reference.sampling.kept_set(x, t, k, p, mp)
        assert got[0].tolist() == keep, (x, k)


# ----------------------------------------------------------------------------- planted ties


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_planted_ties(backend, dtype):
    check_ties(backend, "cpu", dtype)


def test_planted_ties_in_long_rows():
    # The same ties spread over several chunks of a long row (cpp's histogram path and small-k path).
    cols = 50000
    x = torch.full((1, cols), -5.0)
    x[0, [10, 20000, 49999]] = 3.0  # three-way tie for the top
    x[0, [7, 30000]] = 2.0
    x[0, 16384] = 4.0
    for k in (2, 4, 5, 1000, 2000):  # 2, 4: the tie at 3 is the threshold; 5: the tie at 2; then the -5s
        got = (filter_logits(x, top_k=k, backend="cpp")[0] > -math.inf).nonzero().flatten().tolist()
        want = (reference.filter_logits(x, top_k=k)[0] > -math.inf).nonzero().flatten().tolist()
        assert got == want and len(got) == {2: 4, 4: 4, 5: 6}.get(k, cols)
    e3, e4, e2 = math.exp(3 - 4), 1.0, math.exp(2 - 4)
    total = e4 + 3 * e3 + 2 * e2 + (cols - 6) * math.exp(-9)
    for p in ((e4 + 1.5 * e3) / total, (e4 + 3 * e3 + e2) / total):
        got = (filter_logits(x, top_p=p, backend="cpp")[0] > -math.inf).nonzero().flatten().tolist()
        want = (reference.filter_logits(x, top_p=p)[0] > -math.inf).nonzero().flatten().tolist()
        assert got == want and len(got) in (4, 6)


# ----------------------------------------------------------------------------- the distribution of draws


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    expected = probs * n
    stat = ((counts - expected) ** 2 / expected).sum()
    df = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("per_row_seeds", [False, True])
def test_seeded_draws_follow_the_filtered_distribution(backend, per_row_seeds):
    n = 20000
    row = torch.tensor([[2.0, 1.5, -1.0, 0.3, 1.5, 0.0, -3.0, 2.2, 0.7, -0.5, 1.0, -math.inf]])
    params = dict(temperature=0.8, top_k=8, top_p=0.95, min_p=0.05)
    logits = row.repeat(n, 1)
    seed = torch.arange(n) * 7919 + 5 if per_row_seeds else 1234
    tokens = sample_logits(logits, seed=seed, offset=3, backend=backend, **params)
    probs = torch.softmax(reference.filter_logits(row.double(), **params)[0], 0)
    counts = torch.bincount(tokens, minlength=row.shape[1]).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0
    assert kept.sum() >= 4
    assert chi_square_pvalue(counts[kept], probs[kept]) > 1e-3


def test_different_seeds_give_independent_draws():
    n = 8000
    logits = torch.zeros(n, 16)
    tokens = sample_logits(logits, seed=torch.arange(n) + 99, backend="cpp").double()
    assert chi_square_pvalue(torch.bincount(tokens.long(), minlength=16).double(), torch.full((16,), 1 / 16)) > 1e-3
    # Consecutive rows (neighbouring seeds) are uncorrelated.
    a, b = tokens[:-1] - tokens.mean(), tokens[1:] - tokens.mean()
    corr = (a * b).mean() / tokens.var()
    assert abs(corr) < 4 / math.sqrt(n)
    # The same seed and offset on every row: the same draw on every row.
    same = sample_logits(logits, seed=torch.full((n,), 7), offset=torch.full((n,), 3), backend="cpp")
    assert torch.all(same == same[0])
    # A new offset is a new draw.
    again = [int(sample_logits(logits[:1], seed=torch.tensor([7]), offset=o, backend="cpp")) for o in range(64)]
    assert len(set(again)) > 8


def test_seed_conventions():
    # An integer seed gives row b counter offset + b; a seed tensor gives row b key seed[b] and counter offset[b].
    logits = torch.zeros(6, 1 << 20)  # equal logits: the token is floor(u * V), 20 bits of u
    one_seed = sample_logits(logits, seed=2**40 + 3, offset=10, backend="cpp")
    per_row = sample_logits(logits, seed=torch.full((6,), 2**40 + 3), offset=torch.arange(6) + 10, backend="cpp")
    assert torch.equal(one_seed, per_row)
    u = seeded_uniforms(6, 2**40 + 3, 10)
    assert torch.equal(one_seed, (u * (1 << 20)).floor().long())
    assert torch.equal(sample_logits(logits, uniform=u, backend="cpp"), one_seed)
    # Seeds are taken modulo 2^64.
    assert torch.equal(sample_logits(logits, seed=-1, backend="cpp"), sample_logits(logits, seed=2**64 - 1,
                                                                                     backend="cpp"))


@pytest.mark.parametrize("seed", [0, 1, 2**33 + 7, -5])
def test_same_seed_same_token_on_every_cpu_backend(seed):
    logits = make_logits(7, 3000, torch.float32, kind="peaked", seed=11)
    for params in (dict(), dict(top_k=50, top_p=0.9), dict(top_p=0.8, temperature=0.7), dict(min_p=0.01)):
        tokens = {b: sample_logits(logits, seed=seed, backend=b, **params) for b in CPU_BACKENDS}
        assert torch.equal(tokens["reference"], tokens["cpp"]), params
        per_row = torch.arange(7) * 31 + seed
        tokens = {b: sample_logits(logits, seed=per_row, offset=5, backend=b, **params) for b in CPU_BACKENDS}
        assert torch.equal(tokens["reference"], tokens["cpp"]), params


def test_generator_draws_float64_uniforms():
    logits = torch.zeros(5, 1 << 20)
    gen = torch.Generator().manual_seed(42)
    tokens = sample_logits(logits, generator=gen, backend="cpp")
    u = torch.rand(5, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    assert torch.equal(tokens, (u * (1 << 20)).floor().long())


# ----------------------------------------------------------------------------- batch invariance


@pytest.mark.parametrize("cols", [1000, 40000, 300000])
@pytest.mark.parametrize("params", [dict(top_k=50, top_p=0.9), dict(top_p=0.9), dict(), dict(min_p=0.02)])
def test_cpp_batch_invariant(cols, params):
    # Bit-identical tokens and log-probs whatever the batch around a row and the thread
    # count; at 300000 columns a lone row runs its chunks in parallel (two threads).
    logits = make_logits(9, cols, torch.float32, kind="normal", seed=5)
    seeds = torch.arange(9) * 1000 + 1
    full, full_lp = sample_logits(logits, seed=seeds, return_logprobs=True, backend="cpp", **params)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for rows in (slice(4, 5), slice(0, 3), slice(2, 9)):
                part, part_lp = sample_logits(logits[rows], seed=seeds[rows], return_logprobs=True, backend="cpp",
                                              **params)
                assert torch.equal(part, full[rows]) and torch.equal(part_lp, full_lp[rows])
            order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
            shuffled = sample_logits(logits[order], seed=seeds[order], backend="cpp", **params)
            assert torch.equal(shuffled, full[order])
    finally:
        torch.set_num_threads(threads)
    filtered = filter_logits(logits, backend="cpp", **params)
    assert torch.equal(filter_logits(logits[3:4], backend="cpp", **params), filtered[3:4])


# ----------------------------------------------------------------------------- 53-bit tail


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_53_bit_tail(backend):
    check_tail(backend, "cpu")


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_edge_shapes_and_values(backend):
    empty = torch.zeros(0, 7)
    assert sample_logits(empty, seed=1, backend=backend).shape == (0,)
    assert filter_logits(empty, top_k=2, backend=backend).shape == (0, 7)
    one = torch.tensor([[0.3]])
    tokens, lp = sample_logits(one, top_k=1, top_p=0.1, min_p=0.5, seed=3, return_logprobs=True, backend=backend)
    assert tokens.tolist() == [0] and lp.tolist() == [0.0]
    # Greedy: the first argmax, log-prob 0; filter_logits: 0 there, -inf elsewhere.
    x = torch.tensor([[1.0, 3.0, 3.0, -math.inf], [-math.inf, -math.inf, 2.0, 2.0]])
    tokens, lp = sample_logits(x, temperature=0.0, seed=0, return_logprobs=True, backend=backend)
    assert tokens.tolist() == [1, 2] and lp.tolist() == [0.0, 0.0]
    assert filter_logits(x, temperature=0.0, backend=backend).tolist() == [
        [-math.inf, 0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 0.0, -math.inf]]
    # -inf tokens are never drawn, and huge finite logits are fine.
    x = torch.tensor([[-math.inf, 3e38, -3e38, -math.inf]])
    assert sample_logits(x, uniform=torch.tensor([0.999], dtype=torch.float64), backend=backend).tolist() == [1]
    # Mixed per-row temperatures, including greedy rows.
    x = make_logits(4, 50, torch.float32, seed=2)
    t = torch.tensor([0.0, 1.0, 0.0, 0.5])
    tokens = sample_logits(x, temperature=t, seed=9, backend=backend)
    assert tokens[0] == x[0].argmax() and tokens[2] == x[2].argmax()


def test_filter_logits_gradient():
    x = make_logits(3, 20, torch.float64, seed=4).requires_grad_()
    t = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    out = filter_logits(x, temperature=t, top_k=5, backend="cpp")
    grad = torch.randn(3, 20, dtype=torch.float64)
    (g,) = torch.autograd.grad(out, x, grad)
    kept = out.detach().isfinite()
    want = torch.where(kept, grad / t.unsqueeze(1), 0.0)
    want[1] = 0.0  # greedy row: a constant 0 at the argmax
    torch.testing.assert_close(g, want)


# ----------------------------------------------------------------------------- bad input


def _bad_cases():
    x = torch.zeros(3, 5)
    nan_row = x.clone()
    nan_row[1, 2] = math.nan
    inf_row = x.clone()
    inf_row[2, 0] = math.inf
    neg_row = x.clone()
    neg_row[0] = -math.inf
    return [
        (nan_row, {}, ValueError, r"sample_logits: `logits` row 1 contains NaN"),
        (inf_row, {}, ValueError, r"`logits` row 2 contains \+inf"),
        (neg_row, {}, ValueError, r"`logits` row 0 is all -inf"),
        (x, {"top_p": 0.0}, ValueError, r"`top_p` must be in \(0, 1\]; got 0.0"),
        (x, {"top_p": 1.5}, ValueError, r"`top_p` must be in \(0, 1\]; got 1.5"),
        (x, {"top_p": torch.tensor([0.5, 1.2, 0.9])}, ValueError, r"`top_p` must be in \(0, 1\]; got 1.2\d* at row 1"),
        (x, {"top_k": -1}, ValueError, r"`top_k` must be an integer >= 0 .*; got -1"),
        (x, {"top_k": torch.tensor([3, 2, -4])}, ValueError, r"`top_k` .*; got -4 at row 2"),
        (x, {"top_k": 2.5}, TypeError, r"`top_k` must be an integer or a \(B,\) tensor; got float"),
        (x, {"top_k": torch.tensor([1.0, 2.0, 3.0])}, TypeError, r"`top_k` must be an integer tensor"),
        (x, {"min_p": 1.0}, ValueError, r"`min_p` must be in \[0, 1\); got 1.0"),
        (x, {"min_p": -0.1}, ValueError, r"`min_p` must be in \[0, 1\); got -0.1"),
        (x, {"min_p": torch.tensor([0.0, math.nan, 0.1])}, ValueError, r"`min_p` .*; got nan at row 1"),
        (x, {"temperature": -1.0}, ValueError, r"`temperature` must be a finite number >= 0 .*; got -1.0"),
        (x, {"temperature": math.inf}, ValueError, r"`temperature` .*; got inf"),
        (x, {"temperature": torch.tensor([1.0, -0.5, 1.0])}, ValueError, r"`temperature` .*; got -0.5 at row 1"),
        (x, {"temperature": "hot"}, TypeError, r"`temperature` must be a real number or a \(B,\) tensor; got str"),
        (x, {"uniform": torch.tensor([0.1, 1.0, 0.2])}, ValueError, r"`uniform` must be in \[0, 1\); got 1.0 at row 1"),
        (x, {"uniform": torch.tensor([0.1, 0.2])}, ValueError, r"`uniform` must be a tensor of shape "
                                                               r"\(B,\) = \(3,\); got shape \(2,\)"),
        (x, {"top_p": torch.full((3, 1), 0.5)}, ValueError, r"`top_p` must be .* shape \(B,\) = \(3,\); got shape"),
        (x, {"top_p": torch.full((3,), 0.5, device="meta")}, ValueError, r"`top_p` must be on the device of `logits`"),
        (x, {"seed": 1, "uniform": torch.zeros(3)}, ValueError, r"at most one of `uniform`, `seed` and `generator`"),
        (x, {"offset": 3}, ValueError, r"`offset` is the Philox counter and needs `seed`"),
        (x, {"seed": 1.5}, TypeError, r"`seed` must be an integer or a \(B,\) integer tensor; got float"),
        (x, {"seed": torch.tensor([1.0, 2.0, 3.0])}, TypeError, r"`seed` must be an integer tensor"),
        (x, {"generator": 5}, TypeError, r"`generator` must be a torch.Generator; got int"),
        (x, {"return_logprobs": 1}, TypeError, r"`return_logprobs` must be True or False"),
        (x[0], {}, ValueError, r"`logits` must have shape \(B, V\); got shape \(5,\)"),
        (torch.zeros(3, 0), {}, ValueError, r"`logits` must have at least one column"),
        (x.long(), {}, TypeError, r"`logits` must have dtype float32, float64, float16 or bfloat16"),
        (x, {"backend": "numba"}, ValueError, r"`backend` must be one of"),
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(backend, case):
    logits, kwargs, error, match = _bad_cases()[case]
    kwargs = dict(kwargs)
    kwargs.setdefault("backend", backend)
    with pytest.raises(error, match=match):
        sample_logits(logits, **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_filter_logits(backend):
    x = torch.zeros(2, 4)
    x[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"filter_logits: `logits` row 1 contains NaN"):
        filter_logits(x, backend=backend)
    with pytest.raises(ValueError, match=r"filter_logits: `top_k` .*; got -2 at row 0"):
        filter_logits(torch.zeros(2, 4), top_k=torch.tensor([-2, 1]), backend=backend)


def test_unavailable_backend_says_why():
    if available_backends()["cuda"].available:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(BackendUnavailableError, match="cuda.*cannot run on cpu"):
        sample_logits(torch.zeros(2, 3), backend="cuda")


# ----------------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    x = make_logits(4, 30, torch.float32, seed=1)
    u = torch.rand(4, dtype=torch.float64)
    k = torch.tensor([0, 3, 5, 40])
    torch.library.opcheck(torch.ops.pyprobtf.sample_logits.default,
                          (x, None, 0.8, k, 0, None, 0.9, None, 0.0, u, None, 0, None, 0, backend, None))
    torch.library.opcheck(torch.ops.pyprobtf.sample_logits.default,
                          (x, None, 1.0, None, 5, None, 1.0, None, 0.0, None, torch.arange(4), 0, None, 2, backend, True))
    torch.library.opcheck(torch.ops.pyprobtf.filter_logits.default,
                          (x.requires_grad_(), None, 0.7, None, 4, None, 0.95, None, 0.01, backend, None))


def test_torch_compile_fullgraph():
    def step(logits, seeds, step_index):
        tokens, logprobs = sample_logits(logits, temperature=0.7, top_k=20, top_p=0.9, seed=seeds,
                                         offset=step_index, return_logprobs=True)
        return tokens, logprobs, filter_logits(logits, top_k=5)

    compiled = torch.compile(step, fullgraph=True)
    x = make_logits(3, 100, torch.float32, seed=2)
    seeds, offsets = torch.tensor([1, 2, 3]), torch.tensor([4, 4, 4])
    for got, want in zip(compiled(x, seeds, offsets), step(x, seeds, offsets)):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- Triton (interpreter on CPU)


triton_case = dict(
    rows=st.integers(0, 3),
    cols=st.sampled_from([1, 5, 33, 100]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]),
    layout=st.sampled_from(LAYOUTS),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)


@pytest.mark.triton
@settings(max_examples=TRITON_EXAMPLES)
@given(data=st.data(), **triton_case)
def test_triton_matches_reference(data, rows, cols, dtype, layout, kind, seed):
    device = triton_device()
    logits = make_logits(rows, cols, dtype, layout, kind, seed, device=device)
    params = _draw_params(data, rows, TEMPERATURES, [0, 1, 3, 50], TOP_PS, MIN_PS)
    uniform = torch.rand(rows, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    check_sample_logits("triton", device, logits, *params, uniform)


@pytest.mark.triton
def test_triton_several_chunks(monkeypatch):
    # Short chunks, so that each row spreads over several programs in every pass.
    from pyprobtf.kernels import sampling as kernels

    monkeypatch.setattr(kernels, "CHUNK", 32)
    monkeypatch.setattr(kernels, "TILE", 16)
    device = triton_device()
    logits = make_logits(2, 150, torch.float32, kind="ties", seed=3, device=device)
    uniform = torch.tensor([0.3, 0.8], dtype=torch.float64)
    for params in ((1.0, 5, 0.8, 0.0), (0.7, 0, 0.6, 0.05)):
        check_sample_logits("triton", device, logits, *clear_top_p(logits, params), uniform)


@pytest.mark.triton
def test_triton_planted_ties_seeds_and_tail():
    device = triton_device()
    check_ties("triton", device, torch.float32)
    check_tail("triton", device)
    logits = make_logits(3, 60, torch.float32, kind="peaked", seed=8, device=device)
    for seed in (5, torch.tensor([1, 2**40, -3], device=device)):
        got = sample_logits(logits, seed=seed, offset=2, top_k=10, top_p=0.9, backend="triton")
        want = sample_logits(logits.cpu(), seed=seed.cpu() if isinstance(seed, torch.Tensor) else seed, offset=2,
                             top_k=10, top_p=0.9, backend="cpp")
        assert torch.equal(got.cpu(), want)


@pytest.mark.triton
def test_triton_bad_input():
    device = triton_device()
    x = torch.zeros(3, 5, device=device)
    x[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"`logits` row 1 contains NaN"):
        sample_logits(x, seed=1, backend="triton")
    with pytest.raises(ValueError, match=r"`top_p` .*; got 1.5 at row 2"):
        filter_logits(torch.zeros(3, 5, device=device), top_p=torch.tensor([0.5, 1.0, 1.5], device=device),
                      backend="triton")
    y = torch.zeros(3, 5, device=device)
    y[0] = -math.inf
    with pytest.raises(ValueError, match=r"`logits` row 0 is all -inf"):
        sample_logits(y, seed=1, backend="triton")


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@given(data=st.data())
def test_gpu_matches_reference(backend, data):
    rows = data.draw(st.integers(0, 9))
    cols = data.draw(st.sampled_from([1, 3, 64, 1000, 5000, 40000]))
    dtype = data.draw(st.sampled_from(DTYPES))
    layout = data.draw(st.sampled_from(LAYOUTS))
    kind = data.draw(st.sampled_from(KINDS))
    seed = data.draw(st.integers(0, 2**16))
    logits = make_logits(rows, cols, dtype, layout, kind, seed, device="cuda")
    params = _draw_params(data, rows, TEMPERATURES, TOP_KS, TOP_PS, MIN_PS)
    uniform = torch.rand(rows, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    check_sample_logits(backend, "cuda", logits, *params, uniform)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_ties_tail_seeds_and_batch_invariance(backend):
    for dtype in DTYPES:
        check_ties(backend, "cuda", dtype)
    check_tail(backend, "cuda")
    logits = make_logits(9, 70000, torch.float32, kind="peaked", seed=3)
    seeds = torch.arange(9) * 17 + 3
    for params in (dict(top_k=50, top_p=0.9), dict(top_p=0.9), dict(min_p=0.05), dict()):
        want = sample_logits(logits, seed=seeds, backend="cpp", **params)
        got = sample_logits(logits.cuda(), seed=seeds.cuda(), backend=backend, **params)
        assert torch.equal(got.cpu(), want)
        part = sample_logits(logits[2:3].cuda(), seed=seeds[2:3].cuda(), backend=backend, **params)
        assert torch.equal(part.cpu(), want[2:3])


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    logits = make_logits(4, 5000, torch.float32, seed=1, device="cuda")
    seeds = torch.arange(4, device="cuda")
    offset = torch.zeros(4, dtype=torch.int64, device="cuda")
    tokens = sample_logits(logits, seed=seeds, offset=offset, top_k=20, backend="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sample_logits(logits, seed=seeds, offset=offset, top_k=20, backend="cuda")
    graph.replay()
    assert torch.equal(captured, tokens)
    offset += 1
    graph.replay()
    assert torch.equal(captured, sample_logits(logits, seed=seeds, offset=offset, top_k=20, backend="cuda"))
