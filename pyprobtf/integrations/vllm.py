"""vLLM's top-k/top-p sampler on pyprobtf's sort-free sampler (no vLLM needed).

:class:`TopKTopPSampler` has the call of ``vllm.v1.sample.ops.topk_topp_sampler.TopKTopPSampler``:
``sampler(logits, generators, k, p) -> (sampled, processed)`` where
``generators`` maps a row to its request's ``torch.Generator`` (rows without
one draw from torch's default generator), ``k`` is a (B,) integer tensor or
None and ``p`` a (B,) float tensor or None. Temperature is applied by vLLM
before this call, so not here. As in vLLM, top-p is measured on the top-k
survivors, renormalised; ties at either threshold are all kept.

``processed`` follows ``logprobs_mode``: None for ``"raw_logprobs"`` and
``"raw_logits"`` (vLLM computes those from the raw logits), the filtered
logits for ``"processed_logits"``, their ``log_softmax`` for
``"processed_logprobs"``.

A row's token is the filtered distribution's inverse CDF at one uniform drawn
from that row's generator (:func:`pyprobtf.ops.sample_logits`): the same
distribution as vLLM's exponential race, not the same token for the same
generator state; a request's tokens do not depend on the batch it is in.

Example:
    >>> import torch
    >>> from pyprobtf.integrations.vllm import TopKTopPSampler
    >>> sampler = TopKTopPSampler()
    >>> logits = torch.randn(3, 32000)
    >>> gens = {0: torch.Generator().manual_seed(7)}
    >>> tokens, _ = sampler(logits, gens, k=torch.tensor([50, 50, 32000]), p=torch.tensor([0.9, 1.0, 0.8]))
"""

from __future__ import annotations

import torch

from pyprobtf.ops import filter_logits, sample_logits

__all__ = ["TopKTopPSampler"]

LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logits", "processed_logprobs")


class TopKTopPSampler(torch.nn.Module):
    """Optional top-k and top-p filtering, then one token per row (see the module)."""

    def __init__(self, logprobs_mode: str = "raw_logprobs"):
        super().__init__()
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"TopKTopPSampler: `logprobs_mode` must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode

    def forward(self, logits: torch.Tensor, generators: dict[int, torch.Generator] | None,
                k: torch.Tensor | None, p: torch.Tensor | None):
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError(f"TopKTopPSampler: `logits` must be a 2-D tensor, got {type(logits).__name__}")
        rows = logits.shape[0]
        generators = generators or {}
        uniform = torch.rand(rows, dtype=torch.float64, device=logits.device)
        for row, generator in generators.items():
            if not 0 <= row < rows:
                raise ValueError(f"TopKTopPSampler: `generators` has row {row}, outside the batch of {rows}")
            uniform[row] = torch.rand(1, dtype=torch.float64, generator=generator, device=generator.device)[0]
        top_k = 0 if k is None else k
        top_p = 1.0 if p is None else p
        tokens = sample_logits(logits, top_k=top_k, top_p=top_p, uniform=uniform)
        processed = None
        if self.logprobs_mode in ("processed_logits", "processed_logprobs"):
            processed = filter_logits(logits, top_k=top_k, top_p=top_p)
            if self.logprobs_mode == "processed_logprobs":
                processed = processed.log_softmax(dim=-1)
        return tokens, processed
