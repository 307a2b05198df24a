"""Checks users run on their own probability transforms (and pyprobtf runs on its families).

Each ``check_*`` raises ``AssertionError`` with a message saying what is off
and by how much, and returns the measured quantity on success:

- :func:`check_invertibility`: ``F^-1(F(z)) = z`` and ``F(F^-1(x)) = x``;
- :func:`check_log_det`: ``transform_and_ladj`` (and ``inverse_and_ladj``)
  against ``log|det J|`` of the autograd Jacobian;
- :func:`check_density_normalization`: ``exp(log_prob)`` integrates to 1 over
  a 1-D or 2-D grid (midpoint rule);
- :func:`check_sample_reproducible`: ``sample(n, seed=s)`` repeats, and a
  different seed gives different samples;
- :func:`check_op_against_reference`: every backend of an op against its
  reference evaluated in float64;
- :func:`check_transform`: all of the above that apply to a model (by its
  ``capabilities``), with a dict of what was measured.

and :func:`points` is a hypothesis strategy of ``(B, dim)`` input batches.

Example:
    >>> from pyprobtf.families import RealNVP
    >>> from pyprobtf.testing import check_transform
    >>> report = check_transform(RealNVP(dim=2).double())
    >>> sorted(report)
    ['density_mass', 'invertibility_error', 'log_det_error', 'reproducible']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from hypothesis import strategies as st

from pyprobtf.testing.checks import assert_close, tolerance


def _cond(context):
    return {} if context is None else {"context": context}


def _default_tol(dtype: torch.dtype) -> float:
    # A composition of many layers loses more than one op's few ulps.
    return 1e-9 if dtype == torch.float64 else 2e-4


def _is_pyprobtf(model) -> bool:
    return all(hasattr(model, a) for a in ("capabilities", "transform", "base", "sample"))


def _inputs(model, z, n, seed, what="z") -> torch.Tensor:
    if z is not None:
        return z.to(device=model.device, dtype=model.dtype)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.base.sample((n,)).to(device=model.device, dtype=model.dtype)


# ----------------------------------------------------------------------------- strategies


@st.composite
def points(draw, dim: int, *, min_batch: int = 1, max_batch: int = 16, scale: float = 2.0,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A ``(B, dim)`` batch, B in ``[min_batch, max_batch]``, Gaussian values times ``scale`` (seeded)."""
    batch = draw(st.integers(min_batch, max_batch))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, dim, generator=gen, dtype=torch.float64)).to(dtype)


# ----------------------------------------------------------------------------- checks


def check_invertibility(model, z: torch.Tensor | None = None, *, x: torch.Tensor | None = None, n: int = 64,
                        seed: int = 0, rtol: float | None = None, atol: float | None = None,
                        context=None) -> float:
    """``inverse(transform(z)) == z`` (and ``transform(inverse(x)) == x`` when ``x`` is given).

    ``z`` defaults to ``n`` draws of the model's base. Tolerances default to a
    few thousand ulps of the model's dtype; pass looser ones for ODE-based
    models, whose inverse is a numerical solve. Returns the largest error.
    """
    if not _is_pyprobtf(model) and z is None and x is None and context is None:
        # Any other library's model (zuko, nflows, normflows, torch.distributions, a callable with an inverse):
        # the relative error of pyprobtf.testing.verify_invertibility.
        from pyprobtf.testing.verification import assert_invertible

        return assert_invertible(model, n=n, seed=seed, rtol=rtol).error
    z = _inputs(model, z, n, seed)
    tol = _default_tol(model.dtype)
    rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    with torch.no_grad():
        fx = model.transform(z, **_cond(context))
        back = model.inverse(fx, **_cond(context))
        assert_close(back, z, rtol=rtol, atol=atol, scale=z.abs() + fx.abs(), what="inverse(transform(z)) vs z")
        worst = float((back - z).abs().max()) if z.numel() else 0.0
        if x is not None:
            x = x.to(device=model.device, dtype=model.dtype)
            zx = model.inverse(x, **_cond(context))
            again = model.transform(zx, **_cond(context))
            assert_close(again, x, rtol=rtol, atol=atol, scale=x.abs() + zx.abs(),
                         what="transform(inverse(x)) vs x")
            worst = max(worst, float((again - x).abs().max()) if x.numel() else 0.0)
    return worst


def jacobian_log_det(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``log|det dfn(z)_b / dz_b|`` per row by autograd (``fn`` must treat rows independently): one
    backward pass per output coordinate."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(z)
        rows = []
        for i in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, i].sum(), z, retain_graph=i + 1 < out.shape[1])
            rows.append(g)
    jac = torch.stack(rows, 1)  # (B, out, in)
    return torch.linalg.slogdet(jac.to(torch.float64))[1]


