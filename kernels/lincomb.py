"""Triton kernel for lincomb (contract in docs/ARCHITECTURE.md).

One program per tile of BLOCK_R rows x BLOCK_F columns (a flat 1-D grid, so any
number of rows and column tiles fits); the noise is ``tl.randn``'s Box-Muller on
the counter ``offset + r * cols + c`` (one seed) or ``offset + c`` with the row's
seed, with the cosine computed by ``_cos_turn`` (see there why).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_BLOCK_F = 1024
TILE_ELEMENTS = 2048
# Warps per program, from ptxas' reports over every specialisation and target
# (benchmarks/results/kernel-resources.md): 8 (8 elements per thread) for float64
# tiles (with 4, ptxas spilled in noise tiles) and for float32 noise tiles narrower
# than NOISE_WIDE_F columns (with 4, per-row-seed 64 x 32 tiles took 255 registers
# and spilled on sm_86 and newer; with 8, about 140). Other float32 tiles keep 4
# (with 8, ptxas held a 16 x 128 per-row-seed noise tile to 128 registers and
# spilled on sm_86/sm_89; with 4 it takes up to 186 and does not spill).
WARPS_WIDE, WARPS_FLOAT32 = 8, 4
NOISE_WIDE_F = 128


# pi / 2 in three float32 parts: q * part is exact for the quadrants q <= 4 used below.
_PIO2_HI = tl.constexpr(1.5703125)
_PIO2_MID = tl.constexpr(0.00048382673412561417)
_PIO2_LO = tl.constexpr(6.077094383272197e-11)


@triton.jit
def _cos_turn(th):
    """cos(th) for float32 ``th`` in [0, 2 pi], to about one ulp.

    ``tl.cos`` (libdevice's cosf) carries a Payne-Hanek reduction for huge
    arguments that needs a 28-byte local array: a stack frame in every kernel that
    calls it, and more live registers (ptxas spilled in some lincomb tiles). Box-Muller's
    angle is below 2 pi, so a Cody-Waite reduction to [-pi/4, pi/4] and the
    Cephes float polynomials suffice.
    """
    q = (th * 0.6366197723675814 + 0.5).to(tl.int32)  # the nearest quadrant, 0 to 4
    qf = q.to(tl.float32)
    r = th - qf * _PIO2_HI
    r = r - qf * _PIO2_MID
    r = r - qf * _PIO2_LO
    z = r * r
    cos_r = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2)
    sin_r = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1)
    # cos(r + q pi / 2) for q mod 4 = 0, 1, 2, 3: cos r, -sin r, -cos r, sin r
    v = tl.where((q & 1) == 0, cos_r, sin_r)
    return tl.where(((q + 1) & 2) == 0, v, -v)


@triton.jit
def _randn(seed, counter):
    """``tl.randn(seed, counter)`` (Philox4x32-10 words 0 and 1, Box-Muller) with ``_cos_turn`` for the cosine."""
    w0, w1, _, _ = tl.randint4x(seed, counter)
    u0 = tl.maximum(1.0e-7, tl.uint_to_uniform_float(w0))
    th = 6.283185307179586 * tl.uint_to_uniform_float(w1)
    return tl.sqrt(-2.0 * tl.log(u0)) * _cos_turn(th)


@triton.jit
def _term(acc, X, x_rs, x_cs, coeff, CR, cr_s, r, c, mask, rmask, ROW_COEFF: tl.constexpr, COMPUTE: tl.constexpr):
    x = tl.load(X + r * x_rs + c * x_cs, mask=mask, other=0.0).to(COMPUTE)
    if ROW_COEFF:
        w = tl.load(CR + r * cr_s, mask=rmask, other=0.0).to(COMPUTE)
    else:
        # A float64 argument (Triton passes an unannotated Python float as float32), rounded once.
        w = tl.full((1, 1), coeff, COMPUTE)
    return acc + w * x


@triton.jit
def _lincomb_kernel(
    X0, x0_rs, x0_cs, X1, x1_rs, x1_cs, X2, x2_rs, x2_cs, X3, x3_rs, x3_cs,
    c0: tl.float64, c1: tl.float64, c2: tl.float64, c3: tl.float64, CR0, cr0_s, CR1, cr1_s, CR2, cr2_s, CR3, cr3_s,
    OUT, out_rs, out_cs, noise_std: tl.float64, NR, nr_s, seed, SR, sr_s, offset,
    rows, cols, col_tiles,
    N: tl.constexpr, ROW_COEFF: tl.constexpr, NOISE: tl.constexpr, ROW_NOISE: tl.constexpr,
    ROW_SEED: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)[:, None]
    c = (pid % col_tiles) * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)[None, :]
    rmask = r < rows
    mask = rmask & (c < cols)
    acc = tl.zeros((BLOCK_R, BLOCK_F), dtype=COMPUTE)
    acc = _term(acc, X0, x0_rs, x0_cs, c0, CR0, cr0_s, r, c, mask, rmask, (ROW_COEFF & 1) != 0, COMPUTE)
    if N > 1:
        acc = _term(acc, X1, x1_rs, x1_cs, c1, CR1, cr1_s, r, c, mask, rmask, (ROW_COEFF & 2) != 0, COMPUTE)
    if N > 2:
        acc = _term(acc, X2, x2_rs, x2_cs, c2, CR2, cr2_s, r, c, mask, rmask, (ROW_COEFF & 4) != 0, COMPUTE)
    if N > 3:
        acc = _term(acc, X3, x3_rs, x3_cs, c3, CR3, cr3_s, r, c, mask, rmask, (ROW_COEFF & 8) != 0, COMPUTE)
    if NOISE:
        if ROW_SEED:
            key = tl.load(SR + r * sr_s, mask=rmask, other=0)
            counter = offset + c + r * 0  # (BLOCK_R, BLOCK_F) int64 counters
            key = key + counter * 0  # the row's seed, broadcast to the tile
        else:
            key = seed
            counter = offset + r * cols + c
        eps = _randn(key, counter).to(COMPUTE)
        if ROW_NOISE:
            std = tl.load(NR + r * nr_s, mask=rmask, other=0.0).to(COMPUTE)
        else:
            std = tl.full((1, 1), noise_std, COMPUTE)
        acc = acc + std * eps
    tl.store(OUT + r * out_rs + c * out_cs, acc.to(OUT.dtype.element_ty), mask=mask)


def _tiles(cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_F, number of column tiles) for rows of length ``cols``."""
    block_f = min(triton.next_power_of_2(max(cols, 1)), MAX_BLOCK_F)
    block_r = max(1, TILE_ELEMENTS // block_f)
    return block_r, block_f, triton.cdiv(max(cols, 1), block_f)


def lincomb(inputs, coeffs, coeff_rows, out, noise, noise_std, noise_rows, seed, seed_rows, offset) -> None:
    """Fill the 2-D ``out`` (B, F) from 2-D ``inputs``; per-row tensors (or None) are already in the compute dtype."""
    import torch

    rows, cols = out.shape
    if rows == 0 or cols == 0:
        return
    n = len(inputs)
    block_r, block_f, col_tiles = _tiles(cols)
    grid = (triton.cdiv(rows, block_r) * col_tiles,)
    xs = list(inputs) + [out] * (4 - n)
    cs = list(coeffs) + [0.0] * (4 - n)
    crs = [c if c is not None else out for c in coeff_rows] + [out] * (4 - n)
    row_coeff = sum(1 << k for k, c in enumerate(coeff_rows) if c is not None)
    args = []
    for x in xs:
        args += [x, x.stride(0), x.stride(1)]
    args += cs
    for c in crs:
        args += [c, c.stride(0) if c.dim() == 1 else 0]
    nr = noise_rows if noise_rows is not None else out
    sr = seed_rows if seed_rows is not None else out
    args += [out, out.stride(0), out.stride(1), noise_std, nr, nr.stride(0) if nr.dim() == 1 else 0,
             seed, sr, sr.stride(0) if sr.dim() == 1 else 0, offset, rows, cols, col_tiles]
    compute = tl.float64 if out.dtype == torch.float64 else tl.float32
    _lincomb_kernel[grid](
        *args, N=n, ROW_COEFF=row_coeff, NOISE=noise, ROW_NOISE=noise_rows is not None,
        ROW_SEED=seed_rows is not None, COMPUTE=compute, BLOCK_R=block_r, BLOCK_F=block_f,
        num_warps=WARPS_WIDE if out.dtype == torch.float64 or (noise and block_f < NOISE_WIDE_F) else WARPS_FLOAT32,
    )
