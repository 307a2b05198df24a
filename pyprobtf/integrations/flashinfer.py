"""FlashInfer's sampling functions on pyprobtf's sort-free sampler (no FlashInfer needed; CPU and GPU).

Same names, signatures and semantics as ``flashinfer.sampling``:
:func:`sampling_from_probs`, :func:`sampling_from_logits`,
:func:`top_p_sampling_from_probs`, :func:`top_k_sampling_from_probs`,
:func:`min_p_sampling_from_probs`, :func:`top_k_top_p_sampling_from_probs`,
:func:`top_k_top_p_sampling_from_logits`, :func:`top_k_mask_logits`,
:func:`top_p_renorm_probs`, :func:`top_k_renorm_probs`.

- top-k keeps the ``k`` most probable tokens (every token tied with the k-th
  too); top-p the smallest most-probable head whose mass reaches ``top_p``
  (with the ties of its last member); min-p the tokens with ``p >= min_p * max p``.
- ``filter_apply_order="top_k_first"``: top-p measured on the top-k survivors,
  renormalised; ``"joint"``: a token is kept when it passes both filters on the
  original distribution.
- Samples are int32 (the dtype of ``indices`` when given, which maps output
  row ``i`` to row ``indices[i]`` of ``probs``/``logits``).

What FlashInfer lacks, as keyword arguments of every sampling function:
``generator`` may also be a list of one ``torch.Generator`` per request (the
row's uniform comes from its own generator: a request's draws do not depend on
the batch it is in); ``seed``/``offset`` (integers or per-row tensors) select
pyprobtf's counter-based Philox stream, reproducible on every device and in
CUDA graphs; ``return_logprobs=True`` also returns the drawn tokens'
log-probabilities under the filtered distribution. ``deterministic`` and
``check_nan`` are accepted: the sampler is always deterministic given its
uniforms, and NaN or +inf inputs always raise ``ValueError``.

Each draw is the filtered distribution's inverse CDF, in vocabulary order, at
one uniform per row (:func:`pyprobtf.ops.sample_logits`): the same
distribution as FlashInfer's rejection sampler, not the same token for the
same seed.

Example:
    >>> import torch
    >>> from pyprobtf.integrations import flashinfer
    >>> logits = torch.randn(4, 32000)
    >>> gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    >>> tokens = flashinfer.top_k_top_p_sampling_from_logits(logits, 50, 0.9, generator=gens)
"""

from __future__ import annotations

import torch

from pyprobtf.ops import filter_logits, sample_logits

__all__ = [
    "min_p_sampling_from_probs",
    "sampling_from_logits",
    "sampling_from_probs",
    "top_k_mask_logits",
    "top_k_renorm_probs",
    "top_k_sampling_from_probs",
    "top_k_top_p_sampling_from_logits",
    "top_k_top_p_sampling_from_probs",
    "top_p_renorm_probs",
    "top_p_sampling_from_probs",
]

FILTER_APPLY_ORDERS = ("top_k_first", "joint")


