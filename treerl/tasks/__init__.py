"""Tasks registered by name, and the public scoring API: `get_task`, `score`."""

from __future__ import annotations

import inspect
from typing import Any

from treerl.errors import UserError

# each module registers itself
from treerl.tasks import arithmetic, blocksworld, countdown, math_tasks  # noqa: F401
from treerl.tasks.base import TASKS, Grade, Problem, Task, register_task
from treerl.tasks.rewards import UserRewards

REWARD_KEYS = ("reward", "rewards", "reward_timeout")
"""task.* keys of the user's reward functions, which the task's constructor does not take."""


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name` (or a Task subclass of the user's, `MODULE:CLASS`), built
    with its options (e.g. format_reward=0.1, template='think')."""
    cls = task_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in accepted:
            raise UserError(
                f"task.{key} does not apply to task '{name}'; its options: {', '.join(accepted)}"
            )
    return cls(**options)


def task_class(name: str) -> type[Task]:
    """The class task.name names, checked to be a Task that can be built."""
    cls = TASKS.lookup(name)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task.name={name}: that is not a subclass of treerl.tasks.Task")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UserError(f"task.name={name}: the class does not implement {missing}")
    for attribute in ("name", "default_template", "levels"):
        if not hasattr(cls, attribute):
            raise UserError(f"task.name={name}: the class sets no '{attribute}'")
    return cls


def make_task(cfg) -> Task:
    """The task of a TaskConfig, with the options the config sets and the user's reward functions
    (task.reward or task.rewards) when it names any."""
    task = get_task(cfg.name, **cfg.model_dump(exclude_none=True, exclude={"name", *REWARD_KEYS}))
    functions = [(cfg.reward, 1.0)] if cfg.reward else [(r.fn, r.weight) for r in cfg.rewards or []]
    if functions:
        task.user_rewards = UserRewards(functions, cfg.reward_timeout)
    return task


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
    "UserRewards",
    "check_levels",
    "get_task",
    "make_task",
    "register_task",
    "score",
]