def check_log_det(model, z: torch.Tensor | None = None, *, n: int = 16, seed: int = 0, rtol: float | None = None,
                  atol: float | None = None, context=None) -> float:
    """``transform_and_ladj(z)[1]`` against ``log|det|`` of the autograd Jacobian of ``transform_and_ladj(z)[0]``
    (and the same for ``inverse_and_ladj`` at ``x = F(z)``, when the model has an inverse). For an ODE
    model both come from one solve, and they agree to the solver's order. Returns the largest error.
    Any other model is checked by :func:`pyprobtf.testing.verify_log_det` instead."""
    if not _is_pyprobtf(model) and z is None and context is None:
        from pyprobtf.testing.verification import assert_log_det_correct

        return assert_log_det_correct(model, n=n, seed=seed, rtol=rtol).error
    z = _inputs(model, z, n, seed)
    tol = 1e-8 if model.dtype == torch.float64 else 1e-3
    rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    cond = _cond(context)
    with torch.no_grad():
        x, ladj = model.transform_and_ladj(z, **cond)
    # The Jacobian of the very map whose log-determinant is reported (for an ODE model, the same solve).
    expected = jacobian_log_det(lambda v: model.transform_and_ladj(v, **cond)[0], z)
    assert_close(ladj, expected, rtol=rtol, atol=atol, what="log|det dF/dz| vs the autograd Jacobian")
    worst = float((ladj.double() - expected).abs().max()) if z.numel() else 0.0
    if "inverse" in model.capabilities:
        with torch.no_grad():
            _, inv_ladj = model.inverse_and_ladj(x, **cond)
        expected_inv = jacobian_log_det(lambda v: model.inverse_and_ladj(v, **cond)[0], x)
        assert_close(inv_ladj, expected_inv, rtol=rtol, atol=atol,
                     what="log|det dF^-1/dx| vs the autograd Jacobian")
        worst = max(worst, float((inv_ladj.double() - expected_inv).abs().max()) if x.numel() else 0.0)
    return worst


def _grid_bounds(model, dim, bounds, context) -> list[tuple[float, float]]:
    if bounds is not None:
        bounds = [tuple(map(float, b)) for b in bounds] if isinstance(bounds[0], (tuple, list)) else \
            [tuple(map(float, bounds))] * dim
        if len(bounds) != dim or any(lo >= hi for lo, hi in bounds):
            raise ValueError(f"check_density_normalization: `bounds` must be (low, high) or {dim} such pairs with "
                             f"low < high; got {bounds}")
        return bounds
    with torch.no_grad():
        s = model.sample(2000, seed=0, **_cond(context)).double()
    lo, hi = s.min(0).values, s.max(0).values
    pad = 0.5 * (hi - lo) + 1e-3
    return [(float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad)]


def check_density_normalization(model, *, bounds=None, n_grid: int | None = None, atol: float = 0.02,
                                batch_size: int = 8192, context=None) -> float:
    """``exp(log_prob)`` integrates to 1 (within ``atol``) over a box, for ``dim`` 1 or 2.

    ``model`` has ``log_prob`` (a ProbabilityTransform or a torch Distribution;
    its ``dim`` is read from the model or the distribution's event shape).
    ``bounds``: ``(low, high)`` for every axis or one pair per axis; by default
    the range of 2000 samples widened by half of it on each side. Midpoint
    rule on ``n_grid`` points per axis (default 2000 in 1-D, 120 in 2-D).
    ``context``: one ``(context_dim,)`` vector for a conditional model. Returns the integral.
    """
    dim = getattr(model, "dim", None)
    if dim is None:
        dim = model.event_shape[0] if len(model.event_shape) == 1 else None
    if dim not in (1, 2):
        raise ValueError(f"check_density_normalization: quadrature is for 1-D and 2-D models; got dim={dim}")
    n_grid = n_grid or (2000 if dim == 1 else 120)
    bounds = _grid_bounds(model, dim, bounds, context)
    axes = [torch.linspace(lo, hi, n_grid + 1, dtype=torch.float64) for lo, hi in bounds]
    mids = [0.5 * (a[1:] + a[:-1]) for a in axes]
    cell = math.prod((hi - lo) / n_grid for lo, hi in bounds)
    grid = torch.cartesian_prod(*mids).reshape(-1, dim) if dim == 2 else mids[0].reshape(-1, 1)
    device = getattr(model, "device", torch.device("cpu"))
    dtype = getattr(model, "dtype", torch.float32)
    total = 0.0
    with torch.no_grad():
        for i in range(0, grid.shape[0], batch_size):
            chunk = grid[i:i + batch_size].to(device=device, dtype=dtype)
            lp = model.log_prob(chunk, **_cond(context)).double()
            total += float(torch.exp(lp).sum())
    mass = total * cell
    if not abs(mass - 1.0) <= atol:
        raise AssertionError(f"density integrates to {mass:.5f} over {bounds} ({n_grid} points per axis), "
                             f"not 1 within {atol}")
    return mass


