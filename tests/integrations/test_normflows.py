"""pyprobtf.integrations.normflows against normflows itself, on the same inputs and parameters.

float64: within 1e-12 relative; float32: within rounding. Every ``scale_map``,
forward and inverse, gradients, checkpoints moving over, and a short training
run of a ``NormalizingFlow``.
"""

from __future__ import annotations

import math

import pytest
import torch

nf = pytest.importorskip("normflows")
from pyprobtf.integrations.normflows import AffineCoupling, AffineCouplingBlock  # noqa: E402

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}
SCALE_MAPS = ["exp", "sigmoid", "sigmoid_inv"]


def _pair(features, scale_map, dtype, seed, scale=True, split_mode="channel"):
    out = features if scale else features // 2
    torch.manual_seed(seed)
    peer = nf.flows.AffineCouplingBlock(nf.nets.MLP([features // 2, 16, out]), scale, scale_map, split_mode)
    ours = AffineCouplingBlock(nf.nets.MLP([features // 2, 16, out]), scale, scale_map, split_mode)
    ours.load_state_dict(peer.state_dict())
    return peer.to(dtype), ours.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale_map", SCALE_MAPS)
@pytest.mark.parametrize("split_mode", ["channel", "channel_inv"])
def test_block_matches_normflows(dtype, scale_map, split_mode):
    peer, ours = _pair(6, scale_map, dtype, 0, split_mode=split_mode)
    assert ours.state_dict().keys() == peer.state_dict().keys()
    assert isinstance(ours.flows[1], AffineCoupling)
    z = torch.randn(10, 6, dtype=dtype) * 2
    for direction in ("forward", "inverse"):
        z_ours, z_peer = z.clone().requires_grad_(), z.clone().requires_grad_()
        y_ours, ld_ours = getattr(ours, direction)(z_ours)
        y_peer, ld_peer = getattr(peer, direction)(z_peer)
        torch.testing.assert_close(y_ours, y_peer, **TOL[dtype])
        torch.testing.assert_close(ld_ours, ld_peer, **TOL[dtype])
        w = torch.randn_like(y_peer)
        grads_ours = torch.autograd.grad((y_ours * w).sum() + ld_ours.sum(), [z_ours, *ours.parameters()])
        grads_peer = torch.autograd.grad((y_peer * w).sum() + ld_peer.sum(), [z_peer, *peer.parameters()])
        for got, want in zip(grads_ours, grads_peer):
            torch.testing.assert_close(got, want, **TOL[dtype])


def test_additive_coupling_matches_normflows():
    peer, ours = _pair(4, "exp", torch.float64, 1, scale=False)
    z = torch.randn(5, 4, dtype=torch.float64)
    for direction in ("forward", "inverse"):
        y_ours, ld_ours = getattr(ours, direction)(z)
        y_peer, ld_peer = getattr(peer, direction)(z)
        torch.testing.assert_close(y_ours, y_peer, **TOL[torch.float64])
        torch.testing.assert_close(ld_ours, ld_peer, **TOL[torch.float64])


def test_rejects_unknown_scale_map():
    with pytest.raises(ValueError, match="AffineCoupling: `scale_map` must be one of .*got 'tanh'"):
        AffineCoupling(torch.nn.Identity(), scale_map="tanh")


def _flow(block_cls, features, seed):
    torch.manual_seed(seed)
    flows = []
    for _ in range(3):
        net = nf.nets.MLP([features // 2, 32, features], init_zeros=False)
        flows += [block_cls(net, scale_map="exp"), nf.flows.Permute(features, mode="swap")]
    return nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(features), flows=flows).double()


@pytest.mark.parametrize("features", [2, 64])
def test_training_reaches_the_same_nll(features):
    peer, ours = _flow(nf.flows.AffineCouplingBlock, features, 5), _flow(AffineCouplingBlock, features, 5)
    ours.load_state_dict(peer.state_dict())
    g = torch.Generator().manual_seed(6)
    mixing = torch.randn(features, features, generator=g, dtype=torch.float64) / math.sqrt(features)
    data = torch.randn(512, features, generator=g, dtype=torch.float64) @ mixing + 1.0
    with torch.no_grad():
        untrained = ours.forward_kld(data).item()
    losses = {}
    for name, flow in (("peer", peer), ("ours", ours)):
        opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
        for step in range(15):
            loss = flow.forward_kld(data[(step * 64) % 512 :][:64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[name] = flow.forward_kld(data).item()
    assert losses["ours"] == pytest.approx(losses["peer"], rel=1e-9)
    assert losses["ours"] < untrained
