"""nflows' affine coupling with pyprobtf's fused kernel (``pip install pyprobtf[nflows]``).

:class:`AffineCouplingTransform` is ``nflows.transforms.AffineCouplingTransform``
(same constructor, ``forward(inputs, context=None) -> (outputs, logabsdet)``,
``inverse``, 2-D and 4-D inputs, ``state_dict`` keys) whose affine step and
log-determinant are one :func:`pyprobtf.ops.affine_coupling` pass with
``scale_fn="sigmoid_eps"``: ``scale = sigmoid(a + 2) + 1e-3``, nflows' exactly.

Example:
    >>> import torch
    >>> from nflows.nn.nets import ResidualNet
    >>> from pyprobtf.integrations.nflows import AffineCouplingTransform
    >>> make_net = lambda i, o: ResidualNet(i, o, hidden_features=32)
    >>> t = AffineCouplingTransform(torch.tensor([0, 1, 0, 1]), make_net)
    >>> y, logabsdet = t(torch.randn(8, 4))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from nflows.transforms import coupling as _coupling
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("pyprobtf.integrations.nflows needs nflows: pip install 'pyprobtf[nflows]'") from exc

from pyprobtf.ops import affine_coupling

__all__ = ["AffineCouplingTransform"]


def _default_scale_activation(x: Tensor) -> Tensor:
    return torch.sigmoid(x + 2) + 1e-3


def _general_scale_activation(x: Tensor) -> Tensor:
    return (F.softplus(x) + 1e-3).clamp(0, 3)


class AffineCouplingTransform(_coupling.AffineCouplingTransform):
    """nflows' RealNVP affine coupling, fused.

    Arguments:
        mask: 1-D; ``mask[i] > 0`` marks a transformed feature.
        transform_net_create_fn: ``(in_features, out_features) -> net`` with
            ``net(inputs, context)``; its output is ``[shift, unconstrained scale]``.
        unconditional_transform: optional transform of the identity features.
        scale_activation: ``a -> scale``; the default (nflows'
            ``sigmoid(a + 2) + 1e-3``, :attr:`DEFAULT_SCALE_ACTIVATION`) runs
            fused; any other callable (e.g. :attr:`GENERAL_SCALE_ACTIVATION`,
            ``(softplus(a) + 1e-3).clamp(0, 3)``) is applied in torch and its
            log fed to the kernel.
        backend: the :func:`~pyprobtf.ops.affine_coupling` backend.
    """

    DEFAULT_SCALE_ACTIVATION = staticmethod(_default_scale_activation)
    GENERAL_SCALE_ACTIVATION = staticmethod(_general_scale_activation)

    def __init__(self, mask, transform_net_create_fn, unconditional_transform=None,
                 scale_activation=_default_scale_activation, *, backend: str = "auto"):
        if not callable(scale_activation):
            raise TypeError(
                "AffineCouplingTransform: `scale_activation` must be callable, "
                f"got {type(scale_activation).__name__}"
            )
        super().__init__(mask, transform_net_create_fn, unconditional_transform)
        self.scale_activation = scale_activation
        self.backend = backend

    def _split_params(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        n = self.num_transform_features
        return transform_params[:, :n, ...], transform_params[:, n:, ...]

    def _fused(self, inputs: Tensor, transform_params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        shift, unconstrained_scale = self._split_params(transform_params)
        if self.scale_activation is _default_scale_activation:
            return affine_coupling(inputs, shift, unconstrained_scale, scale_fn="sigmoid_eps", inverse=inverse,
                                   backend=self.backend)
        log_scale = torch.log(self.scale_activation(unconstrained_scale))
        return affine_coupling(inputs, shift, log_scale, scale_fn="exp", inverse=inverse, backend=self.backend)

    def _scale_and_shift(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        shift, unconstrained_scale = self._split_params(transform_params)
        return self.scale_activation(unconstrained_scale), shift

    def _coupling_transform_forward(self, inputs: Tensor, transform_params: Tensor):
        outputs, logabsdet = self._fused(inputs, transform_params, inverse=False)
        return outputs, logabsdet.to(outputs.dtype)

    def _coupling_transform_inverse(self, inputs: Tensor, transform_params: Tensor):
        outputs, logabsdet = self._fused(inputs, transform_params, inverse=True)
        return outputs, logabsdet.to(outputs.dtype)
