"""E2H level schedules (arXiv 2506.06632), registered by name: the probability of each training
level at step t.

Levels are k = 0..K-1, easiest first; t counts the steps already taken, 0..T. Each batch slot draws
a level from p(t), then the next problem of that level. Past T (a resume that set train.steps above
the horizon the run began with) a schedule stays at p(T): t / T is taken as at most 1.
- `balanced`: p_k = 1/K.
- `classic`: all mass on level min(floor(t K / T), K - 1): K equal stages, easiest first.
- `cosine` (E2H-C): a_t = (1 + cos(pi t / T)) / 2, Z = K (K + 1) / 2,
  p_k = a_t (K - k) / Z + (1 - a_t) (k + 1) / Z: from a linear ramp favouring easy levels to its
  mirror.
- `gaussian` (E2H-G): mu = (t / T)^beta (K - 1), q_k proportional to exp(-(k - mu)^2 / (2 sigma^2)),
  p_k = p_min + (1 - K p_min) q_k; p_min = 2 / (K (K + 1)) unless given (0 allowed).
- `mastery` (reactive, in the spirit of prime-rl's online difficulty filtering): all mass on the
  current level k, from the easiest; k moves on once level k's training accuracy, averaged over the
  last `window` steps that drew it, reaches `threshold`.

A schedule is an object (`Schedule`): `probs(t)`, `observe(t, accuracy)` after each step with the
step's training accuracy per level, and a state dict saved in checkpoints. The four fixed ones are
pure functions of t (registered with `register_schedule`); a reactive one is a class registered with
`SCHEDULES.register`, built from (total_steps, num_levels, **curriculum.params).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from treerl.errors import UserError
from treerl.registry import Registry, check_params


class Schedule(Protocol):
    def probs(self, t: int) -> list[float]:
        """p(t) after t steps, one probability per level, easiest first."""

    def observe(self, t: int, accuracy: dict[int, float]) -> None:
        """Step t (1-based) is done: the training accuracy of each level index it drew."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


SCHEDULES: Registry[Callable[..., Schedule]] = Registry("curriculum.name")
"""name -> (total_steps, num_levels, **params) -> Schedule."""


