"""Advantage estimators (registered by name: grpo, dr_grpo, rloo, treerpo) and the policy loss, its aggregation
and KL estimators (registries in loss.py)."""

from treerl.algo import advantages, loss, treerpo
from treerl.algo.advantages import ESTIMATORS, AdvantageParams, Estimator

__all__ = ["ESTIMATORS", "AdvantageParams", "Estimator", "advantages", "loss", "treerpo"]
