"""One interface for models from any library: what :mod:`pyprobtf.testing.verification` checks.

:func:`as_subject` recognises, by duck typing only (no peer library is
imported here):

========================================  ==========================================================
object                                    recognised by
========================================  ==========================================================
pyprobtf ProbabilityTransform             ``capabilities``, ``transform``, ``base``, ``sample``
nflows ``Flow``                           ``_transform``, ``_distribution``, ``transform_to_noise``
normflows ``NormalizingFlow``             ``forward_and_log_det``, ``inverse_and_log_det``, ``q0``
torch ``Distribution`` (zuko's too)       ``isinstance(obj, torch.distributions.Distribution)``
torch / zuko ``Transform``                ``isinstance(obj, torch.distributions.Transform)``;
                                          ``call_and_ladj`` is used where it exists (zuko)
zuko lazy distribution / transform        an ``nn.Module`` whose ``forward`` needs no argument and
                                          returns a Distribution / Transform (``flow()``)
nflows ``Transform``                      ``forward(inputs, context=None) -> (outputs, logabsdet)``
                                          and ``inverse(inputs, context=None)``
normflows flow layer, or any object       ``obj(z) -> (x, ladj)`` and ``obj.inverse(x) -> (z, ladj)``
a bare callable                           ``f(z) -> (x, ladj)``, with ``inverse=`` given separately
                                          (or a pair ``(f, inverse)``)
========================================  ==========================================================

A :class:`Subject` is flat: every map takes and returns ``(B, dim)`` tensors
(an object with an ``event_shape`` of several dimensions is flattened), and
its ``interface`` names what was used, e.g. ``"nflows Flow: _transform.inverse
(z -> x), _transform (x -> z), log_prob, sample"``.

Directions: ``forward`` is the generative direction ``z -> x`` where the
object has one (a flow or a distribution: for zuko and nflows flows that is
their transform's inverse); for a bare transform it is the object's own call.

Example:
    >>> import torch
    >>> from pyprobtf.testing.adapters import as_subject
    >>> s = as_subject(torch.distributions.ExpTransform(), dim=3)
    >>> s.interface
    'torch.distributions.Transform: t(z), log_abs_det_jacobian (z -> x), t.inv (x -> z)'
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.distributions import Distribution, Transform, constraints, transform_to

from pyprobtf.seeds import check_seed

Map = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Subject:
    """A model seen through one flat interface (see the module docstring).

    Attributes:
        obj: the object as given.
        interface: which of its methods are used, in words.
        dim: the size of a (flattened) data vector.
        dtype: the floating dtype it computes in.
        forward: ``z -> (x, log|det dx/dz| or None)``, or None.
        inverse: ``x -> (z, log|det dz/dx| or None)``, or None.
        log_prob: ``x -> log p(x)`` of shape ``(B,)``, or None.
        sample: ``(n, seed) -> (n, dim)`` samples, or None.
        base_sample: ``(n, seed) -> (n, dim)`` points in the domain of ``forward``, or None.
        seeded: whether ``sample`` takes the seed natively (else the global RNG is seeded around it).
        support: the constraint on ``x`` (``constraints.real`` unless the object says otherwise).
        convert: ``dtype -> Subject`` for a copy in another dtype, or None when the object cannot be cast.
        base_log_prob: ``z -> log base(z)`` for the points of ``base_sample``, where the object has a base.
    """

    obj: object
    interface: str
    dim: int
    dtype: torch.dtype
    forward: Map | None = None
    inverse: Map | None = None
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    sample: Callable[[int, int], torch.Tensor] | None = None
    base_sample: Callable[[int, int], torch.Tensor] | None = None
    seeded: bool = False
    support: object = constraints.real
    base_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    convert: Callable[[torch.dtype], Subject] | None = field(default=None, repr=False)

    def points(self, n: int, seed: int) -> torch.Tensor:
        """``n`` points ``z`` at which to evaluate ``forward`` (base draws, else Gaussian), float ``dtype``."""
        if self.base_sample is not None:
            return self.base_sample(n, seed).to(self.dtype)
        gen = torch.Generator().manual_seed(check_seed(seed, "pyprobtf.testing"))
        return torch.randn(n, self.dim, generator=gen, dtype=torch.float64).to(self.dtype)

    def data(self, n: int, seed: int) -> torch.Tensor:
        """``n`` points ``x`` in the data space: ``forward`` of base points, else samples."""
        with torch.no_grad():
            if self.forward is not None:
                return self.forward(self.points(n, seed))[0].detach()
            if self.sample is not None:
                return self.sample(n, seed).detach()
        raise ValueError(f"{self.interface}: no way to make data points (neither a forward map nor sample)")


# ----------------------------------------------------------------------------- helpers


def _global_seeded(draw: Callable[[int], torch.Tensor]) -> Callable[[int, int], torch.Tensor]:
    """``draw(n)`` that uses the global RNG, as ``(n, seed) -> samples`` that leaves the global RNG alone."""

    def sample(n: int, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(check_seed(seed, "pyprobtf.testing"))
            return draw(n)

    return sample


def _sum_event(ladj: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A log-determinant per row: elementwise ones (``(B, d)``) are summed over the row."""
    if ladj is None:
        return None
    if ladj.dim() == 0:
        return ladj.expand(batch)
    return ladj.reshape(batch, -1).sum(1)


