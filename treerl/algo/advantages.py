"""Advantage estimators, registered by name (algo.name): each is a function of a sampled, graded tree that gives
an advantage to the nodes it trains on, and declares the tree shape it samples.

A flat estimator (GRPO, Dr. GRPO, RLOO) samples a tree of depth 1, rollout.n full responses of one prompt, and
compares the root's children: their values are their rewards. A deep estimator (TreeRPO, algo/treerpo.py)
samples tree.depth levels and scores every sibling group. Adding one is a function here (or in its own module
imported by algo/__init__.py) and a row in docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from treerl.config import Config
from treerl.registry import Registry
from treerl.rollout.tree import Path, ReasoningTree


@dataclass(frozen=True)
class AdvantageParams:
    """The estimators' settings: algo.std_eps, tree.prune_tau and tree.norm (the last two TreeRPO's)."""
    eps: float = 1e-6
    prune_tau: float = 0.1
    norm: str = "bernoulli"

    @classmethod
    def from_config(cls, cfg: Config) -> AdvantageParams:
        return cls(cfg.algo.std_eps, cfg.tree.prune_tau, cfg.tree.norm)


AdvantageFn = Callable[[ReasoningTree, AdvantageParams], dict[Path, float]]
"""(backed-up tree, params) -> {node path: advantage} for every node to train on."""


@dataclass(frozen=True)
class Estimator:
    advantages: AdvantageFn
    deep: bool
    """True: samples tree.depth levels of tree.step_tokens; False: a depth-1 tree of rollout.n full responses."""


ESTIMATORS: Registry[Estimator] = Registry("algo.name")


def register_estimator(name: str, deep: bool = False) -> Callable[[AdvantageFn], AdvantageFn]:
    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ESTIMATORS[name] = Estimator(fn, deep)
        return fn
    return wrap


def root_rewards(tree: ReasoningTree) -> torch.Tensor:
    """The values of the root's children as a [1, n] group (their rewards, in a depth-1 tree)."""
    return torch.tensor([[child.value for child in tree.root.children]])


def per_child(advantages: torch.Tensor) -> dict[Path, float]:
    """A [1, n] group's advantages keyed by the paths of the root's children."""
    return {(i,): float(a) for i, a in enumerate(advantages[0])}


@register_estimator("grpo")
def grpo(tree: ReasoningTree, params: AdvantageParams) -> dict[Path, float]:
    """A_i = (r_i - mean r) / (std r + eps), std with Bessel's correction as in DeepSeekMath and TRL; a group of
    one has A = 0."""
    rewards = root_rewards(tree)
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return per_child((rewards - mean) / (std + params.eps))


@register_estimator("dr_grpo")
def dr_grpo(tree: ReasoningTree, params: AdvantageParams) -> dict[Path, float]:
    """A_i = r_i - mean r: Dr. GRPO drops the std division that favours too easy and too hard prompts."""
    rewards = root_rewards(tree)
    return per_child(rewards - rewards.mean(-1, keepdim=True))


@register_estimator("rloo")
def rloo(tree: ReasoningTree, params: AdvantageParams) -> dict[Path, float]:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): A_i = r_i - mean_{j != i} r_j = n / (n - 1) (r_i - mean r).
    A group of one has no baseline: A = r, as in verl."""
    rewards = root_rewards(tree)
    n = rewards.shape[-1]
    if n == 1:
        return per_child(rewards)
    return per_child((rewards - rewards.mean(-1, keepdim=True)) * (n / (n - 1)))
