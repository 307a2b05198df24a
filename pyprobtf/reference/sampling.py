"""Reference logits sampling: temperature, top-k, top-p, min-p, then an inverse-CDF draw.

The contract (docs/ARCHITECTURE.md, sample_logits) written plainly in PyTorch,
with the float computation every backend follows:

- Per-row parameters arrive as ``(B,)`` tensors: ``temperature``, ``top_p`` and
  ``min_p`` in float64, ``top_k`` in int64, ``uniform`` in float64.
- The compute dtype ``C`` is float64 for float64 logits and float32 otherwise
  (float16/bfloat16 logits convert to float32 exactly). ``temperature`` is
  rounded to ``C``; a row whose rounded temperature is 0 is greedy.
- Orderings ("the k-th largest", "strictly greater", ties) are taken on the
  logits themselves: for ``T > 0`` softmax preserves order, so this is the
  contract's ordering of ``pi``, exact and the same on every backend. ``-0.0``
  equals ``+0.0``.
- ``e_i = exp((l_i - max l) / T)`` in ``C`` (``pi_i = e_i / sum e``); every
  mass (``sum_K pi``, the mass above a tie group, ``sum_A pi``, the
  cumulative sums of the draw) is accumulated in float64, and ``top_p``,
  ``min_p`` and ``u`` are applied in float64. Since ``e_max = exp(0) = 1``,
  min-p keeps ``e_i >= min_p``.
- ``top_k >= V`` keeps everything, like ``top_k = 0``; ``top_p = 1`` keeps
  everything (the contract's rule gives the same set in exact arithmetic).

Backends agree with this exactly except where rounding legitimately differs:
``exp`` differs by an ulp or two between implementations and float64 sums
differ in their last bits with the order of summation, so a token can differ
only when ``top_p * sum_K pi`` is within a few ``1e-6`` (relative, float32) of
the mass above a tie group, when an ``e_i`` is within an ulp of ``min_p``, or
when ``u * sum_A pi`` is within rounding of a cumulative sum.
"""

from __future__ import annotations

import torch

