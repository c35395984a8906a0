"""The policy under data parallelism: wrapped in DDP or FSDP2 (train.strategy), gathered for
sampling, its gradients synchronised once per accumulated step, and its whole state
gathered for a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from treerl.parallel import Parallel

FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Whole tensors, gathered to rank 0's CPU memory (other ranks get an empty dict)."""
TRAINED_ON_RANK0 = StateDictOptions(
    full_state_dict=True, cpu_offload=True, ignore_frozen_params=True
)
"""The same for the parameters that train (under LoRA, the adapters)."""


def wrap_policy(model: torch.nn.Module, par: Parallel) -> torch.nn.Module:
    """DDP, or FSDP2 with one shard group per decoder layer (the model's
    _no_split_modules) plus the root."""
    if par.strategy == "ddp":
        return DistributedDataParallel(
            model, device_ids=[par.device.index] if par.device.type == "cuda" else None
        )
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
    """The model to generate with, free of collectives so that ranks may run different numbers of
    forward passes: FSDP2 gathers every layer's full parameters for the duration (as much memory as
    one unsharded copy)."""
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
    """Context for one forward/backward pass of an accumulated step: gradients are reduced across
    ranks only in the pass where sync is true (the last one)."""
    if isinstance(policy, DistributedDataParallel) and not sync:
        return policy.no_sync()
    if isinstance(policy, FSDPModule):
        policy.set_requires_gradient_sync(sync)
    return nullcontext()


def full_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state with whole tensors, on rank 0's CPU, of the parameters that train
    (and the buffers); keyed by parameter name, so that a run saved with N ranks resumes with M."""
    model = unwrap(policy)
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }  # tied weights, e.g. lm_head = embed_tokens
    weights = {
        name: tensor
        for name, tensor in get_model_state_dict(policy, options=TRAINED_ON_RANK0).items()
        if name not in aliases
    }
    return weights, get_optimizer_state_dict(policy, optimizer, options=FULL_ON_RANK0)


def load_optimizer_state(
    policy: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Every rank reads the full optimizer state; FSDP2 keeps its own shard of it."""
    set_optimizer_state_dict(
        policy, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
