"""Tasks registered by name, and the public scoring API: `get_task`, `score`."""

from __future__ import annotations

import inspect
from typing import Any

from treerl.errors import UserError

# each module registers itself
from treerl.tasks import arithmetic, blocksworld, countdown, math_tasks  # noqa: F401
from treerl.tasks.base import TASKS, Grade, Problem, Task, register_task


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, built with its options (e.g. format_reward=0.1,
    template='think')."""
    cls = TASKS.lookup(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in accepted:
            raise UserError(
                f"task.{key} does not apply to task '{name}'; its options: {', '.join(accepted)}"
            )
    return cls(**options)


def make_task(cfg) -> Task:
    """The task of a TaskConfig, with the options the config sets."""
    return get_task(cfg.name, **cfg.model_dump(exclude_none=True, exclude={"name"}))


def score(name: str, completion: str, reference: Any, **options: Any) -> float:
    """The reward of one completion: with default options 1.0 for a correct answer, else 0.0."""
    return get_task(name, **options).verify(completion, reference)


def check_levels(task: Task, levels: list[str], key: str, trainable: bool = False) -> list[str]:
    """The levels themselves, or a UserError naming the config key when one is not a level of the
    task."""
    allowed = [lvl for lvl in task.levels if not (trainable and lvl in task.eval_only_levels)]
    for level in levels:
        if level not in allowed:
            why = (
                "is for evaluation only"
                if level in task.levels
                else f"is not a level of task '{task.name}'"
            )
            raise UserError(f"{key}: '{level}' {why}; choose from {', '.join(allowed)}")
    return levels


__all__ = [
    "Grade",
    "Problem",
    "Task",
    "TASKS",
    "check_levels",
    "get_task",
    "make_task",
    "register_task",
    "score",
]
