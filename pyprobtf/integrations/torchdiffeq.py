"""torchdiffeq's ``odeint`` with fused steps (``pip install "pyprobtf[torchdiffeq]"``).

Swap one import::

    # from torchdiffeq import odeint, odeint_adjoint
    from pyprobtf.integrations.torchdiffeq import odeint, odeint_adjoint
    ys = odeint(func, y0, t, rtol=1e-5, atol=1e-6, method="dopri5")   # (len(t), *y0.shape)

``func(t, y)`` gets ``t`` as a 0-d tensor and ``y`` shaped like ``y0`` (a tensor or a
tuple of tensors, flattened and restored as torchdiffeq does); times may decrease.

- Fixed grids: ``"euler"``, ``"midpoint"`` and ``"rk4"`` (torchdiffeq's rk4 is Kutta's
  3/8 rule) with options ``step_size`` or ``grid_constructor`` and ``interp``
  (``"linear"`` or ``"cubic"``), the grid built exactly as torchdiffeq builds it.
  A step is 1, 2 and 4 :func:`~pyprobtf.ops.lincomb` passes (torchdiffeq: about 3, 6 and 20).
- Adaptive ``"dopri5"`` (the default) with options ``first_step``, ``safety``,
  ``ifactor``, ``dfactor``, ``min_step``, ``max_step``, ``max_num_steps``: the same
  initial step, error norm (RMS, the max over the parts of a tuple), step-size
  controller and 4th-order dense output as torchdiffeq, so the same accepted and rejected
  steps; each stage's state, the solution and the error estimate are lincomb passes
  (two when more than four tensors are combined), and the dense output at a requested
  time is evaluated directly from the stages.

Other methods and options (``perturb``, ``step_t``, ``jump_t``, ``norm``, event
functions, ...) are handed to torchdiffeq itself, unchanged.
"""

from __future__ import annotations

import math

import torch

from pyprobtf.ops import lincomb

__all__ = ["odeint", "odeint_adjoint"]

FIXED = ("euler", "midpoint", "rk4")
FIXED_OPTIONS = {"step_size", "grid_constructor", "interp"}
ADAPTIVE_OPTIONS = {"first_step", "safety", "ifactor", "dfactor", "min_step", "max_step", "max_num_steps", "dtype"}

# Dormand-Prince 5(4) (torchdiffeq's _DORMAND_PRINCE_SHAMPINE_TABLEAU and DPS_C_MID).
_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_C_ERROR = (35 / 384 - 1951 / 21600, 0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
            -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0)
_C_MID = (6025192743 / 30085553152 / 2, 0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
          187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)


def _peer():
    try:
        import torchdiffeq
    except ImportError as exc:
        raise ImportError("pyprobtf.integrations.torchdiffeq hands this method or option to torchdiffeq, which is "
                          "not installed: pip install 'pyprobtf[torchdiffeq]'") from exc
    return torchdiffeq


def _combine(tensors, coeffs, out=None):
    """``sum coeffs[i] tensors[i]`` (terms with coefficient 0 skipped) in ceil((n - 1) / 3) lincomb passes."""
    terms = [(t, c) for t, c in zip(tensors, coeffs) if c != 0.0]
    head, rest = terms[:4], terms[4:]
    acc = lincomb([t for t, _ in head], [c for _, c in head])
    while rest:
        chunk, rest = rest[:3], rest[3:]
        acc = lincomb([acc, *(t for t, _ in chunk)], [1.0, *(c for _, c in chunk)])
    if out is not None:
        out.copy_(acc)
        return out
    return acc


