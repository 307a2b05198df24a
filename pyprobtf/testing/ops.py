"""Self-checks of pyprobtf's ops against their references, on every available backend.

The same check functions serve the test suite (tests/test_<op>.py feeds them
hypothesis-drawn cases) and ``pyprobtf check`` (which feeds them a fixed set
of cases on every backend and device of the machine it runs on: a quick way
to verify an installation, GPU included).

Each op registers a function ``cases(backend, device, dtype, small=False) ->
iterator of callables``; each callable raises ``AssertionError`` when its case
is wrong. ``small`` keeps the small shapes only: the self-check a GPU kernel
passes before ``backend="auto"`` uses it (:mod:`pyprobtf.ops._selfcheck`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from pyprobtf import reference
from pyprobtf.ops import _registry, affine_coupling, available_backends
from pyprobtf.reference.affine_coupling import SCALE_FNS, dlog_multiplier, log_multiplier
from pyprobtf.testing.checks import assert_close, tolerance
from pyprobtf.testing.strategies import make_tensor

CaseMaker = Callable[[str, str, torch.dtype], Iterator[Callable[[], None]]]
REGISTRY: dict[str, CaseMaker] = {}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def register(op: str):
    """Register ``op``'s self-check cases (a decorator)."""

    def wrap(fn: CaseMaker) -> CaseMaker:
        REGISTRY[op] = fn
        return fn

    return wrap


@dataclasses.dataclass
class CheckResult:
    op: str
    backend: str
    device: str
    dtype: str
    passed: bool
    cases: int
    seconds: float
    detail: str = ""