def _first_param_dtype(obj) -> torch.dtype | None:
    if isinstance(obj, nn.Module):
        for t in obj.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in obj.buffers():
            if t.is_floating_point():
                return t.dtype
    return None


def _cast(obj, dtype: torch.dtype, _seen=None):
    """A copy of ``obj`` with every floating tensor it holds in ``dtype`` (modules, distributions, transforms)."""
    obj = copy.deepcopy(obj)
    _cast_in_place(obj, dtype, set())
    return obj


def _cast_in_place(obj, dtype, seen):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        obj.to(dtype)
        # Tensors kept as plain attributes (nflows' MADE masks) are not moved by Module.to.
        for module in obj.modules():
            for name, value in list(vars(module).items()):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not name.startswith("_"):
                    setattr(module, name, value.to(dtype))
        return
    items = vars(obj).items() if hasattr(obj, "__dict__") else ()
    for name, value in list(items):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            setattr(obj, name, value.to(dtype))
        elif isinstance(value, (Distribution, Transform, nn.Module)):
            _cast_in_place(value, dtype, seen)
        elif isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, (Distribution, Transform, nn.Module)):
                    _cast_in_place(v, dtype, seen)


def _needs_no_argument(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def _param_names(fn) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _flatten(subject: Subject, event_shape: tuple[int, ...]) -> Subject:
    """A subject whose maps take ``(B, *event_shape)`` seen as one on ``(B, prod(event_shape))``."""
    if len(event_shape) <= 1:
        return subject

    def unflat(x):
        return x.reshape(x.shape[0], *event_shape)

    def flat(x):
        return x.reshape(x.shape[0], -1)

    def wrap_map(m):
        return None if m is None else (lambda v: (lambda out: (flat(out[0]), out[1]))(m(unflat(v))))

    inner_convert = subject.convert
    return replace(
        subject,
        dim=math.prod(event_shape),
        forward=wrap_map(subject.forward),
        inverse=wrap_map(subject.inverse),
        log_prob=None if subject.log_prob is None else (lambda x: subject.log_prob(unflat(x))),
        sample=None if subject.sample is None else (lambda n, s: flat(subject.sample(n, s))),
        base_sample=None if subject.base_sample is None else (lambda n, s: flat(subject.base_sample(n, s))),
        interface=subject.interface + f" (event shape {tuple(event_shape)} flattened)",
        convert=None if inner_convert is None else (lambda dt: _flatten(inner_convert(dt), event_shape)),
    )


# ----------------------------------------------------------------------------- the adapters


def _from_pyprobtf(model) -> Subject:
    caps = model.capabilities
    # ProbabilityTransforms whose only map is transform(z) still have a deterministic forward.
    if "ladj" in caps:
        forward, fdesc = model.transform_and_ladj, "transform_and_ladj (z -> x)"
    else:
        forward, fdesc = (lambda z: (model.transform(z), None)), "transform (z -> x)"
    inverse = model.inverse_and_ladj if "inverse" in caps else None
    parts = [fdesc] + (["inverse_and_ladj (x -> z)"] if inverse else []) + \
        (["log_prob"] if "log_prob" in caps else []) + ["sample(n, seed=)"]
    event_shape = tuple(getattr(model, "event_shape", None) or (model.dim,))
    subject = Subject(
        obj=model, interface="pyprobtf ProbabilityTransform: " + ", ".join(parts), dim=model.dim,
        dtype=model.dtype, forward=forward, inverse=inverse,
        log_prob=model.log_prob if "log_prob" in caps else None,
        sample=lambda n, s: model.sample(n, seed=s),
        base_sample=_global_seeded(lambda n: model.base.sample((n,))),
        base_log_prob=lambda z: model.base.log_prob(z),
        seeded=True,
        convert=lambda dt: _from_pyprobtf(_cast(model, dt)),
    )
    return _flatten(subject, event_shape) if len(event_shape) > 1 else subject


def _own_call_and_ladj(t) -> bool:
    """Whether ``t``'s class defines ``call_and_ladj`` itself (zuko's transforms), rather than inheriting the
    generic one zuko adds to every torch Transform."""
    method = getattr(type(t), "call_and_ladj", None)
    return method is not None and method is not getattr(Transform, "call_and_ladj", None)


def _from_torch_transform(t: Transform, dim: int | None, interface: str | None = None, convert=None) -> Subject:
    if dim is None:
        raise ValueError("as_subject: a Transform does not say its input size: pass `dim` (--dim on the command line)")
    zuko_style = _own_call_and_ladj(t)

    def apply(tr, v):
        if _own_call_and_ladj(tr):
            y, ladj = tr.call_and_ladj(v)
        else:
            y = tr(v)
            ladj = tr.log_abs_det_jacobian(v, y)
        return y, _sum_event(ladj, v.shape[0])

    domain = getattr(t, "domain", constraints.real)
    to_domain = transform_to(domain) if domain is not constraints.real else None

    def base_sample(n, seed):
        gen = torch.Generator().manual_seed(check_seed(seed, "pyprobtf.testing"))
        z = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        return to_domain(z) if to_domain is not None else z

    name = interface or ("zuko Transform: call_and_ladj (z -> x), inv.call_and_ladj (x -> z)" if zuko_style else
                         "torch.distributions.Transform: t(z), log_abs_det_jacobian (z -> x), t.inv (x -> z)")
    dtype = next((v.dtype for v in vars(t).values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
                 torch.get_default_dtype())
    return Subject(
        obj=t, interface=name, dim=int(dim), dtype=dtype,
        forward=lambda z: apply(t, z),
        inverse=(lambda x: apply(t.inv, x)) if getattr(t, "bijective", True) else None,
        base_sample=base_sample, support=getattr(t, "codomain", constraints.real),
        convert=convert or (lambda dt: replace(_from_torch_transform(_cast(t, dt), dim, interface), dtype=dt)),
    )


def _from_distribution(d: Distribution, interface: str | None = None, convert=None) -> Subject:
    if tuple(d.batch_shape) != ():
        raise ValueError(f"as_subject: the distribution must have batch shape (); got {tuple(d.batch_shape)}")
    event = tuple(d.event_shape)
    scalar = len(event) == 0
    dim = 1 if scalar else math.prod(event)
    unflat = (lambda x: x[:, 0]) if scalar else (lambda x: x.reshape(x.shape[0], *event))
    flat = (lambda x: x.reshape(x.shape[0], 1)) if scalar else (lambda x: x.reshape(x.shape[0], -1))
    try:
        support = d.support if scalar or len(event) == 1 else constraints.real
    except NotImplementedError:  # zuko's NormalizingFlow and others leave it undefined
        support = constraints.real
    probe = d.sample((1,))
    dtype = probe.dtype if probe.is_floating_point() else torch.get_default_dtype()
    forward = inverse = base_sample = base_log_prob = None
    parts = []
    if hasattr(d, "transform") and hasattr(d, "base") and hasattr(d.transform, "call_and_ladj") and len(event) == 1:
        # zuko's NormalizingFlow: transform maps x to the base's z; sample() is transform.inv(base.sample())
        t = d.transform
        forward = lambda z: (lambda y: (y[0], _sum_event(y[1], z.shape[0])))(t.inv.call_and_ladj(z))  # noqa: E731
        inverse = lambda x: (lambda y: (y[0], _sum_event(y[1], x.shape[0])))(t.call_and_ladj(x))  # noqa: E731
        base_sample = _global_seeded(lambda n: d.base.sample((n,)))
        base_log_prob = d.base.log_prob
        parts = ["transform.inv.call_and_ladj (z -> x)", "transform.call_and_ladj (x -> z)"]
    elif isinstance(d, torch.distributions.TransformedDistribution) and len(event) <= 1:
        t = torch.distributions.ComposeTransform(list(d.transforms))

        def through(tr, v):
            if scalar:
                y, ladj = _scalar_apply(tr, v[:, 0])
                return flat(y), ladj
            y = tr(v)
            return y, _sum_event(tr.log_abs_det_jacobian(v, y), v.shape[0])

        forward = lambda z: through(t, z)  # noqa: E731
        inverse = lambda x: through(t.inv, x)  # noqa: E731
        base_sample = _global_seeded(lambda n: flat(d.base_dist.sample((n,))))
        if not scalar and len(d.base_dist.event_shape) == 1:
            base_log_prob = d.base_dist.log_prob
        parts = ["transforms (z -> x)", "transforms' inverse (x -> z)"]
    parts += ["log_prob", "sample (global RNG seeded)"]
    return Subject(
        obj=d, interface=(interface or f"torch.distributions.Distribution ({type(d).__name__})") + ": " +
        ", ".join(parts), dim=dim, dtype=dtype, forward=forward, inverse=inverse,
        log_prob=lambda x: d.log_prob(unflat(x)),
        sample=_global_seeded(lambda n: flat(d.sample((n,)))),
        base_sample=base_sample, support=support, base_log_prob=base_log_prob,
        convert=convert or (lambda dt: _from_distribution(_cast(d, dt), interface)),
    )


def _scalar_apply(t, v):
    y = t(v)
    return y, t.log_abs_det_jacobian(v, y).reshape(v.shape[0])


def _from_lazy(module: nn.Module, made) -> Subject:
    if isinstance(made, Distribution):
        return _from_distribution(made, interface=f"lazy distribution {type(module).__name__}() -> "
                                  f"{type(made).__name__}", convert=lambda dt: _from_lazy_cast(module, dt))
    raise TypeError("not a lazy distribution")


def _from_lazy_cast(module, dtype):
    m = _cast(module, dtype)
    return _from_lazy(m, m())


def _from_lazy_transform(module: nn.Module, t: Transform, dim) -> Subject:
    dim = dim if dim is not None else _dim_attribute(module)
    name = f"lazy transform {type(module).__name__}() -> " + (
        "zuko Transform: call_and_ladj (z -> x), inv.call_and_ladj (x -> z)" if hasattr(t, "call_and_ladj") else
        "torch Transform")

    def convert(dt):
        m = _cast(module, dt)
        return replace(_from_lazy_transform(m, m(), dim), dtype=dt)

    s = _from_torch_transform(t, dim, interface=name, convert=convert)
    return replace(s, dtype=_first_param_dtype(module) or s.dtype)


def _in_default_dtype(dtype, draw):
    """``draw`` run with torch's default dtype set to ``dtype``: nflows' bases draw their noise in the default
    dtype whatever the flow's, so a float64 flow samples only this way."""

    def run(*args):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return draw(*args)
        finally:
            torch.set_default_dtype(previous)

    return run


def _from_nflows_flow(flow: nn.Module) -> Subject:
    tr = flow._transform
    dtype = _first_param_dtype(flow) or torch.get_default_dtype()
    z = _in_default_dtype(dtype, flow._distribution.sample)(1)
    dim_shape = tuple(z.shape[1:])
    s = Subject(
        obj=flow, interface="nflows Flow: _transform.inverse (z -> x), _transform (x -> z), log_prob, sample "
        "(global RNG seeded, default dtype the flow's)", dim=math.prod(dim_shape), dtype=dtype,
        forward=lambda v: tr.inverse(v), inverse=lambda x: tr(x), log_prob=flow.log_prob,
        sample=_global_seeded(_in_default_dtype(dtype, lambda n: flow.sample(n))),
        base_sample=_global_seeded(_in_default_dtype(dtype, lambda n: flow._distribution.sample(n))),
        base_log_prob=flow._distribution.log_prob if len(dim_shape) == 1 else None,
        convert=lambda dt: _from_nflows_flow(_cast(flow, dt)),
    )
    return _flatten(s, dim_shape)


def _from_normflows(flow: nn.Module, dim) -> Subject:
    z = flow.q0(1)[0]
    dim_shape = tuple(z.shape[1:])
    s = Subject(
        obj=flow, interface="normflows NormalizingFlow: forward_and_log_det (z -> x), inverse_and_log_det "
        "(x -> z), log_prob, sample (global RNG seeded)", dim=math.prod(dim_shape),
        dtype=_first_param_dtype(flow) or z.dtype,
        forward=flow.forward_and_log_det, inverse=flow.inverse_and_log_det, log_prob=flow.log_prob,
        sample=_global_seeded(lambda n: flow.sample(n)[0]),
        base_sample=_global_seeded(lambda n: flow.q0(n)[0]),
        base_log_prob=flow.q0.log_prob if len(dim_shape) == 1 else None,
        convert=lambda dt: _from_normflows(_cast(flow, dt), dim),
    )
    return _flatten(s, dim_shape)


def _dim_attribute(obj) -> int | None:
    """The input size an object states as ``dim``, ``features`` or ``in_features`` (an int), if any."""
    for name in ("dim", "features", "in_features"):
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _from_pair(f, inverse, dim, interface, log_prob=None, sample=None) -> Subject:
    dim = dim if dim is not None else _dim_attribute(f)
    if dim is None:
        raise ValueError("as_subject: a callable does not say its input size: pass `dim` (--dim on the command line)")

    def as_pair(out, batch):
        if isinstance(out, tuple):
            return out[0], _sum_event(out[1], batch)
        return out, None

    def fwd(z):
        return as_pair(f(z), z.shape[0])

    inv = None if inverse is None else (lambda x: as_pair(inverse(x), x.shape[0]))
    convert = None
    if isinstance(f, nn.Module):
        def convert(dt):
            g = _cast(f, dt)
            own_inverse = inverse is not None and getattr(inverse, "__self__", None) is f
            return _from_pair(g, g.inverse if own_inverse else inverse, dim, interface,
                              g.log_prob if log_prob is not None and hasattr(g, "log_prob") else None,
                              _sampler(g)[0] if sample is not None else None)
    base = getattr(f, "base", None)
    base = base if isinstance(base, Distribution) and tuple(base.event_shape) == (int(dim),) else None
    return Subject(obj=f, interface=interface + (", base" if base is not None else ""), dim=int(dim),
                   dtype=_first_param_dtype(f) or torch.float64, forward=fwd, inverse=inv, log_prob=log_prob,
                   sample=sample, convert=convert,
                   base_sample=None if base is None else _global_seeded(lambda n: base.sample((n,))),
                   base_log_prob=None if base is None else base.log_prob,
                   seeded=sample is not None and "seed" in _param_names(getattr(f, "sample", None)))


def _sampler(obj):
    """``obj.sample(n, seed=)`` (or ``obj.sample(n)`` under a seeded global RNG) as ``(n, seed) -> x``."""
    fn = getattr(obj, "sample", None)
    if not callable(fn):
        return None, ""
    if "seed" in _param_names(fn):
        return (lambda n, s: fn(n, seed=s)), ", sample(n, seed=)"
    return _global_seeded(lambda n: fn(n)), ", sample(n) (global RNG seeded)"


def as_subject(obj, *, dim: int | None = None, inverse: Callable | None = None) -> Subject:
    """``obj`` seen through the flat interface of :class:`Subject` (see the module docstring for what is accepted).

    Args:
        obj: the model (or a ``(f, inverse)`` pair, or a :class:`Subject`, returned as is).
        dim: the input size, needed for transforms and callables, which do not carry it.
        inverse: the inverse of a bare callable ``obj``: ``x -> (z, log|det dz/dx|)``.

    Raises:
        TypeError: ``obj`` matches none of the interfaces.
        ValueError: ``dim`` is needed and missing, or the object's shapes are not usable.
    """
    if isinstance(obj, Subject):
        return obj
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"as_subject: `dim` must be a positive int; got {dim!r}")
    if isinstance(obj, tuple) and len(obj) == 2 and all(callable(o) for o in obj):
        return _from_pair(obj[0], obj[1], dim, "callable pair (f: z -> (x, ladj), inverse: x -> (z, ladj))")
    if all(hasattr(obj, a) for a in ("capabilities", "transform", "base", "sample")):
        return _from_pyprobtf(obj)
    if all(hasattr(obj, a) for a in ("_transform", "_distribution", "transform_to_noise")):
        return _from_nflows_flow(obj)
    if all(hasattr(obj, a) for a in ("forward_and_log_det", "inverse_and_log_det", "q0")):
        return _from_normflows(obj, dim)
    if isinstance(obj, Distribution):
        return _from_distribution(obj)
    if isinstance(obj, Transform):
        return _from_torch_transform(obj, dim)
    if isinstance(obj, nn.Module) and _needs_no_argument(obj.forward):
        made = obj()
        if isinstance(made, Distribution):
            return _from_lazy(obj, made)
        if isinstance(made, Transform):
            return _from_lazy_transform(obj, made, dim)
    if isinstance(obj, nn.Module) and callable(getattr(obj, "inverse", None)) and \
            _param_names(obj.forward)[:2] == ["inputs", "context"]:
        return _from_pair(obj, obj.inverse, dim, "nflows Transform: forward(inputs) (z -> x), inverse(inputs) "
                          "(x -> z)")
    if callable(getattr(obj, "inverse", None)) and callable(obj):
        lp = getattr(obj, "log_prob", None)
        sample, how = _sampler(obj)
        return _from_pair(obj, obj.inverse, dim, f"{type(obj).__name__}: obj(z) -> (x, ladj), obj.inverse(x) -> "
                          "(z, ladj)" + (", log_prob" if callable(lp) else "") + how,
                          log_prob=lp if callable(lp) else None, sample=sample)
    if callable(obj):
        return _from_pair(obj, inverse, dim, "callable f(z) -> (x, ladj)" + (" with inverse" if inverse else ""))
    raise TypeError(f"as_subject: `obj` must be a pyprobtf ProbabilityTransform, a torch Distribution or Transform, a "
                    f"zuko flow, an nflows Flow or Transform, a normflows flow, or a callable f(z) -> (x, ladj); got "
                    f"{type(obj).__name__}")
