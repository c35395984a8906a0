"""Query scores for Re-Schedule, registered by reschedule.rank_by: what a query's reasoning tree says about it
(its r-score, or its pass rate for the ACC baseline), and the `treerl score` file that holds them per query."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerl.config import RScoreConfig
from treerl.curriculum.reschedule import ranks
from treerl.curriculum.rscore import leaf_accuracy, r_score, r_score_pruning
from treerl.errors import UserError
from treerl.registry import Registry
from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Problem


@dataclass(frozen=True)
class Ranking:
    score: Callable[[ReasoningTree, RScoreConfig], float]
    """A graded tree's score: higher = a simpler query."""
    field: str
    """The score's field in a `treerl score` file."""


RANKINGS: Registry[Ranking] = Registry("reschedule.rank_by")
RANKINGS["rscore"] = Ranking(lambda tree, r: r_score(tree, r.top_m, r.eligible, r.child), "r_score")
RANKINGS["rscore_prune"] = Ranking(lambda tree, r: r_score_pruning(tree, r.top_m, r.eligible), "r_score_prune")
RANKINGS["acc"] = Ranking(lambda tree, r: leaf_accuracy(tree), "leaf_acc")
OFF = "off"
"""reschedule.rank_by for no ranking: every query weighs 1."""


def ranking_of(rank_by: str) -> Ranking | None:
    """The ranking reschedule.rank_by names; None when it is off."""
    return None if rank_by == OFF else RANKINGS.lookup(rank_by)


def score_row(tree: ReasoningTree, problem: Problem, rscore: RScoreConfig) -> dict[str, Any]:
    """A graded tree as one row of a score file: every ranking's score and the tree's size."""
    return {"id": problem.id, "level": problem.level,
            **{ranking.field: ranking.score(tree, rscore) for ranking in RANKINGS.values()},
            "leaves": len(tree.leaves()), "nodes": sum(1 for path, _ in tree.walk() if path), "depth": tree.depth}


def with_ranks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their r-score rank in [0, 1] (0 = the highest r-score, the simplest query)."""
    rank = ranks({row["id"]: row["r_score"] for row in rows})
    return [{**row, "rank": rank[row["id"]]} for row in rows]


def read_scores(path: str, ranking: Ranking) -> dict[str, float]:
    """{problem id: score} from a `treerl score` file, the score of `ranking`."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"reschedule.scores_file '{path}' does not exist; write it with `treerl score --out {path}`")
    scores: dict[str, float] = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            scores[str(row["id"])] = float(row[ranking.field])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a score row (a JSON object with 'id' and '{ranking.field}'); "
                            "write the file with `treerl score`") from None
    return scores
