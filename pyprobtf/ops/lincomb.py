"""lincomb: the fused solver-step update, with Gaussian noise drawn inside the kernel.

``out = lincomb(tensors, coeffs, noise_std=..., seed=...)`` computes::

    out = coeffs[0] * tensors[0] + ... + coeffs[n-1] * tensors[n-1] + noise_std * eps

for 1 to 4 tensors of one shape ``(B, ...)`` in ONE pass over memory (the
inputs read once, the output written once), where each coefficient and
``noise_std`` is a Python number or a ``(B,)`` tensor (one value per row), and
``eps`` is a standard normal drawn from the counter-based Philox stream of
docs/ARCHITECTURE.md inside the kernel: it is never stored, and it is the same
on every backend and device up to float rounding. Every step of every solver in
:mod:`pyprobtf.solvers` is one or two calls of it.

The op is differentiable in the tensors, the coefficient tensors and a
``noise_std`` tensor (gradients are lincombs and row sums). Eager calls on
same-shape contiguous plain tensors with number coefficients go straight to the
kernel, through a small ``torch.autograd.Function`` when a tensor needs a
gradient; everything else (tensor coefficients, ``out=``, ``torch.compile``,
fake tensors, functorch transforms) goes through the custom ops
``torch.ops.pyprobtf.lincomb`` and ``torch.ops.pyprobtf.lincomb_out``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional

import torch

from pyprobtf import _checks, reference, seeds
from pyprobtf.ops import _native, _registry

OP = "lincomb"
MAX_INPUTS = 4
_INT64_MIN = -(1 << 63)

# `auto` order: fastest first, as measured by benchmarks/bench_solvers.py
# (benchmarks/results/solvers-*.md).
_registry.define(OP, auto={"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")},
                 benchmark="bench_solvers", custom_ops=("pyprobtf::lincomb", "pyprobtf::lincomb_out"))
_registry.register_kernel(OP, "reference")(reference.lincomb)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_shape(shape) -> tuple[int, int]:
    """(B, F): the (rows, columns) view every backend works on."""
    return shape[0], math.prod(shape[1:])


def _has_noise(noise_value: float, noise_tensor) -> bool:
    return noise_tensor is not None or noise_value != 0.0


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _same_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (one shape) are the same view: element i of one is element i of the other."""
    if a.data_ptr() != b.data_ptr():
        return False
    return all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


def _direct_target(out: torch.Tensor, inputs: Sequence[torch.Tensor], others: Sequence) -> torch.Tensor | None:
    """A (B, F) view through which the kernel may write ``out`` directly, or None.

    Direct writes need a view (not a copy) and no input that overlaps ``out``
    other than exactly (the same elements: an in-place update is safe element
    by element). Otherwise the kernel writes a fresh tensor that is copied in.
    """
    try:
        out2 = out.view(_row_shape(out.shape))
    except RuntimeError:
        return None
    for t in inputs:
        if _shares_memory(t, out) and not _same_elements(t, out):
            return None
    for t in others:
        if t is not None and _shares_memory(t, out):
            return None
    return out2


