"""Reference affine coupling: y = x * exp(s) + shift, ladj = sum of s over the event (or s itself)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE_FNS = ("exp", "softclamp", "sigmoid", "softclip", "sigmoid_eps", "inv_sigmoid")
# ladj="sum": one log-determinant per row, shape (B,); "element": the log-multiplier of
# each element, shape of x (what zuko's call_and_ladj returns).
LADJ_MODES = ("sum", "element")

# nflows' floor on the multiplier: sigmoid(a + 2) + SIGMOID_EPS.
SIGMOID_EPS = 1e-3


def log_multiplier(scale: torch.Tensor, scale_fn: str, clamp: float) -> torch.Tensor:
    """s(a): the log of the multiplier applied to x.

    ``"exp"``: ``a``; ``"softclamp"``: ``clamp * tanh(a / clamp)``;
    ``"sigmoid"``: ``log(sigmoid(a + 2))``; ``"softclip"``:
    ``a / (1 + |a| / clamp)`` (zuko's monotonic affine transform with
    ``clamp = -log(slope)``); ``"sigmoid_eps"``: ``log(sigmoid(a + 2) + 1e-3)``
    (nflows); ``"inv_sigmoid"``: ``-log(sigmoid(a + 2))`` (normflows'
    ``scale_map="sigmoid"``, which divides by the sigmoid).
    """
    if scale_fn == "exp":
        return scale
    if scale_fn == "softclamp":
        return clamp * torch.tanh(scale / clamp)
    if scale_fn == "sigmoid":
        return -F.softplus(-(scale + 2.0))  # log(sigmoid(a + 2)), without overflow
    if scale_fn == "softclip":
        return scale / (1.0 + scale.abs() / clamp)
    if scale_fn == "sigmoid_eps":
        return torch.log(torch.sigmoid(scale + 2.0) + SIGMOID_EPS)
    if scale_fn == "inv_sigmoid":
        return F.softplus(-(scale + 2.0))
    raise ValueError(f"scale_fn must be one of {SCALE_FNS}, got {scale_fn!r}")


def dlog_multiplier(scale: torch.Tensor, s: torch.Tensor, scale_fn: str, clamp: float) -> torch.Tensor:
    """ds/da, given ``s = log_multiplier(scale, scale_fn, clamp)``."""
    if scale_fn == "exp":
        return torch.ones_like(scale)
    if scale_fn == "softclamp":
        return 1.0 - (s / clamp) ** 2
    if scale_fn == "sigmoid":
        return torch.exp(s - (scale + 2.0))  # 1 - sigmoid(a + 2), no cancellation for large a
    if scale_fn == "softclip":
        return (1.0 + scale.abs() / clamp) ** -2
    if scale_fn == "sigmoid_eps":
        z = scale + 2.0
        sig = torch.sigmoid(z)
        return sig * torch.sigmoid(-z) / (sig + SIGMOID_EPS)
    if scale_fn == "inv_sigmoid":
        return -torch.exp(-s - (scale + 2.0))  # -(1 - sigmoid(a + 2))
    raise ValueError(f"scale_fn must be one of {SCALE_FNS}, got {scale_fn!r}")


def _ladj_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
    ladj: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract, computed in float32 (float64 for float64 inputs).

    Returns ``y`` in the input dtype and the log-determinant in float32
    (float64 for float64 inputs): of shape ``(B,)`` with ``ladj="sum"``, of
    ``x``'s shape (the per-element ``s``, or ``-s`` for the inverse) with
    ``ladj="element"``.
    """
    if ladj not in LADJ_MODES:
        raise ValueError(f"affine_coupling: ladj must be one of {LADJ_MODES}, got {ladj!r}")
    compute = _ladj_dtype(x.dtype)
    xc, tc, ac = x.to(compute), shift.to(compute), scale.to(compute)
    s = log_multiplier(ac, scale_fn, clamp)
    if inverse:
        y = (xc - tc) * torch.exp(-s)
    else:
        y = xc * torch.exp(s) + tc
    if ladj == "element":
        out = s.clone()  # never an alias of scale ("exp" in float64 has s = scale)
    else:
        out = s.reshape(s.shape[0], math.prod(s.shape[1:])).sum(dim=1)  # no event dims: ladj = s
    return y.to(x.dtype), (-out if inverse else out)


def affine_coupling_backward(
    grad_y: torch.Tensor,
    grad_ladj: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    scale_fn: str = "exp",
    clamp: float = 2.0,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x, shift, scale) of <grad_y, y> + <grad_ladj, ladj>, by the chain rule written out.

    ``grad_ladj`` has the shape of the ``ladj`` it belongs to: ``(B,)`` (the row
    sums) or ``x``'s shape (per element). Tests check this against autograd
    through :func:`affine_coupling`.
    """
    compute = _ladj_dtype(x.dtype)
    xc, tc, ac, gy = (t.to(compute) for t in (x, shift, scale, grad_y))
    gl = grad_ladj.to(compute)
    if gl.shape != x.shape:  # a per-row gradient (for 1-D x the two are the same)
        gl = gl.reshape((-1,) + (1,) * (x.dim() - 1))
    s = log_multiplier(ac, scale_fn, clamp)
    ds = dlog_multiplier(ac, s, scale_fn, clamp)
    if inverse:
        e = torch.exp(-s)
        gx = gy * e
        y = (xc - tc) * e
        gs = -(gy * y) - gl
        gshift = -gx
    else:
        e = torch.exp(s)
        gx = gy * e
        gs = gx * xc + gl
        gshift = gy
    return gx.to(x.dtype), gshift.to(x.dtype), (gs * ds).to(x.dtype)
