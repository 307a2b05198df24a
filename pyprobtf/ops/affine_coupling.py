"""affine_coupling: the coupling-layer transform and its log-determinant, in one pass.

``y, ladj = affine_coupling(x, shift, scale)`` computes, for ``x``, ``shift`` and
``scale`` of one shape ``(B, *event)`` and the log-multiplier ``s = s(scale)``::

    forward:  y = x * exp(s) + shift,        ladj[b] =  sum over event of s
    inverse:  y = (x - shift) * exp(-s),     ladj[b] = -sum over event of s

(with ``ladj="element"``, the log-determinant per element instead: ``s``, or
``-s`` for the inverse, of ``x``'s shape; zuko's ``call_and_ladj`` wants it)

with ``s = scale`` (``"exp"``), ``clamp * tanh(scale / clamp)`` (``"softclamp"``),
``log(sigmoid(scale + 2))`` (``"sigmoid"``), ``scale / (1 + |scale| / clamp)``
(``"softclip"``: zuko's monotonic affine transform, ``clamp = -log(slope)``),
``log(sigmoid(scale + 2) + 1e-3)`` (``"sigmoid_eps"``: nflows) or
``-log(sigmoid(scale + 2))`` (``"inv_sigmoid"``: normflows' ``scale_map="sigmoid"``).
Gradients for all three inputs come from one fused backward pass (higher
derivatives, with ``create_graph=True``, from the same chain rule written in
torch ops).

Eager calls on plain tensors go through an ``autograd.Function`` (a few
microseconds of overhead); ``torch.compile``, fake tensors and functorch
transforms go through the custom op ``torch.ops.pyprobtf.affine_coupling``;
both use the same autograd formula.
"""

from __future__ import annotations

import torch

from pyprobtf import _checks, reference
from pyprobtf.ops import _native, _registry
from pyprobtf.reference.affine_coupling import LADJ_MODES

OP = "affine_coupling"
SCALE_FNS = {"exp": 0, "softclamp": 1, "sigmoid": 2, "softclip": 3, "sigmoid_eps": 4, "inv_sigmoid": 5}

# `auto` order: fastest first, as measured by benchmarks/bench_affine_coupling.py
# (benchmarks/results/affine_coupling-*.md).
_registry.define(OP, auto={"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")},
                 entries=(OP, "affine_coupling_backward"), benchmark="bench_affine_coupling",
                 custom_ops=("pyprobtf::affine_coupling", "pyprobtf::affine_coupling_backward"))
_registry.register_kernel(OP, "reference")(reference.affine_coupling)
_registry.register_kernel("affine_coupling_backward", "reference")(reference.affine_coupling_backward)


def _ladj_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ladj_shape(x: torch.Tensor, ladj: str) -> tuple[int, ...]:
    return tuple(x.shape) if ladj == "element" else tuple(x.shape[:1])


def _forward(x, shift, scale, scale_fn: str, clamp: float, inverse: bool, backend: str, ladj: str = "sum"):
    name = _registry.resolve(OP, backend, x.device.type)
    kernel = _registry.kernel(OP, name)
    if name in _registry.FUNCTIONAL:
        y, out = kernel(x, shift, scale, scale_fn, clamp, inverse, ladj)
        return y.contiguous(), out.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(_ladj_shape(x, ladj), dtype=_ladj_dtype(x.dtype), device=x.device)
    # The kernels take the mode from the output's shape: (B,) row sums or (B, F) elements.
    kernel(_native.rows(x), _native.rows(shift), _native.rows(scale), _native.rows(y),
           _native.rows(out) if ladj == "element" else out, SCALE_FNS[scale_fn], clamp, inverse)
    return y, out


def _backward(grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse, backend, *, alias_ok: bool):
    """(grad_x, grad_shift, grad_scale). ``grad_ladj`` is (B,) or, for ``ladj="element"``,
    of x's shape. With ``alias_ok``, the forward direction's grad_shift is ``grad_y``
    itself instead of a copy (not allowed inside a custom op)."""
    name = _registry.resolve(OP, backend, x.device.type)
    kernel = _registry.kernel("affine_coupling_backward", name)
    if name in _registry.FUNCTIONAL:
        gx, gshift, gscale = kernel(grad_y, grad_ladj, x, shift, scale, scale_fn, clamp, inverse)
        if not alias_ok and gshift is grad_y:
            gshift = gshift.clone()
        return gx.contiguous(), gshift.contiguous(), gscale.contiguous()
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gscale = torch.empty_like(gx)
    gshift = None if (alias_ok and not inverse) else torch.empty_like(gx)
    # The kernels read grad_ladj as (B,) or as a (B, F) view (any strides).
    gl = _native.rows(grad_ladj) if grad_ladj.dim() > 1 else grad_ladj  # 1-D x: one element per row
    kernel(_native.rows(grad_y), gl, _native.rows(x), _native.rows(shift), _native.rows(scale),
           _native.rows(gx), None if gshift is None else _native.rows(gshift), _native.rows(gscale),
           SCALE_FNS[scale_fn], clamp, inverse)
    return gx, (grad_y if gshift is None else gshift), gscale


