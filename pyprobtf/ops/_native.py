"""The native backends: ``cpp`` (``pyprobtf._C``, C++17 on CPU tensors) and ``cuda`` (``pyprobtf._C_cuda``).

Both fill outputs their op allocated, from 2-D strided views. A tensor
reaches them as its data pointer and strides (in elements), the dtype as a
small code that csrc/include/pyprobtf/common.h mirrors. The two modules take
the same arguments but the last ones: the C++ kernels take torch's thread
count; the CUDA kernels take a workspace from torch's allocator (so they can
be captured in CUDA graphs) and the tensors' current stream.
"""

from __future__ import annotations

import contextlib
import math

import torch

from pyprobtf.ops._backends import cpp_module, cuda_module
from pyprobtf.ops._registry import register_kernel

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a (B, F) matrix, F the product of the trailing sizes.

    A view when ``t``'s strides allow one (any 2-D strided tensor does);
    otherwise torch copies, so the kernels only ever handle 2-D strides.
    """
    if t.dim() == 2:
        return t
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def mat(t: torch.Tensor) -> tuple[int, int, int]:
    """(pointer, row stride, column stride) of a 2-D tensor."""
    return t.data_ptr(), t.stride(0), t.stride(1)


def vec(t: torch.Tensor | None) -> tuple[int, int]:
    """(pointer, stride) of a 1-D tensor; (0, 0) for an absent per-row tensor."""
    return (0, 0) if t is None else (t.data_ptr(), t.stride(0))


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _row_param(tensor: torch.Tensor | None, number) -> tuple[int, int, int | float]:
    """A per-row parameter as (pointer, stride, number): the tensor when given, else the number."""
    return (tensor.data_ptr(), tensor.stride(0), 0) if tensor is not None else (0, 0, number)


# Instruction-set level of the C++ VQ scan: 0 = the best this CPU supports. Tests
# force 1 (baseline x86-64), 3 (AVX2) or 4 (AVX-512) with `forced_vq_isa`.
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


def _cpp_tail(kernel: str, like: torch.Tensor, *sizes: int) -> tuple:
    threads = torch.get_num_threads()  # torch's own setting, so both agree
    return (_vq_isa[0], threads) if kernel == "vq_nearest" else (threads,)


def _cuda_tail(kernel: str, like: torch.Tensor, *sizes: int) -> tuple:
    stream = torch.cuda.current_stream(like.device).cuda_stream
    nbytes = getattr(cuda_module(), f"{kernel}_workspace_bytes", None)
    if nbytes is None:
        return (stream,)
    # Freed on return, which is safe: the caching allocator hands the block only
    # to later work on this stream, which runs after the kernel.
    return torch.empty(nbytes(*sizes), dtype=torch.uint8, device=like.device).data_ptr(), stream


def _register(backend: str, module, tail) -> None:
    @register_kernel("affine_coupling", backend)
    def affine_coupling(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
        """``ladj`` (B,) receives the row sums; a contiguous (B, F) ``ladj`` the elements."""
        n, d = x.shape
        module().affine_coupling_forward(
            mat(x), mat(shift), mat(scale), y.data_ptr(), ladj.data_ptr(), n, d, DTYPE_CODES[x.dtype],
            scale_fn, clamp, inverse, ladj.dim() == 2, *tail("affine_coupling", x, n, d),
        )

    @register_kernel("affine_coupling_backward", backend)
    def affine_coupling_backward(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
        """``gl``: (B,) per row, or a (B, F) view per element."""
        n, d = x.shape
        gl_mat = mat(gl) if gl.dim() == 2 else (gl.data_ptr(), gl.stride(0), 0)
        module().affine_coupling_backward(
            mat(x), mat(shift), mat(scale), mat(gy), gl_mat, gx.data_ptr(), _ptr(gshift), gscale.data_ptr(),
            n, d, DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, *tail("affine_coupling_backward", x),
        )

    @register_kernel("lincomb", backend)
    def lincomb(rows, cv, ct, out2, noise, nv, nt, sv, st, offset):
        module().lincomb(
            [mat(r) for r in rows], cv, [vec(c) for c in ct], mat(out2), out2.shape[0], out2.shape[1],
            DTYPE_CODES[out2.dtype], noise, nv, vec(nt), sv, vec(st), offset, *tail("lincomb", out2),
        )

    if backend == "cpp":
        def lincomb_flat(inputs, coeffs, out, noise, noise_std, seed, offset):
            """The kernel above for contiguous ``inputs`` and ``out`` of one shape, as one row, scalar
            coefficients and one seed: the same result, with the fewest host steps (small solver updates
            are dominated by them)."""
            module().lincomb_flat([t.data_ptr() for t in inputs], coeffs, out.data_ptr(), out.numel(),
                                  DTYPE_CODES[out.dtype], noise, noise_std, seed, offset, torch.get_num_threads())

        lincomb.flat = lincomb_flat

    @register_kernel("sample_logits", backend)
    @register_kernel("filter_logits", backend)
    def sampling(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered) -> bool:
        """``params`` maps names to (tensor or None, number); True when a row needs the caller's attention."""
        n, vocab = logits.shape
        p = {name: _row_param(*value) for name, value in params.items()}
        flagged = module().sample_logits(
            mat(logits), n, vocab, DTYPE_CODES[logits.dtype], p["temperature"], p["top_k"], p["top_p"],
            p["min_p"], vec(uniform), _row_param(*seed), _row_param(*offset), _ptr(tokens), _ptr(logprobs),
            status.data_ptr(), _ptr(filtered), *tail("sample_logits", logits, n, vocab, DTYPE_CODES[logits.dtype]),
        )
        # The CUDA kernels leave the status check to the device (no host synchronisation).
        return flagged is None or flagged > 0

    @register_kernel("vq_nearest", backend)
    def vq_nearest(x, codebook, indices, dist, metric, fast):
        n, codes, dim, k = x.shape[0], codebook.shape[0], x.shape[1], indices.shape[1]
        module().vq_nearest(
            mat(x), mat(codebook), indices.data_ptr(), dist.data_ptr(), n, codes, dim, k, DTYPE_CODES[x.dtype],
            metric, *tail("vq_nearest", x, n, codes, dim, k),
        )


_register("cpp", cpp_module, _cpp_tail)
_register("cuda", cuda_module, _cuda_tail)
