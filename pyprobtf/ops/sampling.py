"""sample_logits and filter_logits: temperature, top-k, top-p and min-p as a deterministic transform of a uniform.

``tokens = sample_logits(logits, temperature=..., top_k=..., top_p=..., min_p=..., seed=...)``
is the step of an autoregressive model that turns one uniform number per row
into a token (docs/ARCHITECTURE.md, sample_logits): the filtered distribution's
inverse CDF in vocabulary order, evaluated at the row's uniform. The same
uniform gives the same token on every backend; a row's token never depends on
the other rows. ``filter_logits`` returns the processed logits themselves.

The float computation is defined in :mod:`pyprobtf.reference.sampling`; no
backend sorts the vocabulary.

Errors: arguments are checked before any kernel runs; values inside per-row
tensors and in the logits (NaN, +inf, a row that is all -inf) are checked by
the kernels themselves, which report a status per row, and the op raises for
the first bad row. That check would make the host wait for the device, so on
CUDA it is opt-in (``check=True``): unchecked bad rows get token -1 and
log-prob NaN (filter_logits: a row of NaN), without an error.
"""

from __future__ import annotations

import math
import numbers

import torch

from pyprobtf import _checks, reference, seeds
from pyprobtf.ops import _registry
from pyprobtf.reference.sampling import compute_dtype

SAMPLE = "sample_logits"
FILTER = "filter_logits"

# `auto` order: fastest first (benchmarks/bench_sampling.py, benchmarks/results/sampling-*.md).
_AUTO = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}
_registry.define(SAMPLE, auto=_AUTO, benchmark="bench_sampling")
_registry.define(FILTER, auto=_AUTO, benchmark="bench_sampling", checks=SAMPLE)
_registry.register_kernel(SAMPLE, "reference")(reference.sample_logits)
_registry.register_kernel(FILTER, "reference")(reference.filter_logits)

# Per-row status codes, as csrc/include/pyprobtf/sampling.h numbers them (checked against the native module's
# `enums()` by tests/test_registry.py).
STATUS = {"ok": 0, "bad_temperature": 1, "bad_top_k": 2, "bad_top_p": 3, "bad_min_p": 4, "bad_uniform": 5,
          "nan_logit": 6, "pos_inf_logit": 7, "all_neg_inf": 8}
OK, BAD_TEMPERATURE, BAD_TOP_K, BAD_TOP_P, BAD_MIN_P, BAD_UNIFORM, NAN_LOGIT, POS_INF_LOGIT, ALL_NEG_INF = STATUS.values()

_RULES = {
    "temperature": "must be a finite number >= 0 (0 is greedy) that stays finite in the compute dtype "
                   "(at most 3.4028235e38 unless the logits are float64)",
    "top_k": "must be an integer >= 0 (0 keeps every token)",
    "top_p": "must be in (0, 1]",
    "min_p": "must be in [0, 1)",
    "uniform": "must be in [0, 1)",
}
_PARAM_NAMES = ("temperature", "top_k", "top_p", "min_p")
_PARAM_OF_STATUS = {BAD_TEMPERATURE: "temperature", BAD_TOP_K: "top_k", BAD_TOP_P: "top_p", BAD_MIN_P: "min_p",
                    BAD_UNIFORM: "uniform"}


def _in_range(name: str, v, compute: torch.dtype = torch.float64):
    """Whether ``v`` (a number, or elementwise a tensor) is in the domain of parameter ``name``.

    A temperature must be finite once rounded to the compute dtype ``compute``.
    """
    if name == "temperature":
        return (v >= 0) & (v < _ROUNDS_TO_INF[compute])  # NaN and inf fail
    if name == "top_k":
        return v >= 0
    if name == "top_p":
        return (v > 0) & (v <= 1)
    return (v >= 0) & (v < 1)  # min_p, uniform


# The smallest numbers that round to inf in each compute dtype (round to nearest even).
_ROUNDS_TO_INF = {torch.float64: math.inf, torch.float32: 2.0**128 - 2.0**103}


# ----------------------------------------------------------------------------- argument normalisation


