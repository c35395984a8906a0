"""Name -> value tables (advantage estimators, level schedules, tasks, templates), with one error for unknown names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from treerl.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def __init__(self, config_key: str):
        super().__init__()
        self.config_key = config_key

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(fn: T) -> T:
            self[name] = fn
            return fn
        return wrap

    def lookup(self, name: str) -> T:
        if name not in self:
            raise UserError(f"unknown {self.config_key} '{name}'; available: {', '.join(sorted(self))}")
        return self[name]
