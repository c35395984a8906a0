"""E2H level schedules (arXiv 2506.06632), registered by name: the probability of each training level at step t.

Levels are k = 0..K-1, easiest first; t counts the steps already taken, 0..T. Each batch slot draws a
level from p(t), then the next problem of that level.
- `balanced`: p_k = 1/K.
- `classic`: all mass on level min(floor(t K / T), K - 1): K equal stages, easiest first.
- `cosine` (E2H-C): a_t = (1 + cos(pi t / T)) / 2, Z = K (K + 1) / 2,
  p_k = a_t (K - k) / Z + (1 - a_t) (k + 1) / Z: from a linear ramp favouring easy levels to its mirror.
- `gaussian` (E2H-G): mu = (t / T)^beta (K - 1), q_k proportional to exp(-(k - mu)^2 / (2 sigma^2)),
  p_k = p_min + (1 - K p_min) q_k; p_min = 2 / (K (K + 1)) unless given (0 allowed).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from treerl.errors import UserError
from treerl.registry import Registry

Schedule = Callable[..., list[float]]
"""(step, total_steps, num_levels, **params) -> one probability per level, easiest first."""
SCHEDULES: Registry[Schedule] = Registry("curriculum.name")
register_schedule = SCHEDULES.register


def level_probs(schedule: str, step: int, total_steps: int, num_levels: int, **params: float | None) -> list[float]:
    """p(t) of a named schedule; `params` are the schedule's own (gaussian: beta, sigma, p_min)."""
    fn = SCHEDULES.lookup(schedule)
    accepted = [name for name in inspect.signature(fn).parameters if name not in ("step", "total_steps", "num_levels")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"curriculum.params: schedule '{schedule}' has no parameter '{unknown[0]}'; "
                        f"it takes: {', '.join(accepted) or 'none'}")
    if num_levels < 1 or total_steps < 0 or not 0 <= step <= max(total_steps, 0):
        raise ValueError(f"need num_levels >= 1 and 0 <= step <= total_steps, got {step}/{total_steps}, "
                         f"{num_levels} levels")
    return fn(step, total_steps, num_levels, **params)


def _progress(step: int, total_steps: int) -> float:
    return step / total_steps if total_steps else 1.0


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
def gaussian(step: int, total_steps: int, num_levels: int, beta: float = 0.5, sigma: float = 0.5,
             p_min: float | None = None) -> list[float]:
    if beta <= 0 or sigma <= 0:
        raise UserError(f"curriculum.params: gaussian needs beta > 0 and sigma > 0, got beta={beta}, sigma={sigma}")
    floor = 2.0 / (num_levels * (num_levels + 1)) if p_min is None else p_min
    if not 0.0 <= floor <= 1.0 / num_levels:
        raise UserError(f"curriculum.params: gaussian p_min must be in [0, 1/K] = [0, {1.0 / num_levels:.4g}], "
                        f"got {floor}")
    mu = _progress(step, total_steps) ** beta * (num_levels - 1)
    q = [math.exp(-((k - mu) ** 2) / (2.0 * sigma ** 2)) for k in range(num_levels)]
    total = sum(q)
    return [floor + (1.0 - num_levels * floor) * qk / total for qk in q]