def check_sample_reproducible(model, *, n: int = 64, seed: int = 0, **sample_kwargs) -> bool:
    """``sample(n, seed=seed)`` gives the same values twice, and ``seed + 1`` gives different ones."""
    a = model.sample(n, seed=seed, **sample_kwargs)
    b = model.sample(n, seed=seed, **sample_kwargs)
    if not torch.equal(a, b):
        raise AssertionError(f"sample(n={n}, seed={seed}) differs between two calls: max difference "
                             f"{float((a - b).abs().max()):.3g}")
    c = model.sample(n, seed=seed + 1, **sample_kwargs)
    if n and torch.equal(a, c):
        raise AssertionError(f"sample(n={n}) gives the same values for seeds {seed} and {seed + 1}")
    return True


def check_op_against_reference(op: Callable, reference: Callable, *args, backends: Sequence[str] | str | None = None,
                               rtol: float | None = None, atol: float | None = None, **kwargs) -> list[str]:
    """An op against its reference evaluated in float64 on the CPU.

    ``reference(*args, **kwargs)`` gets float64 CPU copies of the
    floating-point tensor arguments; ``op(*args, **kwargs)`` gets them as
    they are, once per backend in ``backends`` (as ``backend=name``): a list
    of names, ``"available"`` (those :func:`pyprobtf.ops.available_backends`
    says run on the first tensor's device, leaving out Triton's slow CPU
    interpreter), or ``None`` (call ``op`` once, without ``backend``: a
    user's own op). Outputs (a tensor or a tuple of tensors) are compared with
    the tolerances of their dtype (:func:`tolerance`), or ``rtol``/``atol``.
    Returns the backends checked (``["default"]`` for ``None``).

    Example:
        >>> check_op_against_reference(my_op, my_reference, x, y)
        ['default']
    """
    from pyprobtf.ops import available_backends
    from pyprobtf.ops._backends import triton_interpreting

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device.type if tensors else "cpu"
    if backends == "available":
        interpreted = device == "cpu" and triton_interpreting()
        backends = [name for name, status in available_backends().items()
                    if device in status.devices and not (name == "triton" and interpreted)]

    def as64(a):
        return a.detach().to("cpu", torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    expected = reference(*[as64(a) for a in args], **kwargs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    runs = [(None, {})] if backends is None else [(name, {"backend": name}) for name in backends]
    for name, extra in runs:
        got = op(*args, **kwargs, **extra)
        got = got if isinstance(got, tuple) else (got,)
        label = "op" if name is None else f"backend {name!r}"
        if len(got) != len(expected):
            raise AssertionError(f"{label} returned {len(got)} outputs; the reference {len(expected)}")
        for i, (g, e) in enumerate(zip(got, expected)):
            r, a = tolerance(g.dtype) if g.is_floating_point() else (0.0, 0.0)
            assert_close(g, e.to(torch.float64) if e.is_floating_point() else e,
                         rtol=r if rtol is None else rtol, atol=a if atol is None else atol,
                         what=f"{label}, output {i}")
    return ["default"] if backends is None else list(backends)


def check_transform(model, *, n: int = 32, seed: int = 0, rtol: float | None = None, atol: float | None = None,
                    density_atol: float = 0.02, density_bounds=None, n_grid: int | None = None,
                    context=None) -> dict[str, float]:
    """Run every check that applies to ``model`` (by its ``capabilities`` and ``dim``).

    Invertibility (``"inverse"``), log-determinants (``"ladj"``), density
    normalisation (``"log_prob"`` and ``dim <= 2``), seeded sampling (always).
    Returns what was measured: ``invertibility_error``, ``log_det_error``,
    ``density_mass``, ``reproducible``.

    Any other model (zuko, nflows, normflows, torch.distributions, a callable with
    an ``inverse``) goes to :func:`pyprobtf.testing.verify`, which raises on a
    failed check; the report then maps each check that ran to its measured value.
    """
    if not _is_pyprobtf(model) and context is None:
        from pyprobtf.testing.verification import verify

        report = verify(model, seed=seed, rtol=rtol, density_atol=density_atol).raise_if_failed()
        return {r.check: r.error for r in report.results if r.passed is not None}
    report: dict[str, float] = {}
    caps = model.capabilities
    if "inverse" in caps:
        report["invertibility_error"] = check_invertibility(model, n=n, seed=seed, rtol=rtol, atol=atol,
                                                            context=context)
    if "ladj" in caps:
        report["log_det_error"] = check_log_det(model, n=min(n, 16), seed=seed, rtol=rtol, atol=atol,
                                                context=context)
    if "log_prob" in caps and model.dim <= 2:
        report["density_mass"] = check_density_normalization(model, bounds=density_bounds, n_grid=n_grid,
                                                             atol=density_atol, context=context)
    report["reproducible"] = float(check_sample_reproducible(model, n=n, seed=seed, **_cond(context)))
    return report
