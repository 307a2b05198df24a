"""pyprobtf.integrations.nflows against nflows itself, on the same inputs and parameters.

float64: within 1e-12 relative; float32: within rounding. Checked: outputs and
log-determinants forward and inverse (2-D and 4-D inputs, with and without an
unconditional transform, the default and a custom scale activation),
gradients, checkpoints moving over, and a short training run of a flow.
"""

from __future__ import annotations

import math

import pytest
import torch

nflows = pytest.importorskip("nflows")
from nflows.distributions.normal import StandardNormal  # noqa: E402
from nflows.flows.base import Flow  # noqa: E402
from nflows.nn.nets import ResidualNet  # noqa: E402
from nflows.transforms import CompositeTransform  # noqa: E402
from nflows.transforms.coupling import AffineCouplingTransform as PeerAffineCoupling  # noqa: E402
from nflows.transforms.normalization import ActNorm  # noqa: E402

from pyprobtf.integrations.nflows import AffineCouplingTransform  # noqa: E402

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _dense_net(in_features, out_features):
    return ResidualNet(in_features, out_features, hidden_features=16, num_blocks=1)


class _ConvNet(torch.nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x, context=None):
        return self.conv(x)


def _pair(mask, make_net, dtype, seed, **kwargs):
    torch.manual_seed(seed)
    peer = PeerAffineCoupling(mask, make_net, **{k: v for k, v in kwargs.items() if k != "scale_activation"})
    ours = AffineCouplingTransform(mask, make_net, **kwargs)
    ours.load_state_dict(peer.state_dict())
    return peer.to(dtype), ours.to(dtype)


def _check(peer, ours, x, dtype):
    for direction in ("forward", "inverse"):
        x_ours, x_peer = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, ladj_ours = getattr(ours, direction)(x_ours)
        y_peer, ladj_peer = getattr(peer, direction)(x_peer)
        torch.testing.assert_close(y_ours, y_peer, **TOL[dtype])
        torch.testing.assert_close(ladj_ours, ladj_peer, **TOL[dtype])
        w = torch.randn_like(y_peer)
        grads_ours = torch.autograd.grad((y_ours * w).sum() + ladj_ours.sum(), [x_ours, *ours.parameters()])
        grads_peer = torch.autograd.grad((y_peer * w).sum() + ladj_peer.sum(), [x_peer, *peer.parameters()])
        for got, want in zip(grads_ours, grads_peer):
            torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("unconditional", [False, True])
def test_dense_matches_nflows(dtype, unconditional):
    extra = {"unconditional_transform": ActNorm} if unconditional else {}
    peer, ours = _pair(torch.tensor([1, 0, 1, 1, 0]), _dense_net, dtype, 0, **extra)
    assert ours.state_dict().keys() == peer.state_dict().keys()
    x = torch.randn(11, 5, dtype=dtype) * 3
    _check(peer, ours, x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_image_matches_nflows(dtype):
    peer, ours = _pair(torch.tensor([1, 0, 1, 0]), _ConvNet, dtype, 1)
    x = torch.randn(3, 4, 5, 6, dtype=dtype)
    _check(peer, ours, x, dtype)


def test_custom_scale_activation():
    # nflows' "general" activation, applied the way nflows applies any activation.
    class PeerGeneral(PeerAffineCoupling):
        def _scale_and_shift(self, transform_params):
            shift = transform_params[:, : self.num_transform_features]
            return AffineCouplingTransform.GENERAL_SCALE_ACTIVATION(
                transform_params[:, self.num_transform_features :]
            ), shift

    torch.manual_seed(2)
    peer = PeerGeneral(torch.tensor([1, 0, 1]), _dense_net).double()
    ours = AffineCouplingTransform(
        torch.tensor([1, 0, 1]), _dense_net, scale_activation=AffineCouplingTransform.GENERAL_SCALE_ACTIVATION
    ).double()
    ours.load_state_dict(peer.state_dict())
    _check(peer, ours, torch.randn(7, 3, dtype=torch.float64), torch.float64)


def test_rejects_non_callable_activation():
    with pytest.raises(TypeError, match="AffineCouplingTransform: `scale_activation` must be callable, got str"):
        AffineCouplingTransform(torch.tensor([1, 0]), _dense_net, scale_activation="sigmoid")


def _flow(features, coupling_cls, seed):
    torch.manual_seed(seed)
    layers = []
    for i in range(3):
        mask = (torch.arange(features) + i) % 2
        layers.append(coupling_cls(mask, lambda n_in, n_out: ResidualNet(n_in, n_out, 32, num_blocks=1)))
    return Flow(CompositeTransform(layers), StandardNormal([features])).double()


@pytest.mark.parametrize("features", [2, 64])
def test_training_reaches_the_same_nll(features):
    peer, ours = _flow(features, PeerAffineCoupling, 5), _flow(features, AffineCouplingTransform, 5)
    ours.load_state_dict(peer.state_dict())
    g = torch.Generator().manual_seed(6)
    mixing = torch.randn(features, features, generator=g, dtype=torch.float64) / math.sqrt(features)
    data = torch.randn(512, features, generator=g, dtype=torch.float64) @ mixing + 1.0
    with torch.no_grad():
        untrained = -ours.log_prob(data).mean().item()
    losses = {}
    for name, flow in (("peer", peer), ("ours", ours)):
        opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
        for step in range(15):
            loss = -flow.log_prob(data[(step * 64) % 512 :][:64]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[name] = -flow.log_prob(data).mean().item()
    assert losses["ours"] == pytest.approx(losses["peer"], rel=1e-9)
    assert losses["ours"] < untrained
