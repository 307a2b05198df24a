"""Run by tests/test_vector_quantizer.py as 2 processes (gloo): one VectorQuantizer per rank, different data.

Writes each rank's results to ``<out_dir>/rank<r>.pt``: the codebooks after
k-means initialisation and EMA steps (no dead codes), after steps with dead-code
replacement, and whether a non-finite batch on rank 1 alone was refused on both.
"""

import os
import sys

import torch
import torch.distributed as dist

from pyprobtf.nn import VectorQuantizer


def batches(rank: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(48 + 16 * rank, 3, generator=gen) * (1 + rank) for _ in range(steps)]


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}

    torch.manual_seed(0)  # rank 0's k-means++ draws decide; the other rank's RNG differs
    if rank:
        torch.manual_seed(123)
    vq = VectorQuantizer(8, 3, ema=True, kmeans_init=True, decay=0.9)
    for z in batches(rank, 5):
        vq(z)
    results["ema"] = vq.codebook.clone()

    torch.manual_seed(rank)  # the ranks pick different rows: rank 0's picks must win
    vq = VectorQuantizer(16, 3, ema=True, kmeans_init=False, dead_code_threshold=2.0, decay=0.5)
    replaced = 0
    for z in batches(rank, 6):
        vq(z)
        replaced += vq.replaced
    results["dead"] = vq.codebook.clone()
    results["usage"] = vq.usage_ema.clone()
    results["replaced"] = replaced

    z = batches(rank, 1)[0]
    if rank == 1:
        z[2, 1] = float("nan")
    before = vq.codebook.clone()
    try:
        vq(z)
        results["refused"] = False
    except ValueError as exc:
        results["refused"] = "must be finite" in str(exc)
    results["unchanged"] = torch.equal(before, vq.codebook)

    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
