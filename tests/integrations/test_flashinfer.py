"""pyprobtf.integrations.flashinfer held to FlashInfer's documented semantics.

FlashInfer does not run on CPU, so every function is checked against an
independent float64 implementation written here (quadratic, no sorting
shared with pyprobtf): the kept set of each filter and filter order, the
renormalised probabilities, and the drawn token as the inverse CDF of the
filtered distribution at the row's uniform (the sample_logits contract). Also:
per-request generators reproduce and do not depend on the batch, seeds and
offsets, log-probabilities, ``indices``, output dtypes, errors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobtf.integrations import flashinfer as fi


# ----------------------------------------------------------------------------- the float64 model


def _mass_above(p):
    """For each token, the total probability of the tokens strictly more probable."""
    return (p.unsqueeze(1) * (p.unsqueeze(1) > p.unsqueeze(2))).sum(-1)


def _top_k(p, k):
    k = torch.as_tensor(k).expand(p.shape[0]).clamp(max=p.shape[1])
    rank = (p.unsqueeze(1) > p.unsqueeze(2)).sum(-1)  # how many are strictly more probable
    return (rank < k.unsqueeze(1)) | (k.unsqueeze(1) <= 0)


def _top_p(p, q):
    q = torch.as_tensor(q, dtype=torch.float64).expand(p.shape[0]).unsqueeze(1)
    total = p.sum(1, keepdim=True)
    return (_mass_above(p) < q * total) | (q >= 1)


def _min_p(p, m):
    m = torch.as_tensor(m, dtype=torch.float64).expand(p.shape[0]).unsqueeze(1)
    return p >= m * p.max(1, keepdim=True).values


def model_kept(p, top_k=None, top_p=None, min_p=None, order="top_k_first"):
    keep = torch.ones_like(p, dtype=torch.bool)
    if top_k is not None:
        keep &= _top_k(p, top_k)
    if top_p is not None:
        keep &= _top_p(p * keep if order == "top_k_first" else p, top_p)
    if min_p is not None:
        keep &= _min_p(p, min_p)
    return keep


def model_draw(p, keep, u):
    """First token, in vocabulary order, at which the kept cumulative mass exceeds u * total."""
    mass = torch.where(keep, p, 0.0)
    cum = mass.cumsum(1)
    return (cum > u.unsqueeze(1) * cum[:, -1:]).to(torch.int8).argmax(1)


def clear_of_boundaries(p, keep, u, params):
    """Rows where no kept-set or draw decision is within float32 rounding of its threshold."""
    eps = 1e-5
    total = p.sum(1, keepdim=True)
    ok = torch.ones(p.shape[0], dtype=torch.bool)
    if params.get("top_p") is not None:
        q = torch.as_tensor(params["top_p"], dtype=torch.float64).expand(p.shape[0]).unsqueeze(1)
        base = p * _top_k(p, params["top_k"]) if params.get("top_k") is not None else p
        ok &= ((_mass_above(base) - q * base.sum(1, keepdim=True)).abs() > eps).all(1)
    if params.get("min_p") is not None:
        m = torch.as_tensor(params["min_p"], dtype=torch.float64).expand(p.shape[0]).unsqueeze(1)
        ok &= ((p - m * p.max(1, keepdim=True).values).abs() > eps * total).all(1)
    cum = torch.where(keep, p, 0.0).cumsum(1)
    ok &= ((cum - u.unsqueeze(1) * cum[:, -1:]).abs() > eps * total).all(1)
    return ok


def _generators(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _uniforms_of(seeds):
    return torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in _generators(seeds)])


# ----------------------------------------------------------------------------- sampling functions

case = st.fixed_dictionaries(
    {
        "rows": st.integers(1, 6),
        "vocab": st.integers(2, 40),
        "top_k": st.integers(1, 45),
        "top_p": st.sampled_from([0.1, 0.5, 0.8, 0.95, 1.0]),
        "min_p": st.sampled_from([0.0, 0.05, 0.3]),
        "per_row": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)

FUNCTIONS = {
    "sampling_from_probs": ({}, False),
    "sampling_from_logits": ({}, True),
    "top_k_sampling_from_probs": ({"top_k"}, False),
    "top_p_sampling_from_probs": ({"top_p"}, False),
    "min_p_sampling_from_probs": ({"min_p"}, False),
    "top_k_top_p_sampling_from_probs": ({"top_k", "top_p"}, False),
    "top_k_top_p_sampling_from_logits": ({"top_k", "top_p"}, True),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("order", ["top_k_first", "joint"])
@settings(max_examples=8)
@given(c=case)
def test_sampling_matches_model(name, order, c):
    used, from_logits = FUNCTIONS[name]
    if order == "joint" and used != {"top_k", "top_p"}:
        return
    g = torch.Generator().manual_seed(c["seed"])
    logits = torch.randn(c["rows"], c["vocab"], generator=g, dtype=torch.float64) * 2
    p = logits.softmax(1)
    params = {}
    for key in sorted(used):
        value = c[key]
        if c["per_row"]:
            dtype = torch.int32 if key == "top_k" else torch.float32
            value = torch.full((c["rows"],), value, dtype=dtype)
            value[0] = 3 if key == "top_k" else (0.6 if key == "top_p" else 0.1)
        params[key] = value
    seeds = torch.randint(0, 2**31, (c["rows"],), generator=g)
    args = [logits.float() if from_logits else p.float()]
    args += [params[k] for k in ("top_k", "top_p", "min_p") if k in params]
    kwargs = {"generator": _generators(seeds), "return_logprobs": True}
    if used == {"top_k", "top_p"}:
        kwargs["filter_apply_order"] = order
    tokens, logprobs = getattr(fi, name)(*args, **kwargs)
    assert tokens.dtype == torch.int32 and tokens.shape == (c["rows"],)
    model_params = {k: (v.double() if isinstance(v, torch.Tensor) and k != "top_k" else v) for k, v in params.items()}
    keep = model_kept(p, order=order, **model_params)
    u = _uniforms_of(seeds)
    want = model_draw(p, keep, u)
    clear = clear_of_boundaries(p, keep, u, model_params)
    assert torch.equal(tokens.long()[clear], want[clear])
    renorm = torch.where(keep, p, 0.0) / torch.where(keep, p, 0.0).sum(1, keepdim=True)
    want_lp = renorm.gather(1, want.unsqueeze(1)).squeeze(1).log()
    torch.testing.assert_close(logprobs.double()[clear], want_lp[clear], rtol=1e-5, atol=1e-5)


@settings(max_examples=15)
@given(c=case)
def test_renorm_and_mask_match_model(c):
    g = torch.Generator().manual_seed(c["seed"])
    logits = torch.randn(c["rows"], c["vocab"], generator=g, dtype=torch.float64) * 2
    p = logits.softmax(1)
    clear = clear_of_boundaries(p, torch.ones_like(p, dtype=torch.bool), torch.full((c["rows"],), 0.5),
                                {"top_p": c["top_p"]})
    got = fi.top_p_renorm_probs(p.float(), c["top_p"]).double()
    keep = model_kept(p, top_p=c["top_p"])
    want = torch.where(keep, p, 0.0) / torch.where(keep, p, 0.0).sum(1, keepdim=True)
    torch.testing.assert_close(got[clear], want[clear], rtol=1e-5, atol=1e-6)
    got_k = fi.top_k_renorm_probs(p.float(), c["top_k"]).double()
    keep_k = model_kept(p, top_k=c["top_k"])
    torch.testing.assert_close(got_k, torch.where(keep_k, p, 0.0) / torch.where(keep_k, p, 0.0).sum(1, keepdim=True),
                               rtol=1e-5, atol=1e-6)
    masked = fi.top_k_mask_logits(logits.float(), c["top_k"])
    assert torch.equal(masked > float("-inf"), keep_k)
    torch.testing.assert_close(masked[keep_k].double(), logits[keep_k], rtol=1e-6, atol=1e-6)


def test_ties_at_the_top_k_threshold_are_kept():
    probs = torch.tensor([[0.1, 0.3, 0.3, 0.3]])
    assert torch.equal(fi.top_k_mask_logits(probs.log(), 2) > float("-inf"), torch.tensor([[False, True, True, True]]))


# ----------------------------------------------------------------------------- what FlashInfer lacks


def test_per_request_generators_reproduce_and_are_batch_invariant():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 100, generator=g)
    seeds = [11, 12, 13, 14, 15]
    batch = fi.top_k_top_p_sampling_from_logits(logits, 20, 0.9, generator=_generators(seeds))
    again = fi.top_k_top_p_sampling_from_logits(logits, 20, 0.9, generator=_generators(seeds))
    assert torch.equal(batch, again)
    for row in range(5):  # each request alone gives its token in the batch
        alone = fi.top_k_top_p_sampling_from_logits(logits[row : row + 1], 20, 0.9,
                                                    generator=_generators(seeds[row : row + 1]))
        assert alone.item() == batch[row].item()
    # Advancing a request's generator gives fresh draws (not all equal over steps).
    gens = _generators(seeds)
    steps = torch.stack([fi.sampling_from_logits(logits, generator=gens) for _ in range(6)])
    assert (steps != steps[0]).any()


def test_seed_and_offset():
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    seed = torch.tensor([5, 6, 7, 8])
    a = fi.top_p_sampling_from_probs(logits.softmax(1), 0.9, seed=seed, offset=3)
    b = fi.top_p_sampling_from_probs(logits.softmax(1), 0.9, seed=seed, offset=3)
    assert torch.equal(a, b)
    # Per-row seeds: a row's token does not depend on the others.
    assert fi.top_p_sampling_from_probs(logits[2:3].softmax(1), 0.9, seed=seed[2:3], offset=3).item() == a[2].item()
    draws = torch.stack([fi.sampling_from_logits(logits, seed=seed, offset=t) for t in range(8)])
    assert (draws != draws[0]).any()


def test_indices_map_outputs_to_rows():
    p = torch.softmax(torch.randn(2, 30, generator=torch.Generator().manual_seed(2)) * 3, 1)
    indices = torch.tensor([1, 0, 1], dtype=torch.int64)
    seeds = [1, 2, 3]
    got = fi.top_k_sampling_from_probs(p, 5, indices=indices, generator=_generators(seeds))
    assert got.dtype == torch.int64
    want = fi.top_k_sampling_from_probs(p[indices], 5, generator=_generators(seeds))
    assert torch.equal(got, want.long())


def test_errors():
    with pytest.raises(ValueError, match="top_k_top_p_sampling_from_logits: `filter_apply_order` must be one of"):
        fi.top_k_top_p_sampling_from_logits(torch.randn(2, 5), 2, 0.5, filter_apply_order="top_p_first")
    with pytest.raises(ValueError, match="sampling_from_probs: `probs` must be 2-D"):
        fi.sampling_from_probs(torch.rand(5))
    with pytest.raises(ValueError, match="one generator per output row, 2; got 1"):
        fi.sampling_from_logits(torch.randn(2, 5), generator=[torch.Generator()])
    with pytest.raises(ValueError, match="top_p"):
        fi.top_p_sampling_from_probs(torch.rand(2, 5), 1.5)
