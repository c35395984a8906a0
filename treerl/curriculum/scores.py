"""Query scores for Re-Schedule, registered by reschedule.rank_by: what a query's reasoning tree
says about it (its r-score, or its pass rate for the ACC baseline), and the `treerl score` file that
holds them per query."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerl.config import RScoreConfig
from treerl.curriculum.reschedule import ranks
from treerl.curriculum.rscore import check_depth, leaf_accuracy, r_score, r_score_pruning
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
    edits: bool = False
    """Whether the score edits the tree at rscore.eligible nodes: then trees too shallow to hold one
    are refused."""

    def check_depth(self, rscore: RScoreConfig, depth: int, where: str) -> None:
        """A UserError when the score of trees this deep could only be 0."""
        if self.edits:
            check_depth(rscore.eligible, depth, where)


OFF = "off"
"""reschedule.rank_by for no ranking: every query weighs 1."""
RANKINGS: Registry[Ranking] = Registry("reschedule.rank_by", extra=(OFF,))
RANKINGS.add(
    "rscore",
    Ranking(lambda tree, r: r_score(tree, r.top_m, r.eligible, r.child), "r_score", edits=True),
)
RANKINGS.add(
    "rscore_prune",
    Ranking(
        lambda tree, r: r_score_pruning(tree, r.top_m, r.eligible), "r_score_prune", edits=True
    ),
)
RANKINGS.add("acc", Ranking(lambda tree, r: leaf_accuracy(tree), "leaf_acc"))


def ranking_of(rank_by: str) -> Ranking | None:
    """The ranking reschedule.rank_by names; None when it is off."""
    return None if rank_by == OFF else RANKINGS.lookup(rank_by)


def score_row(tree: ReasoningTree, problem: Problem, rscore: RScoreConfig) -> dict[str, Any]:
    """A graded tree as one row of a score file: every ranking's score and the tree's size."""
    return {
        "id": problem.id,
        "level": problem.level,
        **{ranking.field: ranking.score(tree, rscore) for ranking in RANKINGS.values()},
        "leaves": len(tree.leaves()),
        "nodes": sum(1 for path, _ in tree.walk() if path),
        "depth": tree.depth,
    }


def with_ranks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their r-score rank in [0, 1] (0 = the highest r-score, the simplest query)."""
    rank = ranks({row["id"]: row["r_score"] for row in rows})
    return [{**row, "rank": rank[row["id"]]} for row in rows]


def score_of(row: Any, field: str) -> tuple[str, float]:
    """(id, score) of one parsed line of a score file; ValueError saying what is wrong with it."""
    if not isinstance(row, dict) or "id" not in row or field not in row:
        raise ValueError(f"not a score row (a JSON object with 'id' and '{field}')")
    problem_id, score = row["id"], row[field]
    if not isinstance(problem_id, str):
        raise ValueError(f"'id' is {json.dumps(problem_id)}, not a string")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ValueError(f"'{field}' is {json.dumps(score)}, not a finite number")
    return problem_id, float(score)


def read_scores(path: str, ranking: Ranking) -> dict[str, float]:
    """{problem id: score} from a `treerl score` file, the score of `ranking`: one row per id, each
    score a finite number (not NaN, a string or a boolean), else a UserError naming the line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(
            f"reschedule.scores_file '{path}' does not exist; write it with "
            f"`treerl score --out {path}`"
        )
    scores: dict[str, float] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            problem_id, score = score_of(json.loads(line), ranking.field)
        except ValueError as err:
            raise UserError(f"{path}:{number}: {err}; write the file with `treerl score`") from None
        if problem_id in lines:
            raise UserError(
                f"{path}:{number}: id '{problem_id}' was scored on line {lines[problem_id]} "
                "already; a score file has one row per query (write it with `treerl score`)"
            )
        scores[problem_id], lines[problem_id] = score, number
    return scores


def pool_scores(
    scores: dict[str, float], pool_ids: list[str], path: str, min_coverage: float
) -> dict[str, float]:
    """The scores of the training pool's queries (ids of other pools left out).
    Coverage = scored / pool queries; below `min_coverage` the file is refused, since every unscored
    query would rank at the median."""
    covered = {problem_id: scores[problem_id] for problem_id in pool_ids if problem_id in scores}
    coverage = len(covered) / len(pool_ids) if pool_ids else 0.0
    if coverage < min_coverage:
        raise UserError(
            f"reschedule.scores_file {path} has {coverage_line(covered, scores, pool_ids)}, fewer "
            f"than reschedule.min_coverage={min_coverage:g}: score this config's pool with "
            f"`treerl score`, or set reschedule.min_coverage={math.floor(coverage * 100) / 100:g} "
            "to train with it (unscored queries rank at the median)"
        )
    return covered


def coverage_line(covered: dict[str, float], scores: dict[str, float], pool_ids: list[str]) -> str:
    """'scores for 24 of 1,024 queries', and how many of the file's ids are not in the pool."""
    foreign = len(scores) - len(covered)
    return f"scores for {len(covered):,} of {len(pool_ids):,} queries" + (
        f", and {foreign:,} for queries not in the pool" if foreign else ""
    )
