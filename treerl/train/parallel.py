"""Data parallelism on torch.distributed: one process per device under torchrun, the policy wrapped in DDP or
FSDP2 (train.strategy). A single process (no torchrun) trains the plain model and every collective is a no-op."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from treerl.errors import UserError

T = TypeVar("T")
FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Whole tensors, gathered to rank 0's CPU memory (other ranks get an empty dict)."""


@dataclass
class Parallel:
    """This process's place in the run: rank, world size, strategy, and the collectives the trainer needs."""
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
        """This rank's share of a list that every rank holds in full: items rank, rank + world, ..."""
        return items[self.rank::self.world]

    def unshare(self, mine: list[T]) -> list[T]:
        """The inverse of share: every rank's results, back in the order of the full list."""
        parts = self.gather(mine)
        return [parts[i % self.world][i // self.world] for i in range(sum(len(part) for part in parts))]

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op: dist.ReduceOp) -> list[float]:
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
    """Join the process group when torchrun started this process (gloo on CPU, nccl on GPUs; each process takes
    the GPU of its LOCAL_RANK); otherwise a single process."""
    if not launched_by_torchrun():
        return Parallel(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU (torch sees {torch.cuda.device_count()}); start at "
                            "most one process per GPU with torchrun --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return Parallel(dist.get_rank(), dist.get_world_size(), strategy, device)


def close_parallel() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_policy(model: torch.nn.Module, par: Parallel) -> torch.nn.Module:
    """DDP, or FSDP2 with one shard group per decoder layer (the model's _no_split_modules) plus the root."""
    if par.strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[par.device.index] if par.device.type == "cuda" else None)
    if par.strategy == "fsdp2":
        layers = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module)
        fully_shard(model)
    return model


def unwrap(policy: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DDP wrapper (FSDP2 shards the model in place)."""
    return policy.module if isinstance(policy, DistributedDataParallel) else policy


@contextmanager
def sampling_model(policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model to generate with, free of collectives so that ranks may run different numbers of forward
    passes: FSDP2 gathers every layer's full parameters for the duration (as much memory as one unsharded copy)."""
    sharded = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield unwrap(policy)
    finally:
        for module in sharded:
            module.reshard()
            module.set_reshard_after_forward(True, recurse=False)


def gradient_sync(policy: torch.nn.Module, sync: bool):
    """Context for one forward/backward pass of an accumulated step: gradients are reduced across ranks only in
    the pass where sync is true (the last one)."""
    if isinstance(policy, DistributedDataParallel) and not sync:
        return policy.no_sync()
    if isinstance(policy, FSDPModule):
        policy.set_requires_gradient_sync(sync)
    return nullcontext()


def full_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state with whole tensors, on rank 0's CPU; keyed by parameter name, so that a run
    saved with N ranks resumes with M."""
    model = unwrap(policy)
    aliases = ({name for name, _ in model.named_parameters(remove_duplicate=False)}
               - {name for name, _ in model.named_parameters()})   # tied weights, e.g. lm_head = embed_tokens
    weights = {name: tensor for name, tensor in get_model_state_dict(policy, options=FULL_ON_RANK0).items()
               if name not in aliases}
    return weights, get_optimizer_state_dict(policy, optimizer, options=FULL_ON_RANK0)


def load_optimizer_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Every rank reads the full optimizer state; FSDP2 keeps its own shard of it."""
    set_optimizer_state_dict(policy, optimizer, state, options=StateDictOptions(full_state_dict=True))
