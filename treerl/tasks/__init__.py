"""Tasks registered by name."""

from __future__ import annotations

from collections.abc import Callable

from treerl.errors import UserError
from treerl.registry import Registry
from treerl.tasks.base import Problem, Task

TASKS: Registry[Callable[..., Task]] = Registry("task.name")
register_task = TASKS.register


def make_task(name: str, **kwargs) -> Task:
    return TASKS.lookup(name)(**kwargs)


def check_levels(task: Task, levels: list[str], key: str, trainable: bool = False) -> list[str]:
    """The levels themselves, or a UserError naming the config key when one is not a level of the task."""
    allowed = [lvl for lvl in task.levels if not (trainable and lvl in task.eval_only_levels)]
    for level in levels:
        if level not in allowed:
            why = "is for evaluation only" if level in task.levels else f"is not a level of task '{task.name}'"
            raise UserError(f"{key}: '{level}' {why}; choose from {', '.join(allowed)}")
    return levels


from treerl.tasks import arithmetic  # noqa: E402,F401  (registers itself)

__all__ = ["Problem", "Task", "TASKS", "check_levels", "register_task", "make_task"]
