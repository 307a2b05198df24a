"""Fuzz suite: every public op and the `pyprobtf zoo` flags fed values at and past their edges.

Each case is drawn by hypothesis (bounded and derandomized by the conftest profile)
from NaN, inf, values that overflow float32, empty and huge sizes, wrong types,
wrong devices and aliased outputs, and must end in the outcome docs/RELIABILITY.md
promises:

- a clear error: TypeError or ValueError (nothing else: no OverflowError,
  RuntimeError or pybind message), starting with the op's name and naming one of
  its arguments in backquotes;
- or a result, the same on the reference and cpp backends: the same error for
  the same input, equal results where the contract makes them equal (NaN
  propagating alike), and within the contract's rounding allowance elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re

import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from pyprobtf import reference
from pyprobtf.ops import affine_coupling, filter_logits, lincomb, sample_logits, vq_nearest
from pyprobtf.reference.vq_nearest import needs_overflow_rule
from pyprobtf.testing.ops import check_vq_nearest_result
from pyprobtf.testing.sampling import boundary_margins, margin_tol

BACKENDS = ("reference", "cpp")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Values at and past the edges: NaN, infinities, float32's limit and beyond, subnormals.
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-40, 3.4028234663852886e38, 1e38, -1e38, 1e39, -1e39,
               math.inf, -math.inf, math.nan]
EDGE_INTS = [0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**100]
WRONG_TYPES = ["3", None, True, [1.0], 1j]

edge_float = st.sampled_from(EDGE_FLOATS)
# Mostly numbers an op takes (so that results get compared), sometimes ints past a float and wrong types.
edge_number = st.one_of(edge_float, edge_float, edge_float, st.sampled_from(EDGE_INTS + [10**400]),
                        st.sampled_from(WRONG_TYPES))
FUZZ = settings(max_examples=int(os.environ.get("PYPROBTF_FUZZ_EXAMPLES", "120")))


def outcome(call):
    """("ok", result) or ("error", type name, message); any other exception fails the test."""
    try:
        return ("ok", call())
    except (TypeError, ValueError) as exc:
        return ("error", type(exc).__name__, str(exc))


def assert_clear_error(result, op: str, names: tuple[str, ...]) -> None:
    """An error message of ``op`` that names one of ``names`` (``tensors[1]`` counts as ``tensors``)."""
    _, kind, message = result
    assert message.startswith(f"{op}: "), message
    named = {re.sub(r"\[\d+\]$", "", m) for m in re.findall(r"`([^`]+)`", message)}
    assert named & set(names), f"{kind} names no argument of {op}: {message}"


def same_outcome(results, compare) -> None:
    """Every backend fails alike, or every backend succeeds and ``compare(first, other)`` holds."""
    first = results[0]
    event(first[0])  # --hypothesis-show-statistics: how many cases reach a result
    for other in results[1:]:
        assert first[0] == other[0], (first[:2], other[:2])
        if first[0] == "error":
            assert first[1:] == other[1:]
        else:
            compare(first[1], other[1])


def _tensor(draw, shape, dtype, values=EDGE_FLOATS):
    flat = draw(st.lists(st.sampled_from(values), min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(flat, dtype=torch.float64).reshape(shape).to(dtype)


def _close(a, b, dtype):
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


# ----------------------------------------------------------------------------- lincomb

LINCOMB_ARGS = ("tensors", "coeffs", "noise_std", "seed", "offset", "out", "backend")


@st.composite
def lincomb_cases(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    shape = draw(st.sampled_from([(2, 3), (1, 1), (3,), (0, 4), (2, 0)]))
    n = draw(st.integers(1, 3))
    tensors = [_tensor(draw, shape, dtype) for _ in range(n)]
    rows = shape[0]

    def per_row_or_number():
        kind = draw(st.sampled_from(["number", "number", "number", "rows", "rows", "bad-rows"]))
        if kind == "number":
            return draw(edge_number)
        if kind == "rows":
            return _tensor(draw, (rows,), draw(st.sampled_from([dtype, torch.float64])))
        return draw(st.sampled_from([torch.ones(rows + 1), torch.ones(rows, dtype=torch.int64),
                                     torch.ones(rows, device="meta")]))

    coeffs = [per_row_or_number() for _ in range(n)]
    if draw(st.integers(0, 5)) == 0:
        coeffs = coeffs[:-1] or coeffs + [1.0]  # one coefficient too few or too many
        assume(len(coeffs) != n)
    noise = draw(st.sampled_from(["none", "number", "rows"]))
    noise_std = 0.0 if noise == "none" else per_row_or_number() if noise == "rows" else draw(edge_number)
    seed = draw(st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_INTS), st.sampled_from([1.5, "7", True]),
                          st.sampled_from([torch.arange(rows), torch.arange(rows, dtype=torch.uint8),
                                           torch.arange(rows, dtype=torch.int32).neg(),
                                           torch.arange(rows).to(torch.uint32), torch.arange(rows).double()])))
    offset = draw(st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_INTS), st.sampled_from([1.0, None])))
    out_kind = draw(st.sampled_from(["none"] * 4 + ["fresh", "alias", "alias", "overlap", "expanded", "wrong-dtype"]))
    return dict(tensors=tensors, coeffs=coeffs, noise_std=noise_std, seed=seed, offset=offset), out_kind


def _overlappable(t) -> bool:
    return t.dim() >= 2 and t.shape[0] > 1 and t.shape[1] > 1  # strides (1, 1) then share elements


def _make_out(kind, tensors):
    first = tensors[0]
    if kind == "none":
        return None
    if kind == "fresh":
        return torch.full_like(first, 7.0)
    if kind == "alias":
        return first  # in place: element by element, allowed
    if kind == "overlap" and _overlappable(first):
        return torch.zeros(first.numel(), dtype=first.dtype).as_strided(first.shape, (1,) * first.dim())
    if kind == "expanded" and first.dim() == 2 and first.shape[1] > 1:
        return torch.zeros(first.shape[0], 1, dtype=first.dtype).expand(first.shape)
    return torch.zeros(first.shape, dtype=torch.float64 if first.dtype != torch.float64 else torch.float32)


@given(case=lincomb_cases())
@FUZZ
def test_lincomb(case):
    kwargs, out_kind = case
    results = []
    for backend in BACKENDS:
        tensors = [t.clone() for t in kwargs["tensors"]]
        out = _make_out(out_kind, tensors)
        args = dict(kwargs, tensors=tensors, out=out)
        results.append(outcome(lambda: lincomb(backend=backend, **args).clone()))
    for r in results:
        if r[0] == "error":
            assert_clear_error(r, "lincomb", LINCOMB_ARGS)
    # The noise is float32 on every backend (its Box-Muller rounding differs by an ulp): float32 tolerance.
    noisy = isinstance(kwargs["noise_std"], torch.Tensor) or kwargs["noise_std"] != 0
    same_outcome(results, lambda a, b: _close(a, b, torch.float32 if noisy else a.dtype))
    if out_kind == "overlap" and _overlappable(kwargs["tensors"][0]):
        assert results[0][0] == "error"  # an output with shared elements is never written


# ----------------------------------------------------------------------------- vq_nearest

VQ_ARGS = ("x", "codebook", "metric", "k", "precision", "backend")


@st.composite
def vq_cases(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    n, codes, dim = draw(st.sampled_from([0, 1, 3])), draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 4]))
    x = _tensor(draw, (n, dim), dtype)
    codebook = _tensor(draw, (codes, dim), dtype)
    bad = draw(st.sampled_from(["none"] * 15 + ["dtype", "device", "dim", "empty", "1d"]))
    if bad == "dtype":
        codebook = codebook.double() if dtype != torch.float64 else codebook.float()
    elif bad == "device":
        codebook = codebook.to("meta")
    elif bad == "dim":
        codebook = torch.zeros(codes, dim + 1, dtype=dtype)
    elif bad == "empty":
        codebook = torch.zeros(0, dim, dtype=dtype)
    elif bad == "1d":
        x = x.reshape(-1)
    metric = draw(st.sampled_from(["l2", "cosine", "dot"] * 3 + ["L2", None]))
    k = draw(st.sampled_from([1, codes] * 4 + [0, codes + 1, -1, 2**64, True, 1.0]))
    precision = draw(st.sampled_from(["exact", "fast"] * 3 + ["bogus"]))
    return x, codebook, dict(metric=metric, k=k, precision=precision)


@given(case=vq_cases())
@FUZZ
def test_vq_nearest(case):
    x, codebook, kwargs = case
    results = [outcome(lambda: vq_nearest(x, codebook, backend=b, **kwargs)) for b in BACKENDS]
    for r in results:
        if r[0] == "error":
            assert_clear_error(r, "vq_nearest", VQ_ARGS)
    if results[0][0] == "ok" and not needs_overflow_rule(x, codebook):
        # Finite and far from overflow: each backend meets the contract (codes equal up to its tolerance).
        d64 = reference.vq_distances(x, codebook, kwargs["metric"])
        for r in results:
            indices, dist = r[1]
            own = d64.gather(1, indices.reshape(x.shape[0], kwargs["k"])).reshape(dist.shape)
            # dist is the float64 distance rounded to float32 (inf past float32's range, 0 below it) ...
            torch.testing.assert_close(dist, own.float(), rtol=0, atol=0, equal_nan=True)
            # ... and the codes meet the contract (check_vq_nearest_result also checks dist, with a relative
            # tolerance that cannot see float32's range: where dist over- or underflows, check the codes alone).
            if bool(((own.float() == 0) & (own != 0)).any() | (own.float().isinf() & own.isfinite()).any()):
                order = torch.sort(d64, dim=1, stable=True).indices[:, : kwargs["k"]].reshape(indices.shape)
                assert torch.equal(indices, order)
            else:
                check_vq_nearest_result(x, codebook, indices, dist, kwargs["metric"], kwargs["k"])
        assert results[0][0] == results[1][0]
        return

    def identical(a, b):  # NaN, inf or overflow: one rule, answered alike
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0, equal_nan=True)

    same_outcome(results, identical)


# ----------------------------------------------------------------------------- sample_logits, filter_logits

SAMPLING_ARGS = ("logits", "temperature", "top_k", "top_p", "min_p", "uniform", "seed", "offset", "generator",
                 "return_logprobs", "backend")
LOGIT_VALUES = [0.0, 1.0, -1.0, 2.5, -0.0, 1e38, -1e38, 3.4028234663852886e38, -math.inf, -math.inf, math.inf,
                math.nan]
PARAM_VALUES = {
    "temperature": [1.0, 0.0, 0.7, 1e-45, 1e-30, 1e38, 3.4028234663852886e38, 3.5e38, 1e39, -1.0, math.inf,
                    math.nan, 10**400],
    "top_k": [0, 1, 2, 5, 2**63 - 1, 2**63, 2**100, -1, 1.5, True],
    "top_p": [1.0, 0.5, 0.9, 1e-300, 0.0, 1.5, -0.1, math.nan],
    "min_p": [0.0, 0.1, 0.5, 0.999, 1.0, -0.1, math.nan],
}


@st.composite
def sampling_cases(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    rows, cols = draw(st.sampled_from([0, 1, 3])), draw(st.sampled_from([1, 5, 0]))
    logits = _tensor(draw, (rows, cols), dtype, LOGIT_VALUES)
    if draw(st.booleans()):  # mostly well-formed rows, so the comparison below has something to compare
        logits = torch.randn(rows, cols, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
        logits = logits.to(dtype)
    kwargs = {}
    for name, values in PARAM_VALUES.items():
        kind = draw(st.sampled_from(["default", "default", "default", "number", "rows", "wrong"]))
        if kind == "number":
            kwargs[name] = draw(st.sampled_from(values))
        elif kind == "rows":
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and abs(v) < 2**62 or (isinstance(v, float) and not math.isfinite(v))]
            row_values = draw(st.lists(st.sampled_from(numbers), min_size=rows, max_size=rows))
            kwargs[name] = torch.tensor(row_values, dtype=torch.int64 if name == "top_k" else torch.float64)
        elif kind == "wrong":
            kwargs[name] = draw(st.sampled_from([torch.ones(rows + 1), "1", None, torch.ones(rows, device="meta")]))
    source = draw(st.sampled_from(["seed", "seed", "uniform", "none", "none"]))
    if source == "seed":
        kwargs["seed"] = draw(st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(
            [torch.arange(rows), torch.arange(rows).to(torch.uint32), torch.arange(rows).double(), 1.5])))
        kwargs["offset"] = draw(st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from([torch.arange(rows), 0.5])))
    elif source == "uniform":
        kwargs["uniform"] = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.3, 0.999, 1.0, -0.1, math.nan]),
                                                       min_size=rows, max_size=rows)), dtype=torch.float64)
    else:
        kwargs["seed"] = 5
    return logits, kwargs


def _compare_sampling(logits, kwargs):
    """tokens equal unless a row lies within rounding of a top-p / min-p / draw boundary (the contract)."""
    def compare(a, b):
        tokens_a, logprobs_a = a
        tokens_b, logprobs_b = b
        differ = tokens_a != tokens_b
        if bool(differ.any()):
            params = [kwargs.get(n, d) for n, d in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0),
                                                     ("min_p", 0.0))]
            margins = boundary_margins(logits.double(), *params)
            assert bool((margins[differ] <= 10 * margin_tol(logits.dtype)).all()), (tokens_a, tokens_b)
        same = ~differ
        _close(logprobs_a[same].double(), logprobs_b[same].double(), logits.dtype)
    return compare


@given(case=sampling_cases())
@FUZZ
def test_sample_logits(case):
    logits, kwargs = case
    results = [outcome(lambda: sample_logits(logits, backend=b, return_logprobs=True, **kwargs)) for b in BACKENDS]
    for r in results:
        if r[0] == "error":
            assert_clear_error(r, "sample_logits", SAMPLING_ARGS)
    same_outcome(results, _compare_sampling(logits, kwargs))


@given(case=sampling_cases())
@FUZZ
def test_filter_logits(case):
    logits, kwargs = case
    for name in ("seed", "offset", "uniform"):
        kwargs.pop(name, None)
    results = [outcome(lambda: filter_logits(logits, backend=b, **kwargs)) for b in BACKENDS]
    for r in results:
        if r[0] == "error":
            assert_clear_error(r, "filter_logits", SAMPLING_ARGS)

    def compare(a, b):
        differ = (a > -math.inf) != (b > -math.inf)
        if bool(differ.any()):
            params = [kwargs.get(n, d) for n, d in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0),
                                                     ("min_p", 0.0))]
            margins = boundary_margins(logits.double(), *params)
            assert bool((margins[differ.any(1)] <= 10 * margin_tol(logits.dtype)).all())
        else:
            _close(a.double(), b.double(), logits.dtype)

    same_outcome(results, compare)


# ----------------------------------------------------------------------------- affine_coupling

COUPLING_ARGS = ("x", "shift", "scale", "scale_fn", "clamp", "inverse", "backend")


@st.composite
def coupling_cases(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    shape = draw(st.sampled_from([(2, 3), (1, 1), (0, 3), (2, 0), (3, 2, 2)]))
    x, shift, scale = (_tensor(draw, shape, dtype) for _ in range(3))
    bad = draw(st.sampled_from(["none"] * 12 + ["shape", "dtype", "device", "scalar"]))
    if bad == "shape":
        shift = torch.zeros(shape[0] + 1, *shape[1:], dtype=dtype)
    elif bad == "dtype":
        scale = scale.double() if dtype != torch.float64 else scale.float()
    elif bad == "device":
        shift = shift.to("meta")
    elif bad == "scalar":
        x = torch.tensor(1.0, dtype=dtype)
    kwargs = dict(scale_fn=draw(st.sampled_from(["exp", "softclamp", "sigmoid"] * 2 + ["tanh"])),
                  clamp=draw(st.sampled_from([2.0, 0.5, 1e39] * 3 + [0.0, -1.0, math.inf, math.nan, "2"])),
                  inverse=draw(st.sampled_from([False, True] * 3 + [1])))
    return x, shift, scale, kwargs


@given(case=coupling_cases())
@FUZZ
def test_affine_coupling(case):
    x, shift, scale, kwargs = case
    results = [outcome(lambda: affine_coupling(x, shift, scale, backend=b, **kwargs)) for b in BACKENDS]
    for r in results:
        if r[0] == "error":
            assert_clear_error(r, "affine_coupling", COUPLING_ARGS)

    def compare(a, b):
        for u, v in zip(a, b):
            _close(u.double(), v.double(), x.dtype)

    same_outcome(results, compare)


# ----------------------------------------------------------------------------- pyprobtf zoo flags

FLAG_VALUES = {
    "--seconds": ["nan", "inf", "-inf", "0", "-1", "1e309", "x", "", "0.5", "1e-300"],
    "--seed": ["0", "-1", str(2**64 - 1), str(2**64), str(-(2**63) - 1), "99999999999999999999999", "1.5", "x"],
    "--steps": ["1", "0", "-3", "inf", "1e3", str(10**30), "x"],
    "--families": [",", " , ", "", "vae", "vae,,gan", "vae,vae", "nope", "VAE"],
    "--dataset": ["moons", "nope", ""],
}


class _Ran(Exception):
    """Raised by the stand-in for the zoo run: the flags were accepted."""


@given(flags=st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(None), min_size=1, max_size=3)
       .flatmap(lambda d: st.fixed_dictionaries({k: st.sampled_from(FLAG_VALUES[k]) for k in d})))
def test_zoo_flags(flags, tmp_path_factory):
    from pyprobtf import cli, zoo

    def stand_in(*args, **kwargs):
        raise _Ran

    argv = ["zoo", "--out", str(tmp_path_factory.getbasetemp() / "zoo"), "--quiet"]
    for name, value in flags.items():
        argv.append(f"{name}={value}")
    err = io.StringIO()
    original = zoo.run_zoo
    zoo.run_zoo = stand_in
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = cli.main(argv)
            except SystemExit as exc:  # argparse: a value that does not parse
                status = exc.code
            except _Ran:
                status = "ran"
    finally:
        zoo.run_zoo = original
    if status == "ran":
        seconds = float(flags.get("--seconds", "12"))
        assert math.isfinite(seconds) and seconds > 0
        assert flags.get("--families", "vae") .replace(",", "").strip()
        assert -(2**63) <= int(flags.get("--seed", "0")) < 2**64
        return
    assert status == 2, (argv, status, err.getvalue())
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyprobtf zoo: error: ") and "Traceback" not in err.getvalue()


# ----------------------------------------------------------------------------- wrong devices

@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_are_refused_or_shaped(backend):
    """Tensors on another device than the first argument's: a ValueError naming the argument, on every op."""
    x = torch.randn(2, 3)
    checks = [
        (lambda: lincomb([x, x.to("meta")], [1.0, 1.0], backend=backend), "lincomb", "tensors[1]"),
        (lambda: vq_nearest(x, x.to("meta"), backend=backend), "vq_nearest", "codebook"),
        (lambda: sample_logits(x, temperature=torch.ones(2, device="meta"), backend=backend), "sample_logits",
         "temperature"),
        (lambda: affine_coupling(x, x.to("meta"), x, backend=backend), "affine_coupling", "shift"),
    ]
    for call, op, name in checks:
        result = outcome(call)
        assert result[0] == "error", (op, result)
        assert_clear_error(result, op, (name.split("[")[0],))
        assert f"`{name}`" in result[2]


def test_reference_module_is_the_spec_here():
    # The suite compares backends with the reference; make sure that is the module under test.
    assert reference.sample_logits.__module__ == "pyprobtf.reference.sampling"
