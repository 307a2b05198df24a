"""Self-checks of sample_logits and filter_logits against the reference evaluated in float64.

Shared by tests/test_sampling.py (hypothesis-drawn cases) and ``pyprobtf check``
(the fixed cases of :func:`cases`, registered in :mod:`pyprobtf.testing.ops`).

Backends compute in float32 (float64 for float64 logits), so a token may
legitimately differ from the float64 evaluation only within rounding of a
threshold: the checks measure, in float64, how far each case lies from every
boundary (top-p mass, min-p ratio, cumulative sums of the draw) and steer
clear of the close ones (see pyprobtf/reference/sampling.py).
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume
from hypothesis.control import currently_in_test_context

from pyprobtf import reference
from pyprobtf.ops import filter_logits, sample_logits
from pyprobtf.testing.checks import tolerance
from pyprobtf.testing.strategies import make_tensor

KINDS = ("normal", "peaked", "ties", "neginf")


# ----------------------------------------------------------------------------- inputs


def make_logits(rows, cols, dtype, layout="contiguous", kind="normal", seed=0, device="cpu"):
    """(rows, cols) logits of a given flavour, rounded to ``dtype`` and laid out as ``layout``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    if kind == "normal":
        x = x * 3
    elif kind == "peaked":  # an LLM-like head: a few tokens far above the rest
        x = x * 2
        heads = torch.randint(0, cols, (rows, 3), generator=gen)
        x.scatter_(1, heads, torch.tensor([12.0, 10.0, 9.0], dtype=torch.float64).expand(rows, 3))
    elif kind == "ties":  # many exact ties, including at the thresholds
        x = torch.round(x * 2)
    elif kind == "neginf":  # masked vocabulary: -inf entries, at least one finite value per row
        x = x * 3
        masked = torch.rand(rows, cols, generator=gen) < 0.6
        masked[:, torch.randint(0, cols, (1,), generator=gen)] = False
        x = x.masked_fill(masked, -math.inf)
    out = make_tensor((rows, cols), dtype, layout, seed=seed, device=device)
    out.copy_(x)
    return out


def row_values(choices, rows, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(choices), (rows,), generator=gen)
    return torch.tensor(choices, dtype=dtype)[picks]


