"""Advantage estimators and losses."""

from treerl.algo.treerpo import treerpo_advantages

__all__ = ["treerpo_advantages"]
