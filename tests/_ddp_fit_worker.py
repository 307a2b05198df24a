"""Run by tests/test_fit.py under torchrun (2 processes, gloo): fit two families on tensors, one on a Dataset
(fit shards it) and one on a DataLoader with a DistributedSampler (taken as given), and save each rank's weights.

Each rank builds its models from a different seed, so equal final weights show
that DistributedDataParallel broadcast rank 0's initial state (including the
data-dependent ActNorm and sigma_data initialisation) and kept the ranks in step.
"""

import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import pyprobtf
from pyprobtf.data import toy
from pyprobtf.families import Diffusion, RealNVP


class Recording(Dataset):
    """A dataset that records which items this process read."""

    def __init__(self, x):
        self.x, self.read = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i]


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
    shared = toy("moons", 512, seed=7)  # the same dataset on every process: fit shards it
    dataset = Recording(shared)
    torch.manual_seed(100 + rank)
    model = RealNVP(dim=2, layers=2, hidden=(16,))
    result = pyprobtf.fit(model, dataset, steps=4, batch_size=32, accumulate=2, ema=0.9, device="cpu",
                          progress=False, seed=3)
    results["dataset"] = {"state": model.state_dict(), "steps": result.steps, "history": result.history,
                          "read": dataset.read}
    sampler = DistributedSampler(TensorDataset(shared), shuffle=True, seed=5)
    loader = DataLoader(TensorDataset(shared), batch_size=32, sampler=sampler)
    torch.manual_seed(100 + rank)
    model = RealNVP(dim=2, layers=2, hidden=(16,))
    result = pyprobtf.fit(model, loader, steps=10, device="cpu", progress=False, seed=3)  # 8 batches a pass
    results["dataloader"] = {"state": model.state_dict(), "steps": result.steps, "history": result.history,
                             "epoch": sampler.epoch}
    results["world_size"] = dist.get_world_size()
    results["rank"] = dist.get_rank()
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