def as_param(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def param_rows(value, rows, dtype=torch.float64):
    if isinstance(value, torch.Tensor):
        return value.to(dtype).cpu()
    return torch.full((rows,), value, dtype=dtype)


# ----------------------------------------------------------------------------- distance to the boundaries


def boundary_margins(logits64, temperature, top_k, top_p, min_p, uniform=None):
    """Per row, in float64: the smallest relative distance to a top-p, min-p or draw boundary."""
    rows, cols = logits64.shape
    t = param_rows(temperature, rows)
    k = param_rows(top_k, rows, torch.int64)
    p = param_rows(top_p, rows)
    mp = param_rows(min_p, rows)
    keep, scaled, greedy = reference.sampling.kept_set(logits64, t, k, p, mp)
    margins = torch.full((rows,), math.inf, dtype=torch.float64)
    for b in range(rows):
        if greedy[b]:
            continue
        x = logits64[b]
        e = torch.exp(scaled[b])
        in_k = torch.ones(cols, dtype=torch.bool)
        if 0 < k[b] < cols:
            in_k = x >= torch.sort(x, descending=True).values[k[b] - 1]
        if p[b] < 1:
            # The mass of K strictly above each distinct value of K, against top_p * sum_K.
            values, order = torch.sort(x[in_k], descending=True)
            mass = e[in_k][order]
            before = torch.cumsum(mass, 0) - mass
            starts = torch.ones_like(values, dtype=torch.bool)
            starts[1:] = values[1:] != values[:-1]
            total = mass.sum()
            margins[b] = min(margins[b], ((before[starts] - p[b] * total).abs() / total).min())
        if mp[b] > 0:
            margins[b] = min(margins[b], (e / mp[b] - 1).abs().min())
        if uniform is not None:
            cdf = torch.cumsum(torch.where(keep[b], e, 0.0), 0)
            cdf = cdf / cdf[-1]
            margins[b] = min(margins[b], (cdf[keep[b]] - uniform[b]).abs().min())
    return margins


def steer_uniforms(logits64, params, uniform, tol):
    """Move any uniform within ``tol`` of a cumulative boundary to the middle of the widest kept interval."""
    keep, scaled, greedy = reference.sampling.kept_set(logits64, *params)
    uniform = uniform.clone()
    for b in range(logits64.shape[0]):
        if greedy[b]:
            continue
        mass = torch.where(keep[b], torch.exp(scaled[b]), 0.0)
        cdf = torch.cumsum(mass, 0) / mass.sum()
        if (cdf[keep[b]] - uniform[b]).abs().min() < tol:
            widest = int(torch.argmax(mass))
            lower = cdf[widest - 1] if widest > 0 else torch.tensor(0.0, dtype=torch.float64)
            uniform[b] = (lower + cdf[widest]) / 2
    return uniform


def margin_tol(dtype):
    # float32 computation: exp is good to an ulp or two and T is rounded to float32,
    # which shifts every scaled logit d by |d| * 6e-8 (|d| up to ~30 matters): 1e-5 is
    # several times the largest change that can cause in a normalised mass.
    return 1e-9 if dtype == torch.float64 else 1e-5


def clear_top_p(logits, params, choices=(0.9, 0.85, 0.8, 0.75, 0.7, 0.95, 0.6, 0.5)):
    """``params`` with the first top_p of ``choices`` (and, if need be, a min_p nearby) clear of every
    top-p and min-p boundary."""
    logits64 = logits.double().cpu()
    t, k, p, mp = params
    min_ps = [mp] if isinstance(mp, torch.Tensor) or mp == 0 else [mp, mp * 1.1, mp * 0.9, mp * 1.3]
    for candidate in ([p] if isinstance(p, torch.Tensor) or p == 1.0 else choices):
        for m in min_ps:
            if bool((boundary_margins(logits64, t, k, candidate, m) > margin_tol(logits.dtype)).all()):
                return (t, k, candidate, m)
    raise AssertionError("no top_p / min_p clear of the boundaries; change the test data")


# ----------------------------------------------------------------------------- the main check


def check_sample_logits(backend, device, logits, temperature, top_k, top_p, min_p, uniform):
    """Tokens, log-probs and kept sets of ``backend`` against the reference evaluated in float64."""
    rows, cols = logits.shape
    logits64 = logits.double().cpu()
    params64 = (param_rows(temperature, rows), param_rows(top_k, rows, torch.int64), param_rows(top_p, rows),
                param_rows(min_p, rows))
    tol = margin_tol(logits.dtype)
    uniform = steer_uniforms(logits64, params64, uniform, tol)
    clear = bool((boundary_margins(logits64, *params64) > tol).all())
    if currently_in_test_context():
        assume(clear)  # hypothesis draws another case
    else:
        assert clear, "the test data lie within rounding of a top-p or min-p boundary; change them"

    kwargs = dict(temperature=as_param(temperature, device), top_k=as_param(top_k, device),
                  top_p=as_param(top_p, device), min_p=as_param(min_p, device))
    tokens, logprobs = sample_logits(logits, uniform=uniform.to(device), return_logprobs=True, backend=backend,
                                     **kwargs)
    want_tokens, want_logprobs = reference.sample_logits(logits64, uniform, *params64)
    assert tokens.dtype == torch.int64 and tokens.shape == (rows,) and tokens.device == logits.device
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert logprobs.dtype == compute and logprobs.shape == (rows,)
    assert torch.equal(tokens.cpu(), want_tokens), (tokens, want_tokens)
    lp_tol = 1e-10 if compute == torch.float64 else 2e-5
    torch.testing.assert_close(logprobs.cpu().double(), want_logprobs, rtol=lp_tol, atol=lp_tol)

    filtered = filter_logits(logits, backend=backend, **kwargs)
    want = reference.filter_logits(logits64, *params64)
    assert filtered.dtype == logits.dtype and filtered.shape == logits.shape and filtered.is_contiguous()
    kept = filtered.cpu().double() > -math.inf
    assert torch.equal(kept, want > -math.inf), "kept sets differ"
    rtol, atol = tolerance(logits.dtype)
    torch.testing.assert_close(filtered.cpu().double()[kept], want[kept].to(logits.dtype).double(),
                               rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- planted ties and the tail


def tie_cases():
    """(logits row, params, the kept columns): ties at the top-k and the top-p thresholds."""
    e1, e2 = math.e, math.e**2
    total = e2 + 3 * e1 + 1 + math.exp(-1)
    return [
        ([5, 4, 3, 3, 3, 2, 1, 3, 0], dict(top_k=3), [0, 1, 2, 3, 4, 7]),  # three-way tie at the 3rd value
        ([5, 4, 3, 3, 3, 2, 1, 3, 0], dict(top_k=4), [0, 1, 2, 3, 4, 7]),
        ([5, 4, 3, 3, 3, 2, 1, 3, 0], dict(top_k=2), [0, 1]),
        ([3, 3, 3, 3], dict(top_k=1), [0, 1, 2, 3]),  # everything tied
        ([1, -0.0, 0.0, 0.0, -1], dict(top_k=2), [0, 1, 2, 3]),  # -0.0 and +0.0 are the same logit
        # top-p: the cut falls inside the group of 1s, so all three are kept.
        ([2, 1, 0, 1, -1, 1], dict(top_p=(e2 + 0.5 * e1) / total), [0, 1, 3, 5]),
        ([2, 1, 0, 1, -1, 1], dict(top_p=(e2 + 2.5 * e1) / total), [0, 1, 3, 5]),
        ([2, 1, 0, 1, -1, 1], dict(top_p=0.9 * e2 / total), [0]),
        ([2, 1, 0, 1, -1, 1], dict(top_p=(e2 + 3 * e1 + 0.5) / total), [0, 1, 2, 3, 5]),
        # top-p over the top-k survivors: K = {2, 1, 1, 1}, the cut inside the 1s again.
        ([2, 1, 0, 1, -1, 1], dict(top_k=2, top_p=(e2 + 0.5 * e1) / (e2 + 3 * e1)), [0, 1, 3, 5]),
        # min-p with ties: pi_i >= 0.3 * max pi keeps the 1s (ratio e^-1 = 0.37) and not the 0.
        ([2, 1, 0, 1, -1, 1], dict(min_p=0.3), [0, 1, 3, 5]),
        ([7, 7, -math.inf, 7], dict(top_k=2, top_p=0.5), [0, 1, 3]),
    ]


def check_ties(backend, device, dtype):
    for row, params, kept in tie_cases():
        logits = torch.tensor([row], dtype=dtype, device=device).repeat(2, 1)
        filtered = filter_logits(logits, backend=backend, **params)
        got = (filtered[0] > -math.inf).nonzero().flatten().tolist()
        assert got == kept, (row, params, got)
        assert torch.equal(filtered[0], filtered[1])
        # The draw only ever lands in the kept set, and at its first member for u = 0.
        tokens = sample_logits(logits, uniform=torch.tensor([0.0, 1 - 2**-53], device=device, dtype=torch.float64),
                               backend=backend, **params)
        assert tokens[0].item() == kept[0] and tokens[1].item() == kept[-1], (row, params, tokens)


def check_tail(backend, device):
    # Token 500 of 1000 has probability 1e-12: only a 53-bit uniform in its 1e-12-wide interval reaches it.
    cols, tail = 1000, 500
    x = torch.zeros(1, cols, dtype=torch.float64)
    x[0, tail] = math.log(1e-12 * (cols - 1))
    probs = torch.softmax(x[0], 0)
    assert abs(probs[tail] / 1e-12 - 1) < 1e-3
    before = probs[:tail].sum()
    for dtype in (torch.float32, torch.float64):
        logits = x.to(dtype).to(device).repeat(3, 1)
        u = torch.tensor([before + 0.5e-12, before - 0.5e-12, before + 1.5e-12], dtype=torch.float64)
        tokens = sample_logits(logits, uniform=u.to(device), backend=backend)
        assert tokens.tolist() == [tail, tail - 1, tail + 1], dtype
    # The last token: u within 1e-12 of 1.
    x = torch.tensor([[0.0, math.log(1e-12)]]).repeat(2, 1).to(device)
    u = torch.tensor([1 - 0.5e-12, 1 - 2e-12], dtype=torch.float64, device=device)
    assert sample_logits(x, uniform=u, backend=backend).tolist() == [1, 0]



# ----------------------------------------------------------------------------- pyprobtf check


def cases(backend, device, dtype, small=False):
    """Fixed cases for ``pyprobtf check``: shapes, layouts, parameter sets, ties and the 53-bit tail."""
    small = small or (backend == "triton" and device == "cpu")  # the interpreter is slow
    shapes = [(3, 7), (1, 1), (0, 5), (4, 300)] + ([] if small else [(2, 5000), (1, 40000)])
    param_sets = [(1.0, 0, 1.0, 0.0), (0.7, 50, 0.9, 0.0), (1.3, 0, 0.8, 0.05), (0.0, 0, 1.0, 0.0),
                  (torch.tensor([0.0, 0.5, 1.0, 2.0]), torch.tensor([0, 1, 5, 40]), 1.0, 0.02)]
    seed = 0
    for shape in shapes:
        for layout in ("contiguous", "transposed"):
            for params in param_sets:
                seed += 1
                if isinstance(params[0], torch.Tensor):  # per-row parameters: as many as rows
                    params = tuple(p[torch.arange(shape[0]) % 4] if isinstance(p, torch.Tensor) else p
                                   for p in params)
                args = (backend, device, dtype, shape, layout, KINDS[seed % len(KINDS)], params, seed)
                yield lambda args=args: _fixed_case(*args)
    yield lambda: check_ties(backend, device, dtype)
    if dtype in (torch.float32, torch.float64):
        yield lambda: check_tail(backend, device)


def _fixed_case(backend, device, dtype, shape, layout, kind, params, seed):
    logits = make_logits(*shape, dtype, layout, kind, seed, device=device)
    uniform = torch.rand(shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    params = tuple(p.to(device) if isinstance(p, torch.Tensor) else p for p in params)
    check_sample_logits(backend, device, logits, *clear_top_p(logits, params), uniform)
