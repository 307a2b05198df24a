"""pyprobtf.integrations.hf: Hugging Face generation through sample_logits / filter_logits.

Skipped when transformers (the `hf` extra) is not installed.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pyprobtf.integrations import hf  # noqa: E402
from pyprobtf.ops import filter_logits, sample_logits  # noqa: E402


def tiny_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=97, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_filter_processor_matches_hf_warpers_without_ties():
    # On tie-free logits, HF's temperature + top-k + top-p warpers keep the same tokens.
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 500, generator=gen) * 3
    ids = torch.zeros(6, 1, dtype=torch.long)
    warpers = transformers.LogitsProcessorList([
        transformers.TemperatureLogitsWarper(0.8), transformers.TopKLogitsWarper(40),
        transformers.TopPLogitsWarper(0.9)])
    theirs = warpers(ids, scores.clone())
    ours = hf.FilterLogitsProcessor(temperature=0.8, top_k=40, top_p=0.9)(ids, scores.clone())
    assert torch.equal(ours > -math.inf, theirs > -math.inf)
    kept = ours > -math.inf
    torch.testing.assert_close(ours[kept], theirs[kept])


def test_filter_processor_keeps_ties_that_hf_drops():
    # HF's top-k keeps only k tokens by index among a tie; the contract keeps every tied token.
    scores = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    ours = hf.FilterLogitsProcessor(top_k=2)(torch.zeros(1, 1, dtype=torch.long), scores)
    assert (ours > -math.inf).tolist() == [[True, True, True, True, False]]
    assert torch.equal(ours, filter_logits(scores, top_k=2))


def test_generate_draws_with_sample_logits_and_per_request_seeds():
    model = tiny_model()
    ids = torch.randint(1, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    seeds = torch.tensor([11, 12, 13])
    params = dict(temperature=0.7, top_k=30, top_p=0.9)
    out, logprobs = hf.generate(model, ids, max_new_tokens=6, seed=seeds, return_logprobs=True, pad_token_id=0,
                                **params)
    assert out.shape == (3, 11) and logprobs.shape == (3, 6)
    assert torch.equal(out[:, :5], ids)
    # Each step's token is sample_logits on that step's logits, counter = the sequence length.
    with torch.no_grad():
        for step in range(6):
            length = 5 + step
            logits = model(out[:, :length]).logits[:, -1].float()
            tokens, lp = sample_logits(logits, seed=seeds, offset=length, return_logprobs=True, **params)
            assert torch.equal(tokens, out[:, length])
            torch.testing.assert_close(lp, logprobs[:, step], rtol=1e-4, atol=1e-4)
    # A request's tokens do not depend on the batch it runs in.
    alone = hf.generate(model, ids[1:2], max_new_tokens=6, seed=seeds[1:2], pad_token_id=0, **params)
    assert torch.equal(alone, out[1:2])


def test_generate_with_one_seed_and_with_a_generator_is_reproducible():
    model = tiny_model()
    ids = torch.randint(1, 97, (2, 3), generator=torch.Generator().manual_seed(3))
    a = hf.generate(model, ids, max_new_tokens=5, seed=7, min_p=0.05, pad_token_id=0)
    b = hf.generate(model, ids, max_new_tokens=5, seed=7, min_p=0.05, pad_token_id=0)
    assert torch.equal(a, b)
    c = hf.generate(model, ids, max_new_tokens=5, generator=torch.Generator().manual_seed(5), pad_token_id=0)
    d = hf.generate(model, ids, max_new_tokens=5, generator=torch.Generator().manual_seed(5), pad_token_id=0)
    assert torch.equal(c, d)
    greedy = hf.generate(model, ids, max_new_tokens=5, temperature=0.0, pad_token_id=0)
    assert torch.equal(greedy, model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))