@dataclass
class FixedSchedule:
    """A schedule that is a function of t alone: it observes nothing and keeps no state."""

    fn: Callable[..., list[float]]
    total_steps: int
    num_levels: int
    params: dict[str, Any]

    def probs(self, t: int) -> list[float]:
        return self.fn(t, self.total_steps, self.num_levels, **self.params)

    def observe(self, t: int, accuracy: dict[int, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def register_schedule(
    name: str,
) -> Callable[[Callable[..., list[float]]], Callable[..., list[float]]]:
    """Register a fixed schedule, a function (t, total_steps, num_levels, **params) -> p
    (returned unchanged)."""

    def wrap(fn: Callable[..., list[float]]) -> Callable[..., list[float]]:
        def make(total_steps: int, num_levels: int, **params: Any) -> Schedule:
            return FixedSchedule(fn, total_steps, num_levels, params)

        signature = inspect.signature(fn)  # the params check reads the function's own parameters
        make.__signature__ = signature.replace(  # type: ignore
            parameters=list(signature.parameters.values())[1:]
        )
        SCHEDULES.add(name, make)
        return fn

    return wrap


def make_schedule(name: str, total_steps: int, num_levels: int, params: dict[str, Any]) -> Schedule:
    """The schedule curriculum.name names, with curriculum.params checked against its parameters."""
    make = SCHEDULES.lookup(name)
    check_params("curriculum.params", f"schedule '{name}'", make, params, fixed=2)
    if num_levels < 1 or total_steps < 0:
        raise ValueError(
            f"need num_levels >= 1 and total_steps >= 0, got {num_levels} levels, "
            f"{total_steps} steps"
        )
    return make(total_steps, num_levels, **params)


def level_probs(
    schedule: str, step: int, total_steps: int, num_levels: int, **params: float | None
) -> list[float]:
    """p(t) of a fixed schedule; `params` are the schedule's own (gaussian: beta, sigma, p_min)."""
    if not 0 <= step <= max(total_steps, 0):
        raise ValueError(f"need 0 <= step <= total_steps, got {step}/{total_steps}")
    return make_schedule(schedule, total_steps, num_levels, params).probs(step)


def _progress(step: int, total_steps: int) -> float:
    """min(t / T, 1): the schedule's progress, at its end from T on."""
    return min(1.0, step / total_steps) if total_steps else 1.0


@register_schedule("balanced")
def balanced(step: int, total_steps: int, num_levels: int) -> list[float]:
    return [1.0 / num_levels] * num_levels


@register_schedule("classic")
def classic(step: int, total_steps: int, num_levels: int) -> list[float]:
    stage = min(math.floor(_progress(step, total_steps) * num_levels), num_levels - 1)
    return [1.0 if k == stage else 0.0 for k in range(num_levels)]


@register_schedule("cosine")
def cosine(step: int, total_steps: int, num_levels: int) -> list[float]:
    a = (1.0 + math.cos(math.pi * _progress(step, total_steps))) / 2.0
    z = num_levels * (num_levels + 1) / 2.0
    return [a * (num_levels - k) / z + (1.0 - a) * (k + 1) / z for k in range(num_levels)]


@register_schedule("gaussian")
def gaussian(
    step: int,
    total_steps: int,
    num_levels: int,
    beta: float = 0.5,
    sigma: float = 0.5,
    p_min: float | None = None,
) -> list[float]:
    if beta <= 0 or sigma <= 0:
        raise UserError(
            "curriculum.params: gaussian needs beta > 0 and sigma > 0, "
            f"got beta={beta}, sigma={sigma}"
        )
    floor = 2.0 / (num_levels * (num_levels + 1)) if p_min is None else p_min
    if not 0.0 <= floor <= 1.0 / num_levels:
        raise UserError(
            f"curriculum.params: gaussian p_min must be in [0, 1/K] = [0, {1.0 / num_levels:.4g}], "
            f"got {floor}"
        )
    mu = _progress(step, total_steps) ** beta * (num_levels - 1)
    q = [math.exp(-((k - mu) ** 2) / (2.0 * sigma**2)) for k in range(num_levels)]
    total = sum(q)
    return [floor + (1.0 - num_levels * floor) * qk / total for qk in q]


@SCHEDULES.register("mastery")
class Mastery:
    """All mass on the current level k, from the easiest; k moves to k + 1 once the mean of level
    k's training accuracy over the last `window` steps that drew it reaches `threshold`
    (the last level stays)."""

    def __init__(
        self, total_steps: int, num_levels: int, threshold: float = 0.8, window: float = 5
    ):
        if not 0.0 < threshold <= 1.0 or window < 1 or window != int(window):
            raise UserError(
                f"curriculum.params: mastery needs 0 < threshold <= 1 and a whole window >= 1, got "
                f"threshold={threshold}, window={window}"
            )
        self.num_levels, self.threshold, self.window = num_levels, threshold, int(window)
        self.level = 0
        self.recent: list[float] = []
        """The current level's accuracy in the last `window` steps that drew it."""

    def probs(self, t: int) -> list[float]:
        return [1.0 if k == self.level else 0.0 for k in range(self.num_levels)]

    def observe(self, t: int, accuracy: dict[int, float]) -> None:
        if self.level not in accuracy:
            return
        self.recent = (self.recent + [accuracy[self.level]])[-self.window :]
        mastered = (
            len(self.recent) == self.window and sum(self.recent) / self.window >= self.threshold
        )
        if mastered and self.level < self.num_levels - 1:
            self.level, self.recent = self.level + 1, []

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level, self.recent = int(state["level"]), [float(a) for a in state["recent"]]
