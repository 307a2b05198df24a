"""VectorQuantize(sync_codebook=True) across 2 real processes (gloo), against vector-quantize-pytorch itself.

Each rank runs the adapter and the library side by side from the same initial
codebook, on its own batches, for a few training steps (EMA codebook update
and a backward pass). The library all-reduces (sums) the per-code counts and
the per-code sums of the assigned vectors before its EMA update, so after each
step:

1. both ranks hold the same codebook (exactly: both add the same two numbers);
2. the adapter's codebook is the library's, within float32 rounding (the sums
   are accumulated by index here and through a one-hot matmul there);
3. it is the codebook of one process fed the two ranks' batches concatenated:
   the summed statistics are the statistics of the concatenated batch.

This file is also the worker: ``python test_vector_quantize_pytorch_ddp.py RANK OUT_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

vqp = pytest.importorskip("vector_quantize_pytorch")
from pyprobtf.integrations.vector_quantize_pytorch import VectorQuantize  # noqa: E402

WORLD_SIZE = 2
STEPS = 5
OPTIONS = dict(dim=8, codebook_size=32, decay=0.8, commitment_weight=1.0)
# float32: the EMA statistics are sums of up to 48 products, added in another order than the library's.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def batch(rank: int, step: int) -> torch.Tensor:
    """Rank ``rank``'s input at ``step``: (2, 24, 8), a different distribution per rank."""
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(2, 24, OPTIONS["dim"], generator=gen) * (1 + rank) + rank


def make_pair(**options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(library, adapter) with the same initial codebook, the same on every rank (same seed)."""
    torch.manual_seed(0)
    peer = vqp.VectorQuantize(**OPTIONS, **options)
    ours = VectorQuantize(**OPTIONS, **options)
    ours.load_state_dict(peer.state_dict())
    return peer, ours


def train_step(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    quantized, indices, commit_loss = module(x)
    (quantized.square().mean() + commit_loss.sum()).backward()
    return indices


def codebook_state(module) -> dict:
    cb = module._codebook
    return {"embed": cb.embed.detach().clone(), "cluster_size": cb.cluster_size.clone(),
            "embed_avg": cb.embed_avg.clone()}


def worker(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    peer, ours = make_pair(sync_codebook=True)
    results = {"initial": codebook_state(ours)["embed"], "peer": [], "ours": [], "peer indices": [],
               "ours indices": []}
    for step in range(STEPS):
        results["peer indices"].append(train_step(peer, batch(rank, step)))
        results["ours indices"].append(train_step(ours, batch(rank, step)))
        results["peer"].append(codebook_state(peer))
        results["ours"].append(codebook_state(ours))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out_dir = tmp_path_factory.mktemp("vqp_ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(out_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD_SIZE)]
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, out
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_both_ranks_hold_the_same_codebook(ranks):
    r0, r1 = ranks
    assert torch.equal(r0["initial"], r1["initial"])
    for step in range(STEPS):
        # Different batches: different codes chosen, yet one codebook.
        assert not torch.equal(r0["ours indices"][step], r1["ours indices"][step])
        for who in ("ours", "peer"):
            for key, value in r0[who][step].items():
                assert torch.equal(value, r1[who][step][key]), (who, step, key)
    assert not torch.equal(r0["ours"][-1]["embed"], r0["initial"])  # the codebook did move


def test_matches_the_library_under_the_same_two_ranks(ranks):
    worst = 0.0
    for rank, r in enumerate(ranks):
        for step in range(STEPS):
            torch.testing.assert_close(r["ours indices"][step], r["peer indices"][step], rtol=0, atol=0)
            for key, value in r["ours"][step].items():
                torch.testing.assert_close(value, r["peer"][step][key], **TOLERANCE)
            worst = max(worst, _max_error(r["ours"][step]["embed"], r["peer"][step]["embed"]))
    print(f"worst |adapter - library| codebook entry over {STEPS} steps and both ranks: {worst:.3g}")


def test_equals_one_process_fed_the_concatenated_batch(ranks):
    peer, ours = make_pair(sync_codebook=False)
    worst = {"ours": 0.0, "peer": 0.0}
    for step in range(STEPS):
        x = torch.cat([batch(rank, step) for rank in range(WORLD_SIZE)])
        indices = {"peer": train_step(peer, x), "ours": train_step(ours, x)}
        for who, module in (("ours", ours), ("peer", peer)):
            split = indices[who].chunk(WORLD_SIZE)
            for rank, r in enumerate(ranks):
                torch.testing.assert_close(split[rank], r[f"{who} indices"][step], rtol=0, atol=0)
            for key, value in codebook_state(module).items():
                torch.testing.assert_close(ranks[0][who][step][key], value, **TOLERANCE)
            worst[who] = max(worst[who], _max_error(ranks[0][who][step]["embed"], module._codebook.embed))
    print(f"worst |2 ranks - 1 process| codebook entry: adapter {worst['ours']:.3g}, library {worst['peer']:.3g}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
