"""Triton kernel for lincomb (contract in docs/ARCHITECTURE.md).

One program per tile of BLOCK_R rows x BLOCK_F columns (a flat 1-D grid, so any
number of rows and column tiles fits); the noise is ``tl.randn`` itself, on the
counter ``offset + r * cols + c`` (one seed) or ``offset + c`` with the row's seed.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_BLOCK_F = 1024
TILE_ELEMENTS = 2048
# Warps per program: float64 tiles take 8 (8 elements per thread; with 4, ptxas
# spilled registers in tiles with noise); float32 tiles keep 4 (with 8, ptxas
# spilled in a noise tile on sm_80). See benchmarks/results/kernel-resources.md.
WARPS_FLOAT64, WARPS_FLOAT32 = 8, 4


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
        eps = tl.randn(key, counter).to(COMPUTE)
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
        num_warps=WARPS_FLOAT64 if out.dtype == torch.float64 else WARPS_FLOAT32,
    )
