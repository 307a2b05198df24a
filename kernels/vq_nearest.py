"""Triton kernels for vq_nearest (contract in docs/ARCHITECTURE.md).

Same scheme as the C++ and CUDA kernels (csrc/include/pyprobtf/vq_nearest.h):

1. ``_scan_kernel``: one program per BLOCK_M rows streams the codebook in
   BLOCK_N-code tiles; ``tl.dot`` computes the scores ``en + alpha * x.e``
   (IEEE float32, TF32 tensor cores with ``fast``, tensor cores with float32
   sums for half data; plain float64 FMAs for float64 data), and each row
   keeps its CAND best approximate scores (ties to the lower index). Then, per row, the candidates within twice the rigorous
   error bound of the k-th best are re-scored in float64 and the k best
   written. A row is flagged for the exact scan when its CAND-th best is
   itself within the window (more near-ties than kept), or its values are not
   finite or too large for the scan.
2. ``_exact_kernel``: flagged rows only (other programs return at once) take
   the k best of all codes in float64, one pass per rank: each pass finds the
   smallest (NaN last, distance, index) key after the previous rank's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

COSINE_EPS = 1e-12
# Candidates kept per row by the scan (a power of two, at least 2k).
MIN_CANDIDATES = 8
_BIG = tl.constexpr(2**31 - 1)  # constexpr: compiled kernels may read only constexpr globals


@triton.jit
def _distance(dot, xsq, enorm, METRIC: tl.constexpr):
    """The contract's distance in float64 (enorm = |e|^2 for l2, |e| for cosine)."""
    if METRIC == 0:
        d = xsq - 2.0 * dot + enorm
        d = tl.where(d < 0.0, 0.0, d)  # NaN stays NaN
    elif METRIC == 1:
        xn = tl.sqrt(xsq)
        xn = tl.where(xn < 1e-12, 1e-12, xn)
        en = tl.where(enorm < 1e-12, 1e-12, enorm)
        d = 1.0 - dot / (xn * en)
    else:
        d = -dot
    return d


@triton.jit
def _count(mask, axis: tl.constexpr):
    """How many of ``mask`` are true along ``axis``, as float32 (exact up to 2^24).

    Not ``tl.sum(mask.to(tl.int32))``: LLVM turns that into a popcount of the
    mask's bits packed through a local-memory slot, an 8-byte stack frame
    that ptxas reports on sm_86 to sm_121."""
    return tl.sum(tl.where(mask, 1.0, 0.0), axis=axis)


