"""Hugging Face ``transformers`` generation with pyprobtf's sampling (``pip install pyprobtf[hf]``).

Two logits processors and a ``generate`` helper:

- :class:`FilterLogitsProcessor` replaces the temperature, top-k, top-p and
  min-p warpers with one sort-free pass (:func:`pyprobtf.ops.filter_logits`,
  ties at a threshold all kept); ``generate(do_sample=True)`` then draws from
  it with ``torch.multinomial`` as usual.
- :class:`SampleLogitsProcessor` draws the token itself with
  :func:`pyprobtf.ops.sample_logits` (per-request seeds, batch-invariant,
  log-probabilities under the filtered distribution) and returns scores that
  are 0 at that token and ``-inf`` elsewhere, so greedy decoding
  (``do_sample=False``) takes exactly it.
- :func:`generate` wires :class:`SampleLogitsProcessor` into ``model.generate``.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from pyprobtf.integrations import hf
    >>> model = AutoModelForCausalLM.from_pretrained("gpt2")
    >>> ids = AutoTokenizer.from_pretrained("gpt2")(["Hello", "Bonjour"], return_tensors="pt").input_ids
    >>> out, logprobs = hf.generate(model, ids, max_new_tokens=20, temperature=0.7, top_p=0.9,
    ...                             seed=torch.tensor([11, 12]), return_logprobs=True)
"""

from __future__ import annotations

import torch

try:
    from transformers import LogitsProcessor, LogitsProcessorList
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pyprobtf.integrations.hf needs Hugging Face transformers: pip install 'pyprobtf[hf]' "
        "(install it after torch, so that it does not pull another torch)"
    ) from exc

from pyprobtf.ops import filter_logits, sample_logits

__all__ = ["FilterLogitsProcessor", "SampleLogitsProcessor", "generate"]


class FilterLogitsProcessor(LogitsProcessor):
    """Temperature, top-k, top-p and min-p in one pass: ``filter_logits`` as a LogitsProcessor.

    Use it instead of ``generate``'s own ``temperature``/``top_k``/``top_p``/``min_p``
    (leave those unset), with ``do_sample=True``. Parameters are numbers or
    ``(batch,)`` tensors, as for :func:`pyprobtf.ops.filter_logits`.
    """

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, backend: str = "auto"):
        self.options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, backend=backend)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return filter_logits(scores, **self.options)


class SampleLogitsProcessor(LogitsProcessor):
    """Draws each next token with ``sample_logits``; the scores it returns select exactly that token.

    With ``seed`` a ``(batch,)`` tensor, request ``b`` draws its token at sequence
    length ``n`` from Philox key ``seed[b]`` and counter ``offset + n``: its
    tokens depend only on its own seed and logits, not on the batch it runs in.
    With an integer seed, the counter is ``offset + n * batch + b``, so no two
    draws of a generation share one. With neither, ``generator`` (or torch's
    global generator) gives the uniforms.

    ``record_logprobs=True`` keeps each step's ``(batch,)`` log-probabilities
    (under the filtered distribution) in :attr:`logprobs`.
    """

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset: int = 0,
                 generator: torch.Generator | None = None, record_logprobs: bool = False, backend: str = "auto"):
        self.options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, backend=backend)
        self.seed, self.offset, self.generator = seed, offset, generator
        self.record_logprobs = record_logprobs
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, length = input_ids.shape
        if self.seed is None:
            randomness = dict(generator=self.generator)
        elif isinstance(self.seed, torch.Tensor):
            randomness = dict(seed=self.seed.to(scores.device), offset=self.offset + length)
        else:
            randomness = dict(seed=self.seed, offset=self.offset + length * rows)
        tokens, logprobs = sample_logits(scores, return_logprobs=True, **randomness, **self.options)
        if self.record_logprobs:
            self.logprobs.append(logprobs)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens.unsqueeze(1), 0.0)


def generate(model, *args, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset: int = 0,
             generator: torch.Generator | None = None, return_logprobs: bool = False, backend: str = "auto",
             **kwargs):
    """``model.generate(*args, **kwargs)`` with every token drawn by :func:`pyprobtf.ops.sample_logits`.

    The sampling parameters are those of :class:`SampleLogitsProcessor`; other
    keyword arguments (``max_new_tokens``, ``attention_mask``, a
    ``logits_processor`` list that runs first, ...) go to ``generate``, which runs
    with ``do_sample=False`` so that it takes the drawn tokens. Returns the
    sequences, and with ``return_logprobs=True`` also a ``(batch, steps)`` tensor
    of the drawn tokens' log-probabilities (steps after a sequence finished
    included, as ``generate`` runs them).
    """
    sampler = SampleLogitsProcessor(temperature, top_k, top_p, min_p, seed, offset, generator,
                                    record_logprobs=return_logprobs, backend=backend)
    processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
    processors.append(sampler)
    # generate()'s own warpers must stay off: the sampler has already filtered.
    for name in ("temperature", "top_k", "top_p", "min_p"):
        kwargs.setdefault(name, None)
    out = model.generate(*args, logits_processor=processors, do_sample=False, **kwargs)
    if return_logprobs:
        return out, torch.stack(sampler.logprobs, dim=1)
    return out
