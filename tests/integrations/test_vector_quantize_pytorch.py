"""pyprobtf.integrations.vector_quantize_pytorch against vector-quantize-pytorch itself.

Same codebook, same inputs: the same indices, quantized outputs and commitment
loss; same EMA settings: the same codebook after N training steps (within
float32 rounding: the EMA sums are added in another order); gradients; image
feature maps in both layouts; heads, projections, cosine similarity, k-means
init, dead-code replacement, the codebook all-reduce; ResidualVQ.
"""

from __future__ import annotations

import pytest
import torch

vqp = pytest.importorskip("vector_quantize_pytorch")
from pyprobtf.integrations import vector_quantize_pytorch as adapter  # noqa: E402
from pyprobtf.integrations.vector_quantize_pytorch import ResidualVQ, VectorQuantize  # noqa: E402
from pyprobtf.ops import vq_nearest  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-6)


def _pair(cls_peer, cls_ours, seed=0, **kwargs):
    torch.manual_seed(seed)
    peer = cls_peer(**kwargs)
    ours = cls_ours(**kwargs)
    ours.load_state_dict(peer.state_dict())
    assert ours.state_dict().keys() == peer.state_dict().keys()
    return peer, ours


def _run_both(peer, ours, x, seed):
    """One forward (and, in training, backward) of each on the same input and RNG state."""
    outs = []
    for module in (peer, ours):
        xi = x.clone().requires_grad_(module.training)
        torch.manual_seed(seed)
        quantized, indices, loss = module(xi)
        grad = None
        if module.training:
            (quantized.square().mean() + loss.sum()).backward()
            grad = xi.grad
        outs.append((quantized.detach(), indices, loss.detach(), grad))
    return outs


CASES = {
    "sequence": dict(dim=16, codebook_size=64),
    "image_fmap": dict(dim=16, codebook_size=64, accept_image_fmap=True),
    "channel_first": dict(dim=16, codebook_size=64, channel_last=False),
    "projection": dict(dim=16, codebook_size=64, codebook_dim=8),
    "heads_separate": dict(dim=16, codebook_size=32, heads=2, separate_codebook_per_head=True),
    "heads_shared": dict(dim=16, codebook_size=32, heads=2),
    "cosine": dict(dim=16, codebook_size=64, use_cosine_sim=True),
    "kmeans_dead_codes": dict(dim=16, codebook_size=32, kmeans_init=True, kmeans_iters=3, threshold_ema_dead_code=2),
    "commitment": dict(dim=16, codebook_size=64, commitment_weight=0.25, decay=0.9),
    "stochastic (library path)": dict(dim=16, codebook_size=64, stochastic_sample_codes=True),
}


def _input(case, seed):
    g = torch.Generator().manual_seed(seed)
    if case.get("accept_image_fmap"):
        return torch.randn(3, case["dim"], 6, 5, generator=g)
    if case.get("channel_last") is False:
        return torch.randn(3, case["dim"], 20, generator=g)
    return torch.randn(3, 20, case["dim"], generator=g)


@pytest.mark.parametrize("name", list(CASES))
def test_vector_quantize_matches_library(name, monkeypatch):
    searches = []
    monkeypatch.setattr(adapter, "vq_nearest", lambda *a, **k: searches.append(1) or vq_nearest(*a, **k))
    kwargs = CASES[name]
    peer, ours = _pair(vqp.VectorQuantize, VectorQuantize, **kwargs)
    for step in range(4):  # training: EMA updates, dead codes, gradients through the rotation trick
        (q_p, i_p, l_p, g_p), (q_o, i_o, l_o, g_o) = _run_both(peer, ours, _input(kwargs, step), step)
        torch.testing.assert_close(i_o, i_p, rtol=0, atol=0)
        torch.testing.assert_close(q_o, q_p, **F32)
        torch.testing.assert_close(l_o, l_p, **F32)
        torch.testing.assert_close(g_o, g_p, **F32)
        torch.testing.assert_close(ours.codebook, peer.codebook, **F32)
        torch.testing.assert_close(ours._codebook.cluster_size, peer._codebook.cluster_size, **F32)
    peer.eval()
    ours.eval()
    with torch.no_grad():
        (q_p, i_p, l_p, _), (q_o, i_o, l_o, _) = _run_both(peer, ours, _input(kwargs, 9), 9)
    torch.testing.assert_close(i_o, i_p, rtol=0, atol=0)
    torch.testing.assert_close(q_o, q_p, **F32)
    # The nearest search ran on vq_nearest, except where the library's dense path is kept.
    assert (len(searches) == 0) == ("library path" in name)


