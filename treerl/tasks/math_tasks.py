"""Math word problems from datasets: `math` (MATH, AIME, AMC, Minerva, OlympiadBench) and `gsm8k`.

Training problems come from `train_data`, held-out ones from `eval_data` (a named dataset, a file,
a save_to_disk folder, a cached HF dataset, or from Python a `datasets.Dataset`; see
treerl.tasks.loaders). Levels are the training set's levels when its
rows have one, plus `all`; without levels there is only `all`. Evaluation rows keep their own level
and subject.
"""

from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from treerl.errors import UserError
from treerl.tasks.base import Problem, Task, register_task
from treerl.tasks.loaders import ALL_LEVELS, problems_from, source_name, with_fields
from treerl.tasks.math_grader import is_correct

if TYPE_CHECKING:
    from treerl.tasks.loaders import InMemory


def level_order(level: str) -> tuple[bool, int | str]:
    return (not level.isdigit(), int(level) if level.isdigit() else level)


class MathTask(Task):
    name = "math"
    default_template = "boxed"
    numeric = False
    """Answers are numbers: a bare last number counts when nothing marks an answer, and only numbers
    compare."""
    default_train_data = "math_train"
    default_eval_data = "math500"

    def __init__(
        self,
        format_reward: float = 0.0,
        template: str | None = None,
        format_required: bool = False,
        train_data: str | Path | InMemory | None = None,
        eval_data: str | Path | InMemory | None = None,
        fields: dict[str, str] | None = None,
        verify_timeout: float = 3.0,
        system_prompt: str | None = None,
    ):
        super().__init__(format_reward, template, format_required, system_prompt)
        self.train_data = self.default_train_data if train_data is None else train_data
        self.eval_data = self.default_eval_data if eval_data is None else eval_data
        self.fields = with_fields(fields)
        self.verify_timeout = verify_timeout

    @cached_property
    def train_pools(self) -> dict[str, list[Problem]]:
        problems = problems_from(self.train_data, self.fields, "train")
        pools: dict[str, list[Problem]] = {}
        for problem in problems:
            pools.setdefault(problem.level, []).append(problem)
        pools[ALL_LEVELS] = list(problems)
        return pools

    @property
    def levels(self) -> list[str]:
        return sorted(self.train_pools, key=lambda lvl: (lvl == ALL_LEVELS, *level_order(lvl)))

    def sample(self, level: str, rng: random.Random) -> Problem:
        return rng.choice(self.train_pools[level])

    def train_pool(self, level: str) -> list[Problem]:
        return self.train_pools[level]

    @cached_property
    def eval_set(self) -> tuple[Problem, ...]:
        return problems_from(self.eval_data, self.fields, "test")

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        rows = [p for p in self.eval_set if level in (ALL_LEVELS, p.level)]
        if not rows:
            raise UserError(f"{source_name(self.eval_data)} has no problems of level '{level}'")
        return rows[:n] if n else rows

    def judge(self, completion: str, reference: str | int | float) -> tuple[bool, float]:
        if isinstance(reference, bool) or not isinstance(reference, str | int | float):
            raise UserError(
                f"a {self.name} reference is the answer as a string, "
                f"like '18' or '\\frac{{14}}{{3}}'; "
                f"got {type(reference).__name__}"
            )
        correct = is_correct(completion, str(reference), self.numeric, self.verify_timeout)
        return correct, float(correct)


class GSM8K(MathTask):
    name = "gsm8k"
    numeric = True
    default_train_data = "gsm8k_train"
    default_eval_data = "gsm8k"


register_task("math")(MathTask)
register_task("gsm8k")(GSM8K)
