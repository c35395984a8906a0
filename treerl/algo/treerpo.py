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

from treerl.algo.advantages import AdvantageParams, register_estimator
from treerl.registry import Registry
from treerl.rollout.tree import Path, ReasoningTree

NORMS: Registry = Registry("tree.norm")
"""norm name -> the divisor d of a group, from its values, mean and eps."""
NORMS["bernoulli"] = lambda values, mu, eps: mu * (1.0 - mu) + eps
NORMS["std"] = lambda values, mu, eps: statistics.pstdev(values) + eps
NORMS["none"] = lambda values, mu, eps: 1.0


def treerpo_advantages(tree: ReasoningTree, prune_tau: float = 0.1, norm: str = "bernoulli",
                       eps: float = 1e-6) -> dict[Path, float]:
    """{path: advantage} for every node in a kept sibling group; the tree's values must be backed up."""
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


@register_estimator("treerpo", deep=True)
def treerpo(tree: ReasoningTree, params: AdvantageParams) -> dict[Path, float]:
    """TreeRPO's step-level advantages with tree.prune_tau, tree.norm and algo.std_eps."""
    return treerpo_advantages(tree, params.prune_tau, params.norm, params.eps)
