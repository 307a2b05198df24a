"""pyprobtf.nn.VectorQuantizer: shapes, the straight-through gradient and the
losses of VQ-VAE's eq. 3, EMA updates against a plain one-hot computation,
dead-code replacement, k-means initialisation, cosine codebooks, usage and
perplexity, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyprobtf.nn import VectorQuantizer, code_statistics
from pyprobtf.ops import vq_nearest


def _quantizer(num_codes=16, dim=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    vq = VectorQuantizer(num_codes, dim, **kwargs)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(num_codes, dim))
        if vq.ema:
            vq.ema_sums.copy_(vq.codebook)
    return vq


@pytest.mark.parametrize("shape", [(37, 8), (2, 5, 3, 8), (4, 1, 8)])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_shapes_and_values(shape, metric):
    vq = _quantizer(metric=metric)
    z = torch.randn(shape)
    z_q, indices, loss = vq(z)
    assert z_q.shape == z.shape and z_q.dtype == z.dtype
    assert indices.shape == z.shape[:-1] and indices.dtype == torch.int64
    assert loss.shape == ()
    flat = z.reshape(-1, 8)
    want, _ = vq_nearest(flat, vq.codebook.detach(), metric=metric)
    assert torch.equal(indices.reshape(-1), want)
    torch.testing.assert_close(z_q.reshape(-1, 8), vq.codes().detach()[want])
    torch.testing.assert_close(vq.embed(indices), z_q.detach())
    assert torch.equal(vq.nearest(z), indices)
    if metric == "cosine":
        torch.testing.assert_close(z_q.norm(dim=-1), torch.ones(shape[:-1]))


def test_straight_through_gradient_and_losses():
    beta = 0.3
    vq = _quantizer(beta=beta)
    z = torch.randn(6, 4, 8, requires_grad=True)
    z_q, indices, loss = vq(z)
    # The decoder's gradient reaches the encoder unchanged, and not the codebook.
    g = torch.randn_like(z)
    (z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g, rtol=0, atol=0)
    assert vq.codebook.grad is None or torch.all(vq.codebook.grad == 0)
    # Eq. 3: codebook loss |sg[z] - e|^2 moves the codes; beta |z - sg[e]|^2 the encoder.
    z.grad = None
    vq.zero_grad()
    z_q, indices, loss = vq(z)
    loss.backward()
    e = vq.codebook.detach()[indices]
    numel = z.numel()
    torch.testing.assert_close(loss, ((z.detach() - e) ** 2).mean() * (1 + beta))
    torch.testing.assert_close(z.grad, beta * 2 * (z.detach() - e) / numel)
    want = torch.zeros_like(vq.codebook)
    want.index_add_(0, indices.reshape(-1), (2 * (e - z.detach()) / numel).reshape(-1, 8))
    torch.testing.assert_close(vq.codebook.grad, want)


def test_eval_mode_changes_nothing():
    vq = _quantizer(ema=True, dead_code_threshold=5.0)
    vq.eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(50, 8))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ema_updates_equal_one_hot_reference(metric):
    decay, eps, num_codes = 0.9, 1e-5, 16
    vq = _quantizer(num_codes=num_codes, ema=True, decay=decay, eps=eps, metric=metric, beta=0.5)
    assert not isinstance(vq.codebook, torch.nn.Parameter)
    counts_ref = torch.ones(num_codes, dtype=torch.float64)
    sums_ref = vq.codebook.double().clone()
    for step in range(3):
        z = torch.randn(200, 8, dtype=torch.float32) + step
        codes_before = vq.codes().clone()
        z_q, indices, loss = vq(z)
        target = F.normalize(z, dim=-1) if metric == "cosine" else z
        # The loss is the commitment term only.
        torch.testing.assert_close(loss, 0.5 * ((target - codes_before[indices]) ** 2).mean())
        one_hot = F.one_hot(indices, num_codes).double()  # N x K: fine for a reference
        counts_ref = decay * counts_ref + (1 - decay) * one_hot.sum(0)
        sums_ref = decay * sums_ref + (1 - decay) * one_hot.T @ target.double()
        n = counts_ref.sum()
        smoothed = (counts_ref + eps) / (n + num_codes * eps) * n
        torch.testing.assert_close(vq.ema_counts.double(), counts_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(vq.ema_sums.double(), sums_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vq.codebook.double(), sums_ref / smoothed[:, None], rtol=1e-5, atol=1e-5)


def test_code_statistics_is_one_pass_sum_and_count():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(100, 5, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 7, (100,), generator=g)
    sums, counts = code_statistics(v, idx, 9)
    one_hot = F.one_hot(idx, 9).double()
    torch.testing.assert_close(sums, one_hot.T @ v)
    torch.testing.assert_close(counts, one_hot.sum(0))
    assert counts[7:].sum() == 0


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_are_replaced_by_recent_inputs(ema):
    vq = _quantizer(num_codes=8, dim=4, ema=ema, dead_code_threshold=1.0, decay=0.9)
    with torch.no_grad():
        vq.codebook[3] = 100.0  # far from every input: never chosen
        if ema:
            vq.ema_sums[3] = 100.0
    live = torch.tensor([0, 1, 2, 4, 5, 6, 7])
    for _ in range(3):
        before = vq.codebook.detach().clone()
        z = before[live[torch.arange(63) % 7]] + 0.01 * torch.randn(63, 4)  # every code but 3 in use
        _, indices, _ = vq(z)
        if vq.replaced:
            break
    assert vq.replaced == 1 and 3 not in indices.tolist()
    new = vq.codebook.detach()[3]
    assert bool(((z - new).abs().max(dim=1).values == 0).any())  # one of the latest inputs
    assert vq.code_usage()[3] > 1.0  # with a grace period
    if not ema:  # the codes in use are left alone
        keep = torch.arange(8) != 3
        assert torch.equal(vq.codebook.detach()[keep], before[keep])
    # Now the replaced code takes part: it wins the input it was copied from.
    assert vq.nearest(new[None].clone())[0] == 3


def test_no_replacement_when_disabled_or_in_use():
    vq = _quantizer(num_codes=4, dim=2, dead_code_threshold=0.0)
    with torch.no_grad():
        vq.codebook[0] = 1e3
    before = vq.codebook.detach().clone()
    for _ in range(3):
        vq(torch.randn(30, 2))
    assert vq.replaced == 0
    assert torch.equal(vq.codebook.detach()[0], before[0])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_init_on_first_batch(metric, ema):
    torch.manual_seed(3)
    centers = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [-5.0, -5.0, 0]])
    z = (centers[torch.arange(400) % 4] + 0.1 * torch.randn(400, 3)).reshape(8, 50, 3)
    vq = VectorQuantizer(4, 3, kmeans_init=True, kmeans_iters=20, metric=metric, ema=ema)
    assert not bool(vq.initialized)
    vq.eval()
    vq(z)  # no initialisation outside training
    assert not bool(vq.initialized)
    vq.train()
    vq(z)
    assert bool(vq.initialized)
    want = F.normalize(centers, dim=-1) if metric == "cosine" else centers
    got = vq.codes().detach()
    # Each center has a code close to it (k-means found the clusters).
    nearest = torch.cdist(want, got).min(dim=1).values
    assert nearest.max() < 0.1, nearest
    first = vq.codebook.detach().clone()
    vq(z + 1.0)  # not initialised again (EMA may still move the codes a little)
    assert (vq.codebook.detach() - first).abs().max() < 0.5


def test_perplexity_and_usage():
    vq = _quantizer(num_codes=4, dim=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[10.0, 0], [0, 10.0], [-10.0, 0], [0, -10.0]]))
    vq.eval()
    vq(vq.codebook.detach().repeat(5, 1) + 0.01)
    torch.testing.assert_close(vq.perplexity, torch.tensor(4.0))
    assert vq.usage == 1.0
    vq(torch.tensor([[9.0, 1.0]]).repeat(7, 1))
    torch.testing.assert_close(vq.perplexity, torch.tensor(1.0))
    assert vq.usage == 0.25
    z = torch.tensor([[10.0, 0], [10.0, 0], [10.0, 0], [0, 10.0]])
    vq(z)
    p = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(vq.perplexity, torch.exp(-(p * p.log()).sum()))


def test_state_dict_round_trip():
    vq = _quantizer(ema=True, kmeans_init=True, dead_code_threshold=0.5)
    vq(torch.randn(40, 8))
    other = VectorQuantizer(16, 8, ema=True, kmeans_init=True, dead_code_threshold=0.5)
    other.load_state_dict(vq.state_dict())
    z = torch.randn(30, 8)
    vq.eval()
    other.eval()
    assert torch.equal(vq(z).indices, other(z).indices)
    assert bool(other.initialized)


def test_float64_inputs_with_float32_codebook():
    vq = _quantizer()
    z = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    z_q, indices, loss = vq(z)
    assert z_q.dtype == torch.float64
    loss.backward()
    assert z.grad is not None


def test_learns_to_cover_the_data():
    # A few steps of the codebook loss pull codes onto a small, clustered data set.
    torch.manual_seed(0)
    data = torch.randn(8, 4) * 3
    vq = VectorQuantizer(8, 4, kmeans_init=False, dead_code_threshold=0.5, decay=0.5)
    opt = torch.optim.Adam(vq.parameters(), lr=0.1)
    first = None
    for _ in range(150):
        z = data[torch.randint(8, (64,))] + 0.05 * torch.randn(64, 4)
        _, _, loss = vq(z)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: torch.randn(3, 5), ValueError, r"`z` must have shape \(B, \.\.\., 8\) \(channel-last\); got \(3, 5\)"),
        (lambda: torch.randn(8), ValueError, r"got \(8,\)"),
        (lambda: torch.zeros(3, 8, dtype=torch.int64), TypeError, r"`z` must be a floating-point tensor"),
    ],
)
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        _quantizer()(make())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_codes": 0}, r"`num_codes` must be a positive int; got 0"),
        ({"dim": 2.0}, r"`dim` must be a positive int; got 2.0"),
        ({"metric": "dot"}, r"`metric` must be one of \('l2', 'cosine'\); got 'dot'"),
        ({"decay": 1.0}, r"`decay` must be in \[0, 1\); got 1.0"),
        ({"beta": -1.0}, r"`beta` must be >= 0 and finite; got -1.0"),
        ({"dead_code_threshold": -1}, r"`dead_code_threshold` must be >= 0; got -1"),
        ({"kmeans_iters": -2}, r"`kmeans_iters` must be an int >= 0; got -2"),
    ],
)
def test_bad_options(kwargs, match):
    args = {"num_codes": 4, "dim": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(args.pop("num_codes"), args.pop("dim"), **args)


# ----------------------------------------------------------------------------- bad input and data parallel


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("config", [dict(kmeans_init=True), dict(ema=True), dict(dead_code_threshold=1.0)])
def test_non_finite_training_batch_is_refused_before_it_touches_the_codebook(value, config):
    vq = VectorQuantizer(4, 3, **config)
    if not config.get("kmeans_init"):
        vq(torch.randn(32, 3))
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    z = torch.randn(32, 3)
    z[7, 1] = value
    with pytest.raises(ValueError, match=r"VectorQuantizer: `z` must be finite in training .* got 1 NaN or infinite"):
        vq(z)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, state[k]), k
    vq(torch.randn(32, 3))  # a later good batch trains on
    assert vq.codebook.isfinite().all()


def test_non_finite_input_propagates_in_eval():
    vq = VectorQuantizer(4, 3, ema=True).eval()
    z = torch.randn(5, 3)
    z[2, 0] = math.nan
    z_q, indices, _ = vq(z)
    assert indices.shape == (5,) and vq.codebook.isfinite().all()
    torch.testing.assert_close(z_q[[0, 1, 3, 4]], vq.embed(indices[[0, 1, 3, 4]]))


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_init_on_huge_finite_inputs(ema):
    vq = VectorQuantizer(4, 3, kmeans_init=True, ema=ema)
    z = torch.randn(64, 3)
    z[:8] *= 1e38  # squared distances overflow float32
    vq(z)
    assert vq.codebook.isfinite().all()
    assert vq.codebook.abs().max() > 1e36  # a huge cluster got a code of its own


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_codebook_stays_in_sync_across_two_gloo_ranks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("_ddp_vq_worker.py")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))

    # k-means on both ranks' batches and all-reduced EMA statistics: one codebook, the one a
    # single process gets from the two batches together (rank 0's RNG draws the k-means++ seeds).
    assert torch.equal(r0["ema"], r1["ema"])
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ddp_vq_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    single = VectorQuantizer(8, 3, ema=True, kmeans_init=True, decay=0.9)
    for z0, z1 in zip(module.batches(0, 5), module.batches(1, 5)):
        single(torch.cat([z0, z1]))
    torch.testing.assert_close(r0["ema"], single.codebook, rtol=1e-5, atol=1e-5)

    # Dead-code replacement: the same codes replaced by the same rows on both ranks.
    assert r0["replaced"] > 0 and r0["replaced"] == r1["replaced"]
    assert torch.equal(r0["dead"], r1["dead"]) and torch.equal(r0["usage"], r1["usage"])

    # A NaN on rank 1 alone: both ranks refuse the batch (no rank left waiting), nothing changes.
    assert r0["refused"] and r1["refused"] and r0["unchanged"] and r1["unchanged"]
