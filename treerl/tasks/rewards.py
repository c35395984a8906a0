"""Reward functions from the user's own code (task.reward, task.rewards), called as TRL calls its
reward functions and summed with weights.

A reward function takes keyword arguments, each a list with one item per completion: `completions`
(the texts), `prompts` (the prompt texts), `completion_ids` (the token ids), and the problem's
fields `problem`, `answer` (the reference), `level`, `subject` and `solution`. It is given those it
names (all of them when it takes **kwargs) and returns one finite float per completion.

Each function runs in a child process bounded in time (tasks.bounded, as math-verify does), so no
completion can hang the run. A function that raises, returns a count other than one value per
completion, a value that is not a number, NaN or an infinity, or runs over `task.reward_timeout`
stops the run with one line naming it. The user's module is the user's code, run as it is; the
model's text only ever reaches it as a string.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from treerl.errors import UserError
from treerl.registry import load_user_code
from treerl.tasks.base import Completions, Grade
from treerl.tasks.bounded import BoundedWorker

KEYWORDS = (
    "completions",
    "prompts",
    "completion_ids",
    "problem",
    "answer",
    "level",
    "subject",
    "solution",
)
"""The keyword arguments a reward function may take."""

WORKERS: dict[str, BoundedWorker] = {}
"""One bounded child process (and its spare) per reward function, shared by the process's runs."""


def function_name(reference: str) -> str:
    """The name a reward function's metric goes by: `rewards/<name>/mean`."""
    return reference.rpartition(":")[2]


def reward_function(reference: str) -> Callable[..., Any]:
    """The function `MODULE:FUNCTION` names, checked to take only keywords treerl passes."""
    fn = load_user_code(reference, "task.reward")
    if not callable(fn):
        raise UserError(f"task.reward={reference}: that is a {type(fn).__name__}, not a function")
    for name, param in inspect.signature(fn).parameters.items():
        needed = param.default is param.empty and param.kind in (
            param.POSITIONAL_ONLY,
            param.POSITIONAL_OR_KEYWORD,
            param.KEYWORD_ONLY,
        )
        if needed and (name not in KEYWORDS or param.kind is param.POSITIONAL_ONLY):
            raise UserError(
                f"task.reward={reference}: its parameter '{name}' is not one treerl passes by "
                f"keyword ({', '.join(KEYWORDS)}; add **kwargs for the rest)"
            )
    return fn


def keywords(completions: Completions) -> dict[str, list[Any]]:
    """A batch as the keyword lists a reward function is called with."""
    problems = completions.problems
    return {
        "completions": completions.texts,
        "prompts": completions.prompts,
        "completion_ids": completions.ids,
        "problem": [p.question for p in problems],
        "answer": [p.reference for p in problems],
        "level": [p.level for p in problems],
        "subject": [p.subject for p in problems],
        "solution": [p.solution for p in problems],
    }


def call_reward(reference: str, batch: dict[str, list[Any]]) -> tuple[bool, Any]:
    """Runs in the child process: (True, one float per completion) or (False, what went wrong).
    An empty batch (the warm-up) only imports the function."""
    try:
        fn = reward_function(reference)
        if not batch:
            return True, []
        params = inspect.signature(fn).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            batch = {
                name: value for name, value in batch.items() if name in {p.name for p in params}
            }
        values = fn(**batch)
    except Exception as error:  # the user's code: its error, in one line
        return False, "raised " + " ".join(f"{type(error).__name__}: {error}".split())
    return checked(values, len(batch["completions"]))


def checked(values: Any, count: int) -> tuple[bool, Any]:
    """(True, the floats) when `values` is `count` finite numbers, else (False, why not)."""
    try:
        values = list(values)
    except TypeError:
        return False, f"returned a {type(values).__name__}, not a list of {count} floats"
    if len(values) != count:
        return False, f"returned {len(values)} values for {count} completions"
    floats = []
    for i, value in enumerate(values):
        if isinstance(value, str) or not hasattr(value, "__float__"):
            return False, f"returned {type(value).__name__} for completion {i}, not a float"
        if not math.isfinite(float(value)):
            return False, f"returned {float(value)} for completion {i}; rewards must be finite"
        floats.append(float(value))
    return True, floats


class UserRewards:
    """reward_j = sum_i w_i f_i(batch)_j over the reward functions f_i with weights w_i; each f_i's
    values are kept by its name (Grade.terms)."""

    def __init__(self, functions: list[tuple[str, float]], timeout: float):
        """`functions`: (MODULE:FUNCTION, weight) pairs; `timeout`: seconds one call may take."""
        names = [function_name(reference) for reference, _ in functions]
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise UserError(
                f"task.rewards: two reward functions are named '{twice}'; each needs a name of "
                "its own for its metric, rewards/<name>/mean"
            )
        for reference, _ in functions:
            reward_function(reference)
        self.functions, self.timeout = functions, timeout

    def values(self, reference: str, batch: dict[str, list[Any]]) -> list[float]:
        """One function's values on a batch, or a UserError naming it."""
        worker = WORKERS.setdefault(
            reference, BoundedWorker(call_reward, default=None, warmup=(reference, {}))
        )
        answer = worker(reference, batch, timeout=self.timeout)
        if answer is None:
            raise UserError(
                f"reward function {reference} did not return within {self.timeout:g} s on "
                f"{len(batch['completions'])} completions (or its process died); make it faster "
                "or raise task.reward_timeout"
            )
        ok, result = answer
        if not ok:
            raise UserError(f"reward function {reference} {result}")
        return result

    def regrade(self, grades: list[Grade], completions: Completions) -> list[Grade]:
        """The grades with the reward functions' weighted sum as reward, each one's value kept."""
        if not grades:
            return grades
        batch = keywords(completions)
        values = [(weight, self.values(reference, batch)) for reference, weight in self.functions]
        names = [function_name(reference) for reference, _ in self.functions]
        return [
            Grade(
                grade.correct,
                sum(weight * column[j] for weight, column in values),
                {name: column[j] for name, (_, column) in zip(names, values)},
            )
            for j, grade in enumerate(grades)
        ]
