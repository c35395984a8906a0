"""Level schedules, registered by name: the probability of each training level at a training step."""

from __future__ import annotations

from collections.abc import Callable

from treerl.errors import UserError

Schedule = Callable[[int, int, int], list[float]]
"""(step, total_steps, number of levels) -> one weight per level, easiest first."""
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    def wrap(fn: Schedule) -> Schedule:
        SCHEDULES[name] = fn
        return fn
    return wrap


def level_weights(name: str, step: int, total_steps: int, num_levels: int) -> list[float]:
    if name not in SCHEDULES:
        raise UserError(f"unknown curriculum.name='{name}'; available: {', '.join(sorted(SCHEDULES))}")
    return SCHEDULES[name](step, total_steps, num_levels)


@register_schedule("balanced")
def balanced(step: int, total_steps: int, num_levels: int) -> list[float]:
    """Every level equally likely at every step (E2H's 'balanced' baseline)."""
    return [1.0 / num_levels] * num_levels
