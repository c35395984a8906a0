"""TreeRPO's step-level advantages (arXiv 2506.05183): group-relative among siblings of a reasoning tree.

Each inner node's children form a group, compared by their values (a leaf's reward, an inner node's
subtree mean). A group whose values spread less than `prune_tau` (max - min) teaches nothing and is
dropped. Within a kept group A = (v - mu) / d, where d is, by `norm`:
- `bernoulli`: mu (1 - mu) + eps, the Bernoulli variance, as the paper's code does (at mu = 0.5, A = +-2);
- `std`: the population standard deviation of the group's values + eps;
- `none`: 1 (A = v - mu).
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


@register_estimator("treerpo", deep=True, per_tree=True)
def treerpo_advantages(tree: ReasoningTree, prune_tau: float = 0.1, norm: str = "bernoulli",
                       eps: float = 1e-6) -> dict[Path, float]:
    """{path: advantage} for every node in a kept sibling group; the tree's values must be backed up. The
    parameters are algo.params.prune_tau, .norm and .eps."""
    divisor = NORMS.lookup(norm)
    advantages: dict[Path, float] = {}
    for path, node in tree.walk():
        if node.is_leaf:
            continue
        values = [child.value for child in node.children]
        if max(values) - min(values) < prune_tau:
            continue
        mu = sum(values) / len(values)
        d = divisor(values, mu, eps)
        for i, value in enumerate(values):
            advantages[path + (i,)] = (value - mu) / d
    return advantages



def prune_tau(algo: AlgoConfig) -> float:
    """The prune_tau TreeRPO has under this config (shown by the tree viewer): algo.params.prune_tau when
    algo.name=treerpo, else its default."""
    return ESTIMATORS.lookup("treerpo").params(algo.params if algo.name == "treerpo" else {})["prune_tau"]
