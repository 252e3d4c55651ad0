"""Who this process is under `torchrun` (or alone), and its share of each epoch.

DistributedDataParallel: gloo on the CPU, NCCL on GPUs. Rank 0 alone validates and
writes; the ranks agree on numbers (when to stop) through `broadcast_floats`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


class Dist:
    """Who we are under torchrun (or a single process when WORLD_SIZE is unset)."""

    def __init__(self, device_arg: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg == "cuda" and self.world > 1:
            device_arg = f"cuda:{local}"
        self.device = torch.device(device_arg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, src=0)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's shuffled share of the training set (equal length on every rank)."""
    perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
    per_rank = max(1, n // world)
    return perm[rank::world][:per_rank].tolist()