def run_checks(
    ops: Iterable[str] | None = None,
    devices: Iterable[str] | None = None,
    dtypes: Iterable[torch.dtype] = DTYPES,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every registered op's cases on every backend available on each device."""
    statuses = available_backends()
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for op in ops if ops is not None else sorted(REGISTRY):
        if op not in REGISTRY:
            raise ValueError(f"unknown op {op!r}; choose from {sorted(REGISTRY)}")
        for device in devices:
            for backend, status in statuses.items():
                if device not in status.devices or backend not in _registry.OPS[op].backends():
                    continue
                for dtype in dtypes:
                    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
                        continue  # Triton's interpreter has no bfloat16
                    result = _run_one(op, backend, device, dtype)
                    results.append(result)
                    if progress is not None:
                        progress(result)
    return results


def _run_one(op: str, backend: str, device: str, dtype: torch.dtype) -> CheckResult:
    start = time.perf_counter()
    count = 0
    try:
        for case in REGISTRY[op](backend, device, dtype):
            case()
            count += 1
    except Exception as exc:  # noqa: BLE001 (a self-check reports every failure, whatever raised it)
        return CheckResult(op, backend, device, str(dtype).removeprefix("torch."), False, count,
                           time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    return CheckResult(op, backend, device, str(dtype).removeprefix("torch."), True, count,
                       time.perf_counter() - start)


# ----------------------------------------------------------------------------- affine_coupling


def _affine_inputs(shape, dtype, layouts, seed, device):
    return tuple(make_tensor(shape, dtype, layout, seed=seed + i, device=device) for i, layout in enumerate(layouts))


def check_affine_coupling_forward(backend, device, dtype, shape, layouts, scale_fn, clamp, inverse, seed=0,
                                  ladj="sum"):
    """One forward case of affine_coupling against the float64 reference: y, ladj, dtypes, shapes."""
    mode = ladj
    x, t, a = _affine_inputs(shape, dtype, layouts, seed, device)
    y, ladj = affine_coupling(x, t, a, scale_fn=scale_fn, clamp=clamp, inverse=inverse, ladj=mode, backend=backend)
    x64, t64, a64 = (u.double().cpu() for u in (x, t, a))
    y64, l64 = reference.affine_coupling(x64, t64, a64, scale_fn, clamp, inverse, mode)
    s = log_multiplier(a64, scale_fn, clamp)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device and y.is_contiguous()
    assert ladj.shape == (x.shape if mode == "element" else (shape[0],))
    assert ladj.device == x.device and ladj.is_contiguous()
    assert ladj.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # Rounding errors scale with the terms that are added, not with their sum.
    terms = (x64 - t64).abs() * torch.exp(-s) if inverse else (x64 * torch.exp(s)).abs() + t64.abs()
    rtol, atol = tolerance(dtype)
    assert_close(y, y64, rtol=rtol, atol=atol, scale=terms + y64.abs(), what="y")
    rtol, atol = tolerance(ladj.dtype)
    ladj_terms = s.abs() if mode == "element" else s.abs().reshape(shape[0], math.prod(shape[1:])).sum(1)
    assert_close(ladj, l64, rtol=rtol, atol=atol, scale=ladj_terms, what="ladj")


def check_affine_coupling_backward(backend, device, dtype, shape, layouts, scale_fn, clamp, inverse, seed=0,
                                   ladj="sum", gl_layout="contiguous"):
    """One backward case: the three gradients against autograd through the float64 reference.

    With ``ladj="element"`` the log-determinant's gradient has x's shape, in ``gl_layout``.
    """
    mode = ladj
    x, t, a = _affine_inputs(shape, dtype, layouts, seed, device)
    gy = make_tensor(shape, dtype, "contiguous", seed=seed + 7, device=device)
    ladj_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    gl_shape = tuple(shape) if mode == "element" else tuple(shape[:1])
    gl = make_tensor(gl_shape, ladj_dtype, gl_layout if mode == "element" else "contiguous", seed=seed + 8,
                     device=device)
    xr, tr, ar = (u.detach().requires_grad_() for u in (x, t, a))
    y, ladj = affine_coupling(xr, tr, ar, scale_fn=scale_fn, clamp=clamp, inverse=inverse, ladj=mode,
                              backend=backend)
    grads = torch.autograd.grad((y, ladj), (xr, tr, ar), (gy, gl))

    x64, t64, a64 = (u.double().cpu().requires_grad_() for u in (x, t, a))
    y64, l64 = reference.affine_coupling(x64, t64, a64, scale_fn, clamp, inverse, mode)
    expected = torch.autograd.grad((y64, l64), (x64, t64, a64), (gy.double().cpu(), gl.double().cpu()))

    with torch.no_grad():
        s = log_multiplier(a64, scale_fn, clamp)
        e = torch.exp(-s if inverse else s)
        g = gy.double().cpu().abs()
        gl_b = gl.double().cpu().abs()
        if mode == "sum":
            gl_b = gl_b.reshape((-1,) + (1,) * (len(shape) - 1))
        xmag = (x64.abs() + t64.abs()) if inverse else x64.abs()
        ds = dlog_multiplier(a64, s, scale_fn, clamp).abs() + (1e-14 if dtype == torch.float64 else 1e-6)
        scales = (g * e, g * e if inverse else g, (g * xmag * e + gl_b) * ds)
    rtol, atol = tolerance(dtype)
    for name, got, want, scale in zip(("grad x", "grad shift", "grad scale"), grads, expected, scales):
        assert got.dtype == dtype and got.shape == x.shape
        assert_close(got, want, rtol=rtol, atol=atol, scale=scale + want.abs(), what=name)


@register("affine_coupling")
def _affine_coupling_cases(backend, device, dtype, small=False):
    small = small or (backend == "triton" and device == "cpu")  # the interpreter is slow
    shapes = [(5, 7), (1, 1), (0, 3), (3, 2, 5)] + ([] if small else [(17, 300), (2, 5000)])
    layouts = [("contiguous",) * 3, ("sliced", "transposed", "offset")]
    seed = 0
    for shape in shapes:
        for layout in layouts:
            for scale_fn in SCALE_FNS:
                for inverse in (False, True):
                    seed += 1
                    args = (backend, device, dtype, shape, layout, scale_fn, 2.0, inverse, seed)
                    yield lambda args=args: check_affine_coupling_forward(*args)
                    yield lambda args=args: check_affine_coupling_backward(*args)
                    if layout[0] != "contiguous":  # per-element log-determinants, with a strided gradient
                        yield lambda args=args: check_affine_coupling_forward(*args, ladj="element")
                        yield lambda args=args: check_affine_coupling_backward(*args, ladj="element",
                                                                               gl_layout="transposed")


# ----------------------------------------------------------------------------- lincomb

# Box-Muller in float32 on different log/cos implementations: the backends' normals agree
# up to that rounding (|eps| < 5.7: a few ulp of the radius and of the cosine).
LINCOMB_NOISE_ATOL = 2e-6
_LINCOMB_NUMBER_COEFFS = (1.0, -0.75, 2.5, -0.125)


def _lincomb_inputs(dtype, shape, n, layouts, coeff_tensors, noise, seed_kind, seed, device, ex_seed):
    coeff_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors = [make_tensor(shape, dtype, layouts[k], seed=ex_seed + k, device=device) for k in range(n)]
    batch = shape[0]
    coeffs = [make_tensor((batch,), coeff_dtype, seed=ex_seed + 10 + k, device=device) if coeff_tensors[k]
              else _LINCOMB_NUMBER_COEFFS[k] for k in range(n)]
    if noise == "none":
        noise_std = 0.0
    elif noise == "number":
        noise_std = 0.7
    else:
        noise_std = make_tensor((batch,), coeff_dtype, seed=ex_seed + 20, low=0.0, high=1.5, device=device)
    if seed_kind == "tensor":
        gen = torch.Generator().manual_seed(ex_seed)
        seed = torch.randint(-(2**62), 2**62, (batch,), generator=gen, dtype=torch.int64).to(device)
    return tensors, coeffs, noise_std, seed


def _lincomb_expected(tensors, coeffs, noise_std, seed, offset):
    """The float64 reference, the scale of the terms it adds (rounding errors scale with those), and the
    extra absolute tolerance of the noise's float32 rounding."""
    from pyprobtf.reference.lincomb import noise as reference_noise

    t64 = [t.double().cpu() for t in tensors]
    c64 = [c.double().cpu() if isinstance(c, torch.Tensor) else c for c in coeffs]
    shape = t64[0].shape
    rows = (shape[0],) + (1,) * (len(shape) - 1)

    def per_row(c):
        return c.reshape(rows) if isinstance(c, torch.Tensor) else c

    s64 = noise_std.double().cpu() if isinstance(noise_std, torch.Tensor) else noise_std
    seed_cpu = seed.cpu() if isinstance(seed, torch.Tensor) else seed
    noisy = isinstance(noise_std, torch.Tensor) or noise_std != 0
    want = reference.lincomb(t64, c64, s64, seed_cpu if noisy else None, offset)
    scale = sum((per_row(c) * t).abs() for c, t in zip(c64, t64))
    if not noisy:
        return want, scale, 0.0
    eps = reference_noise(shape, seed_cpu, offset).double()
    sigma = per_row(s64).abs() if isinstance(s64, torch.Tensor) else abs(s64)
    return want, scale + sigma * eps.abs(), sigma * LINCOMB_NOISE_ATOL


def check_lincomb(backend, device, dtype, shape, n, layouts, coeff_tensors, noise, seed_kind, seed, offset,
                  out_kind, ex_seed=0):
    """One case of lincomb against the float64 reference.

    ``n`` inputs with ``layouts``; ``coeff_tensors[k]``: per-row coefficient tensor or a number;
    ``noise``: "none", "number" or "tensor" (per-row scale); ``seed_kind``: "int" (``seed``) or
    "tensor" (per-row seeds); ``out_kind``: "new", "alias" (in place into the first input) or
    "strided" (a transposed ``out``).
    """
    from pyprobtf.ops import lincomb

    tensors, coeffs, noise_std, seed = _lincomb_inputs(dtype, shape, n, layouts, coeff_tensors, noise, seed_kind,
                                                       seed, device, ex_seed)
    want, scale, noise_atol = _lincomb_expected(tensors, coeffs, noise_std, seed, offset)
    out = None
    if out_kind == "alias":
        out = tensors[0]
    elif out_kind == "strided":
        out = make_tensor(shape, dtype, "transposed", seed=99, device=device)
    got = lincomb(tensors, coeffs, noise_std=noise_std, seed=seed, offset=offset, out=out, backend=backend)
    assert got is out if out is not None else got.is_contiguous()
    assert got.shape == tuple(shape) and got.dtype == dtype and got.device.type == torch.device(device).type
    rtol, atol = tolerance(dtype)
    assert_close(got, want, rtol=rtol, atol=atol, scale=scale + noise_atol / rtol, what=f"lincomb[{backend}]")


@register("lincomb")
def _lincomb_cases(backend, device, dtype, small=False):
    small = small or (backend == "triton" and device == "cpu")  # the interpreter is slow
    shapes = [(5, 7), (1, 1), (0, 3), (3, 2, 5), (40, 1)] + ([] if small else [(17, 300), (2, 5000)])
    layouts = [("contiguous",) * 4, ("sliced", "transposed", "offset", "contiguous")]
    seed = 0
    for shape in shapes:
        for layout in layouts:
            for n, coeff_tensors, noise, seed_kind, out_kind in [
                (1, (False,) * 4, "none", "int", "new"),
                (2, (False, True, False, False), "number", "int", "alias"),
                (3, (True, False, True, False), "tensor", "tensor", "new"),
                (4, (False, False, False, True), "number", "tensor", "strided"),
            ]:
                seed += 1
                args = (backend, device, dtype, shape, n, layout, coeff_tensors, noise, seed_kind, 2**40 + seed,
                        2**33 + seed, out_kind, seed)
                yield lambda args=args: check_lincomb(*args)


# ----------------------------------------------------------------------------- sample_logits / filter_logits

from pyprobtf.testing import sampling as _sampling  # noqa: E402

register("sample_logits")(_sampling.cases)

# ----------------------------------------------------------------------------- vq_nearest


def vq_contract_tolerance(x64: torch.Tensor, e64: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-row tolerance of vq_nearest's contract: 8 * 2^-24 * (|x|^2 + max |e|^2); 8 * 2^-24 for cosine."""
    if metric == "cosine":
        return torch.full((x64.shape[0],), 8 * 2.0**-24, dtype=torch.float64)
    emax = (e64 * e64).sum(1).max() if e64.shape[0] else torch.tensor(0.0, dtype=torch.float64)
    return 8 * 2.0**-24 * ((x64 * x64).sum(1) + emax)


def check_vq_nearest_result(x, codebook, indices, dist, metric, k, exact_gap=1e-9):
    """Assert the contract for ``(indices, dist) = vq_nearest(x, codebook, metric=metric, k=k)``.

    Against a float64 brute force, for every position i < k of every row: the
    returned code's float64 distance is within the tolerance of the i-th
    smallest, the code is the float64 one wherever both gaps around position i
    exceed the tolerance, and ``dist`` is that distance. pyprobtf's backends
    re-score in float64, so they are also held to the float64 codes wherever
    the gaps exceed ``exact_gap`` times the tolerance's scale.
    """
    n, codes = x.shape[0], codebook.shape[0]
    shape = (n,) if k == 1 else (n, k)
    assert indices.shape == shape and dist.shape == shape, (tuple(indices.shape), tuple(dist.shape), shape)
    assert indices.dtype == torch.int64 and dist.dtype == torch.float32
    assert indices.device == x.device and dist.device == x.device
    if n == 0:
        return
    x64, e64 = x.detach().double().cpu(), codebook.detach().double().cpu()
    idx, got = indices.cpu().reshape(n, k), dist.cpu().reshape(n, k).double()
    assert bool(((idx >= 0) & (idx < codes)).all()), "index out of range"
    if k > 1:
        assert bool((idx.sort(1).values.diff(1) != 0).all()), "a code returned twice in one row"
    d64 = reference.vq_distances(x64, e64, metric)
    sorted_d, sorted_idx = torch.sort(d64, dim=1, stable=True)
    tol = vq_contract_tolerance(x64, e64, metric)[:, None]
    mine = d64.gather(1, idx)
    want = sorted_d[:, :k]
    finite = want.isfinite()
    err = torch.where(finite, (mine - want).abs(), torch.zeros_like(mine))
    bad = err > tol
    assert not bad.any(), f"{int(bad.sum())} codes beyond the contract's tolerance; worst {float((err - tol).max())}"
    if k > 1:
        ordered = (mine[:, 1:] >= mine[:, :-1] - tol) | ~finite[:, 1:]
        assert bool(ordered.all()), "not ordered by distance"
    derr = (got - mine).abs()
    dbad = finite & (derr > tol + 2.0**-23 * mine.abs())
    assert not dbad.any(), f"dist off by {float(derr[dbad].max())}"
    assert torch.equal(got.isnan(), mine.isnan()), "NaN distances differ"
    padded = torch.cat([torch.full((n, 1), -math.inf, dtype=torch.float64), sorted_d,
                        torch.full((n, 1), math.inf, dtype=torch.float64)], 1)
    gap_before = padded[:, 1 : k + 1] - padded[:, :k]
    gap_after = padded[:, 2 : k + 2] - padded[:, 1 : k + 1]
    for threshold in (tol, exact_gap * (tol / (8 * 2.0**-24))):
        clear = finite & (gap_before > threshold) & (gap_after > threshold)
        assert torch.equal(idx[clear], sorted_idx[:, :k][clear]), "an index differs where the float64 gap is clear"


def check_vq_nearest(backend, device, dtype, n, codes, dim, k, metric, x_layout, e_layout, seed, precision="exact"):
    """One vq_nearest case against the float64 brute force (:func:`check_vq_nearest_result`)."""
    from pyprobtf.ops import vq_nearest

    k = min(k, codes)
    x = make_tensor((n, dim), dtype, x_layout, seed=seed, device=device)
    e = make_tensor((codes, dim), dtype, e_layout, seed=seed + 1, device=device)
    indices, dist = vq_nearest(x, e, metric=metric, k=k, precision=precision, backend=backend)
    check_vq_nearest_result(x, e, indices, dist, metric, k)


@register("vq_nearest")
def _vq_nearest_cases(backend, device, dtype, small=False):
    small = small or (backend == "triton" and device == "cpu")  # the interpreter is slow
    shapes = [(0, 5, 3), (1, 1, 1), (7, 5, 0), (9, 40, 7)] + ([] if small else [(300, 301, 64), (40, 1000, 130)])
    layouts = [("contiguous", "contiguous"), ("sliced", "transposed")]
    precisions = ("exact", "fast") if backend == "triton" else ("exact",)
    seed = 0
    for n, codes, dim in shapes:
        for x_layout, e_layout in layouts:
            for metric in ("l2", "cosine", "dot"):
                for k in (1, 3):
                    for precision in precisions:
                        seed += 1
                        args = (backend, device, dtype, n, codes, dim, k, metric, x_layout, e_layout, seed, precision)
                        yield lambda args=args: check_vq_nearest(*args)