def _check_noise_rows(nt) -> None:
    """A ``noise_std`` tensor must hold non-negative finite values, as the number form must.

    On the CPU a bad row raises ``ValueError`` naming it. On a GPU the check runs on the device
    (``torch._assert_async``: a solver loop must not wait for the host at every step), so a bad row
    fails the next synchronisation with a device-side assertion; it is skipped while a CUDA graph is
    captured and on the meta device, where no value exists.
    """
    if nt is None or nt.numel() == 0 or nt.device.type == "meta":
        return
    ok = torch.isfinite(nt) & (nt >= 0)
    if nt.device.type != "cpu":
        if not (nt.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            torch._assert_async(ok.all(), f"{OP}: `noise_std` must be non-negative and finite")
        return
    if not bool(ok.all()):
        row = int(torch.nonzero(~ok)[0, 0])
        raise ValueError(f"{OP}: `noise_std` must be non-negative and finite; got {nt[row].item()} at row {row}")


def _compute(tensors, cv, ct, nv, nt, sv, st, offset, backend, out=None):
    """The op on validated, normalised arguments; fills and returns ``out`` (a new tensor when None)."""
    _check_noise_rows(nt)
    first = tensors[0]
    name = _registry.resolve(OP, backend, first.device.type)
    kernel = _registry.kernel(OP, name)
    noise = _has_noise(nv, nt)
    if name in _registry.FUNCTIONAL:
        coeffs = [c if c is not None else v for v, c in zip(cv, ct)]
        result = kernel(
            tensors, coeffs, nt if nt is not None else nv, (st if st is not None else sv) if noise else None, offset
        )
        if out is None:
            return result.contiguous()
        return out.copy_(result)
    others = [*ct, nt, st]
    target = None if out is None else _direct_target(out, tensors, others)
    if target is None:
        fresh = torch.empty(first.shape, dtype=first.dtype, device=first.device)
        target = fresh.view(_row_shape(first.shape))
    rows_, cols = target.shape
    if rows_ > 0 and cols > 0:
        compute = _compute_dtype(first.dtype)
        ct_c = [None if c is None else c.to(compute) for c in ct]
        nt_c = None if nt is None else nt.to(compute)
        st_c = None if st is None else st.to(torch.int64)
        inputs = [_native.rows(t) for t in tensors]
        out2 = target
        if all(c is None for c in ct) and nt is None and st is None and \
                all(t.is_contiguous() for t in (*inputs, target)):
            # Nothing differs between rows: one long row (flat index i = r * F + c keeps its
            # noise counter), so short rows cost no per-row overhead.
            inputs = [t.view(1, -1) for t in inputs]
            out2 = target.view(1, -1)
        kernel(inputs, list(cv), ct_c, out2, noise, nv, nt_c, sv, st_c, offset)
    result = target.view(first.shape)
    if out is None:
        return result
    if result.data_ptr() != out.data_ptr() or not _same_elements(result, out):
        out.copy_(result)
    return out


# ----------------------------------------------------------------------------- custom ops
# The path torch.compile, fake tensors and torch.library.opcheck see. Coefficients
# travel as numbers (`coeff_values`, 0 where a tensor is used) plus the list of
# coefficient tensors and the input index each applies to (`coeff_slots`): a
# list mixing tensors and None would hide its tensors from autograd.


def _expand(n: int, coeff_tensors, coeff_slots) -> list:
    ct = [None] * n
    for t, k in zip(coeff_tensors, coeff_slots):
        ct[k] = t
    return ct


def _compact(ct) -> tuple[list, list]:
    slots = [k for k, c in enumerate(ct) if c is not None]
    return [ct[k] for k in slots], slots


@torch.library.custom_op("pyprobtf::lincomb", mutates_args=())
def _lincomb_op(
    tensors: Sequence[torch.Tensor], coeff_values: Sequence[float], coeff_tensors: Sequence[torch.Tensor],
    coeff_slots: Sequence[int], noise_value: float, noise_tensor: Optional[torch.Tensor], seed_value: int,
    seed_tensor: Optional[torch.Tensor], offset: int, backend: str,
) -> torch.Tensor:
    ct = _expand(len(tensors), coeff_tensors, coeff_slots)
    return _compute(list(tensors), list(coeff_values), ct, noise_value, noise_tensor, seed_value, seed_tensor, offset,
                    backend)


@_lincomb_op.register_fake
def _(tensors, coeff_values, coeff_tensors, coeff_slots, noise_value, noise_tensor, seed_value, seed_tensor, offset,
      backend):
    first = tensors[0]
    return torch.empty(first.shape, dtype=first.dtype, device=first.device)


@torch.library.custom_op("pyprobtf::lincomb_out", mutates_args=("out",))
def _lincomb_out_op(
    tensors: Sequence[torch.Tensor], coeff_values: Sequence[float], coeff_tensors: Sequence[torch.Tensor],
    coeff_slots: Sequence[int], noise_value: float, noise_tensor: Optional[torch.Tensor], seed_value: int,
    seed_tensor: Optional[torch.Tensor], offset: int, backend: str, out: torch.Tensor,
) -> None:
    ct = _expand(len(tensors), coeff_tensors, coeff_slots)
    _compute(list(tensors), list(coeff_values), ct, noise_value, noise_tensor, seed_value, seed_tensor, offset,
             backend, out)


@_lincomb_out_op.register_fake
def _(tensors, coeff_values, coeff_tensors, coeff_slots, noise_value, noise_tensor, seed_value, seed_tensor, offset,
      backend, out):
    return None


def _row_sum(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum over each row of a * b, in the compute dtype, returned as ``dtype`` (B,)."""
    compute = _compute_dtype(a.dtype)
    prod = a.to(compute) * b.to(compute)
    return prod.reshape(_row_shape(prod.shape)).sum(1).to(dtype)


def _gradients(g, tensors, cv, ct, nt, sv, st, offset, backend, needs, op):
    """Gradients for (tensors..., coeff tensors (None where a number)..., noise tensor).

    ``needs`` has a flag per entry of that list. ``op(tensors, cv, ct, nv, nt, sv, st,
    offset, backend)`` computes a lincomb through a differentiable path, so that the
    gradients can be differentiated again (create_graph=True).
    """
    n = len(tensors)
    grads = []
    for k in range(n):
        if not needs[k]:
            grads.append(None)
        elif ct[k] is None and cv[k] == 1.0:
            grads.append(g)
        elif ct[k] is None:
            grads.append(op([g], [cv[k]], [None], 0.0, None, 0, None, 0, backend))
        else:
            grads.append(op([g], [0.0], [ct[k]], 0.0, None, 0, None, 0, backend))
    for k in range(n):
        grads.append(_row_sum(g, tensors[k], ct[k].dtype) if needs[n + k] and ct[k] is not None else None)
    if needs[2 * n] and nt is not None:
        # The eps that was added: a lincomb of zeros with unit noise, in the compute dtype.
        zeros = torch.zeros(g.shape, dtype=_compute_dtype(g.dtype), device=g.device)
        eps = op([zeros], [0.0], [None], 1.0, None, sv, st, offset, backend)
        grads.append(_row_sum(g, eps, nt.dtype))
    else:
        grads.append(None)
    return grads


def _op_call(tensors, cv, ct, nv, nt, sv, st, offset, backend):
    return _lincomb_op(tensors, cv, *_compact(ct), nv, nt, sv, st, offset, backend)


def _setup_context(ctx, inputs, output):
    tensors, cv, coeff_tensors, coeff_slots, nv, nt, sv, st, offset, backend = inputs
    ctx.n, ctx.slots = len(tensors), list(coeff_slots)
    ctx.has_nt, ctx.has_st = nt is not None, st is not None
    ctx.save_for_backward(*tensors, *coeff_tensors, *([nt] if nt is not None else []),
                          *([st] if st is not None else []))
    ctx.options = (list(cv), sv, offset, backend)


def _op_backward(ctx, g):
    n, slots = ctx.n, ctx.slots
    saved = list(ctx.saved_tensors)
    tensors, coeff_tensors, rest = saved[:n], saved[n:n + len(slots)], saved[n + len(slots):]
    nt = rest.pop(0) if ctx.has_nt else None
    st = rest.pop(0) if ctx.has_st else None
    cv, sv, offset, backend = ctx.options
    ct = _expand(n, coeff_tensors, slots)
    need_t, need_c, need_n = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[5]
    need_t = list(need_t) if isinstance(need_t, (list, tuple)) else [bool(need_t)] * n
    need_c = list(need_c) if isinstance(need_c, (list, tuple)) else [bool(need_c)] * len(slots)
    need_ct = [False] * n
    for k, flag in zip(slots, need_c):
        need_ct[k] = flag
    grads = _gradients(g, tensors, cv, ct, nt, sv, st, offset, backend, need_t + need_ct + [bool(need_n)], _op_call)
    coeff_grads = [grads[n + k] for k in slots]
    # An empty list argument is an empty node of autograd's input structure (not a leaf):
    # its "gradient" must be an empty list too.
    slots_grad = [] if not slots else None
    return grads[:n], None, coeff_grads, slots_grad, None, grads[2 * n], None, None, None, None


_lincomb_op.register_autograd(_op_backward, setup_context=_setup_context)


def _needs_grad(tensors, ct, nt) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (*tensors, *ct, nt))


def _dispatch(tensors, cv, ct, nv, nt, sv, st, offset, backend, out):
    """Route normalised arguments to the custom op (autograd, torch.compile) or straight to the kernel."""
    all_tensors = [*tensors, *[c for c in ct if c is not None], *[t for t in (nt, st, out) if t is not None]]
    if _registry.use_custom_op(*all_tensors) or (out is None and _needs_grad(tensors, ct, nt)):
        if out is None:
            return _lincomb_op(tensors, cv, *_compact(ct), nv, nt, sv, st, offset, backend)
        _lincomb_out_op(tensors, cv, *_compact(ct), nv, nt, sv, st, offset, backend, out)
        return out
    return _compute(tensors, cv, ct, nv, nt, sv, st, offset, backend, out)


# ----------------------------------------------------------------------------- validation


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _per_row(name: str, value, batch: int, ref: torch.Tensor, *, dtypes, kind: str):
    """A ``(B,)`` tensor of ``dtypes`` on ``ref``'s device."""
    if value.dtype not in dtypes:
        raise TypeError(f"{OP}: `{name}` must be {kind} tensor; got dtype {value.dtype}")
    if value.shape != (batch,):
        raise ValueError(
            f"{OP}: `{name}` must be a number or a tensor of shape (B,) = ({batch},), one value per row of "
            f"`tensors[0]` {tuple(ref.shape)}; got shape {tuple(value.shape)}"
        )
    if value.device != ref.device:
        raise ValueError(f"{OP}: `{name}` must be on the device of `tensors[0]`, {ref.device}; got {value.device}")
    return value


def _number_or_rows(name: str, value, batch: int, ref: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    if type(value) is float:  # the common case first: a solver's step coefficients (checks cost per call)
        return value, None
    if isinstance(value, torch.Tensor):
        return 0.0, _per_row(name, value, batch, ref, dtypes=_checks.FLOAT_DTYPES, kind="a floating-point")
    if not _is_real_number(value):
        raise TypeError(f"{OP}: `{name}` must be a real number or a tensor of shape (B,); got {type(value).__name__}")
    return _checks.as_float(OP, name, value), None


def _has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share one memory location (exact, for any strides)."""
    dims = sorted((abs(stride), size) for size, stride in zip(t.shape, t.stride()) if size > 1)
    if t.numel() == 0 or not dims:
        return False
    if dims[0][0] == 0:
        return True
    # Strides that each clear the span of the smaller ones never overlap (every usual layout).
    span = 0
    for stride, size in dims:
        if stride <= span:
            break
        span += stride * (size - 1)
    else:
        return False
    # Anything else: compare the element offsets themselves.
    offsets = torch.zeros(1, dtype=torch.int64)
    for stride, size in dims:
        offsets = (offsets[:, None] + stride * torch.arange(size, dtype=torch.int64)).reshape(-1)
    return torch.unique(offsets).numel() < offsets.numel()


def _normalise(tensors, coeffs, noise_std, seed, offset, out, backend):
    """Validate the public arguments; return the custom op's argument list."""
    if type(tensors) not in (list, tuple) and (isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence)):
        raise TypeError(f"{OP}: `tensors` must be a list or tuple of 1 to {MAX_INPUTS} tensors; "
                        f"got {type(tensors).__name__}")
    if not 1 <= len(tensors) <= MAX_INPUTS:
        raise ValueError(f"{OP}: `tensors` must hold 1 to {MAX_INPUTS} tensors; got {len(tensors)}")
    tensors = list(tensors)
    first = _checks.tensor(OP, "tensors[0]", tensors[0], min_dim=1)
    for k in range(1, len(tensors)):
        _checks.same_as(OP, f"tensors[{k}]", tensors[k], "tensors[0]", first)
    if type(coeffs) not in (list, tuple) and (isinstance(coeffs, torch.Tensor) or not isinstance(coeffs, Sequence)):
        raise TypeError(f"{OP}: `coeffs` must be a list or tuple with one coefficient per tensor; "
                        f"got {type(coeffs).__name__}")
    if len(coeffs) != len(tensors):
        raise ValueError(f"{OP}: `coeffs` must have one entry per tensor ({len(tensors)}); got {len(coeffs)}")
    batch = first.shape[0]
    cv, ct = [], []
    for k, c in enumerate(coeffs):
        value, rows = _number_or_rows(f"coeffs[{k}]", c, batch, first)
        cv.append(value)
        ct.append(rows)

    nv, nt = _number_or_rows("noise_std", noise_std, batch, first)
    if nt is None and not (nv >= 0.0 and math.isfinite(nv)):
        raise ValueError(f"{OP}: `noise_std` must be non-negative and finite; got {nv}")
    noise = _has_noise(nv, nt)

    sv, st = 0, None
    if isinstance(seed, torch.Tensor):
        seeds.check_seed_tensor(seed, OP)
        st = _per_row("seed", seed, batch, first, dtypes=seeds.INTEGER_TENSOR_DTYPES, kind="an integer")
    elif seed is None:
        if noise:  # like torch.randn: from the device's generator (reproducible under torch.manual_seed), no sync
            st = torch.randint(_INT64_MIN, (1 << 63) - 1, (batch,), dtype=torch.int64, device=first.device)
    elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        sv = seeds.signed_int64(seeds.check_seed(seed, OP))
    else:
        raise TypeError(f"{OP}: `seed` must be an integer, an integer tensor of shape (B,) or None; "
                        f"got {type(seed).__name__}")

    offset = seeds.signed_int64(seeds.check_counter(offset, OP))

    if out is not None:
        _checks.same_as(OP, "out", out, "tensors[0]", first)
        if _has_internal_overlap(out):
            raise ValueError(f"{OP}: `out` must not have several elements in one memory location "
                             f"(e.g. an expanded tensor); got shape {tuple(out.shape)} with strides {out.stride()}")
        if _needs_grad(tensors, ct, nt):
            raise RuntimeError(f"{OP}: `out=` does not support automatic differentiation (an input requires "
                               "grad); call it under torch.no_grad() or without `out`")
    _registry.check_backend(OP, backend)
    return tensors, cv, ct, nv, nt, sv, st, offset


# ----------------------------------------------------------------------------- fast path
# A solver step is a few microseconds of memory traffic at image sizes: the general
# path's validation and normalisation (tens of microseconds of Python) would dominate
# it. The common call (same-shape contiguous plain tensors, Python float coefficients,
# no per-row tensors, no `out`) is recognised here with checks that each
# imply the general path's: anything else, including every invalid call, returns None
# and takes the general path, which raises its own errors.

_INT64_END = 1 << 63


def _fast_lincomb(tensors, coeffs, noise_std, seed, offset) -> torch.Tensor | None:
    """The op for the common call, straight to a native kernel; None when the call is not that case."""
    if type(tensors) not in (list, tuple) or type(coeffs) not in (list, tuple):
        return None
    n = len(tensors)
    if not 1 <= n <= MAX_INPUTS or len(coeffs) != n:
        return None
    for c in coeffs:
        if type(c) is not float:
            return None
    # Seeds and offsets in [-2^63, 2^63) are their own signed 64-bit values (seeds.signed_int64).
    if type(noise_std) is not float or type(offset) is not int or not _INT64_MIN <= offset < _INT64_END:
        return None
    if noise_std == 0.0:
        noise = False
        if seed is None:
            seed = 0
        elif type(seed) is not int or not _INT64_MIN <= seed < _INT64_END:
            return None
    elif 0.0 < noise_std < math.inf and type(seed) is int and _INT64_MIN <= seed < _INT64_END:
        noise = True
    else:  # a bad noise_std, or noise with a per-row or drawn seed
        return None
    first = tensors[0]
    if type(first) is not torch.Tensor or first.dtype not in _checks.FLOAT_DTYPES:
        return None
    shape, dtype, device = first.shape, first.dtype, first.device
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    for t in tensors:
        if (type(t) is not torch.Tensor or not t.is_contiguous() or t.shape != shape or t.dtype != dtype
                or t.device != device or is_wrapped(t)):
            return None
    if not shape or first.numel() == 0:
        return None
    name = _registry.resolve(OP, "auto", device.type)
    if name in _registry.FUNCTIONAL:
        return None
    kernel = _registry.kernel(OP, name)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _FastLincombFunction.apply(kernel, coeffs, noise, noise_std, seed, offset, *tensors)
    return _run_fast(kernel, tensors, coeffs, noise, noise_std, seed, offset)


def _run_fast(kernel, tensors, coeffs, noise, noise_std, seed, offset) -> torch.Tensor:
    first = tensors[0]
    out = torch.empty_like(first)  # contiguous, as `first` is
    flat = getattr(kernel, "flat", None)
    if flat is not None:
        flat(tensors, coeffs, out, noise, noise_std, seed, offset)
        return out
    # Nothing differs between rows: one long row, as the general path does (same noise counters).
    numel = first.numel()
    kernel([t.view(1, numel) for t in tensors], list(coeffs), [None] * len(tensors), out.view(1, numel),
           noise, noise_std, None, seed, None, offset)
    return out


class _FastLincombFunction(torch.autograd.Function):
    """The fast path's autograd (a neural ODE's stage combinations need gradients): with Python float
    coefficients the gradient of ``tensors[i]`` is ``coeffs[i] * grad``, itself a differentiable lincomb.
    Far cheaper per call than the custom op's registered autograd."""

    @staticmethod
    def forward(ctx, kernel, coeffs, noise, noise_std, seed, offset, *tensors):
        ctx.coeffs = coeffs
        return _run_fast(kernel, tensors, coeffs, noise, noise_std, seed, offset)

    @staticmethod
    def backward(ctx, grad):
        grads = [None if not needed else grad if c == 1.0 else lincomb([grad], [c])
                 for needed, c in zip(ctx.needs_input_grad[6:], ctx.coeffs)]
        return (None,) * 6 + tuple(grads)


# ----------------------------------------------------------------------------- public op


def lincomb(
    tensors: Sequence[torch.Tensor],
    coeffs: Sequence[float | torch.Tensor],
    *,
    noise_std: float | torch.Tensor = 0.0,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``sum_i coeffs[i] * tensors[i] + noise_std * eps`` in one pass, with in-kernel Gaussian noise.

    Args:
        tensors: 1 to 4 tensors of one shape ``(B, ...)``, dtype (float32, float64,
            float16 or bfloat16; half types are computed in float32) and device; any strides.
        coeffs: one coefficient per tensor: a number, or a floating-point tensor of
            shape ``(B,)`` (one value per row) on the tensors' device.
        noise_std: scale of the added noise: a non-negative number (0: no noise) or
            a ``(B,)`` tensor (noise is then always drawn).
        seed: the Philox key of the noise: an int in ``[-2^63, 2^64)``, taken modulo ``2^64``
            (:mod:`pyprobtf.seeds`; element with flat index ``i`` gets
            ``N(seed, offset + i)``), or an int8/16/32/64 or uint8 tensor of shape ``(B,)`` (element
            ``j`` of row ``b`` gets ``N(seed[b], offset + j)``: noise that does not depend
            on the batch size or on the other rows). ``None`` draws one seed per row from
            the tensors' device generator, without waiting for the device (pass one
            explicitly under ``torch.compile``).
        offset: counter of the first element: an int in ``[-2^63, 2^64)``, taken modulo ``2^64``
            (counters ``offset + i`` wrap modulo ``2^64``). Consecutive draws from one
            seed use disjoint counters, e.g. ``offset = step * numel`` (``step * row_numel``
            with per-row seeds).
        out: write the result here (same shape, dtype and device; may be one of
            ``tensors`` itself for an in-place update). Not differentiable.
        backend: ``"auto"`` (the fastest verified backend for the device),
            ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        The result, shaped like ``tensors[0]`` (contiguous), or ``out``.

    ``N(seed, c)`` is ``triton.language.randn(seed, c)``: the noise is identical on
    every backend and device up to float rounding, and never stored.

    Example:
        >>> x, d = torch.randn(2, 8, 3, 32, 32).unbind(0)
        >>> x_next = lincomb([x, d], [1.0, -0.1])                        # Euler step x + h d
        >>> x_next = lincomb([x, d], [1.0, -0.1], noise_std=0.3, seed=7)  # Euler-Maruyama
        >>> seeds = torch.arange(8)                                      # batch-invariant noise
        >>> x_next = lincomb([x, d], [1.0, -0.1], noise_std=0.3, seed=seeds, offset=3 * 3 * 32 * 32)
    """
    if out is None and backend == "auto" and not torch.compiler.is_compiling():  # compiled: the custom op
        result = _fast_lincomb(tensors, coeffs, noise_std, seed, offset)
        if result is not None:
            return result
    args = _normalise(tensors, coeffs, noise_std, seed, offset, out, backend)
    return _dispatch(*args, backend, out)
