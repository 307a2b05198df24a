"""normflows' affine coupling with pyprobtf's fused kernel (``pip install pyprobtf[normflows]``).

- :class:`AffineCoupling`: ``normflows.flows.AffineCoupling`` (``param_map``,
  ``scale``, ``scale_map``; ``forward([z1, z2]) -> ([z1, z2'], log_det)``).
- :class:`AffineCouplingBlock`: ``normflows.flows.AffineCouplingBlock``
  (split, coupling, merge), the one to drop into ``normflows.NormalizingFlow``.

Each ``scale_map`` runs as one :func:`pyprobtf.ops.affine_coupling` pass:
``"exp"`` (RealNVP) as ``scale_fn="exp"``, ``"sigmoid"`` (Glow: divide by
``sigmoid(a + 2)``) as ``"inv_sigmoid"``, ``"sigmoid_inv"`` (multiply by it)
as ``"sigmoid"``. ``state_dict`` keys are normflows'.

Example:
    >>> import normflows as nf
    >>> from pyprobtf.integrations.normflows import AffineCouplingBlock
    >>> net = nf.nets.MLP([1, 32, 2], init_zeros=True)
    >>> block = AffineCouplingBlock(net)
    >>> z, log_det = block(torch.randn(16, 2))
"""

from __future__ import annotations

try:
    from normflows.flows.affine import coupling as _coupling
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("pyprobtf.integrations.normflows needs normflows: pip install 'pyprobtf[normflows]'") from exc

from pyprobtf.ops import affine_coupling

__all__ = ["AffineCoupling", "AffineCouplingBlock"]

_SCALE_FN_OF_MAP = {"exp": "exp", "sigmoid": "inv_sigmoid", "sigmoid_inv": "sigmoid"}


class AffineCoupling(_coupling.AffineCoupling):
    """normflows' RealNVP/Glow affine coupling, fused.

    Arguments:
        param_map: maps ``z1`` to the parameters, shift and unconstrained
            scale interleaved along dimension 1 (``[:, 0::2]`` and ``[:, 1::2]``).
        scale: apply a scale (``False``: additive coupling).
        scale_map: ``"exp"``, ``"sigmoid"`` or ``"sigmoid_inv"`` (see the module).
        backend: the :func:`~pyprobtf.ops.affine_coupling` backend.
    """

    def __init__(self, param_map, scale: bool = True, scale_map: str = "exp", *, backend: str = "auto"):
        if scale and scale_map not in _SCALE_FN_OF_MAP:
            raise ValueError(
                f"AffineCoupling: `scale_map` must be one of {tuple(_SCALE_FN_OF_MAP)}, got {scale_map!r}"
            )
        super().__init__(param_map, scale, scale_map)
        self.backend = backend

    def _fused(self, z, inverse: bool):
        if not self.scale:
            return super().inverse(z) if inverse else super().forward(z)
        z1, z2 = z
        param = self.param_map(z1)
        shift, unconstrained_scale = param[:, 0::2, ...], param[:, 1::2, ...]
        z2, log_det = affine_coupling(
            z2, shift, unconstrained_scale, scale_fn=_SCALE_FN_OF_MAP[self.scale_map], inverse=inverse,
            backend=self.backend,
        )
        return [z1, z2], log_det.to(z2.dtype)

    def forward(self, z):
        return self._fused(z, inverse=False)

    def inverse(self, z):
        return self._fused(z, inverse=True)


class AffineCouplingBlock(_coupling.AffineCouplingBlock):
    """normflows' split + :class:`AffineCoupling` + merge, same arguments and ``state_dict`` keys.

    Arguments:
        param_map, scale, scale_map: as :class:`AffineCoupling`.
        split_mode: as ``normflows.flows.Split`` (``"channel"``, ``"channel_inv"``, ``"checkerboard"``, ...).
        backend: the :func:`~pyprobtf.ops.affine_coupling` backend.
    """

    def __init__(self, param_map, scale: bool = True, scale_map: str = "exp", split_mode: str = "channel", *,
                 backend: str = "auto"):
        super().__init__(param_map, scale, scale_map, split_mode)
        self.flows[1] = AffineCoupling(param_map, scale, scale_map, backend=backend)
