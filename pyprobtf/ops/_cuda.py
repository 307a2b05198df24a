"""The ``cuda`` backend: CUDA kernels of ``pyprobtf._C_cuda`` on CUDA tensors.

Each kernel fills outputs its op allocated, from 2-D strided views, on the
tensors' current stream; workspaces come from torch's allocator, so the
kernels can be captured in CUDA graphs.
"""

from __future__ import annotations

import torch

from pyprobtf.ops import _native
from pyprobtf.ops._backends import cuda_module
from pyprobtf.ops._registry import register_kernel


def _workspace(nbytes: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


@register_kernel("affine_coupling", "cuda")
def affine_coupling(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
    module = cuda_module()
    workspace = _workspace(module.affine_coupling_workspace_bytes(x.shape[0], x.shape[1]), x)
    module.affine_coupling_forward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), y.data_ptr(), ladj.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse,
        workspace.data_ptr(), _native.cuda_stream(x),
    )


@register_kernel("affine_coupling_backward", "cuda")
def affine_coupling_backward(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
    cuda_module().affine_coupling_backward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), _native.mat(gy), _native.vec(gl),
        gx.data_ptr(), 0 if gshift is None else gshift.data_ptr(), gscale.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.cuda_stream(x),
    )


@register_kernel("lincomb", "cuda")
def lincomb(rows, cv, ct, out2, noise, nv, nt, sv, st, offset):
    cuda_module().lincomb(
        [_native.mat(r) for r in rows], cv, [_native.vec_or_none(c) for c in ct], _native.mat(out2),
        out2.shape[0], out2.shape[1], _native.DTYPE_CODES[out2.dtype], noise, nv, _native.vec_or_none(nt),
        sv, _native.vec_or_none(st), offset, _native.cuda_stream(out2),
    )


@register_kernel("sample_logits", "cuda")
@register_kernel("filter_logits", "cuda")
def sampling(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered) -> bool:
    module = cuda_module()
    args = _native.sampling_args(logits, params, uniform, seed, offset, tokens, logprobs, status, filtered)
    nbytes = module.sample_logits_workspace_bytes(logits.shape[0], logits.shape[1], _native.DTYPE_CODES[logits.dtype])
    module.sample_logits(*args, _workspace(nbytes, logits).data_ptr(), _native.cuda_stream(logits))
    return True


@register_kernel("vq_nearest", "cuda")
def vq_nearest(x, codebook, indices, dist, metric, fast):
    module = cuda_module()
    n, codes, dim, k = x.shape[0], codebook.shape[0], x.shape[1], indices.shape[1]
    workspace = _workspace(module.vq_nearest_workspace_bytes(n, codes, dim, k), x)
    module.vq_nearest(
        _native.mat(x), _native.mat(codebook), indices.data_ptr(), dist.data_ptr(), n, codes, dim, k,
        _native.DTYPE_CODES[x.dtype], metric, workspace.data_ptr(), _native.cuda_stream(x),
    )