@triton.jit
def _outer_product_sum(X, x_rs, x_cs, rows, rmask, E, e_rs, e_cs, cols, cmask, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x . e for a BLOCK_M x BLOCK_N tile in float64, one rank-1 update per column
    (plain FMAs: tl.dot's float64 support varies across GPUs and Triton versions)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    for d in range(0, D):
        xc = tl.load(X + rows * x_rs + d * x_cs, mask=rmask, other=0.0).to(tl.float64)
        ec = tl.load(E + cols * e_rs + d * e_cs, mask=cmask, other=0.0).to(tl.float64)
        acc += xc[:, None] * ec[None, :]
    return acc


@triton.jit
def _scan_kernel(
    X, x_rs, x_cs, E, e_rs, e_cs, OFFSET, EO, eo_rs, eo_cs, NORM, META,
    IDX, DIST, FLAG,
    N, K, D, k, alpha, alpha_abs, x_coef, m_coef, abs_term, score_limit,
    METRIC: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAND: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    slot = tl.arange(0, CAND)

    # |x|^2 in float64 (for the bound and the exact distances).
    xsq = tl.zeros([BLOCK_M], dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        dm = d0 + dcols < D
        xv = tl.load(X + rows[:, None] * x_rs + (d0 + dcols)[None, :] * x_cs, mask=rmask[:, None] & dm[None, :],
                     other=0.0).to(tl.float64)
        xsq += tl.sum(xv * xv, axis=1)

    # The CAND best approximate scores per row: an unordered list; empty slots
    # hold +inf with distinct negative indices, so exactly one is replaced at a time.
    best_s = tl.full([BLOCK_M, CAND], float("inf"), ACC)
    best_j = -1 - tl.zeros([BLOCK_M, CAND], dtype=tl.int32) - slot[None, :]
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < K
        if DOT == tl.float64:
            acc = _outer_product_sum(X, x_rs, x_cs, rows, rmask, E, e_rs, e_cs, cols, cmask, D, BLOCK_M, BLOCK_N)
        else:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            for d0 in range(0, D, BLOCK_D):
                dm = d0 + dcols < D
                xt = tl.load(X + rows[:, None] * x_rs + (d0 + dcols)[None, :] * x_cs,
                             mask=rmask[:, None] & dm[None, :], other=0.0).to(DOT)
                et = tl.load(E + cols[:, None] * e_rs + (d0 + dcols)[None, :] * e_cs,
                             mask=cmask[:, None] & dm[None, :], other=0.0).to(DOT)
                if DOT == tl.float32:
                    acc = tl.dot(xt, tl.trans(et), acc, input_precision=PRECISION)
                else:  # float16/bfloat16 data: exact products, float32 sums
                    acc = tl.dot(xt, tl.trans(et), acc)
        offset = tl.load(OFFSET + cols, mask=cmask, other=float("inf")).to(ACC)
        s = offset[None, :] + alpha * acc
        s = tl.where(cmask[None, :], s, float("inf"))
        # Insert the tile's best codes one at a time while any row's best remaining
        # score beats its worst kept one: at most CAND + 1 passes (a row takes at
        # most CAND codes of a tile), usually one or two once the list has filled.
        # A runtime loop, not tl.static_range: unrolling CAND passes of five
        # BLOCK_M x BLOCK_N reductions took minutes to compile and spilled.
        m = tl.min(s, axis=1)
        worst = tl.max(best_s, axis=1)
        while _count(m < worst, 0) > 0:
            j = tl.min(tl.where(s == m[:, None], cols[None, :], _BIG), axis=1)
            worst_j = tl.max(tl.where(best_s == worst[:, None], best_j, -_BIG), axis=1)
            enter = m < worst  # codes come in increasing index order: equal scores stay out
            hit = enter[:, None] & (best_s == worst[:, None]) & (best_j == worst_j[:, None])
            best_s = tl.where(hit, m[:, None], best_s)
            best_j = tl.where(hit, j[:, None], best_j)
            s = tl.where(cols[None, :] == j[:, None], float("inf"), s)
            m = tl.min(s, axis=1)
            worst = tl.max(best_s, axis=1)

    # Threshold: the k-th best approximate score plus the window.
    tmp_s = best_s
    tmp_j = best_j
    kth = tl.zeros([BLOCK_M], dtype=ACC)
    for _ in range(0, k):
        kth = tl.min(tmp_s, axis=1)
        jj = tl.min(tl.where(tmp_s == kth[:, None], tmp_j, _BIG), axis=1)
        tmp_s = tl.where(tmp_j == jj[:, None], float("inf"), tmp_s)
    e_max = tl.load(META + 0)
    m_max = tl.load(META + 1)
    # Twice the rounding-error bound of the scores (vq_score_error_bound in vq_nearest.h).
    x_norm = tl.sqrt(xsq)
    window = 2.0 * (2.0 * (x_coef * x_norm * e_max + m_coef * m_max + abs_term))
    thr = kth.to(tl.float64) + window
    largest = m_max + alpha_abs * x_norm * e_max
    # (a non-finite code makes e_max or m_max NaN or inf: every row then goes to the exact scan)
    ok = (xsq < float("inf")) & (largest < score_limit) & (window < score_limit)
    flagged = ~ok
    if K > CAND:  # codes beyond the list could be within the window
        flagged = flagged | (tl.max(best_s, axis=1).to(tl.float64) <= thr)

    # Re-score the candidates within the threshold in float64.
    cand = (best_s.to(tl.float64) <= thr[:, None]) & (best_j >= 0)
    dist = tl.full([BLOCK_M, CAND], float("inf"), tl.float64)
    for c in range(0, CAND):  # a runtime loop, for the same reason as the insertion's
        j = tl.sum(tl.where(slot[None, :] == c, best_j, 0), axis=1)
        use = _count((slot[None, :] == c) & cand, 1) > 0
        jl = tl.where(use, j, 0).to(tl.int64)
        dot = tl.zeros([BLOCK_M], dtype=tl.float64)
        for d0 in range(0, D, BLOCK_D):
            dm = d0 + dcols < D
            lm = (rmask & use)[:, None] & dm[None, :]
            xv = tl.load(X + rows[:, None] * x_rs + (d0 + dcols)[None, :] * x_cs, mask=lm, other=0.0).to(tl.float64)
            ev = tl.load(EO + jl[:, None] * eo_rs + (d0 + dcols)[None, :] * eo_cs, mask=lm, other=0.0).to(tl.float64)
            dot += tl.sum(xv * ev, axis=1)
        enorm = tl.load(NORM + jl, mask=rmask & use, other=0.0)
        dc = _distance(dot, xsq, enorm, METRIC)
        dist = tl.where((slot[None, :] == c) & use[:, None], dc[:, None], dist)
    write = rmask & ~flagged
    for t in range(0, k):
        m = tl.min(dist, axis=1)
        jj = tl.min(tl.where(dist == m[:, None], best_j, _BIG), axis=1)
        tl.store(IDX + rows * k + t, jj.to(tl.int64), mask=write)
        tl.store(DIST + rows * k + t, m.to(tl.float32), mask=write)
        dist = tl.where(best_j == jj[:, None], float("inf"), dist)
    tl.store(FLAG + rows, flagged.to(tl.int32), mask=rmask)


@triton.jit
def _exact_kernel(
    X, x_rs, x_cs, EO, eo_rs, eo_cs, NORM, FLAG, IDX, DIST, N, K, D, k,
    METRIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    flagged = (tl.load(FLAG + rows, mask=rmask, other=0) != 0) & rmask
    if _count(flagged, 0) > 0:
        dcols = tl.arange(0, BLOCK_D)
        xsq = tl.zeros([BLOCK_M], dtype=tl.float64)
        for d0 in range(0, D, BLOCK_D):
            dm = d0 + dcols < D
            xv = tl.load(X + rows[:, None] * x_rs + (d0 + dcols)[None, :] * x_cs,
                         mask=flagged[:, None] & dm[None, :], other=0.0).to(tl.float64)
            xsq += tl.sum(xv * xv, axis=1)
        # Keys (nan flag, distance, index), ordered lexicographically; one pass per rank.
        prev_n = tl.full([BLOCK_M], -1, tl.int32)
        prev_d = tl.full([BLOCK_M], float("-inf"), tl.float64)
        prev_j = tl.full([BLOCK_M], -1, tl.int32)
        for t in range(0, k):
            best_n = tl.full([BLOCK_M], 2, tl.int32)
            best_d = tl.full([BLOCK_M], float("inf"), tl.float64)
            best_j = tl.full([BLOCK_M], _BIG, tl.int32)
            for n0 in range(0, K, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                cmask = cols < K
                dot = _outer_product_sum(X, x_rs, x_cs, rows, flagged, EO, eo_rs, eo_cs, cols, cmask, D,
                                         BLOCK_M, BLOCK_N)
                enorm = tl.load(NORM + cols, mask=cmask, other=0.0)
                d = _distance(dot, xsq[:, None], enorm[None, :], METRIC)
                isnan = d != d
                kn = isnan.to(tl.int32)
                kd = tl.where(isnan, 0.0, d)
                after = (kn > prev_n[:, None]) | ((kn == prev_n[:, None]) & (
                    (kd > prev_d[:, None]) | ((kd == prev_d[:, None]) & (cols[None, :] > prev_j[:, None]))))
                ok = after & cmask[None, :]
                # bn = min over ok of kn (2 when none), counted: a min of these 0/1/2 values
                # was narrowed by LLVM to packed 16-bit lanes through a local-memory slot.
                bn = tl.where(_count(ok & ~isnan, 1) > 0, 0, tl.where(_count(ok & isnan, 1) > 0, 1, 2))
                ok = ok & (kn == bn[:, None])
                bd = tl.min(tl.where(ok, kd, float("inf")), axis=1)
                ok = ok & (kd == bd[:, None])
                bj = tl.min(tl.where(ok, cols[None, :], _BIG), axis=1)
                better = (bn < best_n) | ((bn == best_n) & ((bd < best_d) | ((bd == best_d) & (bj < best_j))))
                best_n = tl.where(better, bn, best_n)
                best_d = tl.where(better, bd, best_d)
                best_j = tl.where(better, bj, best_j)
            out_d = tl.where(best_n > 0, float("nan"), best_d)
            tl.store(IDX + rows * k + t, best_j.to(tl.int64), mask=flagged)
            tl.store(DIST + rows * k + t, out_d.to(tl.float32), mask=flagged)
            prev_n = best_n
            prev_d = best_d
            prev_j = best_j


def _next_power_of_2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _tiles(double: bool, fma_dot: bool, interpreting: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, maxnreg) of both kernels.

    On a GPU: 64 x 64 score tiles (32 x 32 for float64, whose scan is plain FMAs)
    shared by 8 warps, and BLOCK_D = 16: float32 ``ieee`` dots are FMAs whose
    operands each thread holds for a whole BLOCK_D slice (BLOCK_D = 32 took 255
    registers and spilled); 16 is also tl.dot's smallest K, and the tile's reuse
    of each loaded code (64 rows) is unchanged. The register cap is explicit
    (255, what any kernel may use): without one, ptxas aimed at occupancy and
    spilled at 40 to 128 registers; a spill is local-memory traffic in the hot
    loop, which costs more than the second program per SM that a 128-register
    cap would allow (and that cap spilled too, at 64 x 64 tiles). float32 ``ieee``
    scores (``fma_dot``) take 64 x 32 tiles: at 64 x 64 their FMA operands and
    accumulator reached 255 registers and spilled 4 bytes on sm_90; halving
    BLOCK_N keeps each code tile's reuse over 64 rows (the codebook traffic) and
    only re-reads the rows' L1-resident tile twice as often.
    scripts/kernel_resources.py checks every specialisation for spills.
    """
    if interpreting:  # small tiles: the interpreter's cost grows with the tile, not the parallelism
        return 16, 16, 16, 4, None
    block_m, block_n = (32, 32) if double else (64, 32) if fma_dot else (64, 64)
    return block_m, block_n, 16, 8, 255


def forward(x, codebook, indices, dist, metric: int, fast: bool) -> None:
    """Fill ``indices`` (N, k) int64 and ``dist`` (N, k) float32 for ``x`` (N, D) and ``codebook`` (K, D)."""
    n, dim = x.shape
    codes, k = codebook.shape[0], indices.shape[1]
    if n == 0:
        return
    device = x.device
    double = x.dtype == torch.float64
    half = x.dtype in (torch.float16, torch.bfloat16)

    # Codebook side, O(K D), on the device, without synchronising.
    e64 = codebook.to(torch.float64)
    esq = (e64 * e64).sum(1)
    acc_dtype = torch.float64 if double else torch.float32
    if metric == 1:  # cosine: scan unit codes
        norm = esq.sqrt()
        scan_codes = (e64 / norm.clamp_min(COSINE_EPS)[:, None]).to(acc_dtype)
        offset = torch.zeros(codes, dtype=acc_dtype, device=device)
        e_max = torch.where(esq.isfinite().all(), 1.0 + 1e-6, float("nan")).to(torch.float64)
        m_max = torch.zeros((), dtype=torch.float64, device=device)
    else:
        norm = esq
        scan_codes = codebook
        e_max = esq.max().sqrt()
        if metric == 0:
            offset = esq.to(acc_dtype)
            m_max = esq.max() * (1.0 + 1e-6)  # en rounded to the scan's type
        else:
            offset = torch.zeros(codes, dtype=acc_dtype, device=device)
            m_max = torch.zeros((), dtype=torch.float64, device=device)
    meta = torch.stack([e_max, m_max]).to(torch.float64)  # E and M of the bound

    if double:
        dot_dtype, u, rounding = tl.float64, 2.0**-53, 0.0
    elif half and metric != 1:
        # Half data: exact products; tensor-core sums may truncate, so u is doubled.
        dot_dtype, u, rounding = (tl.float16 if x.dtype == torch.float16 else tl.bfloat16), 2.0**-23, 0.0
    elif fast:
        # TF32 inputs keep 10 mantissa bits (truncated or rounded): each product is off by < 2^-9.
        dot_dtype, u, rounding = tl.float32, 2.0**-23, 2.0**-9
    else:
        dot_dtype, u, rounding = tl.float32, 2.0**-24, 0.0
    alpha = -2.0 if metric == 0 else -1.0
    du = dim * u
    gamma = du / (1.0 - du) if du < 0.5 else float("inf")
    x_coef = abs(alpha) * (gamma + 2.0 * u + rounding) * 1.01
    abs_term = (dim + 4) * (2.0**-1000 if double else 2.0**-125)  # products that underflow (or flush to zero)
    score_limit = 1e300 if double else 1e36

    flags = torch.empty(n, dtype=torch.int32, device=device)
    cand = max(MIN_CANDIDATES, _next_power_of_2(2 * k))
    block_m, block_n, block_d, warps, max_registers = _tiles(
        double, fma_dot=dot_dtype == tl.float32 and not fast, interpreting=device.type == "cpu")
    grid = (triton.cdiv(n, block_m),)
    _scan_kernel[grid](
        x, *x.stride(), scan_codes, *scan_codes.stride(), offset, codebook, *codebook.stride(), norm, meta,
        indices, dist, flags,
        n, codes, dim, k, alpha, abs(alpha), x_coef, 3.0 * u, abs_term, score_limit,
        METRIC=metric, DOT=dot_dtype, ACC=tl.float64 if double else tl.float32,
        PRECISION="tf32" if fast else "ieee",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CAND=cand, num_warps=warps,
        maxnreg=max_registers,
    )
    _exact_kernel[grid](
        x, *x.stride(), codebook, *codebook.stride(), norm, flags, indices, dist, n, codes, dim, k,
        METRIC=metric, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        maxnreg=max_registers,
    )
