"""Level schedules, registered by name: the probability of each training level at a training step."""

from __future__ import annotations

from collections.abc import Callable

from treerl.registry import Registry

Schedule = Callable[[int, int, int], list[float]]
"""(step, total_steps, number of levels) -> one weight per level, easiest first."""
SCHEDULES: Registry[Schedule] = Registry("curriculum.name")
register_schedule = SCHEDULES.register


def level_weights(name: str, step: int, total_steps: int, num_levels: int) -> list[float]:
    return SCHEDULES.lookup(name)(step, total_steps, num_levels)


@register_schedule("balanced")
def balanced(step: int, total_steps: int, num_levels: int) -> list[float]:
    """Every level equally likely at every step (E2H's 'balanced' baseline)."""
    return [1.0 / num_levels] * num_levels
