"""What every task gives the trainer: problems with a difficulty level, prompts, and a verifier."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    level: str
    solution: str = ""


class Task(Protocol):
    name: str
    levels: list[str]
    """All levels, easiest first; the ones in `eval_only_levels` are never trained on."""
    eval_only_levels: list[str]

    def sample(self, level: str, rng: random.Random) -> Problem:
        """One training problem; never one of the held-out problems."""

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """The first n held-out problems of a level, the same on every call."""

    def verify(self, completion: str, problem: Problem) -> float:
        """Reward in [0, 1] for a completion; bounded in time, never evaluates the text."""

    def is_correct(self, completion: str, problem: Problem) -> bool:
        """Whether the final answer is right (accuracy, independent of format reward)."""
