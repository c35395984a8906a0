"""Advantage estimators, registered by name: each maps group rewards [G, n] to advantages [G, n].

A group is the set of samples that share a context: the n completions of one prompt for GRPO,
the siblings of one tree node for TreeRPO.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from treerl.errors import UserError
from treerl.registry import Registry
from treerl.rollout.tree import Path, ReasoningTree

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


def tree_advantages(name: str, tree: ReasoningTree, eps: float = 1e-6, prune_tau: float = 0.1,
                    norm: str = "bernoulli") -> dict[Path, float]:
    """{path: advantage} of a backed-up tree: `treerpo` scores every sibling group; a group estimator
    (grpo, dr_grpo, ...) scores the root's children, so GRPO is TreeRPO's depth-1 case."""
    from treerl.algo.treerpo import treerpo_advantages

    if name == "treerpo":
        return treerpo_advantages(tree, prune_tau, norm, eps)
    if name not in ADVANTAGES:
        raise UserError(f"unknown algo.name '{name}'; available: {', '.join(sorted([*ADVANTAGES, 'treerpo']))}")
    values = torch.tensor([[child.value for child in tree.root.children]])
    return {(i,): float(a) for i, a in enumerate(compute_advantages(name, values, eps)[0])}