def _number_param(op: str, name: str, value, integer: bool):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        kind = "an integer" if integer else "a real number"
        raise TypeError(f"{op}: `{name}` must be {kind} or a (B,) tensor; got {type(value).__name__}")
    value = int(value) if integer else _checks.as_float(op, name, value)
    if not _in_range(name, value):
        raise ValueError(f"{op}: `{name}` {_RULES[name]}; got {value}")
    if integer:
        # top_k >= V keeps every token, so any larger value means the same as V: clamp to what int64 holds.
        value = min(value, _INT64_MAX)
    return value


_INT64_MAX = 2**63 - 1


def _tensor_param(op: str, name: str, value: torch.Tensor, logits: torch.Tensor, dtype: torch.dtype):
    """A (B,) tensor on the logits' device, converted to ``dtype`` (values are checked by the kernels)."""
    rows = logits.shape[0]
    if value.shape != (rows,):
        what = "a tensor" if name == "uniform" else "a number or a tensor"
        raise ValueError(f"{op}: `{name}` must be {what} of shape (B,) = ({rows},); got shape {tuple(value.shape)}")
    if value.device != logits.device:
        raise ValueError(f"{op}: `{name}` must be on the device of `logits`, {logits.device}; got {value.device}")
    if dtype == torch.int64:
        return seeds.check_seed_tensor(value, op, name)  # one rule for every integer tensor (pyprobtf.seeds)
    if dtype == torch.float64 and (value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{op}: `{name}` must be a real-valued tensor; got {value.dtype}")
    return value.to(dtype)


def _param(op: str, name: str, value, logits: torch.Tensor, integer: bool = False):
    """(tensor or None, number): a per-row tensor, or one number for every row."""
    if isinstance(value, torch.Tensor):
        return _tensor_param(op, name, value, logits, torch.int64 if integer else torch.float64), 0
    return None, _number_param(op, name, value, integer)


def _check_logits(op: str, logits) -> None:
    _checks.tensor(op, "logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"{op}: `logits` must have shape (B, V); got shape {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{op}: `logits` must have at least one column (V >= 1); got shape {tuple(logits.shape)}")


# ----------------------------------------------------------------------------- status -> errors


def _value_at(tensor, number, row: int):
    return (tensor[row].item() if tensor is not None else number)


def _raise_for_status(op: str, status: torch.Tensor, params: dict) -> None:
    """Raise for the first row whose status is not OK; ``params`` maps names to (tensor or None, number)."""
    bad = torch.nonzero(status != OK)
    if bad.numel() == 0:
        return
    row = int(bad[0, 0])
    code = int(status[row])
    more = f" (and {bad.shape[0] - 1} more bad rows)" if bad.shape[0] > 1 else ""
    if code in _PARAM_OF_STATUS:
        name = _PARAM_OF_STATUS[code]
        value = _value_at(*params[name], row)
        raise ValueError(f"{op}: `{name}` {_RULES[name]}; got {value} at row {row}{more}")
    what = {
        NAN_LOGIT: "contains NaN",
        POS_INF_LOGIT: "contains +inf (logits must be finite or -inf)",
        ALL_NEG_INF: "is all -inf: no token can be chosen",
    }.get(code, f"failed with status {code}")
    raise ValueError(f"{op}: `logits` row {row} {what}{more}")


def _check_status(op: str, status: torch.Tensor, params: dict, check: bool | None) -> None:
    """Raise for bad rows when asked (by default on CPU only: on CUDA it waits for the device)."""
    if check is False or (check is None and status.device.type != "cpu"):
        return
    if status.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return  # no host synchronisation inside a CUDA graph
    _raise_for_status(op, status.cpu(), params)


def _reference_status(logits, params, uniform) -> torch.Tensor:
    """The kernels' per-row status, computed with torch ops (the reference backend's check)."""
    rows = logits.shape[0]
    status = torch.zeros(rows, dtype=torch.int32, device=logits.device)
    x = logits.to(compute_dtype(logits.dtype))
    checks = [
        (BAD_TEMPERATURE, ~_rows_in_range("temperature", params["temperature"], rows, x.device, x.dtype)),
        (BAD_TOP_K, ~_rows_in_range("top_k", params["top_k"], rows, x.device)),
        (BAD_TOP_P, ~_rows_in_range("top_p", params["top_p"], rows, x.device)),
        (BAD_MIN_P, ~_rows_in_range("min_p", params["min_p"], rows, x.device)),
        (BAD_UNIFORM, ~_rows_in_range("uniform", (uniform, 0.0), rows, x.device)),
        (NAN_LOGIT, x.isnan().any(dim=1)),
        (POS_INF_LOGIT, (x == math.inf).any(dim=1)),
        (ALL_NEG_INF, (x == -math.inf).all(dim=1)),
    ]
    for code, failed in reversed(checks):  # the first failing check wins
        status = torch.where(failed, code, status)
    return status


def _rows_in_range(name, param, rows, device, compute=torch.float64) -> torch.Tensor:
    tensor, number = param
    values = tensor if tensor is not None else torch.full((rows,), number, dtype=torch.float64, device=device)
    return _in_range(name, values, compute)


def _temperature_overflow(params, logits) -> torch.Tensor | None:
    """Rows whose temperature tensor entry is finite in float64 but rounds to inf in float32 compute.

    The kernels check temperatures in float64; this adds the compute-dtype rule for them
    (number temperatures are checked before any launch).
    """
    tensor = params["temperature"][0]
    if tensor is None or compute_dtype(logits.dtype) == torch.float64:
        return None
    return tensor.isfinite() & (tensor >= _ROUNDS_TO_INF[torch.float32])


def _merge_temperature_status(status, params, logits) -> bool:
    """Mark rows with an overflowing temperature bad (temperature is checked first); whether any could be."""
    overflow = _temperature_overflow(params, logits)
    if overflow is None:
        return False
    status.copy_(torch.where(overflow, BAD_TEMPERATURE, status))
    return True


# ----------------------------------------------------------------------------- backends


def _params_dict(temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p) -> dict:
    return {"temperature": (temperature_t, temperature), "top_k": (top_k_t, top_k), "top_p": (top_p_t, top_p),
            "min_p": (min_p_t, min_p)}


def _ref_value(param):
    tensor, number = param
    return tensor if tensor is not None else number


def _sample(logits, params, uniform, seed, offset, backend, check=None):
    """(tokens, logprobs). ``uniform`` is a float64 (B,) tensor or None (then ``seed``/``offset`` are used)."""
    name = _registry.resolve(SAMPLE, backend, logits.device.type)
    kernel = _registry.kernel(SAMPLE, name)
    rows = logits.shape[0]
    if name in _registry.FUNCTIONAL:
        if uniform is None:
            uniform = reference.sampling.seeded_uniforms(rows, _ref_value(seed), _ref_value(offset), logits.device)
        status = _reference_status(logits, params, uniform)
        _check_status(SAMPLE, status, params | {"uniform": (uniform, 0)}, check)
        bad = status != OK
        logits, params, uniform = _neutral_rows(bad, logits, params, uniform)
        tokens, logprobs = kernel(logits, uniform, *(_ref_value(params[k]) for k in _PARAM_NAMES))
        return torch.where(bad, -1, tokens), torch.where(bad, math.nan, logprobs)
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(rows, dtype=compute_dtype(logits.dtype), device=logits.device)
    status = torch.empty(rows, dtype=torch.int32, device=logits.device)
    launched_check = kernel(logits, params, uniform, seed, offset, tokens, logprobs, status, None)
    if _merge_temperature_status(status, params, logits) or launched_check:
        _check_status(SAMPLE, status, params | {"uniform": (uniform, 0)}, check)
    return tokens, logprobs


_NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


def _neutral_rows(bad, logits, params, uniform):
    """Bad rows replaced by harmless ones (zero logits, neutral parameters), without reading ``bad`` back:
    the functional kernels then compute every row, and the bad rows' results are masked afterwards."""
    logits = torch.where(bad[:, None], torch.zeros((), dtype=logits.dtype, device=logits.device), logits)
    params = {name: (None if t is None else torch.where(bad, torch.tensor(_NEUTRAL[name], dtype=t.dtype), t), n)
              for name, (t, n) in params.items()}
    if uniform is not None:
        uniform = torch.where(bad, 0.0, uniform)
    return logits, params, uniform


def _filter(logits, params, backend, check=None):
    name = _registry.resolve(FILTER, backend, logits.device.type)
    kernel = _registry.kernel(FILTER, name)
    if name in _registry.FUNCTIONAL:
        status = _reference_status(logits, params, None)
        _check_status(FILTER, status, params, check)
        bad = status != OK
        safe_logits, params, _ = _neutral_rows(bad, logits, params, None)
        filtered = kernel(safe_logits, *(_ref_value(params[k]) for k in _PARAM_NAMES))
        return torch.where(bad[:, None], math.nan, filtered).to(logits.dtype).contiguous()
    rows, cols = logits.shape
    filtered = torch.empty(rows, cols, dtype=logits.dtype, device=logits.device)
    status = torch.empty(rows, dtype=torch.int32, device=logits.device)
    launched_check = kernel(logits, params, None, (None, 0), (None, 0), None, None, status, filtered)
    if _merge_temperature_status(status, params, logits) or launched_check:
        _check_status(FILTER, status, params, check)
    return filtered


# ----------------------------------------------------------------------------- custom ops
# The path torch.compile, fake tensors and torch.library.opcheck see: every
# parameter is an optional per-row tensor plus the number used when it is None.


@torch.library.custom_op("pyprobtf::sample_logits", mutates_args=())
def _sample_logits_op(
    logits: torch.Tensor, temperature_t: torch.Tensor | None, temperature: float, top_k_t: torch.Tensor | None,
    top_k: int, top_p_t: torch.Tensor | None, top_p: float, min_p_t: torch.Tensor | None, min_p: float,
    uniform: torch.Tensor | None, seed_t: torch.Tensor | None, seed: int, offset_t: torch.Tensor | None,
    offset: int, backend: str, check: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    params = _params_dict(temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p)
    return _sample(logits, params, uniform, (seed_t, seed), (offset_t, offset), backend, check)


@_sample_logits_op.register_fake
def _(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, uniform, seed_t, seed,
      offset_t, offset, backend, check):
    rows = logits.shape[0]
    return (logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, dtype=compute_dtype(logits.dtype)))


@torch.library.custom_op("pyprobtf::filter_logits", mutates_args=())
def _filter_logits_op(
    logits: torch.Tensor, temperature_t: torch.Tensor | None, temperature: float, top_k_t: torch.Tensor | None,
    top_k: int, top_p_t: torch.Tensor | None, top_p: float, min_p_t: torch.Tensor | None, min_p: float,
    backend: str, check: bool | None,
) -> torch.Tensor:
    params = _params_dict(temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p)
    return _filter(logits, params, backend, check)


@_filter_logits_op.register_fake
def _(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, backend, check):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _filter_setup_context(ctx, inputs, output):
    _, temperature_t, temperature = inputs[:3]
    ctx.save_for_backward(output, temperature_t)
    ctx.temperature = temperature


def _filter_backward(ctx, grad):
    # filter_logits is l / T on the kept set (0 for greedy rows) and -inf elsewhere:
    # the gradient is grad / T where the output is finite, 0 elsewhere and on greedy rows.
    output, temperature_t = ctx.saved_tensors
    C = compute_dtype(output.dtype)
    rows = output.shape[0]
    if temperature_t is not None:
        t = temperature_t.to(C)
    else:
        t = torch.full((rows,), ctx.temperature, dtype=C, device=output.device)
    inv_t = torch.where(t == 0, 0.0, 1.0 / t).unsqueeze(1)
    grad_logits = torch.where(output.isfinite(), grad.to(C) * inv_t, 0.0).to(output.dtype)
    return grad_logits, None, None, None, None, None, None, None, None, None, None


_filter_logits_op.register_autograd(_filter_backward, setup_context=_filter_setup_context)


# ----------------------------------------------------------------------------- public ops


def _normalise(op, logits, temperature, top_k, top_p, min_p):
    _check_logits(op, logits)
    params = _params_dict(
        *_param(op, "temperature", temperature, logits), *_param(op, "top_k", top_k, logits, integer=True),
        *_param(op, "top_p", top_p, logits), *_param(op, "min_p", min_p, logits),
    )
    t_tensor, t_number = params["temperature"]
    if t_tensor is None and not _in_range("temperature", t_number, compute_dtype(logits.dtype)):
        raise ValueError(f"{op}: `temperature` {_RULES['temperature']}; got {t_number} (it overflows "
                         f"{compute_dtype(logits.dtype)}, the compute dtype of {logits.dtype} logits)")
    return params


def _check_option(op: str, check) -> None:
    if check is not None and not isinstance(check, bool):
        raise TypeError(f"{op}: `check` must be True, False or None; got {check!r}")


def _flat(params: dict) -> list:
    return [v for name in _PARAM_NAMES for v in params[name]]


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    uniform: torch.Tensor | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    check: bool | None = None,
    backend: str = "auto",
):
    """Sample one token per row after temperature, top-k, top-p and min-p filtering.

    For row ``b`` with logits ``l`` and ``pi = softmax(l / T)``: top-k keeps the
    tokens whose probability is at least the k-th largest (every token tied
    with it), top-p keeps the smallest head of the top-k survivors whose mass
    reaches ``top_p`` (plus everything tied with its last member), min-p keeps
    ``pi_i >= min_p * max pi``; the token is the first one, in vocabulary
    order, at which the cumulative kept mass exceeds ``u * (kept mass)``.
    No sort: the thresholds are found by selection. ``temperature = 0`` is
    greedy (the first argmax).

    Args:
        logits: ``(B, V)`` float32, float16, bfloat16 or float64, any strides.
        temperature: a number ``>= 0`` or a ``(B,)`` tensor, one per row; finite once rounded
            to the compute dtype (at most ``3.4028235e38`` unless the logits are float64).
        top_k: an integer ``>= 0`` (0, or ``>= V`` however large, keeps every token) or a
            ``(B,)`` integer tensor.
        top_p: in ``(0, 1]`` (1 keeps every token), or a ``(B,)`` tensor.
        min_p: in ``[0, 1)`` (0 keeps every token), or a ``(B,)`` tensor.
        uniform: a ``(B,)`` tensor of uniforms in ``[0, 1)``, one per row: the
            op is then a deterministic function of them.
        seed: an int in ``[-2^63, 2^64)``, taken modulo ``2^64`` (:mod:`pyprobtf.seeds`; row
            ``b`` uses Philox key ``seed`` and counter ``offset + b``) or a ``(B,)`` int8/16/32/64
            or uint8 tensor (row ``b`` uses key
            ``seed[b]`` and counter ``offset[b]``: per-request seeds that do not
            depend on the batch). The uniform is the 53-bit float64
            ``((w0 >> 5) * 2^26 + (w1 >> 6)) * 2^-53`` of the first two Philox
            words, computed inside the kernel (works in CUDA graphs).
        offset: an int in ``[-2^63, 2^64)`` (modulo ``2^64``) or a ``(B,)`` integer tensor:
            the Philox counter (advance it by one per step for a fresh draw).
        generator: a ``torch.Generator`` for ``torch.rand(B, dtype=float64)``;
            used when neither ``uniform`` nor ``seed`` is given (default: torch's
            global generator).
        return_logprobs: also return the chosen token's log-probability under
            the filtered distribution (0 for greedy rows). Not differentiable;
            for gradients use ``log_softmax(filter_logits(...))``.
        check: raise for bad rows (NaN or +inf logits, a row all -inf, an
            out-of-range per-row parameter). ``None``: on CPU only, since on
            CUDA the check makes the host wait for the device; unchecked bad
            rows get token -1 and log-prob NaN.
        backend: ``"auto"``, ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``tokens`` (int64, ``(B,)``), or ``(tokens, logprobs)`` with
        ``logprobs`` float32 (float64 for float64 logits).

    Raises:
        ValueError: for an out-of-range number parameter; with ``check``, also
        for an out-of-range per-row value, NaN or +inf logits, or a row that
        is all -inf, naming the argument and the row.

    Example:
        >>> logits = torch.randn(4, 32000)
        >>> tokens = sample_logits(logits, temperature=0.7, top_k=50, top_p=0.9, seed=1234)
        >>> seeds = torch.tensor([11, 12, 13, 14])  # one per request
        >>> tokens, logprobs = sample_logits(logits, top_p=0.95, seed=seeds, offset=7, return_logprobs=True)
    """
    params = _normalise(SAMPLE, logits, temperature, top_k, top_p, min_p)
    rows = logits.shape[0]
    sources = [name for name, v in (("uniform", uniform), ("seed", seed), ("generator", generator)) if v is not None]
    if len(sources) > 1:
        raise ValueError(f"{SAMPLE}: give at most one of `uniform`, `seed` and `generator`; got {', '.join(sources)}")
    if seed is None and (isinstance(offset, torch.Tensor) or offset != 0):
        raise ValueError(f"{SAMPLE}: `offset` is the Philox counter and needs `seed`")
    _checks.boolean(SAMPLE, "return_logprobs", return_logprobs)
    _check_option(SAMPLE, check)
    _registry.check_backend(SAMPLE, backend)
    seed_t, seed_n, offset_t, offset_n = None, 0, None, 0
    if uniform is not None:
        if not isinstance(uniform, torch.Tensor):
            raise TypeError(f"{SAMPLE}: `uniform` must be a (B,) tensor; got {type(uniform).__name__}")
        uniform = _tensor_param(SAMPLE, "uniform", uniform, logits, torch.float64)
    elif seed is not None:
        if isinstance(seed, torch.Tensor):
            seed_t = _tensor_param(SAMPLE, "seed", seed, logits, torch.int64)
        elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            seed_n = seeds.signed_int64(seeds.check_seed(seed, SAMPLE))
        else:
            raise TypeError(f"{SAMPLE}: `seed` must be an integer or a (B,) integer tensor; got {type(seed).__name__}")
        if isinstance(offset, torch.Tensor):
            offset_t = _tensor_param(SAMPLE, "offset", offset, logits, torch.int64)
        elif isinstance(offset, numbers.Integral) and not isinstance(offset, bool):
            offset_n = seeds.signed_int64(seeds.check_counter(offset, SAMPLE))
        else:
            raise TypeError(f"{SAMPLE}: `offset` must be an integer or a (B,) integer tensor; "
                            f"got {type(offset).__name__}")
    else:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{SAMPLE}: `generator` must be a torch.Generator; got {type(generator).__name__}")
        if generator is not None and generator.device.type != logits.device.type:
            raise ValueError(f"{SAMPLE}: `generator` must be on the device of `logits`, {logits.device}; "
                             f"got {generator.device}")
        uniform = torch.rand(rows, generator=generator, dtype=torch.float64, device=logits.device)

    tensors = [t for t in (logits, uniform, seed_t, offset_t, *_flat(params)[::2]) if t is not None]
    if _registry.use_custom_op(*tensors):
        tokens, logprobs = _sample_logits_op(logits, *_flat(params), uniform, seed_t, seed_n, offset_t, offset_n,
                                             backend, check)
    else:
        tokens, logprobs = _sample(logits, params, uniform, (seed_t, seed_n), (offset_t, offset_n), backend, check)
    return (tokens, logprobs) if return_logprobs else tokens


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    check: bool | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The processed logits of :func:`sample_logits`: ``l / T`` on the kept set, ``-inf`` elsewhere.

    ``log_softmax`` of the result is the filtered distribution that
    :func:`sample_logits` draws from (greedy rows, ``T = 0``, are 0 at the
    first argmax and ``-inf`` elsewhere). Same parameters and checks as
    :func:`sample_logits`; the result has the logits' dtype and shape
    (float16 logits divided by a small temperature can overflow to inf there,
    as in any float16 computation); unchecked bad rows (``check``) are NaN.
    Differentiable: the gradient is ``grad / T`` on the kept set and 0 elsewhere.

    Example:
        >>> logits = torch.randn(2, 10)
        >>> processed = filter_logits(logits, temperature=0.8, top_k=3)
        >>> (processed > -float("inf")).sum(dim=1)
        tensor([3, 3])
    """
    params = _normalise(FILTER, logits, temperature, top_k, top_p, min_p)
    _check_option(FILTER, check)
    _registry.check_backend(FILTER, backend)
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    tensors = [t for t in (logits, *_flat(params)[::2]) if t is not None]
    if needs_grad or _registry.use_custom_op(*tensors):
        return _filter_logits_op(logits, *_flat(params), backend, check)
    return _filter(logits, params, backend, check)
