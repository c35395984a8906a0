"""Tasks registered by name."""

from __future__ import annotations

from collections.abc import Callable

from treerl.errors import UserError
from treerl.tasks.base import Problem, Task

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
        TASKS[name] = factory
        return factory
    return wrap


def make_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; available: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


from treerl.tasks import arithmetic  # noqa: E402,F401  (registers itself)

__all__ = ["Problem", "Task", "TASKS", "register_task", "make_task"]