# ----------------------------------------------------------------------------- custom ops
# The path torch.compile, fake tensors and torch.library.opcheck see.


@torch.library.custom_op("pyprobtf::affine_coupling", mutates_args=())
def _affine_coupling_op(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, scale_fn: str, clamp: float, inverse: bool,
    backend: str, ladj: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, shift, scale, scale_fn, clamp, inverse, backend, ladj)


@_affine_coupling_op.register_fake
def _(x, shift, scale, scale_fn, clamp, inverse, backend, ladj="sum"):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            x.new_empty(_ladj_shape(x, ladj), dtype=_ladj_dtype(x.dtype)))


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
    x, shift, scale, scale_fn, clamp, inverse, backend = inputs[:7]  # grad_ladj's shape carries the ladj mode
    ctx.save_for_backward(x, shift, scale)
    ctx.options = (scale_fn, clamp, inverse, backend)
    ctx.options_given = len(inputs) - 3


def _op_backward(ctx, grad_y, grad_ladj):
    x, shift, scale = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (gradient penalties, Hessian-vector products): the
        # fused kernel is not differentiable, so use the chain rule written in
        # torch ops, which autograd can differentiate again.
        grads = reference.affine_coupling_backward(grad_y, grad_ladj, x, shift, scale, *ctx.options[:3])
    elif getattr(ctx, "eager", False):
        grads = _backward(grad_y, grad_ladj, x, shift, scale, *ctx.options, alias_ok=True)
    else:
        grads = _affine_coupling_backward_op(grad_y, grad_ladj, x, shift, scale, *ctx.options)
    return *grads, *(None,) * ctx.options_given


_affine_coupling_op.register_autograd(_op_backward, setup_context=_setup_context)
_eager_apply = _registry.eager_autograd(_forward, _setup_context, _op_backward)


# ----------------------------------------------------------------------------- public op


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
    ladj: str = "sum",
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
        ladj: ``"sum"`` (the log-determinant of each row, shape ``(B,)``) or
            ``"element"`` (each element's ``s``, or ``-s`` for the inverse, of
            ``x``'s shape: the log-determinant of a map that acts elementwise,
            as zuko's ``call_and_ladj`` returns it). Summing the elements over
            the event gives the row sums, up to rounding.
        backend: ``"auto"`` (the fastest verified backend for the tensors'
            device), ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(y, ladj)``: ``y`` like ``x`` (contiguous), and ``ladj`` (contiguous)
        of shape ``(B,)`` (``ladj="sum"``) or ``x``'s shape (``"element"``), the
        log-determinant of the Jacobian of the map applied, float64 for
        float64 inputs and float32 otherwise.

    Example:
        >>> x, shift, scale = torch.randn(3, 4, 5).unbind(0)
        >>> y, ladj = affine_coupling(x, shift, scale)
        >>> x_back, minus_ladj = affine_coupling(y, shift, scale, inverse=True)
        >>> y, s = affine_coupling(x, shift, scale, ladj="element")
        >>> s.shape, torch.allclose(s.sum(dim=1), ladj)
        (torch.Size([4, 5]), True)
    """
    _checks.tensor(OP, "x", x, min_dim=1)
    _checks.same_as(OP, "shift", shift, "x", x)
    _checks.same_as(OP, "scale", scale, "x", x)
    _checks.choice(OP, "scale_fn", scale_fn, tuple(SCALE_FNS))
    clamp = _checks.positive_finite(OP, "clamp", clamp)
    _checks.boolean(OP, "inverse", inverse)
    _checks.choice(OP, "ladj", ladj, LADJ_MODES)
    _registry.check_backend(OP, backend)
    if _registry.use_custom_op(x, shift, scale):
        return _affine_coupling_op(x, shift, scale, scale_fn, clamp, inverse, backend, ladj)
    return _eager_apply(x, shift, scale, scale_fn, clamp, inverse, backend, ladj)