class _Problem:
    """``func`` on a flat state: tuples flattened and restored, reversed time mapped to increasing time."""

    def __init__(self, func, y0, t):
        self.func = func
        self.is_tuple = not isinstance(y0, torch.Tensor)
        if self.is_tuple:
            if not isinstance(y0, tuple) or not all(isinstance(p, torch.Tensor) for p in y0):
                raise TypeError("odeint: `y0` must be a tensor or a tuple of tensors; got "
                                f"{type(y0).__name__}")
            self.shapes = [p.shape for p in y0]
            flat = torch.cat([p.reshape(-1) for p in y0])
        else:
            self.shapes = [y0.shape]
            flat = y0.reshape(-1)
        if not flat.is_floating_point():
            raise TypeError(f"odeint: `y0` must be floating point; got {flat.dtype}")
        self.y0 = flat.reshape(1, -1)  # lincomb's (rows, ...) layout: one row
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise TypeError("odeint: `t` must be a 1-D tensor of times")
        self.t_dtype = t.dtype if t.is_floating_point() else torch.float64
        times = t.detach().double().cpu().tolist()
        self.reversed = len(times) > 1 and times[0] > times[1]
        self.times = [-s for s in times] if self.reversed else times
        for a, b in zip(self.times[:-1], self.times[1:]):
            if not b > a:
                raise ValueError("odeint: `t` must be strictly increasing or decreasing")
        self.t = -t if self.reversed else t
        self.nfe = 0

    def unflatten(self, flat: torch.Tensor, lead=()):
        """A flat ``(*lead, n)`` tensor as the user's tensor or tuple."""
        if not self.is_tuple:
            return flat.reshape(*lead, *self.shapes[0])
        parts, start = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            parts.append(flat[..., start:start + n].reshape(*lead, *shape))
            start += n
        return tuple(parts)

    def __call__(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """dy/ds on the flat row ``y`` at (possibly reversed) time ``s``."""
        self.nfe += 1
        t = torch.tensor(-s if self.reversed else s, dtype=self.t_dtype, device=y.device)
        out = self.func(t, self.unflatten(y[0]))
        flat = torch.cat([p.reshape(-1) for p in out]) if self.is_tuple else out.reshape(-1)
        flat = flat.reshape(1, -1).to(y.dtype)
        return -flat if self.reversed else flat

    def norm(self, tensor: torch.Tensor) -> float:
        """torchdiffeq's default norm: RMS, or the max of the parts' RMS for a tuple."""
        if not self.is_tuple:
            return float(tensor.pow(2).mean().sqrt())
        parts = self.unflatten(tensor[0])
        return max((float(p.pow(2).mean().sqrt()) for p in parts if p.numel()), default=0.0)


# ----------------------------------------------------------------------------- fixed grids


def _fixed_step(method, f, s0, s1, y0):
    """``(y1, f0)`` for one step of torchdiffeq's euler, midpoint or rk4 (3/8 rule)."""
    dt = s1 - s0
    k1 = f(s0, y0)
    if method == "euler":
        return lincomb((y0, k1), (1.0, dt)), k1
    if method == "midpoint":
        y_mid = lincomb((y0, k1), (1.0, 0.5 * dt))
        return lincomb((y0, f(s0 + 0.5 * dt, y_mid)), (1.0, dt)), k1
    # x2 = y0 + dt k1/3, x3 = y0 + dt (k2 - k1/3), x4 = y0 + dt (k1 - k2 + k3):
    # y0 + dt/8 (k1 + 3 k2 + 3 k3 + k4) = -y0/8 + 3/4 x3 + 3/8 x4 + dt/8 k4
    x2 = lincomb((y0, k1), (1.0, dt / 3))
    k2 = f(s0 + dt / 3, x2)
    x3 = lincomb((y0, k1, k2), (1.0, -dt / 3, dt))
    k3 = f(s0 + dt * 2 / 3, x3)
    x4 = lincomb((x3, k2, k1, k3), (1.0, -2.0 * dt, 4.0 * dt / 3, dt))  # y0 + dt (k1 - k2 + k3)
    k4 = f(s1, x4)
    return lincomb((y0, x3, x4, k4), (-0.125, 0.75, 0.375, 0.125 * dt)), k1


def _grid(problem, options):
    step_size, constructor = options.get("step_size"), options.get("grid_constructor")
    if step_size is not None and constructor is not None:
        raise ValueError("step_size and grid_constructor are mutually exclusive arguments.")
    t = problem.t
    if step_size is not None:  # torchdiffeq's _grid_constructor_from_step_size, in t's dtype
        niters = torch.ceil((t[-1] - t[0]) / step_size + 1).item()
        grid = torch.arange(0, niters, dtype=t.dtype, device=t.device) * step_size + t[0]
        grid[-1] = t[-1]
        return grid.double().cpu().tolist()
    if constructor is not None:
        if problem.reversed:
            grid = -constructor(problem.func, problem.unflatten(problem.y0[0]), -t)
        else:
            grid = constructor(problem.func, problem.unflatten(problem.y0[0]), t)
        return grid.detach().double().cpu().tolist()
    return list(problem.times)


def _solve_fixed(problem, method, options):
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise ValueError(f"Unknown interpolation method {interp}")
    grid, times = _grid(problem, options), problem.times
    if grid[0] != times[0] or grid[-1] != times[-1]:
        raise ValueError("odeint: the grid must start and end at t[0] and t[-1]")
    out = [problem.y0]
    j, y0 = 1, problem.y0
    for s0, s1 in zip(grid[:-1], grid[1:]):
        y1, f0 = _fixed_step(method, problem, s0, s1, y0)
        while j < len(times) and s1 >= times[j]:
            s = times[j]
            if interp == "linear" and s == s0:
                out.append(y0)
            elif interp == "linear" and s == s1:
                out.append(y1)
            elif interp == "linear":
                x = (s - s0) / (s1 - s0)
                out.append(lincomb((y0, y1), (1.0 - x, x)))
            else:  # cubic Hermite, with one more evaluation at s1 for every output (as torchdiffeq)
                f1 = problem(s1, y1)
                h, dt = (s - s0) / (s1 - s0), s1 - s0
                out.append(lincomb((y0, f0, y1, f1), ((1 + 2 * h) * (1 - h) ** 2, h * (1 - h) ** 2 * dt,
                                                      h * h * (3 - 2 * h), h * h * (h - 1) * dt)))
            j += 1
        y0 = y1
    return out


# ----------------------------------------------------------------------------- dopri5


def _initial_step(problem, s0, y0, f0, rtol, atol):
    """torchdiffeq's _select_initial_step (Hairer, Norsett & Wanner II.4) for order 5 - 1."""
    scale = atol + y0.abs() * rtol
    d0, d1 = problem.norm(y0 / scale), problem.norm(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = float(torch.tensor(h0, dtype=y0.dtype))  # torchdiffeq holds it in the state's dtype
    f1 = problem(s0 + h0, lincomb((y0, f0), (1.0, h0)))
    d2 = abs(problem.norm((f1 - f0) / scale) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    return min(100 * h0, h1)


def _dense(y0, y1, k, dt, x):
    """torchdiffeq's 4th-order interpolant at ``x`` in [0, 1], from the step's stages directly."""
    x2, x3, x4 = x * x, x**3, x**4
    w_y0 = 1 - 11 * x2 + 18 * x3 - 8 * x4
    w_y1 = -5 * x2 + 14 * x3 - 8 * x4
    w_mid = 16 * x2 - 32 * x3 + 16 * x4  # y_mid = y0 + dt sum(C_MID k)
    w_f0 = dt * (x - 4 * x2 + 5 * x3 - 2 * x4)
    w_f1 = dt * (x2 - 3 * x3 + 2 * x4)
    coeffs = [w_mid * dt * c for c in _C_MID]
    coeffs[0] += w_f0
    coeffs[-1] += w_f1
    return _combine((y0, y1, *k), (w_y0 + w_mid, w_y1, *coeffs))


def _solve_dopri5(problem, rtol, atol, options):
    unknown = set(options) - ADAPTIVE_OPTIONS
    if unknown:
        raise ValueError(f"odeint: unsupported dopri5 options {sorted(unknown)}")
    safety, ifactor, dfactor = options.get("safety", 0.9), options.get("ifactor", 10.0), options.get("dfactor", 0.2)
    min_step, max_step = options.get("min_step", 0.0), options.get("max_step", math.inf)
    max_num_steps = options.get("max_num_steps", 2**31 - 1)
    times = problem.times
    y0 = problem.y0
    f0 = problem(times[0], y0)
    first = options.get("first_step")
    dt = float(first) if first is not None else _initial_step(problem, times[0], y0, f0, rtol, atol)
    s0 = s1 = times[0]
    out = [y0]
    step = None  # (y0, y1, k, dt) of the last accepted step
    for target in times[1:]:
        n_steps = 0
        while target > s1:
            if n_steps >= max_num_steps:
                raise AssertionError(f"max_num_steps exceeded ({n_steps}>={max_num_steps})")
            if not math.isfinite(dt):
                dt = min_step
            dt = min(max(dt, min_step), max_step)
            if not s1 + dt > s1:
                raise AssertionError(f"underflow in dt {dt}")
            y_start, s_start = (step[1], s1) if step is not None else (y0, s1)
            k = [f0]
            for alpha, beta in zip(_ALPHA, _BETA):
                s_i = s_start + dt if alpha == 1.0 else s_start + alpha * dt
                y_i = _combine((y_start, *k), (1.0, *(b * dt for b in beta)))
                k.append(problem(s_i, y_i))
            y1 = y_i  # dopri5 is FSAL: the last stage's state is the solution, k[6] = f(t1, y1)
            error = _combine(k, [c * dt for c in _C_ERROR])
            tol = atol + rtol * torch.maximum(y_start.abs(), y1.abs())
            ratio = problem.norm(error / tol)
            accept = ratio <= 1
            if dt > max_step:
                accept = False
            if dt <= min_step:
                accept = True
            if accept:
                step = (y_start, y1, k, dt)
                s0, s1 = s_start, s_start + dt
                f0 = k[-1]
            if ratio == 0:
                factor = ifactor
            else:
                ratio = float(torch.tensor(ratio, dtype=y0.dtype))  # torchdiffeq's type_as(last_step)
                factor = min(ifactor, max(safety / ratio ** (1.0 / 5.0), 1.0 if ratio < 1 else dfactor))
            dt = min(max(dt * factor, min_step), max_step)
            n_steps += 1
        if step is None:  # target == t[0] cannot happen (t strictly increasing)
            out.append(y0)
            continue
        start, end, k, h = step
        out.append(_dense(start, end, k, h, (target - s0) / (s1 - s0)))
    return out


# ----------------------------------------------------------------------------- public API


def _handled(method, options, event_fn) -> bool:
    if event_fn is not None or options.get("perturb"):
        return False
    if method in FIXED:
        return set(options) <= FIXED_OPTIONS | {"perturb"}
    return method == "dopri5" and set(options) <= ADAPTIVE_OPTIONS and options.get("dtype", torch.float64) in (
        torch.float64,)


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """Solve ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]``; the solution at every time in ``t``.

    torchdiffeq's ``odeint``: same arguments, defaults and return shape
    ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``).

    Example:
        >>> ys = odeint(lambda t, y: -y, torch.ones(3), torch.linspace(0, 1, 5), method="rk4",
        ...             options={"step_size": 0.1})
    """
    method = "dopri5" if method is None else method
    options = {} if options is None else dict(options)
    if not _handled(method, options, event_fn) or not all(isinstance(v, (int, float)) for v in (rtol, atol)):
        return _peer().odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options or None,
                              event_fn=event_fn)
    problem = _Problem(func, y0, t)
    options.pop("perturb", None)
    options.pop("dtype", None)
    if method in FIXED:
        states = _solve_fixed(problem, method, options)
    else:
        states = _solve_dopri5(problem, float(rtol), float(atol), options)
    return problem.unflatten(torch.cat(states, 0), (len(states),))


class _Adjoint(torch.autograd.Function):
    """Forward without a graph; backward integrates the adjoint system back through each interval of ``t``."""

    @staticmethod
    def forward(ctx, func, t, settings, y0, *params):
        with torch.no_grad():
            ys = odeint(func, y0, t, **settings["forward"])
        ctx.func, ctx.settings = func, settings
        ctx.save_for_backward(t, ys, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):
        t, ys, *params = ctx.saved_tensors
        func = ctx.func

        def augmented(s, state):
            y, adj = state[0], state[1]
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                f = func(s, y)
                vjps = torch.autograd.grad(f, (y, *params), -adj, allow_unused=True)
            vjps = [torch.zeros_like(x) if v is None else v for v, x in zip(vjps, (y, *params))]
            return (f.detach(), *vjps)

        adj = grad_ys[-1]
        adj_params = [torch.zeros_like(p) for p in params]
        for i in range(len(t) - 1, 0, -1):
            state = (ys[i], adj, *adj_params)
            out = odeint(augmented, state, t[i - 1:i + 1].flip(0), **ctx.settings["backward"])
            adj = out[1][-1] + grad_ys[i - 1]
            adj_params = [g[-1] for g in out[2:]]
        return (None, None, None, adj, *adj_params)


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None,
                   adjoint_rtol=None, adjoint_atol=None, adjoint_method=None, adjoint_options=None,
                   adjoint_params=None):
    """torchdiffeq's ``odeint_adjoint``: gradients by solving the adjoint ODE backwards (memory O(1) in steps).

    ``func`` must be an ``nn.Module`` or ``adjoint_params`` must name the tensors to
    differentiate. The adjoint solve uses this module's ``odeint`` (``adjoint_*`` default
    to the forward settings). A tuple ``y0`` or an event function is handed to torchdiffeq.

    Example:
        >>> ys = odeint_adjoint(field, y0, torch.linspace(0, 1, 2), method="dopri5")
        >>> ys[-1].pow(2).sum().backward()           # grads in field.parameters() and y0
    """
    if not isinstance(y0, torch.Tensor) or event_fn is not None:
        return _peer().odeint_adjoint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                                      event_fn=event_fn, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                                      adjoint_method=adjoint_method, adjoint_options=adjoint_options,
                                      adjoint_params=adjoint_params)
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError("func must be an instance of nn.Module to specify the adjoint parameters; "
                             "alternatively they can be specified explicitly via the `adjoint_params` argument.")
        adjoint_params = tuple(func.parameters())
    params = tuple(p for p in adjoint_params if p.requires_grad)
    forward = dict(rtol=rtol, atol=atol, method=method, options=options)
    backward = dict(rtol=rtol if adjoint_rtol is None else adjoint_rtol,
                    atol=atol if adjoint_atol is None else adjoint_atol,
                    method=method if adjoint_method is None else adjoint_method,
                    options=options if adjoint_options is None else adjoint_options)
    return _Adjoint.apply(func, t, {"forward": forward, "backward": backward}, y0, *params)