from pyprobtf.reference.philox import uniform53
from pyprobtf.seeds import signed_int64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sampling computes in: float64 for float64 logits, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_param(value, rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(rows)
    return torch.full((rows,), value, dtype=dtype, device=device)


def kept_set(
    logits: torch.Tensor,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keep, scaled, greedy)`` for (B, V) logits (V >= 1) without NaN, +inf or all -inf rows.

    ``keep`` is the (B, V) boolean set ``A``; ``scaled`` is ``(l - max l) / T``
    in the compute dtype (``log e``); ``greedy`` marks the rows with ``T == 0``,
    whose set is the first argmax alone.
    """
    rows, cols = logits.shape
    C = compute_dtype(logits.dtype)
    device = logits.device
    x = logits.to(C)
    temperature = _row_param(temperature, rows, C, device)
    top_k = _row_param(top_k, rows, torch.int64, device)
    top_p = _row_param(top_p, rows, torch.float64, device)
    min_p = _row_param(min_p, rows, torch.float64, device)

    greedy = temperature == 0
    m = x.amax(dim=1, keepdim=True)
    scaled = (x - m) / torch.where(greedy, 1.0, temperature).unsqueeze(1)
    e = torch.exp(scaled).to(torch.float64)

    # Tokens in order of decreasing logit, ties in vocabulary order.
    sorted_x, order = torch.sort(x, dim=1, descending=True, stable=True)

    # 3. top-k: keep l_i >= the k-th largest logit (every token tied with it).
    k_active = (top_k > 0) & (top_k < cols)
    kth = sorted_x.gather(1, (top_k.clamp(1, cols) - 1).unsqueeze(1))
    in_k = (x >= kth) | ~k_active.unsqueeze(1)

    # 4. top-p over K: keep i when the mass of K strictly above l_i is < top_p * sum_K pi.
    sorted_mass = torch.where(in_k.gather(1, order), e.gather(1, order), 0.0)
    cum = torch.cumsum(sorted_mass, dim=1)
    mass_before = torch.cat([cum.new_zeros(rows, 1), cum[:, :-1]], dim=1)  # exclusive prefix sums
    # The mass strictly above a token is the prefix before the first member of its tie group.
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    positions = torch.arange(cols, device=device).expand(rows, cols)
    group_start = torch.cummax(torch.where(new_group, positions, 0), dim=1).values
    mass_above = mass_before.gather(1, group_start)
    total_k = cum[:, -1:]
    keep_sorted = (mass_above < top_p.unsqueeze(1) * total_k) | (top_p >= 1).unsqueeze(1)
    in_p = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)

    # 5. min-p: pi_i >= min_p * max pi, i.e. e_i >= min_p.
    in_min_p = (e >= min_p.unsqueeze(1)) | (min_p <= 0).unsqueeze(1)

    keep = in_k & in_p & in_min_p
    # Greedy rows keep the first maximal index alone.
    one_hot = torch.zeros_like(keep).scatter_(1, x.argmax(dim=1, keepdim=True), True)
    keep = torch.where(greedy.unsqueeze(1), one_hot, keep)
    return keep, scaled, greedy


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """``l / T`` on the kept set ``A`` and ``-inf`` elsewhere, in the logits' dtype.

    Greedy rows (``T == 0``) are 0 at the first argmax and ``-inf`` elsewhere, so
    that ``log_softmax`` of the result is the filtered distribution in every case.
    """
    keep, _, greedy = kept_set(logits, temperature, top_k, top_p, min_p)
    C = compute_dtype(logits.dtype)
    t = _row_param(temperature, logits.shape[0], C, logits.device)
    processed = logits.to(C) / torch.where(greedy, 1.0, t).unsqueeze(1)
    processed = torch.where(greedy.unsqueeze(1), 0.0, processed)
    return torch.where(keep, processed, float("-inf")).to(logits.dtype)


def seeded_uniforms(rows: int, seed, offset=0, device=None) -> torch.Tensor:
    """The contract's 53-bit uniforms: ``uniform53(seed[b], offset[b])`` for a seed tensor,
    ``uniform53(seed, offset + b)`` for an integer seed (``offset`` an integer or a (B,) tensor)."""
    if isinstance(seed, torch.Tensor):
        keys = seed.to(device=device, dtype=torch.int64).reshape(rows)
        counters = _row_param(offset, rows, torch.int64, device)
    else:
        keys = torch.full((rows,), signed_int64(seed), dtype=torch.int64, device=device)
        counters = _row_param(offset, rows, torch.int64, device) + torch.arange(rows, device=device)
    return uniform53(keys, counters)




def sample_logits(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, logprobs)``: the inverse-CDF draw of the kept set for uniforms ``u`` in [0, 1).

    The token of row ``b`` is the smallest index ``t`` in ``A`` with
    ``sum_{j in A, j <= t} e_j > u_b * sum_A e`` (float64 sums in vocabulary
    order); its log-probability under the filtered distribution is
    ``scaled_t - log(sum_A e)``, 0 for greedy rows. Tokens are int64;
    log-probabilities float64 for float64 logits and float32 otherwise.
    """
    rows, cols = logits.shape
    keep, scaled, greedy = kept_set(logits, temperature, top_k, top_p, min_p)
    mass = torch.where(keep, torch.exp(scaled).to(torch.float64), 0.0)
    cum = torch.cumsum(mass, dim=1)
    total = cum[:, -1]
    target = uniform.to(device=logits.device, dtype=torch.float64).reshape(rows) * total
    crossed = cum > target.unsqueeze(1)
    # u < 1 makes u * total < total, so some index crosses (the last kept one with mass at worst).
    tokens = torch.where(crossed.any(dim=1), crossed.to(torch.int8).argmax(dim=1), _last_positive(mass))
    tokens = torch.where(greedy, keep.to(torch.int8).argmax(dim=1), tokens)
    chosen = scaled.gather(1, tokens.unsqueeze(1)).squeeze(1).to(torch.float64)
    logprobs = torch.where(greedy, 0.0, chosen - torch.log(total))
    return tokens, logprobs.to(compute_dtype(logits.dtype))


def _last_positive(mass: torch.Tensor) -> torch.Tensor:
    cols = mass.shape[1]
    flipped = (mass.flip(1) > 0).to(torch.int8).argmax(dim=1)
    return cols - 1 - flipped
