"""Fast eager-PyTorch versions of every op: the fallback on devices with no verified compiled backend.

Each function has the signature and return convention of its reference in
:mod:`pyprobtf.reference` and meets the same contract (docs/ARCHITECTURE.md),
but is written the way a careful eager PyTorch user writes it: the op's
compute dtype (float32 for float32/float16/bfloat16 data, float64 for
float64), few passes over memory, no full sort where a ``topk`` will do.

None of them synchronises with the device: no value is read back to the host
(no ``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing or Python
``if`` on a tensor), every shape depends only on the arguments' shapes and
Python values, and loops run over blocks of rows, never over single rows.

The one contract corner this costs is in :func:`vq_nearest`: rows whose
float32 scan cannot certify the answer are recomputed exactly in float64 only
up to a fixed number of rows per call (see there).
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyprobtf.reference.affine_coupling import SIGMOID_EPS
from pyprobtf.reference.philox import KEY_A, KEY_B, MASK32, ROUND_A, ROUND_B
from pyprobtf.reference.vq_nearest import COSINE_EPS, METRICS, vq_distances
from pyprobtf.ops._registry import register_kernel
from pyprobtf.seeds import signed_int64

__all__ = ["affine_coupling", "affine_coupling_backward", "filter_logits", "lincomb", "sample_logits", "vq_nearest"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ============================================================================ affine_coupling


def _log_multiplier(a: torch.Tensor, scale_fn: str, clamp: float) -> torch.Tensor:
    """s(a), as in pyprobtf.reference.affine_coupling.log_multiplier, with fewer kernels."""
    if scale_fn == "exp":
        return a
    if scale_fn == "softclamp":
        return torch.tanh(a / clamp).mul_(clamp)
    if scale_fn == "sigmoid":
        return F.logsigmoid(a + 2.0)
    if scale_fn == "softclip":
        return a / (a.abs().div_(clamp).add_(1.0))
    if scale_fn == "sigmoid_eps":
        return torch.sigmoid(a + 2.0).add_(SIGMOID_EPS).log_()
    if scale_fn == "inv_sigmoid":
        return F.softplus(-2.0 - a)
    raise ValueError(f"affine_coupling: scale_fn must be one of the reference's, got {scale_fn!r}")


def _dlog_multiplier(a: torch.Tensor, s: torch.Tensor, scale_fn: str, clamp: float) -> torch.Tensor | None:
    """ds/da (None for ``exp``, where it is 1)."""
    if scale_fn == "exp":
        return None
    if scale_fn == "softclamp":
        return 1.0 - (s / clamp).square_()
    if scale_fn == "sigmoid":
        return torch.exp(s - (a + 2.0))  # 1 - sigmoid(a + 2), no cancellation for large a
    if scale_fn == "softclip":
        return (a.abs().div_(clamp).add_(1.0)).pow_(-2)
    if scale_fn == "sigmoid_eps":
        z = a + 2.0
        sig = torch.sigmoid(z)
        return torch.sigmoid(-z).mul_(sig).div_(sig + SIGMOID_EPS)
    if scale_fn == "inv_sigmoid":
        return torch.exp(-s - (a + 2.0)).neg_()
    raise ValueError(f"affine_coupling: scale_fn must be one of the reference's, got {scale_fn!r}")


def _row_sum(s: torch.Tensor) -> torch.Tensor:
    if s.dim() == 1:  # no event dims: ladj = s
        return s.clone()
    return s.reshape(s.shape[0], math.prod(s.shape[1:])).sum(dim=1)


@register_kernel("affine_coupling", "torch")
def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
    ladj: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, ladj)`` as :func:`pyprobtf.reference.affine_coupling`: y = x e^s + shift, ladj = sum of s.

    Elementwise in the compute dtype (half inputs are widened inside each
    kernel, never copied), one row sum for ``ladj`` (none for ``ladj="element"``).

    >>> x = torch.randn(4, 3)
    >>> y, ladj = affine_coupling(x, torch.zeros(4, 3), torch.zeros(4, 3))
    >>> bool((y == x).all()), ladj.shape
    (True, torch.Size([4]))
    """
    compute = _compute_dtype(x.dtype)
    s = _log_multiplier(scale.to(compute), scale_fn, clamp)
    # y is written once, contiguous and in x's dtype (the products are formed in the compute dtype).
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if inverse:
        torch.mul(x.to(compute) - shift, torch.exp(-s), out=y)
    else:
        torch.addcmul(shift.to(compute), x, torch.exp(s), out=y)
    if ladj == "element":
        if inverse:
            return y, torch.neg(s)
        return y, (s.clone() if s is scale else s)  # never an alias of the input
    row = _row_sum(s)
    return y, (row.neg_() if inverse else row)


