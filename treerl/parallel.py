"""This process's place in a torchrun job and the collectives the loop and evaluation need, on
torch.distributed. A single process (no torchrun) is rank 0 of 1 and every collective is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from treerl.errors import UserError

T = TypeVar("T")


@dataclass
class Parallel:
    """This process's place in the run: rank, world size, strategy, and the
    collectives the trainer needs."""

    rank: int = 0
    world: int = 1
    strategy: str = "none"
    """'none' (one process), 'ddp' or 'fsdp2'."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def share(self, items: list[T]) -> list[T]:
        """This rank's share of a list that every rank holds in full: items
        rank, rank + world, ..."""
        return items[self.rank :: self.world]

    def unshare(self, mine: list[T]) -> list[T]:
        """The inverse of share: every rank's results, back in the order of the full list."""
        parts = self.gather(mine)
        return [
            parts[i % self.world][i // self.world] for i in range(sum(len(part) for part in parts))
        ]

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def gather(self, obj: T) -> list[T]:
        """Every rank's obj, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's obj on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_parallel(strategy: str, device: torch.device) -> Parallel:
    """Join the process group when torchrun started this process (gloo on CPU, nccl on GPUs; each
    process takes the GPU of its LOCAL_RANK); otherwise a single process."""
    if not launched_by_torchrun():
        return Parallel(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU (torch sees {torch.cuda.device_count()}); "
                "start at most one process per GPU with torchrun --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return Parallel(dist.get_rank(), dist.get_world_size(), strategy, device)


def close_parallel() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