def test_codebook_after_many_ema_steps():
    peer, ours = _pair(vqp.VectorQuantize, VectorQuantize, dim=8, codebook_size=16, decay=0.8)
    centres = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)) * 3
    for step in range(25):
        g = torch.Generator().manual_seed(100 + step)
        x = centres[torch.randint(16, (256,), generator=g)] + 0.3 * torch.randn(256, 8, generator=g)
        peer(x[None])
        ours(x[None])
    torch.testing.assert_close(ours.codebook, peer.codebook, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours._codebook.embed_avg, peer._codebook.embed_avg, rtol=1e-5, atol=1e-5)


def test_sync_codebook_all_reduces_the_statistics():
    # Stand-in for a 2-process all-reduce: every statistic doubled, as two identical ranks would sum.
    peer, ours = _pair(vqp.VectorQuantize, VectorQuantize, dim=8, codebook_size=16, sync_codebook=True)
    calls = {"peer": 0, "ours": 0}

    def fake_all_reduce(name):
        def reduce(t):
            calls[name] += 1
            t.mul_(2)
        return reduce

    peer._codebook.all_reduce_fn = fake_all_reduce("peer")
    ours._codebook.all_reduce_fn = fake_all_reduce("ours")
    for step in range(3):
        (_, i_p, _, _), (_, i_o, _, _) = _run_both(peer, ours, torch.randn(2, 30, 8), step)
        torch.testing.assert_close(i_o, i_p, rtol=0, atol=0)
    assert calls["ours"] == calls["peer"] > 0
    torch.testing.assert_close(ours.codebook, peer.codebook, **F32)


def test_residual_vq_matches_library():
    # Sequences (b, n, d), as neural audio codecs use it (the library's ResidualVQ fails on image
    # feature maps in version 1.32: the residual is concatenated before it is rearranged).
    peer, ours = _pair(vqp.ResidualVQ, ResidualVQ, dim=16, num_quantizers=4, codebook_size=32, decay=0.8)
    assert all(isinstance(layer, VectorQuantize) for layer in ours.layers)
    for step in range(3):
        x = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(step))
        torch.manual_seed(step)
        q_p, i_p, l_p = peer(x)
        torch.manual_seed(step)
        q_o, i_o, l_o = ours(x)
        torch.testing.assert_close(i_o, i_p, rtol=0, atol=0)
        torch.testing.assert_close(q_o, q_p, **F32)
        torch.testing.assert_close(l_o, l_p, **F32)
    for layer_o, layer_p in zip(ours.layers, peer.layers):
        torch.testing.assert_close(layer_o.codebook, layer_p.codebook, **F32)


def test_exact_ties_go_to_the_lower_index():
    peer, ours = _pair(vqp.VectorQuantize, VectorQuantize, dim=4, codebook_size=4)
    ours.eval()
    peer.eval()
    ours.codebook = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 5.0]])
    peer.codebook = ours.codebook.clone()
    x = torch.tensor([[[0.0, 0, 0, 0], [2.0, 0, 0, 0]]])
    with torch.no_grad():
        _, i_o, _ = ours(x)
        _, i_p, _ = peer(x)
    assert i_o.tolist() == [[0, 0]] == i_p.tolist()
