"""Triton kernels for sample_logits and filter_logits (contract in docs/ARCHITECTURE.md,
float computation in pyprobtf/reference/sampling.py).

Every pass runs one program per (row, chunk of CHUNK columns), so a small batch
with a large vocabulary spreads each row over many programs. The chunking
depends only on the row length, and every reduction across chunks is done in
a fixed order by a per-row program: results are batch-invariant. Nothing is
sorted: the top-k and top-p thresholds are found by radix selection on
order-preserving keys of the logits, RADIX_BITS bits per level, each level one
histogram pass (counts and float64 masses per digit, over the keys that share
the prefix chosen so far) and one per-row step that picks the digit.

Launch sequence (rows that are greedy or invalid skip the work):
  stats (B, C)      chunk maxima, first argmax, NaN / +inf flags
  setup (B,)        row maximum, parameters, status, the uniform, greedy tokens
  top-k: levels x [histogram (B, C), narrow (B,)]      (when some row has 0 < k < V)
  top-p: levels x [histogram (B, C), narrow (B,)]      (when some row has p < 1)
  mass (B, C)       kept mass per chunk   | filter_logits: write (B, C)
  draw (B, C)       the chunk holding the draw scans its columns
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 4096  # columns per program (a power of two, a multiple of TILE)
TILE = 256  # columns per loop step inside a program
RADIX_BITS = 4
BINS = 1 << RADIX_BITS


@triton.jit
def _order_key(x, KEY_BITS: tl.constexpr):
    """Order-preserving unsigned key of a float (-0.0 and +0.0 share one key)."""
    canonical = tl.where(x == 0, 0.0, x).to(x.dtype)
    if KEY_BITS == 32:
        u = canonical.to(tl.uint32, bitcast=True)
        key = tl.where((u >> 31) != 0, ~u, u | 0x80000000)
    else:
        u = canonical.to(tl.uint64, bitcast=True)
        key = tl.where((u >> 63) != 0, ~u, u | 0x8000000000000000)
    return key


@triton.jit
def _div(a, b):
    """a / b rounded to nearest (Triton's float32 `/` is approximate on GPUs)."""
    if a.dtype == tl.float64:
        q = a / b
    else:
        q = tl.math.div_rn(a, b)
    return q


@triton.jit
def _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE: tl.constexpr):
    mask = cols < n_cols
    x = tl.load(X + row * x_rs + cols * x_cs, mask=mask, other=float("-inf")).to(COMPUTE)
    return x, mask


# ----------------------------------------------------------------------------- stats and setup


@triton.jit
def _stats_kernel(X, x_rs, x_cs, n_cols, n_chunks, STAT_MAX, STAT_ARG, STAT_BAD,
                  COMPUTE: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    best = tl.full((), float("-inf"), COMPUTE)
    best_col = tl.full((), 0, tl.int64)
    bad = tl.full((), 0, tl.int32)
    for start in range(0, CHUNK, TILE):
        cols = chunk * CHUNK + start + tl.arange(0, TILE).to(tl.int64)
        x, mask = _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE)
        is_nan = x != x
        bad = bad | tl.max(tl.where(is_nan, 1, 0), axis=0) | tl.max(tl.where(x == float("inf"), 2, 0), axis=0)
        clean = tl.where(is_nan, float("-inf"), x)
        tile_max = tl.max(clean, axis=0)
        tile_col = tl.min(tl.where((clean == tile_max) & mask, cols, n_cols), axis=0)
        better = tile_max > best  # strictly: the earlier tile keeps ties (the first argmax)
        best_col = tl.where(better, tile_col, best_col)
        best = tl.where(better, tile_max, best)
    best_col = tl.where(best == float("-inf"), chunk * CHUNK, best_col)
    out = row * n_chunks + chunk
    tl.store(STAT_MAX + out, best)
    tl.store(STAT_ARG + out, best_col)
    tl.store(STAT_BAD + out, bad)