@register_kernel("affine_coupling_backward", "torch")
def affine_coupling_backward(
    grad_y: torch.Tensor,
    grad_ladj: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(x, shift, scale)`` of <grad_y, y> + <grad_ladj, ladj>, as the reference's.

    ``grad_ladj`` is ``(B,)`` (row sums) or of ``x``'s shape (per element).
    """
    compute = _compute_dtype(x.dtype)
    a = scale.to(compute)
    gl = grad_ladj.to(compute)
    if gl.shape != x.shape:
        gl = gl.reshape((-1,) + (1,) * (x.dim() - 1))
    s = _log_multiplier(a, scale_fn, clamp)
    ds = _dlog_multiplier(a, s, scale_fn, clamp)
    if inverse:
        e = torch.exp(-s)
        gx = e.mul_(grad_y)  # grad_y e^-s
        # d/ds of <g, (x - t) e^-s> - ladj: -(g y) - gl, with g y = gx (x - t)
        gs = (x.to(compute) - shift).mul_(gx).add_(gl).neg_()
        gshift = -gx
    else:
        gx = torch.exp(s).mul_(grad_y)
        gs = torch.addcmul(gl, gx, x)
        gshift = grad_y.to(compute)
    if ds is not None:
        gs = gs.mul_(ds)
    return gx.to(x.dtype), gshift.to(x.dtype), gs.to(x.dtype)


# ============================================================================ lincomb
# Philox4x32-10 in int64 tensors: one 64-bit multiply gives both halves of a
# 32x32-bit product (the product of a 32-bit constant and a uint32 is < 2^64,
# so the int64 result, wrapping or not, holds its 64 bits exactly); the round
# keys depend only on the seed, so for an integer seed they are Python ints.


def _philox_two_words(k0, k1, counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two words of philox4x32_10 (int64 tensors holding uint32) for counters of the output's shape.

    Keys are ints or int64 tensors that broadcast against ``counter``. Every step
    after the first writes in place: four live state tensors, no allocation per op.
    """
    c0 = counter & MASK32
    c1 = (counter >> 32).bitwise_and_(MASK32)
    # Round 1 with c2 = c3 = 0: umulhi(B, 0) = mullo(B, 0) = 0, so c1 becomes 0.
    p = c0.mul_(ROUND_A)
    c2 = (p >> 32).bitwise_and_(MASK32).bitwise_xor_(k1)
    c3 = p.bitwise_and_(MASK32)
    c0 = c1.bitwise_xor_(k0)
    c1 = None  # zero
    for _ in range(9):
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
        pa = c0.mul_(ROUND_A)  # the old c0 and c2 are used only here
        pb = c2.mul_(ROUND_B)
        c0 = (pb >> 32).bitwise_and_(MASK32)
        if c1 is not None:
            c0.bitwise_xor_(c1)
        c0.bitwise_xor_(k0)
        c2 = (pa >> 32).bitwise_and_(MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c1 = pb.bitwise_and_(MASK32)
        c3 = pa.bitwise_and_(MASK32)
    return c0, c1


def _uniform_float(word: torch.Tensor) -> torch.Tensor:
    """tl.rand's float32: the word as int32, bit-flipped when negative, times 4.6566127342e-10."""
    as_int32 = word.to(torch.int32)  # keeps the low 32 bits: two's complement
    nonneg = as_int32 ^ (as_int32 >> 31)
    return nonneg.to(torch.float32).mul_(torch.tensor(4.6566127342e-10, dtype=torch.float32))


def _noise(shape, seed, offset: int, device) -> torch.Tensor:
    """lincomb's float32 noise eps, bit-identical with pyprobtf.reference.lincomb.noise."""
    rows = shape[0]
    per_row = math.prod(shape[1:])
    if isinstance(seed, torch.Tensor):
        counter = torch.arange(per_row, dtype=torch.int64, device=device).add_(signed_int64(offset))
        keys = seed.to(device=device, dtype=torch.int64).reshape(rows, 1)
        w0, w1 = _philox_two_words(keys & MASK32, (keys >> 32) & MASK32, counter.expand(rows, per_row))
    else:
        counter = torch.arange(rows * per_row, dtype=torch.int64, device=device).add_(signed_int64(offset))
        key = signed_int64(seed) % 2**64
        w0, w1 = _philox_two_words(key & MASK32, key >> 32, counter)
    u0 = _uniform_float(w0).clamp_(min=1.0e-7)
    theta = torch.tensor(2 * math.pi, dtype=torch.float32) * _uniform_float(w1)
    return torch.sqrt(-2.0 * torch.log(u0)).mul_(torch.cos(theta)).reshape(shape)


@register_kernel("lincomb", "torch")
def lincomb(
    tensors: Sequence[torch.Tensor],
    coeffs: Sequence[float | torch.Tensor],
    noise_std: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """``sum_i coeffs[i] tensors[i] + noise_std eps``, as :func:`pyprobtf.reference.lincomb`.

    One fused multiply-add per tensor in the compute dtype (half tensors are
    widened inside the kernel) and the reference's Philox noise, bit for bit.

    >>> a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    >>> lincomb([a, b], [0.5, 0.25]).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    first = tensors[0]
    compute = _compute_dtype(first.dtype)
    row_shape = (first.shape[0],) + (1,) * (first.dim() - 1)

    def add_term(out, c, t):
        if isinstance(c, torch.Tensor):
            c = c.to(compute).reshape(row_shape)
            if out is None:  # the first term allocates the result, contiguous
                return torch.mul(c, t, out=torch.empty(first.shape, dtype=compute, device=first.device))
            return out.addcmul_(c, t.to(compute) if t.dtype != compute else t)
        if out is None:
            return torch.mul(t.to(compute), c, out=torch.empty(first.shape, dtype=compute, device=first.device))
        return out.add_(t, alpha=c)

    out = None
    for c, t in zip(coeffs, tensors):
        out = add_term(out, c, t)
    if out is None:
        out = torch.zeros(first.shape, dtype=compute, device=first.device)
    if isinstance(noise_std, torch.Tensor) or noise_std != 0:
        if seed is None or (isinstance(seed, numbers.Number) and not isinstance(seed, numbers.Integral)):
            raise ValueError("lincomb: noise needs an integer or tensor `seed`")
        eps = _noise(first.shape, seed, offset, first.device)
        out = add_term(out, noise_std, eps)
    return out.to(first.dtype)


# ============================================================================ sampling
# The kept set A is {i : l_i >= tau and e_i >= min_p} for one logit threshold
# tau per row: top-k keeps l_i >= (k-th largest) and top-p keeps l_i >= (the
# smallest logit whose mass strictly above is < top_p * sum_K e), both "upper
# sets" of the logit order. The thresholds come from the head of the row in
# decreasing order: a `topk` of k values when top_k is a Python int (the
# common case, no sort), else a sort of the row's values; then the draw is
# the reference's float64 cumulative sum in vocabulary order and a
# `searchsorted`. Orderings compare the logits themselves (-0.0 == +0.0).

# Largest Python-int top_k whose threshold comes from `topk` instead of a sort.
_TOPK_HEAD_LIMIT = 4096


def _round_to(value: float, dtype: torch.dtype) -> float:
    """A Python number rounded to ``dtype`` (float32 or float64), on the host."""
    if dtype == torch.float64:
        return float(value)
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.inf


def _all_greedy(temperature, dtype: torch.dtype) -> bool:
    """Whether a Python temperature rounds to 0 in ``dtype`` (every row greedy), known without the device."""
    return not isinstance(temperature, torch.Tensor) and _round_to(temperature, dtype) == 0


def _row_param(value, rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(rows)
    return torch.full((rows,), value, dtype=dtype, device=device)


def _kept(logits, temperature, top_k, top_p, min_p):
    """``(keep, scaled, e, greedy)``: the kept set as pyprobtf.reference.sampling.kept_set, and e = exp(scaled).

    ``greedy`` is None when no row can be greedy (a positive Python temperature).
    """
    rows, cols = logits.shape
    C = _compute_dtype(logits.dtype)
    device = logits.device
    x = logits.to(C)
    m = x.amax(dim=1, keepdim=True)

    # T rounded to C, as a (B, 1) tensor: the reference divides by a tensor too (same rounding).
    t = _row_param(temperature, rows, C, device).reshape(rows, 1)
    # (an all-greedy Python temperature never comes here: the callers answer it with an argmax)
    greedy = (t == 0).reshape(rows) if isinstance(temperature, torch.Tensor) else None
    divisor = t if greedy is None else torch.where(t == 0, 1.0, t)
    scaled = (x - m).div_(divisor)
    e = torch.exp(scaled)

    # The head: the largest logits in decreasing order (ties in any order: they share one threshold).
    k_is_int = not isinstance(top_k, torch.Tensor)
    k_active_int = k_is_int and 0 < top_k < cols
    p_active = isinstance(top_p, torch.Tensor) or top_p < 1
    head = None
    if k_active_int and top_k <= _TOPK_HEAD_LIMIT:
        head = torch.topk(x, int(top_k), dim=1, largest=True, sorted=True).values
    elif k_active_int or p_active or not k_is_int:
        head = torch.sort(x, dim=1, descending=True).values

    tau = None  # the logit threshold (B, 1), or None: keep all
    in_k = None
    if k_active_int:
        tau = head[:, top_k - 1 : top_k]
    elif not k_is_int:
        kk = top_k.to(device=device, dtype=torch.int64).reshape(rows, 1)
        kth = head.gather(1, (kk.clamp(1, cols) - 1))
        k_on = (kk > 0) & (kk < cols)
        tau = torch.where(k_on, kth, float("-inf"))
    if tau is not None:
        in_k = x >= tau

    if p_active:
        p = _row_param(top_p, rows, torch.float64, device).reshape(rows, 1)
        # Masses in float64: e of the head values (the same formula as the row's e), their prefix sums,
        # and the top-k set's total over the whole row (ties at the k-th value may reach past the head).
        head_e = torch.exp((head - m).div_(divisor))
        if tau is not None:
            head_e = torch.where(head >= tau, head_e, 0.0)
            total = torch.where(in_k, e, 0.0).sum(dim=1, keepdim=True, dtype=torch.float64)
        else:
            total = e.sum(dim=1, keepdim=True, dtype=torch.float64)
        cum = torch.cumsum(head_e, dim=1, dtype=torch.float64)
        before = torch.cat([cum.new_zeros(rows, 1), cum[:, :-1]], dim=1)  # exclusive prefix sums
        # The mass strictly above a head value: the prefix before the first member of its tie group.
        width = head.shape[1]
        positions = torch.arange(width, device=device)
        new_group = torch.ones(rows, width, dtype=torch.bool, device=device)
        new_group[:, 1:] = head[:, 1:] != head[:, :-1]
        group_start = torch.cummax(torch.where(new_group, positions, 0), dim=1).values
        mass_above = before.gather(1, group_start)
        kept_head = mass_above < p * total  # a prefix of the head, never empty
        last = kept_head.sum(dim=1, keepdim=True) - 1
        tau_p = torch.where(p >= 1, float("-inf"), head.gather(1, last))
        tau = tau_p if tau is None else torch.maximum(tau, tau_p)

    keep = None if tau is None else x >= tau
    if isinstance(min_p, torch.Tensor):
        mp = min_p.to(device=device, dtype=torch.float64).reshape(rows, 1)
        in_min_p = (e >= mp) | (mp <= 0)
        keep = in_min_p if keep is None else keep.logical_and_(in_min_p)
    elif min_p > 0:
        # A (1, 1) float64 tensor, not a Python number: the comparison must happen in float64.
        in_min_p = e >= torch.full((1, 1), min_p, dtype=torch.float64, device=device)
        keep = in_min_p if keep is None else keep.logical_and_(in_min_p)

    if greedy is not None:
        one_hot = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        one_hot.scatter_(1, x.argmax(dim=1, keepdim=True), True)
        keep = torch.where(greedy.unsqueeze(1), one_hot, True if keep is None else keep)
    return keep, scaled, e, greedy


@register_kernel("filter_logits", "torch")
def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """``l / T`` on the kept set and ``-inf`` elsewhere, as :func:`pyprobtf.reference.filter_logits`.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2).tolist()
    [[-inf, 3.0, 2.0]]
    """
    rows = logits.shape[0]
    C = _compute_dtype(logits.dtype)
    if _all_greedy(temperature, C):
        filtered = torch.full(logits.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
        return filtered.scatter_(1, logits.argmax(dim=1, keepdim=True), 0.0)
    keep, _, _, greedy = _kept(logits, temperature, top_k, top_p, min_p)
    t = _row_param(temperature, rows, C, logits.device).reshape(rows, 1)
    processed = logits.to(C) / (t if greedy is None else torch.where(t == 0, 1.0, t))
    if greedy is not None:
        processed = torch.where(greedy.unsqueeze(1), 0.0, processed)
    if keep is not None:
        processed = torch.where(keep, processed, float("-inf"))
    return processed.to(logits.dtype).contiguous()


@register_kernel("sample_logits", "torch")
def sample_logits(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, logprobs)``: the inverse-CDF draw of the kept set, as :func:`pyprobtf.reference.sample_logits`.

    The token of row ``b`` is the smallest index whose float64 cumulative kept
    mass in vocabulary order exceeds ``u_b * sum_A e`` (a ``searchsorted``).

    >>> tokens, _ = sample_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([0.75], dtype=torch.float64))
    >>> tokens.tolist()
    [1]
    """
    rows, cols = logits.shape
    C = _compute_dtype(logits.dtype)
    if _all_greedy(temperature, C):  # the first argmax (exact in the logits' own dtype), log-probability 0
        return logits.argmax(dim=1), torch.zeros(rows, dtype=C, device=logits.device)
    keep, scaled, e, greedy = _kept(logits, temperature, top_k, top_p, min_p)
    mass = e if keep is None else torch.where(keep, e, 0.0)
    cum = torch.cumsum(mass, dim=1, dtype=torch.float64)
    total = cum[:, -1:]
    target = uniform.to(device=logits.device, dtype=torch.float64).reshape(rows, 1) * total
    tokens = torch.searchsorted(cum, target, right=True)  # the first index with cum > target
    # u < 1, yet u * total may round up to total: then the last index with positive mass.
    positions = torch.arange(cols, device=logits.device)
    last_positive = torch.where(mass > 0, positions, -1).amax(dim=1, keepdim=True)
    tokens = torch.where(tokens < cols, tokens, last_positive).reshape(rows)
    if greedy is not None:
        tokens = torch.where(greedy, keep.to(torch.int8).argmax(dim=1), tokens)
    chosen = scaled.gather(1, tokens.unsqueeze(1)).squeeze(1).to(torch.float64)
    logprobs = chosen - torch.log(total.reshape(rows))
    if greedy is not None:
        logprobs = torch.where(greedy, 0.0, logprobs)
    return tokens, logprobs.to(C)


# ============================================================================ vq_nearest
# A float32 scan (float64 for float64 data) by blocked matrix products, a
# `topk` of c > k candidates per row, their float64 re-scoring, and an exact
# float64 pass for rows the scan cannot certify, as in the compiled backends
# (csrc/include/pyprobtf/vq_nearest.h, kernels/vq_nearest.py):
#
# - the scan's scores s~ = en + alpha * x.e (en = |e|^2 for l2, else 0; cosine
#   scans unit codes) are within a rigorous bound B of the exact ones; a row is
#   certified when its c-th best score is beyond the k-th best plus twice B
#   (with margin), so no code outside its candidates can be among the k best;
# - uncertified rows (more than c codes within the window, or values too large
#   for float32) are answered by an exact float64 scan — for at most
#   `_exact_capacity(n)` rows per call, picked on the device (lowest row index
#   first). Finding out whether more rows need it would read a value back to
#   the host, so rows beyond that capacity keep their float64 re-scored best
#   of the c candidates: within twice the window of the float64 optimum, the
#   exact answer whenever its float64 gap is larger than that.

# Scores per block of rows (and float64 candidate values): 16 MiB of float32 on a CPU, 64 MiB on a GPU,
# so memory stays O(N k + K) whatever N while a GPU gets few, large launches.
_BLOCK_ELEMENTS = {"cpu": 1 << 22}
_BLOCK_ELEMENTS_DEFAULT = 1 << 24


def _candidate_count(k: int, codes: int) -> int:
    """Candidates kept per row: as the Triton kernel, at least 8 and a power of two >= 2k."""
    return min(codes, max(8, 1 << max(0, (2 * k - 1).bit_length())))


def _exact_capacity(n: int) -> int:
    """Rows per call the exact float64 fallback can take without reading anything back.

    The pass runs on that many rows in every call (whether any needs it is not
    known on the host), so it is small: a float64 scan of 16 + N/1024 rows
    costs about 0.1% of the float32 scan of N rows at equal speed (several
    percent on GPUs with slow float64). Rows need it only when more than the
    kept candidates lie within about D 2^-22 (relative) of the k-th best: a
    codebook with many (near-)duplicate codes.
    """
    return min(n, 16 + n // 1024)


def _matmul_rounding() -> float:
    """The relative error of one float32 product in torch's matmul under the current precision setting."""
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0**-6  # bfloat16 inputs (8 significant bits, truncated or rounded)
    tf32 = precision == "high" or (torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32)
    return 2.0**-9 if tf32 else 0.0  # TF32 inputs keep 11 significant bits


def _select_k(dist: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (distance, then index; NaN last) of each row of candidates ``dist`` with codes ``idx``."""
    by_index = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, by_index), idx.gather(1, by_index)
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return idx.gather(1, order), dist.gather(1, order)


@register_kernel("vq_nearest", "torch")
def vq_nearest(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` codebook rows nearest to each row of ``x``, as :func:`pyprobtf.reference.vq_nearest`.

    Returns ``(indices, dist)``: int64 and float32, shape ``(N,)`` for ``k = 1``
    and ``(N, k)`` otherwise. Calls with NaN, inf or float64-overflowing values
    must be routed to the reference (its overflow rule) by the caller, as
    :mod:`pyprobtf.ops.vq_nearest` does for every backend.

    >>> codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    >>> vq_nearest(torch.tensor([[0.9, 0.8]]), codebook)[0].tolist()
    [1]
    """
    if metric not in METRICS:
        raise ValueError(f"vq_nearest: metric must be one of {METRICS}, got {metric!r}")
    n, dim = x.shape
    codes = codebook.shape[0]
    device = x.device
    indices = torch.empty(n, k, dtype=torch.int64, device=device)
    dist = torch.empty(n, k, dtype=torch.float32, device=device)
    if n > 0 and codes > 0 and dim == 0:  # every code at the same distance: the first k, in order
        indices.copy_(torch.arange(k, device=device).expand(n, k))
        dist.copy_(vq_distances(x, codebook[:1], metric, overflow_rule=False).to(torch.float32).expand(n, k))
    elif n > 0 and codes > 0:
        _vq_fill(x, codebook, metric, k, indices, dist)
    if k == 1:
        return indices[:, 0], dist[:, 0]
    return indices, dist


def _vq_fill(x, codebook, metric, k, indices, dist):
    n, dim = x.shape
    codes = codebook.shape[0]
    device = x.device
    double = x.dtype == torch.float64
    S = torch.float64 if double else torch.float32

    # Codebook side, O(K D).
    e64 = codebook.to(torch.float64)
    esq = (e64 * e64).sum(1)
    if metric == "cosine":
        scan_codes = (e64 / esq.sqrt().clamp_min(COSINE_EPS)[:, None]).to(S)
        offset = None
        e_max = torch.where(esq.isfinite().all(), 1.0 + 1e-6, math.nan)  # unit codes rounded to S
        m_max = torch.zeros((), dtype=torch.float64, device=device)
    else:
        scan_codes = codebook.to(S)
        e_max = esq.max().sqrt()
        if metric == "l2":
            offset = esq.to(S)
            m_max = esq.max() * (1.0 + 1e-6)  # en rounded to S
        else:
            offset = None
            m_max = torch.zeros((), dtype=torch.float64, device=device)
    alpha = -2.0 if metric == "l2" else -1.0
    u = 2.0**-53 if double else 2.0**-24
    rounding = 0.0 if double else _matmul_rounding()
    du = dim * u
    gamma = du / (1.0 - du) if du < 0.5 else math.inf
    x_coef = abs(alpha) * (gamma + 2.0 * u + rounding) * 1.01
    abs_term = (dim + 4) * (2.0**-1000 if double else 2.0**-125)  # products that underflow
    score_limit = 1e300 if double else 1e36

    c = _candidate_count(k, codes)
    per_row = max(codes, c * max(dim, 1))
    block_elements = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS_DEFAULT)
    block = max(1, min(n, block_elements // per_row))
    flagged = torch.empty(n, dtype=torch.bool, device=device)
    scan_t = scan_codes.T
    for start in range(0, n, block):
        stop = min(n, start + block)
        xb = x[start:stop]
        x64 = xb.to(torch.float64)
        if offset is None:
            scores = torch.mm(xb.to(S), scan_t).mul_(alpha)
        else:
            scores = torch.addmm(offset, xb.to(S), scan_t, alpha=alpha)
        cand_s, cand_j = torch.topk(scores, c, dim=1, largest=False, sorted=True)
        del scores
        # Certification: the c-th best beyond the k-th best plus the window (twice the doubled bound).
        xsq = (x64 * x64).sum(1)
        x_norm = xsq.sqrt()
        window = 4.0 * (x_coef * x_norm * e_max + 3.0 * u * m_max + abs_term)
        largest = m_max + abs(alpha) * x_norm * e_max
        ok = (xsq < math.inf) & (largest < score_limit) & (window < score_limit)
        if c < codes:
            thr = cand_s[:, k - 1].to(torch.float64) + window
            ok = ok & (cand_s[:, c - 1].to(torch.float64) > thr)
        flagged[start:stop] = ~ok

        # Re-score the candidates in float64 exactly as the reference computes distances.
        dot = torch.bmm(e64[cand_j], x64.unsqueeze(2)).squeeze(2)
        if metric == "l2":
            d = (xsq[:, None] - 2.0 * dot + esq[cand_j]).clamp_min_(0.0)
        elif metric == "cosine":
            xn = x64.norm(dim=1).clamp_min(COSINE_EPS)
            en = esq[cand_j].sqrt().clamp_min(COSINE_EPS)
            d = 1.0 - dot / (xn[:, None] * en)
        else:
            d = -dot
        best_j, best_d = _select_k(d, cand_j, k)
        indices[start:stop] = best_j
        dist[start:stop] = best_d.to(torch.float32)

    # Exact float64 pass for up to `capacity` uncertified rows, chosen on the device.
    capacity = _exact_capacity(n)
    rows = torch.sort(flagged.logical_not().to(torch.uint8), stable=True).indices[:capacity]
    redo = flagged[rows]
    exact_block = max(1, min(capacity, block_elements // (2 * codes)))  # float64 distances
    for start in range(0, capacity, exact_block):
        r = rows[start : start + exact_block]
        d = vq_distances(x[r], codebook, metric, overflow_rule=False)
        values, order = torch.sort(d, dim=1, stable=True)
        use = redo[start : start + exact_block, None]
        indices[r] = torch.where(use, order[:, :k], indices[r])
        dist[r] = torch.where(use, values[:, :k].to(torch.float32), dist[r])
