"""affine_coupling: the coupling-layer transform and its log-determinant, in one pass.

``y, ladj = affine_coupling(x, shift, scale)`` computes, for ``x``, ``shift`` and
``scale`` of one shape ``(B, *event)`` and the log-multiplier ``s = s(scale)``::

    forward:  y = x * exp(s) + shift,        ladj[b] =  sum over event of s
    inverse:  y = (x - shift) * exp(-s),     ladj[b] = -sum over event of s

with ``s = scale`` (``"exp"``), ``clamp * tanh(scale / clamp)`` (``"softclamp"``),
``log(sigmoid(scale + 2))`` (``"sigmoid"``), ``scale / (1 + |scale| / clamp)``
(``"softclip"``: zuko's monotonic affine transform, ``clamp = -log(slope)``),
``log(sigmoid(scale + 2) + 1e-3)`` (``"sigmoid_eps"``: nflows) or
``-log(sigmoid(scale + 2))`` (``"inv_sigmoid"``: normflows' ``scale_map="sigmoid"``).
Gradients for all three inputs come from one fused backward pass (higher
derivatives, with ``create_graph=True``, from the same chain rule written in
torch ops).

Two call paths share the same backend launchers: eager calls on plain tensors
go through a ``torch.autograd.Function`` (a few microseconds of overhead);
``torch.compile``, fake tensors and functorch transforms go through the
registered custom op ``torch.ops.pyprobtf.affine_coupling`` (tens of
microseconds in eager mode: see benchmarks/results for the measured numbers).
"""

from __future__ import annotations

import torch

from pyprobtf import reference
from pyprobtf.ops import _backends, _native, _validate

OP = "affine_coupling"
SCALE_FNS = {"exp": 0, "softclamp": 1, "sigmoid": 2, "softclip": 3, "sigmoid_eps": 4, "inv_sigmoid": 5}

# Order `auto` tries on each device type, fastest first, as measured by
# benchmarks/bench_affine_coupling.py (benchmarks/results/affine_coupling-*.md).
# On CUDA only GPU-verified backends are taken (see _backends.GPU_VERIFIED).
_backends.register_op(OP, {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")})


def _ladj_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- backends
# Each launcher fills preallocated outputs from 2-D (B, F) views.


def _forward_cpp(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
    _backends.cpp_module().affine_coupling_forward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), y.data_ptr(), ladj.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.num_threads(),
    )


def _forward_cuda(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
    module = _backends.cuda_module()
    nbytes = module.affine_coupling_workspace_bytes(x.shape[0], x.shape[1])
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    module.affine_coupling_forward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), y.data_ptr(), ladj.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse,
        workspace.data_ptr(), _native.cuda_stream(x),
    )


def _forward_triton(x, shift, scale, y, ladj, scale_fn, clamp, inverse):
    _backends.triton_kernels().affine_coupling.forward(x, shift, scale, y, ladj, scale_fn, clamp, inverse)


def _backward_cpp(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
    _backends.cpp_module().affine_coupling_backward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), _native.mat(gy), _native.vec(gl),
        gx.data_ptr(), 0 if gshift is None else gshift.data_ptr(), gscale.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.num_threads(),
    )


def _backward_cuda(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
    _backends.cuda_module().affine_coupling_backward(
        _native.mat(x), _native.mat(shift), _native.mat(scale), _native.mat(gy), _native.vec(gl),
        gx.data_ptr(), 0 if gshift is None else gshift.data_ptr(), gscale.data_ptr(),
        x.shape[0], x.shape[1], _native.DTYPE_CODES[x.dtype], scale_fn, clamp, inverse, _native.cuda_stream(x),
    )


def _backward_triton(gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse):
    _backends.triton_kernels().affine_coupling.backward(
        gy, gl, x, shift, scale, gx, gshift, gscale, scale_fn, clamp, inverse
    )


_FORWARD = {"cpp": _forward_cpp, "cuda": _forward_cuda, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "cuda": _backward_cuda, "triton": _backward_triton}


def _forward(x, shift, scale, scale_fn: str, clamp: float, inverse: bool, backend: str):
    name = _backends.resolve(OP, backend, x.device.type)
    if name == "reference":
        y, ladj = reference.affine_coupling(x, shift, scale, scale_fn, clamp, inverse)
        return y.contiguous(), ladj
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ladj = torch.empty(x.shape[0], dtype=_ladj_dtype(x.dtype), device=x.device)
    _FORWARD[name](
        _native.rows(x), _native.rows(shift), _native.rows(scale), _native.rows(y), ladj,
        SCALE_FNS[scale_fn], clamp, inverse,
    )
    return y, ladj


def _backward(grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse, backend, *, alias_ok: bool):
    """(grad_x, grad_shift, grad_scale). With ``alias_ok``, the forward direction's
    grad_shift is ``grad_y`` itself instead of a copy (not allowed inside a custom op)."""
    name = _backends.resolve(OP, backend, x.device.type)
    if name == "reference":
        gx, gshift, gscale = reference.affine_coupling_backward(
            grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse
        )
        if not alias_ok and gshift is grad_y:
            gshift = gshift.clone()
        return gx.contiguous(), gshift.contiguous(), gscale.contiguous()
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gscale = torch.empty_like(gx)
    gshift = None if (alias_ok and not inverse) else torch.empty_like(gx)
    _BACKWARD[name](
        _native.rows(grad_y), grad_ladj, _native.rows(x), _native.rows(shift), _native.rows(scale),
        _native.rows(gx), None if gshift is None else _native.rows(gshift), _native.rows(gscale),
        SCALE_FNS[scale_fn], clamp, inverse,
    )
    return gx, (grad_y if gshift is None else gshift), gscale


# ----------------------------------------------------------------------------- custom ops
# The path torch.compile, fake tensors and torch.library.opcheck see.


@torch.library.custom_op("pyprobtf::affine_coupling", mutates_args=())
def _affine_coupling_op(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, scale_fn: str, clamp: float, inverse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, shift, scale, scale_fn, clamp, inverse, backend)


@_affine_coupling_op.register_fake
def _(x, shift, scale, scale_fn, clamp, inverse, backend):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(x.shape[:1], dtype=_ladj_dtype(x.dtype))


@torch.library.custom_op("pyprobtf::affine_coupling_backward", mutates_args=())
def _affine_coupling_backward_op(
    grad_y: torch.Tensor, grad_ladj: torch.Tensor, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
    scale_fn: str, clamp: float, inverse: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse, backend, alias_ok=False)


@_affine_coupling_backward_op.register_fake
def _(grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse, backend):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3))