@triton.jit
def _setup_kernel(
    n_cols, n_chunks, STAT_MAX, STAT_ARG, STAT_BAD,
    T_PTR, t_stride, K_PTR, k_stride, P_PTR, p_stride, MP_PTR, mp_stride, U_PTR, u_stride, SEED_PTR, seed_stride,
    OFF_PTR, off_stride,
    ROW_M, ROW_T, ROW_ARG, ROW_U, ROW_P, ROW_MP, ROW_MODE, K_ACTIVE, K_TARGET, K_PREFIX, P_ACTIVE, P_PREFIX,
    P_KEEPALL, ROW_TK, ROW_THR, TOKENS, LOGPROBS, STATUS,
    HAS_U: tl.constexpr, PER_ROW_SEED: tl.constexpr, SAMPLE: tl.constexpr,
    COMPUTE: tl.constexpr, NC_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, NC_BLOCK)
    cmask = c < n_chunks
    maxima = tl.load(STAT_MAX + row * n_chunks + c, mask=cmask, other=float("-inf"))
    m = tl.max(maxima, axis=0)
    first = tl.min(tl.where((maxima == m) & cmask, c, NC_BLOCK), axis=0)
    argmax = tl.load(STAT_ARG + row * n_chunks + first, mask=first < n_chunks, other=0)
    flags = tl.load(STAT_BAD + row * n_chunks + c, mask=cmask, other=0)
    any_nan = tl.max(flags & 1, axis=0)
    any_pos_inf = tl.max(flags & 2, axis=0)

    # Every parameter arrives as a tensor (stride 0 for one number): Triton would
    # take a Python float as float32.
    t = tl.load(T_PTR + row * t_stride).to(tl.float64)
    k = tl.load(K_PTR + row * k_stride).to(tl.int64)
    p = tl.load(P_PTR + row * p_stride).to(tl.float64)
    mp = tl.load(MP_PTR + row * mp_stride).to(tl.float64)
    if HAS_U:
        u = tl.load(U_PTR + row * u_stride).to(tl.float64)
    else:
        seed = tl.load(SEED_PTR + row * seed_stride).to(tl.int64)
        counter = tl.load(OFF_PTR + row * off_stride).to(tl.int64)
        if not PER_ROW_SEED:
            counter = counter + row  # one seed for the batch: counter offset + b
        w0, w1, _, _ = tl.randint4x(seed, counter + tl.zeros((1,), tl.int64))
        bits = ((w0.to(tl.uint64) >> 5) << 26) | (w1.to(tl.uint64) >> 6)
        u = tl.sum(bits.to(tl.float64), axis=0) * 1.1102230246251565e-16  # 2^-53

    # The first failing check, in the order of pyprobtf/ops/sampling.py.
    status = tl.where(any_nan != 0, 6, tl.where(any_pos_inf != 0, 7, tl.where(m == float("-inf"), 8, 0)))
    if SAMPLE:
        status = tl.where((u >= 0.0) & (u < 1.0), status, 5)
    status = tl.where((mp >= 0.0) & (mp < 1.0), status, 4)
    status = tl.where((p > 0.0) & (p <= 1.0), status, 3)
    status = tl.where(k >= 0, status, 2)
    status = tl.where((t >= 0.0) & (t <= 1.7976931348623157e308), status, 1)
    tl.store(STATUS + row, status.to(tl.int32))

    t_c = t.to(COMPUTE)
    greedy = t_c == 0.0
    ok = status == 0
    work = ok & (~greedy)
    tl.store(ROW_M + row, m)
    tl.store(ROW_T + row, t_c)
    tl.store(ROW_ARG + row, argmax)
    tl.store(ROW_U + row, u)
    tl.store(ROW_P + row, p)
    tl.store(ROW_MP + row, mp)
    tl.store(ROW_MODE + row, tl.where(work, 1, tl.where(ok, 2, 0)).to(tl.int32))  # 1 sample, 2 greedy, 0 bad
    tl.store(K_ACTIVE + row, (work & (k > 0) & (k < n_cols)).to(tl.int32))
    tl.store(K_TARGET + row, k.to(tl.float64))
    tl.store(K_PREFIX + row, tl.zeros((), tl.int64))
    tl.store(P_ACTIVE + row, (work & (p < 1.0)).to(tl.int32))
    tl.store(P_PREFIX + row, tl.zeros((), tl.int64))
    tl.store(P_KEEPALL + row, tl.zeros((), tl.int32))
    tl.store(ROW_TK + row, tl.zeros((), tl.int64))
    tl.store(ROW_THR + row, tl.zeros((), tl.int64))
    if SAMPLE:
        tl.store(TOKENS + row, tl.where(ok, tl.where(greedy, argmax, 0), -1))
        tl.store(LOGPROBS + row, tl.where(ok, 0.0, float("nan")).to(LOGPROBS.dtype.element_ty))


