"""Run by tests/test_fit.py under torchrun (2 processes, gloo): fit two families and save each rank's weights.

Each rank builds its models from a different seed, so equal final weights show
that DistributedDataParallel broadcast rank 0's initial state (including the
data-dependent ActNorm and sigma_data initialisation) and kept the ranks in step.
"""

import sys

import torch
import torch.distributed as dist

import pyprobtf
from pyprobtf.data import toy
from pyprobtf.families import Diffusion, RealNVP


def main(out_dir: str) -> None:
    rank = int(__import__("os").environ["RANK"])
    torch.manual_seed(100 + rank)
    data = toy("moons", 2000, seed=rank)  # each process may even hold different data
    models = {"realnvp": RealNVP(dim=2, layers=4, hidden=(32, 32)),
              "diffusion": Diffusion(dim=2, hidden=(32, 32))}
    results = {}
    for name, model in models.items():
        result = pyprobtf.fit(model, data, steps=25, batch_size=64, device="cpu", progress=False, seed=3)
        results[name] = {"state": model.state_dict(), "steps": result.steps, "history": result.history}
    results["world_size"] = dist.get_world_size()
    results["rank"] = dist.get_rank()
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
