"""Which problems a step trains on: each batch slot draws a level from the schedule, then that
level's next problem.

The schedule (curriculum.name) gives p(t) and observes each step's training accuracy per level (a
reactive one changes p with it); it is built, and p(0) computed, when the sampler is, so a bad
schedule parameter fails before training starts. A level with a finite pool (a dataset task's
training set, or `curriculum.pool_size` generated problems) is walked in a shuffled order,
reshuffled after every pass; a generating task without a pool draws a fresh problem each time.
Positions and orders are saved in checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

from treerl.config import Config
from treerl.curriculum.levels import make_schedule
from treerl.tasks import check_levels, make_task
from treerl.tasks.base import Problem, Task

POOL_DRAWS_PER_PROBLEM = 20
"""A generated pool gives up on finding more distinct problems after this many draws per slot."""


def generated_pool(task: Task, level: str, size: int) -> list[Problem]:
    """`size` distinct problems of a level, the same for every run and seed (so a score file matches
    them)."""
    rng = random.Random(f"{task.name}-train-pool-{level}")
    pool: dict[str, Problem] = {}
    for _ in range(size * POOL_DRAWS_PER_PROBLEM):
        problem = task.sample(level, rng)
        pool.setdefault(problem.id, problem)
        if len(pool) == size:
            break
    return list(pool.values())


class ProblemSampler:
    def __init__(
        self,
        task: Task,
        levels: list[str],
        schedule: str,
        params: dict[str, float | None],
        total_steps: int,
        pool_size: int = 0,
    ):
        self.task, self.levels = task, levels
        self.schedule = make_schedule(schedule, total_steps, len(levels), params)
        self.schedule.probs(0)
        self.pools: dict[str, list[Problem] | None] = {
            level: task.train_pool(level)
            or (generated_pool(task, level, pool_size) if pool_size else None)
            for level in levels
        }
        self.orders: dict[str, list[int]] = {level: [] for level in levels}
        self.positions: dict[str, int] = {level: 0 for level in levels}

    def probs(self, step: int) -> list[float]:
        """p(t) for training step `step` (1-based), i.e. t = step - 1 steps taken."""
        return self.schedule.probs(step - 1)

    def observe(self, step: int, accuracy: dict[str, float]) -> None:
        """Training step `step` is done: its training accuracy per level (levels it did not draw are
        absent)."""
        self.schedule.observe(
            step,
            {
                self.levels.index(level): acc
                for level, acc in accuracy.items()
                if level in self.levels
            },
        )

    def draw(self, step: int, k: int, rng: random.Random) -> list[Problem]:
        levels = rng.choices(self.levels, self.probs(step), k=k)
        return [self.next(level, rng) for level in levels]

    def next(self, level: str, rng: random.Random) -> Problem:
        pool = self.pools[level]
        if pool is None:
            return self.task.sample(level, rng)
        if self.positions[level] >= len(self.orders[level]):
            self.orders[level] = rng.sample(range(len(pool)), len(pool))
            self.positions[level] = 0
        self.positions[level] += 1
        return pool[self.orders[level][self.positions[level] - 1]]

    def problems(self) -> list[Problem]:
        """Every problem of the finite pools, level by level."""
        return [problem for level in self.levels for problem in self.pools[level] or []]

    def state_dict(self) -> dict[str, Any]:
        return {
            "orders": {k: list(v) for k, v in self.orders.items()},
            "positions": dict(self.positions),
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.orders = {level: list(state["orders"].get(level, [])) for level in self.levels}
        self.positions = {level: int(state["positions"].get(level, 0)) for level in self.levels}
        self.schedule.load_state_dict(
            state.get("schedule", {})
        )  # checkpoints before 2026-12-06 hold none


def task_and_sampler(cfg: Config, horizon: int | None = None) -> tuple[Task, ProblemSampler]:
    """The task of a config and the sampler of its curriculum, the training levels checked; the
    level schedule spans `horizon` steps (default train.steps; a resumed run's is the train.steps it
    began with)."""
    task = make_task(cfg.task)
    check_levels(task, cfg.curriculum.levels, "curriculum.levels", trainable=True)
    c = cfg.curriculum
    return task, ProblemSampler(
        task, c.levels, c.name, c.params, horizon or cfg.train.steps, c.pool_size
    )
