"""TreeRPO's step-level advantages (arXiv 2506.05183): group-relative among siblings of a reasoning
tree.

Each inner node's children form a group, compared by their values (a leaf's reward, an inner node's
subtree mean). A group whose values spread less than `prune_tau` (max - min) teaches nothing and is
dropped. Within a kept group A = (v - mu) / d, where d is, by `norm`:
- `bernoulli`: mu (1 - mu) + eps, the Bernoulli variance, as the paper's code does
  (at mu = 0.5, A = +-2);
- `std`: the population standard deviation of the group's values + eps;
- `none`: 1 (A = v - mu), the mean difference other TreeRPO implementations use.

Then, by `weighting`, every advantage of a tree is divided by w:
- `none`: w = 1 (the paper's code): a tree with many kept groups weighs more in the loss than one
  with few;
- `groups`: w = the tree's number of kept groups whose values differ, so that every prompt weighs
  about as much as in GRPO, whose tree has one group.
Pruning comes first, so w counts the groups that carry advantages, whatever the norm; a group of
equal values (kept only with prune_tau = 0, its advantages 0) is not counted. One tree is one draw
of a prompt: a prompt drawn twice in a step has two trees, weighed apart, as GRPO gives it two
groups.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from treerl.algo.advantages import ESTIMATORS, register_estimator
from treerl.config import AlgoConfig
from treerl.registry import Registry
from treerl.rollout.tree import Path, ReasoningTree

NORMS: Registry[Callable[[list[float], float, float], float]] = Registry("algo.params.norm")
"""norm name -> the divisor d of a group, from its values, mean and eps."""
NORMS.add("bernoulli", lambda values, mu, eps: mu * (1.0 - mu) + eps)
NORMS.add("std", lambda values, mu, eps: statistics.pstdev(values) + eps)
NORMS.add("none", lambda values, mu, eps: 1.0)
WEIGHTINGS: Registry[Callable[[int], float]] = Registry("algo.params.weighting")
"""weighting name -> the divisor w of a tree's advantages, from its number of kept groups whose
values differ."""
WEIGHTINGS.add("none", lambda groups: 1.0)
WEIGHTINGS.add("groups", lambda groups: float(max(groups, 1)))


@register_estimator("treerpo", deep=True, per_tree=True)
def treerpo_advantages(
    tree: ReasoningTree,
    prune_tau: float = 0.1,
    norm: str = "bernoulli",
    eps: float = 1e-6,
    weighting: str = "none",
) -> dict[Path, float]:
    """{path: advantage} for every node in a kept sibling group; the tree's values must be backed
    up. The parameters are algo.params.prune_tau, .norm, .eps and .weighting."""
    divisor, weight = NORMS.lookup(norm), WEIGHTINGS.lookup(weighting)
    advantages: dict[Path, float] = {}
    differing = 0
    for path, node in tree.walk():
        if node.is_leaf:
            continue
        values = [child.value for child in node.children]
        spread = max(values) - min(values)
        if spread < prune_tau:
            continue
        differing += spread > 0
        mu = sum(values) / len(values)
        d = divisor(values, mu, eps)
        for i, value in enumerate(values):
            advantages[path + (i,)] = (value - mu) / d
    w = weight(differing)
    return {path: a / w for path, a in advantages.items()}


def prune_tau(algo: AlgoConfig) -> float:
    """The prune_tau TreeRPO has under this config (shown by the tree viewer): algo.params.prune_tau
    when algo.name=treerpo, else its default."""
    return ESTIMATORS.lookup("treerpo").params(algo.params if algo.name == "treerpo" else {})[
        "prune_tau"
    ]
