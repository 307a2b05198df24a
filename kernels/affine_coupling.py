"""Triton kernels for affine_coupling (contract in docs/ARCHITECTURE.md).

Work is cut into tiles of BLOCK_R rows x BLOCK_F columns, both fixed by the row
length F alone, so a row's log-determinant is summed in the same order
whatever the batch size: batch-invariant. Rows longer than one tile write one
partial sum per tile, and a second kernel adds a row's partials in order.
With a (B, F) ``ladj`` the forward writes each element's log-multiplier
instead and sums nothing; the backward reads a (B,) or (B, F) ``grad_ladj``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_F = 1024
TILE_ELEMENTS = 2048
# 16 warps: 4 elements of a tile per thread. With 4, ptxas spilled registers on
# sm_80; with 8, on sm_100/103 (which it held to 64 registers in the float16
# "sigmoid" inverse), and float64 "softclamp" kept an 8-byte stack frame on
# sm_90 (benchmarks/results/kernel-resources.md has every specialisation).
BACKWARD_WARPS = 16
# 8 warps forward: 8 elements per thread. With 4 (16 per thread), the float64
# softclamp kept an 8-byte stack frame on sm_80/86/89 and ptxas for sm_120/121
# spilled the bfloat16 "exp" inverse of 4-column rows.
FORWARD_WARPS = 8


@triton.jit
def _tanh(x):
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    # Near zero (1 - e) / (1 + e) loses relative accuracy; the odd series does
    # not (terms to x^13: truncation below 1e-16 relative for |x| < 0.125).
    x2 = x * x
    p = -1382.0 / 155925.0 + x2 * (21844.0 / 6081075.0)
    p = -1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0 + x2 * p)))
    small = ax + ax * x2 * p
    r = tl.where(ax < 0.125, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def _softplus(z):
    # log(1 + e^z) = max(z, 0) + log1p(e^-|z|); log1p by its series where log(1 + t) would round.
    t = tl.exp(-tl.abs(z))
    l1p = tl.where(t < 1e-4, t * (1.0 - 0.5 * t), tl.log(1.0 + t))
    return tl.where(z > 0, z, 0.0) + l1p


# nflows' floor on the multiplier: sigmoid(a + 2) + SIGMOID_EPS.
# (a constexpr value: compiled kernels may read only constexpr globals)
SIGMOID_EPS = tl.constexpr(1e-3)


@triton.jit
def _log_multiplier(a, clamp, SCALE_FN: tl.constexpr):
    # SCALE_FN numbers: pyprobtf.ops.affine_coupling.SCALE_FNS.
    if SCALE_FN == 0:
        s = a
    elif SCALE_FN == 1:
        s = clamp * _tanh(a / clamp)
    elif SCALE_FN == 2:
        s = -_softplus(-(a + 2.0))
    elif SCALE_FN == 3:
        s = a / (1.0 + tl.abs(a) / clamp)
    elif SCALE_FN == 4:
        s = tl.log(1.0 / (1.0 + tl.exp(-(a + 2.0))) + SIGMOID_EPS)
    else:
        s = _softplus(-(a + 2.0))
    return s


@triton.jit
def _dlog_multiplier(a, s, clamp, SCALE_FN: tl.constexpr):
    if SCALE_FN == 0:
        d = tl.full(a.shape, 1.0, a.dtype)
    elif SCALE_FN == 1:
        t = s / clamp
        d = 1.0 - t * t
    elif SCALE_FN == 2:
        d = tl.exp(s - (a + 2.0))  # 1 - sigmoid(a + 2)
    elif SCALE_FN == 3:
        q = 1.0 + tl.abs(a) / clamp
        d = 1.0 / (q * q)
    elif SCALE_FN == 4:
        sig = 1.0 / (1.0 + tl.exp(-(a + 2.0)))
        sig_neg = 1.0 / (1.0 + tl.exp(a + 2.0))  # 1 - sig without cancellation
        d = sig * sig_neg / (sig + SIGMOID_EPS)
    else:
        d = -tl.exp(-s - (a + 2.0))  # -(1 - sigmoid(a + 2))
    return d


@triton.jit
def _forward_kernel(
    X, x_rs, x_cs, SHIFT, t_rs, t_cs, SCALE, a_rs, a_cs, Y, LADJ, PARTIAL,
    rows, cols, n_tiles, clamp,
    SCALE_FN: tl.constexpr, INVERSE: tl.constexpr, ELEMENTS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    tile = tl.program_id(1)
    c = tile.to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F)[None, :]
    mask = (r < rows) & (c < cols)
    x = tl.load(X + r * x_rs + c * x_cs, mask=mask, other=0.0).to(COMPUTE)
    t = tl.load(SHIFT + r * t_rs + c * t_cs, mask=mask, other=0.0).to(COMPUTE)
    a = tl.load(SCALE + r * a_rs + c * a_cs, mask=mask, other=0.0).to(COMPUTE)
    s = _log_multiplier(a, clamp, SCALE_FN)
    if INVERSE:
        y = (x - t) * tl.exp(-s)
    else:
        y = x * tl.exp(s) + t
    tl.store(Y + r * cols + c, y.to(Y.dtype.element_ty), mask=mask)
    if ELEMENTS:
        if INVERSE:
            s = -s
        tl.store(LADJ + r * cols + c, s.to(LADJ.dtype.element_ty), mask=mask)
    else:
        total = tl.sum(tl.where(mask, s, 0.0), axis=1)
        row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        if n_tiles == 1:
            if INVERSE:
                total = -total
            tl.store(LADJ + row, total.to(LADJ.dtype.element_ty), mask=row < rows)
        else:
            tl.store(PARTIAL + row * n_tiles + tile, total, mask=row < rows)


@triton.jit
def _sum_partials_kernel(PARTIAL, LADJ, n_tiles, INVERSE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), dtype=PARTIAL.dtype.element_ty)
    for start in range(0, n_tiles, BLOCK):
        k = start + tl.arange(0, BLOCK)
        acc += tl.load(PARTIAL + row * n_tiles + k, mask=k < n_tiles, other=0.0)
    total = tl.sum(acc, axis=0)
    if INVERSE:
        total = -total
    tl.store(LADJ + row, total.to(LADJ.dtype.element_ty))


@triton.jit
def _backward_kernel(
    X, x_rs, x_cs, SHIFT, t_rs, t_cs, SCALE, a_rs, a_cs, GY, g_rs, g_cs, GL, gl_rs, gl_cs,
    GX, GSHIFT, GSCALE, rows, cols, clamp,
    SCALE_FN: tl.constexpr, INVERSE: tl.constexpr, WRITE_SHIFT: tl.constexpr, GL_ELEMENTS: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1).to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F)[None, :]
    mask = (r < rows) & (c < cols)
    x = tl.load(X + r * x_rs + c * x_cs, mask=mask, other=0.0).to(COMPUTE)
    a = tl.load(SCALE + r * a_rs + c * a_cs, mask=mask, other=0.0).to(COMPUTE)
    gy = tl.load(GY + r * g_rs + c * g_cs, mask=mask, other=0.0).to(COMPUTE)
    if GL_ELEMENTS:
        gl = tl.load(GL + r * gl_rs + c * gl_cs, mask=mask, other=0.0).to(COMPUTE)
    else:  # one value per row
        gl = tl.load(GL + r * gl_rs, mask=r < rows, other=0.0).to(COMPUTE)
    s = _log_multiplier(a, clamp, SCALE_FN)
    if INVERSE:
        e = tl.exp(-s)
        gx = gy * e
        t = tl.load(SHIFT + r * t_rs + c * t_cs, mask=mask, other=0.0).to(COMPUTE)
        gs = -(gy * ((x - t) * e)) - gl
        gshift = -gx
    else:
        e = tl.exp(s)
        gx = gy * e
        gs = gx * x + gl
        gshift = gy
    ga = gs * _dlog_multiplier(a, s, clamp, SCALE_FN)
    out = r * cols + c
    tl.store(GX + out, gx.to(GX.dtype.element_ty), mask=mask)
    tl.store(GSCALE + out, ga.to(GSCALE.dtype.element_ty), mask=mask)
    if WRITE_SHIFT:
        tl.store(GSHIFT + out, gshift.to(GSHIFT.dtype.element_ty), mask=mask)


def _tiles(cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_F, number of column tiles) for rows of length ``cols``."""
    block_f = min(triton.next_power_of_2(max(cols, 1)), MAX_BLOCK_F)
    block_r = max(1, TILE_ELEMENTS // block_f)
    return block_r, block_f, triton.cdiv(max(cols, 1), block_f)


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(x, shift, scale, y, ladj, scale_fn: int, clamp: float, inverse: bool) -> None:
    """Fill ``y`` (contiguous, like ``x``) and ``ladj`` from 2-D views ``x``, ``shift``, ``scale``.

    ``ladj`` (B,) receives the row sums; a contiguous (B, F) ``ladj`` each element's +-s.
    """
    rows, cols = x.shape
    if rows == 0:
        return
    elements = ladj.dim() == 2
    block_r, block_f, n_tiles = _tiles(cols)
    partial = ladj if n_tiles == 1 or elements else torch.empty(rows, n_tiles, dtype=ladj.dtype, device=x.device)
    grid = (triton.cdiv(rows, block_r), n_tiles)
    _forward_kernel[grid](
        x, *x.stride(), shift, *shift.stride(), scale, *scale.stride(), y, ladj, partial,
        rows, cols, n_tiles, clamp,
        SCALE_FN=scale_fn, INVERSE=inverse, ELEMENTS=elements, COMPUTE=_compute_dtype(x.dtype),
        BLOCK_R=block_r, BLOCK_F=block_f, num_warps=FORWARD_WARPS,
    )
    if n_tiles > 1 and not elements:
        _sum_partials_kernel[(rows,)](partial, ladj, n_tiles, INVERSE=inverse, BLOCK=1024)


def backward(grad_y, grad_ladj, x, shift, scale, grad_x, grad_shift, grad_scale, scale_fn: int, clamp: float,
             inverse: bool) -> None:
    """Fill ``grad_x``, ``grad_scale`` and (unless None) ``grad_shift``, all contiguous 2-D.

    ``grad_ladj``: (B,) per row, or a (B, F) view per element (column stride 0: per row).
    """
    rows, cols = x.shape
    if rows == 0 or cols == 0:
        return
    gl_rs, gl_cs = grad_ladj.stride() if grad_ladj.dim() == 2 else (grad_ladj.stride(0), 0)
    block_r, block_f, n_tiles = _tiles(cols)
    grid = (triton.cdiv(rows, block_r), n_tiles)
    _backward_kernel[grid](
        x, *x.stride(), shift, *shift.stride(), scale, *scale.stride(), grad_y, *grad_y.stride(),
        grad_ladj, gl_rs, gl_cs, grad_x, grad_shift if grad_shift is not None else grad_x, grad_scale,
        rows, cols, clamp,
        SCALE_FN=scale_fn, INVERSE=inverse, WRITE_SHIFT=grad_shift is not None, GL_ELEMENTS=gl_cs != 0,
        COMPUTE=_compute_dtype(x.dtype), BLOCK_R=block_r, BLOCK_F=block_f,
        num_warps=BACKWARD_WARPS,
    )
