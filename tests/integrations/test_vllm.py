"""pyprobtf.integrations.vllm's TopKTopPSampler held to vLLM's sampler semantics.

vLLM is not installed in CI; the check is an independent float64
implementation of vLLM's filtering (top-k, then top-p on the renormalised
survivors, ties kept) and the inverse-CDF draw at the uniform taken from each
request's generator. Per-request generators reproduce; a request's token does
not depend on the batch; processed logits/logprobs modes.
"""

from __future__ import annotations

import pytest
import torch

from pyprobtf.integrations.vllm import TopKTopPSampler


def model_kept(p, k, q):
    rank = (p.unsqueeze(1) > p.unsqueeze(2)).sum(-1)
    keep = torch.ones_like(p, dtype=torch.bool) if k is None else rank < k.unsqueeze(1)
    if q is not None:
        base = p * keep
        above = (base.unsqueeze(1) * (base.unsqueeze(1) > base.unsqueeze(2))).sum(-1)
        keep &= (above < q.double().unsqueeze(1) * base.sum(1, keepdim=True)) | (q >= 1).unsqueeze(1)
    return keep


@pytest.mark.parametrize("with_k,with_p", [(True, True), (True, False), (False, True), (False, False)])
def test_sampler_matches_model(with_k, with_p):
    g = torch.Generator().manual_seed(0)
    rows, vocab = 6, 50
    logits = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2
    k = torch.tensor([1, 5, 10, 50, 3, 20]) if with_k else None
    p = torch.tensor([0.5, 0.9, 0.7, 1.0, 0.3, 0.95]) if with_p else None
    seeds = [101, 102, 103, 104, 105, 106]
    generators = {i: torch.Generator().manual_seed(s) for i, s in enumerate(seeds)}
    tokens, processed = TopKTopPSampler("processed_logprobs")(logits.float(), generators, k, p)
    probs = logits.softmax(1)
    keep = model_kept(probs, k, p)
    u = torch.cat([torch.rand(1, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in seeds])
    cum = torch.where(keep, probs, 0.0).cumsum(1)
    want = (cum > u.unsqueeze(1) * cum[:, -1:]).to(torch.int8).argmax(1)
    assert torch.equal(tokens, want)
    renorm = torch.where(keep, probs, 0.0) / cum[:, -1:]
    assert torch.equal(processed > float("-inf"), keep)
    torch.testing.assert_close(processed.double()[keep], renorm[keep].log(), rtol=1e-5, atol=1e-5)


def test_generators_reproduce_and_rows_are_independent():
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(1))
    k, p = torch.tensor([20, 20, 20, 20]), torch.tensor([0.9, 0.9, 0.9, 0.9])
    sampler = TopKTopPSampler()
    gens = lambda: {0: torch.Generator().manual_seed(7), 2: torch.Generator().manual_seed(8)}  # noqa: E731
    a, processed = sampler(logits, gens(), k, p)
    b, _ = sampler(logits, gens(), k, p)
    assert processed is None
    assert a[0] == b[0] and a[2] == b[2]
    alone, _ = sampler(logits[2:3], {0: torch.Generator().manual_seed(8)}, k[:1], p[:1])
    assert alone.item() == a[2].item()
    # Rows without a generator use torch's default generator: reproducible under manual_seed.
    torch.manual_seed(3)
    c, _ = sampler(logits, None, k, p)
    torch.manual_seed(3)
    d, _ = sampler(logits, None, k, p)
    assert torch.equal(c, d)


def test_processed_logits_mode_and_errors():
    logits = torch.randn(2, 10)
    _, processed = TopKTopPSampler("processed_logits")(logits, {}, torch.tensor([2, 3]), None)
    assert ((processed > float("-inf")).sum(1) == torch.tensor([2, 3])).all()
    with pytest.raises(ValueError, match="TopKTopPSampler: `logprobs_mode` must be one of"):
        TopKTopPSampler("logits")
    with pytest.raises(ValueError, match="`generators` has row 5, outside the batch of 2"):
        TopKTopPSampler()(logits, {5: torch.Generator()}, None, None)
