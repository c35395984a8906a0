"""Advantage estimators (registered by name: grpo, dr_grpo, rloo, reinforce_pp,
reinforce_pp_baseline, treerpo) and the policy loss, its aggregation and KL estimators
(registries in loss.py)."""

from treerl.algo import advantages, loss, treerpo
from treerl.algo.advantages import ESTIMATORS, Estimator

__all__ = ["ESTIMATORS", "Estimator", "advantages", "loss", "treerpo"]
