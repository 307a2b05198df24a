"""zuko flows with pyprobtf's fused affine coupling (``pip install pyprobtf[zuko]``).

Drop-in replacements for zuko's affine pieces, computed by
:func:`pyprobtf.ops.affine_coupling` with ``scale_fn="softclip"``
(``log_scale = a / (1 + |a / log(slope)|)``, zuko's soft clip, exactly):

- :class:`MonotonicAffineTransform`: ``zuko.transforms.MonotonicAffineTransform``
  (same constructor, attributes ``shift``, ``log_scale``, ``scale``, and
  per-element log-determinants from ``log_abs_det_jacobian``; ``call_and_ladj``
  computes ``y`` and them in one fused pass, ``ladj="element"``).
- :class:`GeneralCouplingTransform`: ``zuko.flows.GeneralCouplingTransform``
  whose affine step and the per-row sum of its log-determinant are one fused
  pass (forward and backward).
- :class:`NICE` / :class:`RealNVP`: ``zuko.flows.NICE`` / ``RealNVP`` built
  from it. Modules have zuko's ``state_dict`` keys, so
  ``ours.load_state_dict(zuko_flow.state_dict())`` moves a trained flow over.

Example:
    >>> import torch
    >>> from pyprobtf.integrations import zuko as pzuko
    >>> flow = pzuko.RealNVP(features=2, transforms=3, hidden_features=(64, 64))
    >>> loss = -flow().log_prob(torch.randn(256, 2)).mean()
    >>> loss.backward()
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import zuko
    from zuko.distributions import DiagNormal
    from zuko.lazy import Flow, UnconditionalDistribution
    from zuko.transforms import DependentTransform
    from zuko.utils import broadcast, unpack
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("pyprobtf.integrations.zuko needs zuko: pip install 'pyprobtf[zuko]'") from exc

from pyprobtf.ops import affine_coupling
from pyprobtf.reference.affine_coupling import log_multiplier

__all__ = ["GeneralCouplingTransform", "MonotonicAffineTransform", "NICE", "RealNVP"]


class MonotonicAffineTransform(zuko.transforms.MonotonicAffineTransform):
    r"""zuko's :math:`f(x) = \exp(a') x + b` with :math:`a' = a / (1 + |a / \log(\text{slope})|)`, fused.

    Arguments:
        shift: the shift :math:`b`, shape :math:`(*,)`.
        scale: the unconstrained scale :math:`a`, shape :math:`(*,)`.
        slope: the minimum slope of the transformation, in (0, 1).
        backend: the :func:`~pyprobtf.ops.affine_coupling` backend.

    Example:
        >>> t = MonotonicAffineTransform(torch.zeros(3), torch.ones(3))
        >>> y, ladj = t.call_and_ladj(torch.randn(3))
    """

    def __init__(self, shift: Tensor, scale: Tensor, slope: float = 1e-3, *, backend: str = "auto", **kwargs):
        torch.distributions.Transform.__init__(self, **kwargs)
        if not isinstance(slope, (int, float)) or isinstance(slope, bool):
            raise TypeError(f"MonotonicAffineTransform: `slope` must be a float, got {type(slope).__name__}")
        if not 0.0 < slope < 1.0:
            raise ValueError(f"MonotonicAffineTransform: `slope` must be in (0, 1), got {slope!r}")
        self.shift = shift
        self.unconstrained_scale = scale
        self.slope = float(slope)
        self.backend = backend
        self._clamp = -math.log(self.slope)  # the bound of |log_scale|

    @property
    def log_scale(self) -> Tensor:
        return log_multiplier(self.unconstrained_scale, "softclip", self._clamp)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def _rows(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, shift, a = torch.broadcast_tensors(x, self.shift, self.unconstrained_scale)
        cols = x.shape[-1] if x.dim() else 1
        return x.reshape(-1, cols), shift.reshape(-1, cols), a.reshape(-1, cols)

    def _fused(self, x: Tensor, inverse: bool, ladj: str = "sum") -> tuple[Tensor, Tensor]:
        """(y, ladj summed over the last dimension or, with ``ladj="element"``, per element), from one fused pass."""
        shape = torch.broadcast_shapes(x.shape, self.shift.shape, self.unconstrained_scale.shape)
        y, out = affine_coupling(
            *self._rows(x), scale_fn="softclip", clamp=self._clamp, inverse=inverse, ladj=ladj, backend=self.backend
        )
        return y.reshape(shape), out.to(y.dtype).reshape(shape if ladj == "element" else shape[:-1])

    def _call(self, x: Tensor) -> Tensor:
        return self._fused(x, inverse=False)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self._fused(y, inverse=True)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.log_scale.expand(x.shape)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, ladj)`` with zuko's per-element ``ladj`` (the broadcast shape of ``x``, shift and scale), fused."""
        return self._fused(x, inverse=False, ladj="element")

    def call_and_row_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, ladj)`` with ``ladj`` summed over the last dimension, in one fused pass."""
        return self._fused(x, inverse=False)


class _FusedDependentTransform(DependentTransform):
    """zuko's DependentTransform(base, 1) over the fused affine: the row sum comes from the kernel."""

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.reinterpreted == 1 and isinstance(self.base, MonotonicAffineTransform) and x.dim() >= 1:
            return self.base.call_and_row_ladj(x)
        return super().call_and_ladj(x)


class GeneralCouplingTransform(zuko.flows.GeneralCouplingTransform):
    """``zuko.flows.GeneralCouplingTransform`` with the fused :class:`MonotonicAffineTransform` by default.

    Same arguments (``features``, ``context``, ``mask``, ``univariate``,
    ``shapes``, MLP keyword arguments) and ``state_dict`` keys.

    Example:
        >>> t = GeneralCouplingTransform(4, context=2, hidden_features=(32,))
        >>> y, ladj = t(torch.randn(2)).call_and_ladj(torch.randn(4))
    """

    def __init__(self, features: int, context: int = 0, mask=None, univariate=MonotonicAffineTransform,
                 shapes=((), ()), **kwargs):
        super().__init__(features, context, mask, univariate, shapes, **kwargs)

    def meta(self, c: Tensor | None, x: Tensor):
        if c is not None:
            x = torch.cat(broadcast(x, c, ignore=1), dim=-1)
        phi = self.hyper(x)
        phi = phi.unflatten(-1, (-1, self.total))
        phi = unpack(phi, self.shapes)
        return _FusedDependentTransform(self.univariate(*phi), 1)


class NICE(Flow):
    """``zuko.flows.NICE`` (affine couplings, as RealNVP) with :class:`GeneralCouplingTransform`.

    Same arguments (``features``, ``context``, ``transforms``, ``randmask``,
    and keyword arguments for the couplings) and ``state_dict`` keys.
    """

    def __init__(self, features: int, context: int = 0, transforms: int = 3, randmask: bool = False, **kwargs):
        couplings = []
        for i in range(transforms):
            if randmask:
                mask = torch.randperm(features) % 2 == i % 2
            else:
                mask = torch.arange(features) % 2 == i % 2
            couplings.append(GeneralCouplingTransform(features=features, context=context, mask=mask, **kwargs))
        base = UnconditionalDistribution(
            DiagNormal, loc=torch.zeros(features), scale=torch.ones(features), buffer=True
        )
        super().__init__(couplings, base)


class RealNVP(NICE):
    """``zuko.flows.RealNVP``: see :class:`NICE`."""
