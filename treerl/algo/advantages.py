"""Advantage estimators, registered by name (algo.name): each is a function of a step's sampled,
graded trees and its own parameters (algo.params) that gives an advantage to the nodes it trains on,
and declares the tree shape it samples.

A flat estimator (GRPO, Dr. GRPO, RLOO, REINFORCE++) samples trees of depth 1, rollout.n full
responses of one prompt each, and compares the root's children: their values are their rewards. A
deep estimator (TreeRPO, algo/treerpo.py) samples tree.depth levels and scores every sibling group.
An estimator sees the whole step, so one that normalises over the batch (REINFORCE++) is a function
like the others; one that looks at each tree alone is registered with `per_tree=True` and written
for one tree.

Adding one is a function here (or in its own module imported by algo/__init__.py), its hand-worked
test and its row in docs/methods.md: its keyword parameters are its algo.params, their defaults its
defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from treerl.registry import Registry, check_params, param_defaults
from treerl.rollout.tree import Path, ReasoningTree

Advantages = dict[Path, float]
"""{node path: advantage} for every node of one tree to train on."""
StepEstimator = Callable[..., list[Advantages]]
"""(the step's graded trees, **params) -> the advantages of each tree, in order."""


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: StepEstimator
    deep: bool
    """True: samples tree.depth levels of tree.step_tokens; False: depth-1 trees of rollout.n full
    responses."""

    def check(self, params: Mapping[str, Any]) -> None:
        """A UserError naming algo.params when `params` has a key the estimator does not take."""
        check_params("algo.params", f"estimator '{self.name}'", self.fn, params, fixed=1)

    def params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The estimator's parameters: its defaults, overridden by those `given` (algo.params)."""
        self.check(given)
        return {**param_defaults(self.fn, fixed=1), **given}

    def advantages(self, trees: list[ReasoningTree], params: Mapping[str, Any]) -> list[Advantages]:
        self.check(params)
        return self.fn(trees, **params)


ESTIMATORS: Registry[Estimator] = Registry("algo.name")


def register_estimator(
    name: str, deep: bool = False, per_tree: bool = False
) -> Callable[[Callable], Callable]:
    """Register a step estimator `(trees, **params) -> [advantages]` under algo.name=name; with
    per_tree=True, a function `(tree, **params) -> advantages` of one tree, applied to each
    (it is returned unchanged)."""

    def wrap(fn: Callable) -> Callable:
        ESTIMATORS.add(name, Estimator(name, each_tree(fn) if per_tree else fn, deep))
        return fn

    return wrap


def each_tree(fn: Callable[..., Advantages]) -> StepEstimator:
    """A step estimator that applies a one-tree estimator to every tree (its signature is fn's, for
    the check)."""

    @functools.wraps(fn)
    def step(trees: list[ReasoningTree], **params: Any) -> list[Advantages]:
        return [fn(tree, **params) for tree in trees]

    return step


def root_rewards(tree: ReasoningTree) -> torch.Tensor:
    """The values of the root's children as a [1, n] group (their rewards, in a depth-1 tree)."""
    return torch.tensor([[child.value for child in tree.root.children]])


def per_child(advantages: torch.Tensor) -> Advantages:
    """A [1, n] group's advantages keyed by the paths of the root's children."""
    return {(i,): float(a) for i, a in enumerate(advantages[0])}


def std_or_zero(values: torch.Tensor) -> torch.Tensor:
    """[1, n] -> [1, 1]: the standard deviation with Bessel's correction (as TRL and verl); 0 for
    one value."""
    return (
        values.std(-1, keepdim=True) if values.shape[-1] > 1 else torch.zeros_like(values[..., :1])
    )


@register_estimator("grpo", per_tree=True)
def grpo(tree: ReasoningTree, eps: float = 1e-6) -> Advantages:
    """A_i = (r_i - mean r) / (std r + eps), std with Bessel's correction as in DeepSeekMath and
    TRL; a group of one has A = 0."""
    rewards = root_rewards(tree)
    return per_child((rewards - rewards.mean(-1, keepdim=True)) / (std_or_zero(rewards) + eps))


@register_estimator("dr_grpo", per_tree=True)
def dr_grpo(tree: ReasoningTree) -> Advantages:
    """A_i = r_i - mean r: Dr. GRPO drops the std division that favours too easy and too hard
    prompts."""
    rewards = root_rewards(tree)
    return per_child(rewards - rewards.mean(-1, keepdim=True))


@register_estimator("rloo", per_tree=True)
def rloo(tree: ReasoningTree) -> Advantages:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): A_i = r_i - mean_{j != i} r_j = n / (n - 1)
    (r_i - mean r). A group of one has no baseline: A = r, as in verl."""
    rewards = root_rewards(tree)
    n = rewards.shape[-1]
    if n == 1:
        return per_child(rewards)
    return per_child((rewards - rewards.mean(-1, keepdim=True)) * (n / (n - 1)))


def batch_normalised(groups: list[torch.Tensor], eps: float) -> list[Advantages]:
    """[1, n_q] per prompt -> (x - mean_B x) / (std_B x + eps), mean and std (Bessel) over every
    response of the step together."""
    flat = torch.cat(groups, dim=-1)
    mean, std = flat.mean(-1, keepdim=True), std_or_zero(flat)
    return [per_child((group - mean) / (std + eps)) for group in groups]


@register_estimator("reinforce_pp")
def reinforce_pp(trees: list[ReasoningTree], eps: float = 1e-6) -> list[Advantages]:
    """REINFORCE++ (Hu et al., 2025, arXiv 2501.03262): A_i = (r_i - mean_B r) / (std_B r + eps)
    over the B responses of the whole step, not of one prompt (the KL stays in the loss,
    algo.kl_coef, not in the reward). As in the paper, and unlike verl's token-weighted whitening,
    each response counts once."""
    return batch_normalised([root_rewards(tree) for tree in trees], eps)


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(trees: list[ReasoningTree], eps: float = 1e-6) -> list[Advantages]:
    """REINFORCE++-baseline (same paper, for reasoning with several responses per prompt): first
    a_i = r_i - mean of its prompt's group, then a_i normalised over the step:
    (a_i - mean_B a) / (std_B a + eps)."""
    groups = [root_rewards(tree) for tree in trees]
    return batch_normalised([g - g.mean(-1, keepdim=True) for g in groups], eps)
