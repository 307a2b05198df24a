"""pyprobtf.integrations.faiss against faiss-cpu's IndexFlatL2 / IndexFlatIP on the same data.

Indices: identical wherever the float64 distances around the k-th neighbour are
not within float32 rounding of each other (there FAISS's float32 ranking may
differ from the exact one). Distances: within float32 rounding. Padding when
k > ntotal, NumPy and torch in/out, reset, ties and errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")
from pyprobtf.integrations import faiss as pfaiss  # noqa: E402

KINDS = {"l2": (faiss.IndexFlatL2, pfaiss.IndexFlatL2), "ip": (faiss.IndexFlatIP, pfaiss.IndexFlatIP)}


def _exact(xq, xb, metric):
    """float64 scores, smaller is better."""
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return -(q @ b.T)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("d,nb,k", [(4, 50, 1), (16, 300, 10), (64, 1000, 10), (128, 257, 3)])
def test_search_matches_faiss(metric, d, nb, k):
    rng = np.random.default_rng(d * nb + k)
    xb = rng.standard_normal((nb, d)).astype(np.float32)
    xq = rng.standard_normal((200, d)).astype(np.float32)
    peer_cls, ours_cls = KINDS[metric]
    peer, ours = peer_cls(d), ours_cls(d)
    for chunk in np.array_split(xb, 3):  # several adds: ids continue
        peer.add(chunk)
        ours.add(chunk)
    assert ours.ntotal == peer.ntotal == nb
    D, I = ours.search(xq, k)
    D_peer, I_peer = peer.search(xq, k)
    assert isinstance(D, np.ndarray) and D.dtype == np.float32 and D.shape == (200, k)
    assert isinstance(I, np.ndarray) and I.dtype == np.int64 and I.shape == (200, k)
    # Ours is the exact float64 ranking.
    scores = _exact(xq, xb, metric)
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(I, order)
    # FAISS agrees wherever no two of the first k + 1 exact scores are within its float32 rounding.
    scale = (xq.astype(np.float64) ** 2).sum(1)[:, None] + (xb.astype(np.float64) ** 2).sum(1).max()
    sorted_scores = np.sort(scores, axis=1)[:, : k + 1]
    clear = (np.diff(sorted_scores, axis=1) > 1e-5 * scale).all(axis=1) if nb > k else np.ones(200, bool)
    assert clear.mean() > 0.8  # the comparison covers most rows
    np.testing.assert_array_equal(I[clear], I_peer[clear])
    np.testing.assert_allclose(D, D_peer, rtol=0, atol=(2e-6 * scale).max())
    np.testing.assert_allclose(D, (scores[np.arange(200)[:, None], I] * (1 if metric == "l2" else -1)),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_in_torch_out_and_padding(metric):
    peer_cls, ours_cls = KINDS[metric]
    peer, ours = peer_cls(8), ours_cls(8)
    D_empty, I_empty = ours.search(np.zeros((2, 8), np.float32), 3)
    D_empty_peer, I_empty_peer = peer.search(np.zeros((2, 8), np.float32), 3)
    np.testing.assert_array_equal(I_empty, I_empty_peer)
    np.testing.assert_array_equal(D_empty, D_empty_peer)
    xb = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    ours.add(xb)
    peer.add(xb.numpy())
    xq = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    D, I = ours.search(xq, 7)  # k > ntotal: padded as FAISS pads
    D_peer, I_peer = peer.search(xq.numpy(), 7)
    assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor) and I.dtype == torch.int64
    np.testing.assert_array_equal(I.numpy(), I_peer)
    np.testing.assert_allclose(D.numpy(), D_peer, rtol=1e-5, atol=1e-5)
    ours.reset()
    assert ours.ntotal == 0
    assert (ours.search(xq, 2)[1] == -1).all()


def test_ties_go_to_the_lower_index():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, 4)).astype(np.float32)
    xb = np.concatenate([base, base])  # every vector twice: ids i and i + 20 tie exactly
    xq = rng.standard_normal((50, 4)).astype(np.float32)
    for metric in ("l2", "ip"):
        peer_cls, ours_cls = KINDS[metric]
        ours, peer = ours_cls(4), peer_cls(4)
        ours.add(xb)
        peer.add(xb)
        _, I = ours.search(xq, 2)
        _, I_peer = peer.search(xq, 2)
        assert (I[:, 0] < 20).all() and (I[:, 1] == I[:, 0] + 20).all()
        # What FAISS does (documented in the module): lower first for L2, higher first for IP.
        if metric == "l2":
            np.testing.assert_array_equal(I_peer, I)
        else:
            np.testing.assert_array_equal(I_peer, I[:, ::-1])


def test_bad_input():
    index = pfaiss.IndexFlatL2(4)
    with pytest.raises(ValueError, match=r"IndexFlatL2.add: `x` must have shape \(n, 4\); got \(3, 5\)"):
        index.add(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="IndexFlatL2.search: `xq` must be a numpy array or a torch tensor, got list"):
        index.search([[0.0] * 4], 1)
    with pytest.raises(ValueError, match="IndexFlatL2.search: `k` must be >= 1, got 0"):
        index.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(TypeError, match="IndexFlatIP: `d` must be an int, got float"):
        pfaiss.IndexFlatIP(4.0)
