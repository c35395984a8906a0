"""Re-Schedule's loss weight of each query, one object the trainer asks: w(rank, t) from the query's
score rank, or 1.0 for every query when reschedule.rank_by=off. Scores come from a `treerl score`
file (static) or from the training trees themselves (online); they are saved in checkpoints."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from treerl.config import Config
from treerl.curriculum.reschedule import ScoreBook, loss_weight
from treerl.curriculum.scores import Ranking, coverage_line, pool_scores, ranking_of, read_scores
from treerl.errors import UserError
from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Problem


class QueryWeights:
    def __init__(
        self,
        cfg: Config,
        ranking: Ranking | None,
        scores: dict[str, float] | None = None,
        source: str | None = None,
        horizon: int | None = None,
    ):
        rs = cfg.reschedule
        self.ranking = ranking
        self.source = source
        """Where the static scores came from and how many of the pool's queries they cover, said at
        the start."""
        self.online = ranking is not None and rs.scores == "online"
        self.book = ScoreBook(scores)
        self.rscore, self.mix, self.w_min, self.w_max = cfg.rscore, rs.mix, rs.w_min, rs.w_max
        self.total_steps = horizon or cfg.train.steps
        """T of w(rank, t): the steps the weights move over (a resumed run's is the train.steps it
        began with)."""
        self.rescore_every, self.rescore_at = rs.rescore_every, set(rs.rescore_at)

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        tree_depth: int,
        pool: list[Problem] | None = None,
        horizon: int | None = None,
    ) -> QueryWeights:
        """The weights of cfg.reschedule; `tree_depth` is the depth of the training trees, which
        online r-scores are computed from; `pool` the training queries a score file must cover
        (None: a level draws without end); `horizon` the steps they move over
        (default train.steps)."""
        rs = cfg.reschedule
        ranking = ranking_of(rs.rank_by)
        if ranking and rs.scores == "online":
            ranking.check_depth(
                cfg.rscore, tree_depth, f"the training trees (tree.depth or 1 for {cfg.algo.name})"
            )
        if not (ranking and rs.scores == "static" and rs.scores_file):
            return cls(cfg, ranking, horizon=horizon)
        if pool is None:
            raise UserError(
                "reschedule.scores_file scores a fixed pool of queries, but task "
                f"'{cfg.task.name}' generates problems without end: set curriculum.pool_size=N, "
                "as when it was scored"
            )
        scores, pool_ids = read_scores(rs.scores_file, ranking), [problem.id for problem in pool]
        covered = pool_scores(scores, pool_ids, rs.scores_file, rs.min_coverage)
        source = f"reschedule: {coverage_line(covered, scores, pool_ids)} from {rs.scores_file}"
        return cls(cfg, ranking, covered, source, horizon)

    def rescore_due(self, step: int) -> bool:
        """Whether every query is scored again before training step `step` (1-based): at
        reschedule.rescore_at, and after every reschedule.rescore_every steps."""
        every = self.rescore_every and step > 1 and (step - 1) % self.rescore_every == 0
        return self.ranking is not None and bool(every or step in self.rescore_at)

    def online_score(self, tree: ReasoningTree) -> float | None:
        """The score of a graded training tree when scores are online; None otherwise."""
        return self.ranking.score(tree, self.rscore) if self.online and self.ranking else None

    def update(self, scores: Iterable[tuple[str, float]]) -> None:
        for problem_id, score in scores:
            self.book.update(problem_id, score)

    def weight(self, problem_id: str, step: int) -> float:
        """w(rank, t) at training step `step` (t = step - 1 steps taken); 1.0 when off."""
        if self.ranking is None:
            return 1.0
        return loss_weight(
            self.book.rank(problem_id), step - 1, self.total_steps, self.mix, self.w_min, self.w_max
        )

    def score(self, problem_id: str) -> float | None:
        return self.book.scores.get(problem_id)

    def state_dict(self) -> dict[str, Any]:
        return self.book.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.book.load_state_dict(state)
