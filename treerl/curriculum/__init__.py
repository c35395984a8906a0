"""Curricula: E2H level schedules (which levels a step samples) and Re-Schedule (how much each query
counts)."""

from treerl.curriculum.levels import level_probs
from treerl.curriculum.reschedule import loss_weight, ranks
from treerl.curriculum.rscore import r_score

__all__ = ["level_probs", "loss_weight", "r_score", "ranks"]