def _check_2d(fn: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{fn}: `{name}` must be 2-D, (batch_size, num_classes); got shape {tuple(t.shape)}")


def _probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """log(probs), -inf where a probability is 0; softmax of it gives the probabilities back."""
    return torch.log(probs.clamp_min(0))


def _uniforms(fn: str, generator, rows: int, device) -> torch.Tensor | None:
    """One float64 uniform per row from ``generator`` (one, or a list of one per row); None for none."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(
            f"{fn}: `generator` must be a torch.Generator or a list of them, got {type(generator).__name__}"
        )
    if len(generator) != rows:
        raise ValueError(f"{fn}: `generator` must hold one generator per output row, {rows}; got {len(generator)}")
    draws = [torch.rand(1, dtype=torch.float64, generator=g, device=g.device) for g in generator]
    return torch.cat([d.to(device) for d in draws])


def _gather_rows(fn: str, t: torch.Tensor, indices) -> torch.Tensor:
    if indices is None:
        return t
    if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
        raise TypeError(f"{fn}: `indices` must be a 1-D int32 or int64 tensor, got {indices!r:.60}")
    return t.index_select(0, indices.to(device=t.device, dtype=torch.int64))


def _sample(fn: str, logits, *, indices, generator, seed, offset, return_logprobs, top_k=0, top_p=1.0,
            min_p=0.0, joint=False):
    logits = _gather_rows(fn, logits, indices)  # parameters are per output row already
    if joint:
        # Each filter on the original distribution; the token must pass both.
        in_top_k = filter_logits(logits, top_k=top_k) > float("-inf")
        kept = in_top_k & (filter_logits(logits, top_p=top_p) > float("-inf"))
        logits = logits.masked_fill(~kept, float("-inf"))
        top_k, top_p = 0, 1.0
    uniform = _uniforms(fn, generator, logits.shape[0], logits.device)
    source = {}
    if uniform is not None:
        source["uniform"] = uniform
    elif seed is not None:
        source.update(seed=seed, offset=0 if offset is None else offset)
    elif generator is not None:
        source["generator"] = generator
    out = sample_logits(logits, top_k=top_k, top_p=top_p, min_p=min_p, return_logprobs=return_logprobs, **source)
    tokens, logprobs = out if return_logprobs else (out, None)
    tokens = tokens.to(torch.int32 if indices is None else indices.dtype)
    return (tokens, logprobs) if return_logprobs else tokens


def _check_order(fn: str, filter_apply_order) -> bool:
    if filter_apply_order not in FILTER_APPLY_ORDERS:
        raise ValueError(f"{fn}: `filter_apply_order` must be one of {FILTER_APPLY_ORDERS}, got {filter_apply_order!r}")
    return filter_apply_order == "joint"


def sampling_from_probs(probs, indices=None, deterministic=True, generator=None, check_nan=False, *, seed=None,
                        offset=None, return_logprobs=False):
    """One category per row of ``probs`` (batch, V), drawn from it. Returns int32 (batch,)."""
    _check_2d("sampling_from_probs", "probs", probs)
    return _sample("sampling_from_probs", _probs_to_logits(probs), indices=indices, generator=generator, seed=seed,
                   offset=offset, return_logprobs=return_logprobs)


def sampling_from_logits(logits, indices=None, deterministic=True, generator=None, check_nan=False, *, seed=None,
                         offset=None, return_logprobs=False):
    """One category per row, drawn from ``softmax(logits)``. Returns int32 (batch,)."""
    _check_2d("sampling_from_logits", "logits", logits)
    return _sample("sampling_from_logits", logits, indices=indices, generator=generator, seed=seed, offset=offset,
                   return_logprobs=return_logprobs)


def top_p_sampling_from_probs(probs, top_p, indices=None, deterministic=True, generator=None, check_nan=False, *,
                              seed=None, offset=None, return_logprobs=False):
    """Draw from the top-p (nucleus) head of ``probs``; ``top_p`` a float or a (batch,) tensor."""
    _check_2d("top_p_sampling_from_probs", "probs", probs)
    return _sample("top_p_sampling_from_probs", _probs_to_logits(probs), indices=indices, generator=generator,
                   seed=seed, offset=offset, return_logprobs=return_logprobs, top_p=top_p)


def top_k_sampling_from_probs(probs, top_k, indices=None, deterministic=True, generator=None, check_nan=False, *,
                              seed=None, offset=None, return_logprobs=False):
    """Draw from the ``top_k`` most probable categories; ``top_k`` an int or a (batch,) tensor."""
    _check_2d("top_k_sampling_from_probs", "probs", probs)
    return _sample("top_k_sampling_from_probs", _probs_to_logits(probs), indices=indices, generator=generator,
                   seed=seed, offset=offset, return_logprobs=return_logprobs, top_k=top_k)


def min_p_sampling_from_probs(probs, min_p, indices=None, deterministic=True, generator=None, check_nan=False, *,
                              seed=None, offset=None, return_logprobs=False):
    """Draw from the categories with ``p >= min_p * max p``; ``min_p`` a float or a (batch,) tensor."""
    _check_2d("min_p_sampling_from_probs", "probs", probs)
    return _sample("min_p_sampling_from_probs", _probs_to_logits(probs), indices=indices, generator=generator,
                   seed=seed, offset=offset, return_logprobs=return_logprobs, min_p=min_p)


def top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                    deterministic=True, generator=None, check_nan=False, *, seed=None, offset=None,
                                    return_logprobs=False):
    """Draw after top-k and top-p filtering of ``probs`` (order: ``"top_k_first"`` or ``"joint"``)."""
    fn = "top_k_top_p_sampling_from_probs"
    _check_2d(fn, "probs", probs)
    joint = _check_order(fn, filter_apply_order)
    return _sample(fn, _probs_to_logits(probs), indices=indices, generator=generator, seed=seed, offset=offset,
                   return_logprobs=return_logprobs, top_k=top_k, top_p=top_p, joint=joint)


def top_k_top_p_sampling_from_logits(logits, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                     deterministic=True, generator=None, check_nan=False, *, seed=None, offset=None,
                                     return_logprobs=False):
    """Draw from ``softmax(logits)`` after top-k and top-p filtering (see the module).

    Example:
        >>> tokens = top_k_top_p_sampling_from_logits(torch.randn(2, 100), 10, 0.9, seed=torch.tensor([1, 2]))
    """
    fn = "top_k_top_p_sampling_from_logits"
    _check_2d(fn, "logits", logits)
    joint = _check_order(fn, filter_apply_order)
    return _sample(fn, logits, indices=indices, generator=generator, seed=seed, offset=offset,
                   return_logprobs=return_logprobs, top_k=top_k, top_p=top_p, joint=joint)


def top_k_mask_logits(logits, top_k):
    """``logits`` with every category outside the top ``top_k`` set to ``-inf`` (ties at the k-th kept)."""
    _check_2d("top_k_mask_logits", "logits", logits)
    return filter_logits(logits, top_k=top_k)


def _renorm(fn: str, probs, **params):
    _check_2d(fn, "probs", probs)
    kept = filter_logits(_probs_to_logits(probs), **params) > float("-inf")
    masked = torch.where(kept, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    return masked / masked.sum(dim=1, keepdim=True)


def top_p_renorm_probs(probs, top_p):
    """``probs`` restricted to each row's top-p head and renormalised to sum 1."""
    return _renorm("top_p_renorm_probs", probs, top_p=top_p)


def top_k_renorm_probs(probs, top_k):
    """``probs`` restricted to each row's top ``top_k`` categories and renormalised to sum 1."""
    return _renorm("top_k_renorm_probs", probs, top_k=top_k)
