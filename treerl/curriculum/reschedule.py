"""Re-Schedule's loss weights (arXiv 2510.24832): from simple to complex queries over the run.

A query's score (its r-score, or for the path-based baseline its pass rate) becomes a rank in
[0, 1]: 0 for the highest score (the simplest query), 1 for the lowest, ties sharing their mean
position. At step t of T, with gamma(t) = t / T (`linear`) or sigmoid(10 (t / T - 0.5)) (`sigmoid`),

    w(q, t) = w_min + (w_max - w_min) ((1 - gamma(t)) (1 - rank_q) + gamma(t) rank_q),

so simple queries weigh most at the start and complex ones at the end. The paper's formula, read
literally, switches every weight at once at T/2; this smooth form moves them gradually
(docs/methods.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from treerl.registry import Registry

MEDIAN_RANK = 0.5
"""The rank of a query that has no score yet."""


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank in [0, 1] per query: 0 for the highest score, 1 for the lowest, ties averaged; one query
    ranks 0.5."""
    if len(scores) < 2:
        return {key: MEDIAN_RANK for key in scores}
    ordered = sorted(scores, key=lambda key: -scores[key])
    out: dict[str, float] = {}
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and scores[ordered[end + 1]] == scores[ordered[start]]:
            end += 1
        for key in ordered[start : end + 1]:
            out[key] = (start + end) / 2 / (len(ordered) - 1)
        start = end + 1
    return out


MIXES: Registry[Callable[[float], float]] = Registry("reschedule.mix")
"""gamma as a function of the run's progress t / T."""
MIXES.add("linear", lambda progress: progress)
MIXES.add("sigmoid", lambda progress: 1.0 / (1.0 + math.exp(-10.0 * (progress - 0.5))))


def time_mix(mix: str, step: int, total_steps: int) -> float:
    """gamma(t): how far the weights have moved from favouring simple queries to favouring complex
    ones, from the progress min(t / T, 1) (past T, as at T)."""
    return MIXES.lookup(mix)(min(1.0, step / total_steps) if total_steps else 1.0)


def loss_weight(
    rank: float,
    step: int,
    total_steps: int,
    mix: str = "sigmoid",
    w_min: float = 0.5,
    w_max: float = 2.0,
) -> float:
    gamma = time_mix(mix, step, total_steps)
    return w_min + (w_max - w_min) * ((1.0 - gamma) * (1.0 - rank) + gamma * rank)


class ScoreBook:
    """Scores per problem id and their ranks, recomputed when a score changes; saved in
    checkpoints."""

    def __init__(self, scores: dict[str, float] | None = None):
        self.scores: dict[str, float] = dict(scores or {})
        self._ranks: dict[str, float] | None = None

    def update(self, problem_id: str, score: float) -> None:
        self.scores[problem_id] = score
        self._ranks = None

    def rank(self, problem_id: str) -> float:
        if self._ranks is None:
            self._ranks = ranks(self.scores)
        return self._ranks.get(problem_id, MEDIAN_RANK)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = dict(state["scores"])
        self._ranks = None
