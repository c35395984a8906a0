"""Advantage estimators, registered by name: each maps group rewards [G, n] to advantages [G, n].

A group is the set of samples that share a context: the n completions of one prompt for GRPO,
the siblings of one tree node for TreeRPO.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from treerl.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator algo.name")
register_advantage = ADVANTAGES.register


def compute_advantages(name: str, rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return ADVANTAGES.lookup(name)(rewards, eps=eps)


@register_advantage("grpo")
def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps), std with Bessel's correction as in DeepSeekMath and TRL."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


@register_advantage("dr_grpo")
def dr_grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """r - group mean: Dr. GRPO drops the std division that favours too easy and too hard prompts."""
    return rewards - rewards.mean(-1, keepdim=True)
