"""pyprobtf.integrations.zuko against zuko itself, on the same inputs and parameters.

float64: within 1e-12 relative; float32: within rounding. Checked: the
transform's outputs, per-element and per-row log-determinants, inverse,
gradients, checkpoints moving over, and a short training run.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

zuko = pytest.importorskip("zuko")
pzuko = pytest.importorskip("pyprobtf.integrations.zuko")

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _pair(features, dtype, seed, **kwargs):
    """zuko's RealNVP and ours with the same parameters (ours loaded from zuko's state_dict)."""
    torch.manual_seed(seed)
    peer = zuko.flows.RealNVP(features, **kwargs).to(dtype)
    ours = pzuko.RealNVP(features, **kwargs).to(dtype)
    ours.load_state_dict(peer.state_dict())
    return peer, ours


@settings(max_examples=12)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 4)),
    slope=st.sampled_from([1e-3, 1e-2, 0.3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_monotonic_affine_matches_zuko(shape, slope, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x, shift, scale = (torch.randn(shape, generator=g, dtype=dtype) * 4 for _ in range(3))
    peer = zuko.transforms.MonotonicAffineTransform(shift, scale, slope=slope)
    ours = pzuko.MonotonicAffineTransform(shift, scale, slope=slope)
    torch.testing.assert_close(ours.log_scale, peer.log_scale, **TOL[dtype])
    torch.testing.assert_close(ours.scale, peer.scale, **TOL[dtype])
    y, ladj = ours.call_and_ladj(x)
    y_peer, ladj_peer = peer.call_and_ladj(x)
    torch.testing.assert_close(y, y_peer, **TOL[dtype])
    torch.testing.assert_close(ladj, ladj_peer, **TOL[dtype])
    y_row, ladj_row = ours.call_and_row_ladj(x)
    torch.testing.assert_close(y_row, y_peer, **TOL[dtype])
    torch.testing.assert_close(ladj_row, ladj_peer.sum(-1), **TOL[dtype])
    torch.testing.assert_close(ours.inv(y), peer.inv(y_peer), **TOL[dtype])


@pytest.mark.parametrize("x_shape, param_shape", [((6, 4), (4,)), ((2, 3, 5), (2, 3, 5)), ((5, 2, 3), (2, 3)), ((), ())])
def test_monotonic_affine_call_and_ladj_gradients_match_zuko(x_shape, param_shape):
    # The fused per-element ladj: values, broadcast shapes and gradients (arbitrary weights on y and
    # ladj) as zuko's, in float64.
    g = torch.Generator().manual_seed(3)
    x, shift, scale = (torch.randn(shape, generator=g, dtype=torch.float64) * 3
                       for shape in (x_shape, param_shape, param_shape))
    results = []
    for module in (pzuko, zuko.transforms):
        leaves = [u.clone().requires_grad_() for u in (x, shift, scale)]
        y, ladj = module.MonotonicAffineTransform(leaves[1], leaves[2], slope=1e-2).call_and_ladj(leaves[0])
        wy = torch.linspace(-1, 2, y.numel(), dtype=torch.float64).reshape(y.shape)
        wl = torch.linspace(3, -2, ladj.numel(), dtype=torch.float64).reshape(ladj.shape)
        results.append((y, ladj, torch.autograd.grad((y * wy).sum() + (ladj * wl).sum(), leaves)))
    (y, ladj, grads), (y_peer, ladj_peer, grads_peer) = results
    assert ladj.shape == ladj_peer.shape and ladj.dtype == ladj_peer.dtype
    torch.testing.assert_close(y, y_peer, **TOL[torch.float64])
    torch.testing.assert_close(ladj, ladj_peer, **TOL[torch.float64])
    for got, want in zip(grads, grads_peer):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_monotonic_affine_rejects_bad_slope():
    with pytest.raises(ValueError, match="MonotonicAffineTransform: `slope` must be in \\(0, 1\\), got 0.0"):
        pzuko.MonotonicAffineTransform(torch.zeros(2), torch.zeros(2), slope=0.0)
    with pytest.raises(TypeError, match="`slope` must be a float, got str"):
        pzuko.MonotonicAffineTransform(torch.zeros(2), torch.zeros(2), slope="small")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("features,context", [(2, 0), (5, 3)])
def test_realnvp_matches_zuko(dtype, features, context):
    peer, ours = _pair(features, dtype, 0, context=context, transforms=3, hidden_features=(16, 16))
    assert ours.state_dict().keys() == peer.state_dict().keys()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, features, generator=g, dtype=dtype) * 2
    c = torch.randn(9, context, generator=g, dtype=dtype) if context else None
    x_ours = x.clone().requires_grad_()
    x_peer = x.clone().requires_grad_()
    lp_ours, lp_peer = ours(c).log_prob(x_ours), peer(c).log_prob(x_peer)
    torch.testing.assert_close(lp_ours, lp_peer, **TOL[dtype])
    # Forward through the transform, inverse back, and gradients of a loss on the log-density.
    z_ours, ladj_ours = ours(c).transform.call_and_ladj(x)
    z_peer, ladj_peer = peer(c).transform.call_and_ladj(x)
    torch.testing.assert_close(z_ours, z_peer, **TOL[dtype])
    torch.testing.assert_close(ladj_ours, ladj_peer, **TOL[dtype])
    torch.testing.assert_close(ours(c).transform.inv(z_ours), peer(c).transform.inv(z_peer), **TOL[dtype])
    params = list(ours.parameters()) + [x_ours]
    grads_ours = torch.autograd.grad(-lp_ours.mean(), params)
    grads_peer = torch.autograd.grad(-lp_peer.mean(), list(peer.parameters()) + [x_peer])
    for got, want in zip(grads_ours, grads_peer):
        torch.testing.assert_close(got, want, **TOL[dtype])
    # Sampling runs the inverse: same draws from the same generator state.
    torch.manual_seed(3)
    s_peer = peer(c).sample(() if context else (9,))
    torch.manual_seed(3)
    s_ours = ours(c).sample(() if context else (9,))
    torch.testing.assert_close(s_ours, s_peer, **TOL[dtype])


@pytest.mark.parametrize("features", [2, 64])
def test_training_reaches_the_same_nll(features):
    peer, ours = _pair(features, torch.float64, 5, transforms=3, hidden_features=(32,))
    g = torch.Generator().manual_seed(6)
    mixing = torch.randn(features, features, generator=g, dtype=torch.float64) / math.sqrt(features)
    data = torch.randn(512, features, generator=g, dtype=torch.float64) @ mixing + 1.0
    losses = {}
    for name, flow in (("peer", peer), ("ours", ours)):
        opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
        for step in range(15):
            batch = data[(step * 64) % 512 :][:64]
            loss = -flow().log_prob(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[name] = -flow().log_prob(data).mean().item()
    assert losses["ours"] == pytest.approx(losses["peer"], rel=1e-9)
    # It trained: the NLL went down from the untrained flow's.
    _, fresh = _pair(features, torch.float64, 5, transforms=3, hidden_features=(32,))
    with torch.no_grad():
        assert losses["ours"] < -fresh().log_prob(data).mean().item()


@pytest.mark.parametrize("slope", [1e-3, 0.05])
def test_general_coupling_transform_matches_zuko(slope):
    torch.manual_seed(4)
    peer = zuko.flows.GeneralCouplingTransform(
        5, 2, hidden_features=(8,),
        univariate=lambda shift, scale: zuko.transforms.MonotonicAffineTransform(shift, scale, slope=slope),
    ).double()
    ours = pzuko.GeneralCouplingTransform(
        5, 2, hidden_features=(8,),
        univariate=lambda shift, scale: pzuko.MonotonicAffineTransform(shift, scale, slope=slope),
    ).double()
    ours.load_state_dict(peer.state_dict())
    assert ours.state_dict().keys() == peer.state_dict().keys()
    x, c = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    y_ours, ladj_ours = ours(c).call_and_ladj(x)
    y_peer, ladj_peer = peer(c).call_and_ladj(x)
    torch.testing.assert_close(y_ours, y_peer, **TOL[torch.float64])
    torch.testing.assert_close(ladj_ours, ladj_peer, **TOL[torch.float64])
    torch.testing.assert_close(ours(c).inv(y_ours), x, **TOL[torch.float64])
    # NICE is the same flow under its other name.
    nice_peer, nice_ours = zuko.flows.NICE(3), pzuko.NICE(3)
    nice_ours.load_state_dict(nice_peer.state_dict())
    torch.testing.assert_close(nice_ours().log_prob(x[:, :3].float()), nice_peer().log_prob(x[:, :3].float()),
                               **TOL[torch.float32])
