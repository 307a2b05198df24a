"""The ``cpp`` backend: C++17 kernels of ``pyprobtf._C`` on CPU tensors.

Each kernel fills outputs its op allocated, from 2-D strided views
(:mod:`pyprobtf.ops._native`), with torch's thread count.
"""

from __future__ import annotations

import contextlib

from pyprobtf.ops import _native
from pyprobtf.ops._backends import cpp_module
from pyprobtf.ops._registry import register_kernel


@register_kernel("affine_coupling", "cpp")
def affine_coupling(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
    cpp_module().affine_coupling_forward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), y.data_ptr(), ladj.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.num_threads(),
    )


@register_kernel("affine_coupling_backward", "cpp")
def affine_coupling_backward(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
    cpp_module().affine_coupling_backward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), _native.mat(gy), _native.vec(gl),
        gx.data_ptr(), 0 if gshift is None else gshift.data_ptr(), gscale.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.num_threads(),
    )


@register_kernel("lincomb", "cpp")
def lincomb(rows, cv, ct, out2, noise, nv, nt, sv, st, offset):
    cpp_module().lincomb(
        [_native.mat(r) for r in rows], cv, [_native.vec_or_none(c) for c in ct], _native.mat(out2),
        out2.shape[0], out2.shape[1], _native.DTYPE_CODES[out2.dtype], noise, nv, _native.vec_or_none(nt),
        sv, _native.vec_or_none(st), offset, _native.num_threads(),
    )


@register_kernel("sample_logits", "cpp")
@register_kernel("filter_logits", "cpp")
def sampling(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered) -> bool:
    args = _native.sampling_args(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered)
    return cpp_module().sample_logits(*args, _native.num_threads()) > 0


# Instruction-set level of the C++ VQ scan: 0 = the best this CPU supports. Tests
# force 1 (baseline x86-64), 3 (AVX2) or 4 (AVX-512) with `forced_isa`.
_vq_isa = [0]


def vq_isa_levels() -> tuple[int, ...]:
    """Instruction-set levels of the C++ VQ scan that run on this CPU."""
    best = cpp_module().vq_nearest_best_isa()
    return tuple(level for level in (1, 3, 4) if level <= best)


@contextlib.contextmanager
def forced_vq_isa(level: int):
    """Run the C++ VQ scan at instruction-set ``level`` (one of :func:`vq_isa_levels`) inside the block."""
    if level not in vq_isa_levels():
        raise ValueError(f"vq_nearest: instruction-set level {level} does not run here; levels: {vq_isa_levels()}")
    previous = _vq_isa[0]
    _vq_isa[0] = level
    try:
        yield
    finally:
        _vq_isa[0] = previous


@register_kernel("vq_nearest", "cpp")
def vq_nearest(x, codebook, indices, dist, metric, fast):
    cpp_module().vq_nearest(
        _native.mat(x), _native.mat(codebook), indices.data_ptr(), dist.data_ptr(),
        x.shape[0], codebook.shape[0], x.shape[1], indices.shape[1], _native.DTYPE_CODES[x.dtype],
        metric, _vq_isa[0], _native.num_threads(),
    )