# ----------------------------------------------------------------------------- radix selection


@triton.jit
def _histogram_kernel(
    X, x_rs, x_cs, n_cols, n_chunks, ROW_M, ROW_T, ACTIVE, PREFIX, ROW_LOW, PART_N, PART_W, shift,
    USE_LOW: tl.constexpr, KEY_BITS: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr,
    TILE: tl.constexpr, BINS: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """Counts and float64 masses, per digit (bits [shift, shift + RADIX_BITS) of the key), of
    the chunk's columns whose key agrees with the row's prefix above the digit (and is at least
    the row's lower bound when USE_LOW)."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    if tl.load(ACTIVE + row) != 0:
        key_ty = tl.uint32 if KEY_BITS == 32 else tl.uint64
        m = tl.load(ROW_M + row)
        t = tl.load(ROW_T + row)
        prefix = tl.load(PREFIX + row).to(tl.uint64, bitcast=True).to(key_ty)
        low = tl.load(ROW_LOW + row).to(tl.uint64, bitcast=True).to(key_ty)
        bins = tl.arange(0, BINS)
        counts = tl.zeros((BINS,), tl.int32)
        masses = tl.zeros((BINS,), tl.float64)
        for start in range(0, CHUNK, TILE):
            cols = chunk * CHUNK + start + tl.arange(0, TILE).to(tl.int64)
            x, mask = _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE)
            key = _order_key(x, KEY_BITS)
            shifted = key >> shift
            member = mask & ((shifted >> RADIX_BITS) == prefix)
            if USE_LOW:
                member = member & (key >= low)
            e = tl.exp(_div(x - m, t)).to(tl.float64)
            onehot = member[:, None] & ((shifted & (BINS - 1)).to(tl.int32)[:, None] == bins[None, :])
            counts += tl.sum(onehot.to(tl.int32), axis=0)
            masses += tl.sum(tl.where(onehot, e[:, None], 0.0), axis=0)
        out = (row * n_chunks + chunk) * BINS + bins
        tl.store(PART_N + out, counts)
        tl.store(PART_W + out, masses)


@triton.jit
def _narrow_kernel(
    n_chunks, PART_N, PART_W, ACTIVE, PREFIX, TARGET, KEEPALL, ROW_P, ROW_TK, ROW_THR,
    BY_MASS: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr, NC_BLOCK: tl.constexpr,
    BINS: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """Pick the digit holding the target (counts for top-k, masses for top-p) and extend the prefix."""
    row = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + row) != 0:
        c = tl.arange(0, NC_BLOCK)
        bins = tl.arange(0, BINS)
        offs = (row * n_chunks + c[:, None]) * BINS + bins[None, :]
        cmask = (c < n_chunks)[:, None]
        counts = tl.sum(tl.load(PART_N + offs, mask=cmask, other=0), axis=0)
        masses = tl.sum(tl.load(PART_W + offs, mask=cmask, other=0.0), axis=0)
        if BY_MASS:
            weights = masses
            if FIRST:  # the first level sees all of K: the target is top_p * sum_K pi
                target = tl.load(ROW_P + row) * tl.sum(masses, axis=0)
            else:
                target = tl.load(TARGET + row)
        else:
            weights = counts.to(tl.float64)
            target = tl.load(TARGET + row)
        # above[b]: the weight of the digits above b, summed from the top digit down.
        higher = bins[None, :] > bins[:, None]
        above = tl.sum(tl.where(higher, weights[None, :], 0.0), axis=1)
        fits = (counts > 0) & (above + weights >= target)
        chosen = tl.max(tl.where(fits, bins, -1), axis=0)
        found = chosen >= 0
        chosen_above = tl.sum(tl.where(bins == chosen, above, 0.0), axis=0)
        prefix = tl.load(PREFIX + row)
        new_prefix = (prefix << RADIX_BITS) | tl.where(found, chosen, 0).to(tl.int64)
        tl.store(PREFIX + row, new_prefix)
        tl.store(TARGET + row, target - chosen_above)
        if BY_MASS:
            # Rounding left the target above all the mass: top-p keeps every token of K.
            keepall = tl.load(KEEPALL + row) | tl.where(found, 0, 1)
            tl.store(KEEPALL + row, keepall)
            if LAST:
                tk = tl.load(ROW_TK + row)
                tp = tl.where(keepall != 0, tk, new_prefix)
                tk_u = tk.to(tl.uint64, bitcast=True)
                tp_u = tp.to(tl.uint64, bitcast=True)
                tl.store(ROW_THR + row, tl.where(tp_u > tk_u, tp, tk))
        else:
            if LAST:
                tl.store(ROW_TK + row, new_prefix)
                tl.store(ROW_THR + row, new_prefix)


# ----------------------------------------------------------------------------- kept mass, output, draw


@triton.jit
def _kept(x, m, t, thr, mp, KEY_BITS: tl.constexpr):
    e = tl.exp(_div(x - m, t))
    key_ty = tl.uint32 if KEY_BITS == 32 else tl.uint64
    keep = (_order_key(x, KEY_BITS) >= thr.to(tl.uint64, bitcast=True).to(key_ty)) & (e.to(tl.float64) >= mp)
    return e, keep


@triton.jit
def _mass_kernel(X, x_rs, x_cs, n_cols, n_chunks, ROW_M, ROW_T, ROW_THR, ROW_MP, ROW_MODE, CHUNK_MASS,
                 KEY_BITS: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    if tl.load(ROW_MODE + row) == 1:
        m = tl.load(ROW_M + row)
        t = tl.load(ROW_T + row)
        thr = tl.load(ROW_THR + row)
        mp = tl.load(ROW_MP + row)
        total = tl.zeros((), tl.float64)
        for start in range(0, CHUNK, TILE):
            cols = chunk * CHUNK + start + tl.arange(0, TILE).to(tl.int64)
            x, mask = _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE)
            e, keep = _kept(x, m, t, thr, mp, KEY_BITS)
            total += tl.sum(tl.where(keep & mask, e.to(tl.float64), 0.0), axis=0)
        tl.store(CHUNK_MASS + row * n_chunks + chunk, total)


@triton.jit
def _write_kernel(X, x_rs, x_cs, n_cols, ROW_M, ROW_T, ROW_THR, ROW_MP, ROW_MODE, ROW_ARG, OUT,
                  KEY_BITS: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr):
    """filter_logits: l / T on the kept set, -inf elsewhere; greedy rows 0 at the argmax; bad rows NaN."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    mode = tl.load(ROW_MODE + row)
    m = tl.load(ROW_M + row)
    t = tl.load(ROW_T + row)
    thr = tl.load(ROW_THR + row)
    mp = tl.load(ROW_MP + row)
    argmax = tl.load(ROW_ARG + row)
    safe_t = tl.where(t == 0, 1.0, t).to(t.dtype)
    for start in range(0, CHUNK, TILE):
        cols = chunk * CHUNK + start + tl.arange(0, TILE).to(tl.int64)
        x, mask = _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE)
        e, keep = _kept(x, m, safe_t, thr, mp, KEY_BITS)
        sampled = tl.where(keep, _div(x, safe_t), float("-inf"))
        greedy = tl.where(cols == argmax, 0.0, float("-inf"))
        out = tl.where(mode == 1, sampled, tl.where(mode == 2, greedy, float("nan")))
        tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _draw_kernel(X, x_rs, x_cs, n_cols, n_chunks, ROW_M, ROW_T, ROW_THR, ROW_MP, ROW_MODE, ROW_U, CHUNK_MASS,
                 TOKENS, LOGPROBS, KEY_BITS: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr,
                 TILE: tl.constexpr, NC_BLOCK: tl.constexpr):
    """The chunk where the cumulative kept mass passes u * (kept mass) finds the column."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    if tl.load(ROW_MODE + row) == 1:
        c = tl.arange(0, NC_BLOCK)
        chunk_mass = tl.load(CHUNK_MASS + row * n_chunks + c, mask=c < n_chunks, other=0.0)
        inclusive = tl.cumsum(chunk_mass, axis=0)
        total = tl.sum(tl.where(c == n_chunks - 1, inclusive, 0.0), axis=0)
        target = tl.load(ROW_U + row) * total
        crossing = tl.min(tl.where((inclusive > target) & (c < n_chunks), c, NC_BLOCK), axis=0)
        last_with_mass = tl.max(tl.where(chunk_mass > 0, c, -1), axis=0)
        found_chunk = crossing < NC_BLOCK
        mine = tl.where(found_chunk, crossing, last_with_mass)
        if mine == chunk:
            m = tl.load(ROW_M + row)
            t = tl.load(ROW_T + row)
            thr = tl.load(ROW_THR + row)
            mp = tl.load(ROW_MP + row)
            cum = tl.sum(tl.where(c < chunk, chunk_mass, 0.0), axis=0)
            token = tl.full((), -1, tl.int64)
            last = tl.full((), -1, tl.int64)
            for start in range(0, CHUNK, TILE):
                cols = chunk * CHUNK + start + tl.arange(0, TILE).to(tl.int64)
                x, mask = _load_x(X, row, cols, x_rs, x_cs, n_cols, COMPUTE)
                e, keep = _kept(x, m, t, thr, mp, KEY_BITS)
                w = tl.where(keep & mask, e.to(tl.float64), 0.0)
                running = cum + tl.cumsum(w, axis=0)
                hit = tl.min(tl.where((running > target) & (w > 0), cols, n_cols), axis=0)
                token = tl.where((token < 0) & (hit < n_cols), hit, token)
                last = tl.maximum(last, tl.max(tl.where(w > 0, cols, -1), axis=0))
                cum = cum + tl.sum(w, axis=0)
            # Rounding left u * mass just above the sum of this chunk: take its last kept column.
            token = tl.where(token < 0, last, token)
            x_t = tl.load(X + row * x_rs + token * x_cs).to(COMPUTE)
            logprob = _div(x_t - m, t).to(tl.float64) - tl.log(total)
            tl.store(TOKENS + row, token)
            tl.store(LOGPROBS + row, logprob.to(LOGPROBS.dtype.element_ty))


# ----------------------------------------------------------------------------- launcher


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _row_tensor(param, dtype, device):
    """(tensor, stride): a per-row tensor, or one number as a 1-element tensor read with stride 0."""
    tensor, number = param
    if tensor is None:
        return torch.full((1,), number, dtype=dtype, device=device), 0  # a fill, not a copy: CUDA-graph safe
    return tensor, tensor.stride(0)


def run(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered) -> None:
    """Fill ``tokens``/``logprobs``/``status`` (sample_logits) or ``filtered``/``status`` (filter_logits).

    ``params`` maps temperature, top_k, top_p, min_p to (tensor or None, number);
    ``uniform`` is a float64 (B,) tensor or None, then ``seed`` and ``offset``
    (each (tensor or None, number)) give the Philox uniforms.
    """
    rows, cols = logits.shape
    if rows == 0:
        return
    device = logits.device
    C = torch.float64 if logits.dtype == torch.float64 else torch.float32
    key_bits = 64 if C == torch.float64 else 32
    levels = key_bits // RADIX_BITS
    # Short rows get one short chunk. The cut depends on the row length only.
    chunk = min(CHUNK, max(16, triton.next_power_of_2(cols)))
    tile = min(TILE, chunk)
    n_chunks = triton.cdiv(cols, chunk)
    nc_block = triton.next_power_of_2(n_chunks)
    grid = (rows, n_chunks)
    sample = filtered is None
    x_args = (logits, logits.stride(0), logits.stride(1), cols)
    compute = _compute(logits.dtype)

    def empty(dtype, *shape):
        return torch.empty(*shape, dtype=dtype, device=device)

    stat_max, stat_arg, stat_bad = empty(C, rows, n_chunks), empty(torch.int64, rows, n_chunks), empty(
        torch.int32, rows, n_chunks)
    _stats_kernel[grid](*x_args, n_chunks, stat_max, stat_arg, stat_bad, COMPUTE=compute, CHUNK=chunk, TILE=tile)

    row_m, row_t, row_arg, row_u = empty(C, rows), empty(C, rows), empty(torch.int64, rows), empty(torch.float64, rows)
    row_p, row_mp, row_mode = empty(torch.float64, rows), empty(torch.float64, rows), empty(torch.int32, rows)
    k_active, k_target, k_prefix = empty(torch.int32, rows), empty(torch.float64, rows), empty(torch.int64, rows)
    p_active, p_target, p_prefix = empty(torch.int32, rows), empty(torch.float64, rows), empty(torch.int64, rows)
    p_keepall, row_tk, row_thr = empty(torch.int32, rows), empty(torch.int64, rows), empty(torch.int64, rows)
    f64, i64 = torch.float64, torch.int64
    has_u = uniform is not None
    out_tokens = tokens if sample else row_arg
    out_logprobs = logprobs if sample else row_u
    _setup_kernel[(rows,)](
        cols, n_chunks, stat_max, stat_arg, stat_bad,
        *_row_tensor(params["temperature"], f64, device), *_row_tensor(params["top_k"], i64, device),
        *_row_tensor(params["top_p"], f64, device), *_row_tensor(params["min_p"], f64, device),
        *((uniform, uniform.stride(0)) if has_u else (row_u, 0)),
        *_row_tensor(seed, i64, device), *_row_tensor(offset, i64, device),
        row_m, row_t, row_arg, row_u, row_p, row_mp, row_mode, k_active, k_target, k_prefix, p_active, p_prefix,
        p_keepall, row_tk, row_thr, out_tokens, out_logprobs, status,
        HAS_U=has_u, PER_ROW_SEED=seed[0] is not None, SAMPLE=sample, COMPUTE=compute, NC_BLOCK=nc_block,
    )

    # The searches run only when some row can need them (per-row tensors: always).
    k_tensor, k_number = params["top_k"]
    p_tensor, p_number = params["top_p"]
    part_n = empty(torch.int32, rows, n_chunks, BINS)
    part_w = empty(torch.float64, rows, n_chunks, BINS)
    common = dict(KEY_BITS=key_bits, COMPUTE=compute, CHUNK=chunk, TILE=tile, BINS=BINS, RADIX_BITS=RADIX_BITS)
    searches = []
    if k_tensor is not None or 0 < k_number < cols:
        searches.append((k_active, k_prefix, k_target, False))
    if p_tensor is not None or p_number < 1.0:
        searches.append((p_active, p_prefix, p_target, True))
    for active, prefix, target, by_mass in searches:
        for level in range(levels):
            shift = key_bits - RADIX_BITS * (level + 1)
            _histogram_kernel[grid](*x_args, n_chunks, row_m, row_t, active, prefix, row_tk, part_n, part_w, shift,
                                    USE_LOW=by_mass, **common)
            _narrow_kernel[(rows,)](
                n_chunks, part_n, part_w, active, prefix, target, p_keepall, row_p, row_tk, row_thr,
                BY_MASS=by_mass, FIRST=level == 0, LAST=level == levels - 1, NC_BLOCK=nc_block, BINS=BINS,
                RADIX_BITS=RADIX_BITS,
            )

    kept_args = (row_m, row_t, row_thr, row_mp, row_mode)
    if not sample:
        _write_kernel[grid](*x_args, *kept_args, row_arg, filtered, KEY_BITS=key_bits, COMPUTE=compute,
                            CHUNK=chunk, TILE=tile)
        return
    chunk_mass = empty(torch.float64, rows, n_chunks)
    _mass_kernel[grid](*x_args, n_chunks, *kept_args, chunk_mass, KEY_BITS=key_bits, COMPUTE=compute, CHUNK=chunk,
                       TILE=tile)
    _draw_kernel[grid](*x_args, n_chunks, *kept_args, row_u, chunk_mass, tokens, logprobs, KEY_BITS=key_bits,
                       COMPUTE=compute, CHUNK=chunk, TILE=tile, NC_BLOCK=nc_block)