def _setup_context(ctx, inputs, output):
    x, shift, scale, scale_fn, clamp, inverse, backend = inputs
    ctx.save_for_backward(x, shift, scale)
    ctx.options = (scale_fn, clamp, inverse, backend)


def _op_backward(ctx, grad_y, grad_ladj):
    x, shift, scale = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable formula (see _AffineCoupling.backward)
        grads = reference.affine_coupling_backward(grad_y, grad_ladj, x, shift, scale, *ctx.options[:3])
    else:
        grads = _affine_coupling_backward_op(grad_y, grad_ladj, x, shift, scale, *ctx.options)
    return *grads, None, None, None, None


_affine_coupling_op.register_autograd(_op_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- eager path


class _AffineCoupling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, scale_fn, clamp, inverse, backend):
        ctx.save_for_backward(x, shift, scale)
        ctx.options = (scale_fn, clamp, inverse, backend)
        return _forward(x, shift, scale, scale_fn, clamp, inverse, backend)

    @staticmethod
    def backward(ctx, grad_y, grad_ladj):
        x, shift, scale = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (gradient penalties, Hessian-vector products): the
            # fused kernel is not differentiable, so use the chain rule written in
            # torch ops, which autograd can differentiate again.
            grads = reference.affine_coupling_backward(grad_y, grad_ladj, x, shift, scale, *ctx.options[:3])
        else:
            grads = _backward(grad_y, grad_ladj, x, shift, scale, *ctx.options, alias_ok=True)
        return *grads, None, None, None, None


# ----------------------------------------------------------------------------- public op


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling transform and its log-determinant, fused.

    Args:
        x: data, shape ``(B, *event)``; float32, float64, float16 or bfloat16,
            any strides.
        shift: additive term, same shape, dtype and device as ``x``.
        scale: unconstrained log-scale ``a``, same shape, dtype and device.
        scale_fn: how ``a`` becomes the log-multiplier ``s``: ``"exp"``
            (``s = a``), ``"softclamp"`` (``s = clamp * tanh(a / clamp)``),
            ``"sigmoid"`` (``s = log(sigmoid(a + 2))``), ``"softclip"``
            (``s = a / (1 + |a| / clamp)``, zuko's), ``"sigmoid_eps"``
            (``s = log(sigmoid(a + 2) + 1e-3)``, nflows') or ``"inv_sigmoid"``
            (``s = -log(sigmoid(a + 2))``, normflows' ``"sigmoid"``).
        clamp: bound of ``|s|`` for ``"softclamp"`` and ``"softclip"``;
            positive and finite.
        inverse: apply the inverse map ``(x - shift) * exp(-s)``.
        backend: ``"auto"`` (the fastest verified backend for the tensors'
            device), ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(y, ladj)``: ``y`` like ``x`` (contiguous), and ``ladj`` of shape
        ``(B,)``, the log-determinant of the Jacobian of the map applied,
        float64 for float64 inputs and float32 otherwise.

    Example:
        >>> x, shift, scale = torch.randn(3, 4, 5).unbind(0)
        >>> y, ladj = affine_coupling(x, shift, scale)
        >>> x_back, minus_ladj = affine_coupling(y, shift, scale, inverse=True)
    """
    _validate.tensor(OP, "x", x, min_dim=1)
    _validate.same_as(OP, "shift", shift, "x", x)
    _validate.same_as(OP, "scale", scale, "x", x)
    _validate.choice(OP, "scale_fn", scale_fn, tuple(SCALE_FNS))
    clamp = _validate.positive_finite(OP, "clamp", clamp)
    _validate.boolean(OP, "inverse", inverse)
    _validate.choice(OP, "backend", backend, ("auto",) + _backends.BACKEND_NAMES)
    if _backends.use_custom_op(x, shift, scale):
        return _affine_coupling_op(x, shift, scale, scale_fn, clamp, inverse, backend)
    return _AffineCoupling.apply(x, shift, scale, scale_fn, clamp, inverse, backend)
