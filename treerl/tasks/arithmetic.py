"""Chains of + and - on one-digit numbers; the level is the number of operands.

A worked solution rewrites the remaining expression after each step, one step per line,
and ends with an answer line:

    prompt    7+5-8+6
    solution  12-8+6
              4+6
              Answer: 10

Held-out problems are a fixed tenth of all expressions (by hash), so training never sees them.
"""

from __future__ import annotations

import hashlib
import random
import re

from treerl.errors import UserError
from treerl.tasks.base import Problem, Task, register_task
from treerl.tasks.prompts import ANSWER_LINE

OPERANDS = {"trivial": 2, "easy": 3, "medium": 4, "hard": 5, "ood": 6}
MAX_OPERAND = 9
DRAWS_PER_EVAL_PROBLEM = 200
INTEGER = re.compile(r"-?\d{1,12}")


def is_held_out(expression: str) -> bool:
    return hashlib.sha1(expression.encode()).digest()[0] % 10 == 0


def random_expression(operands: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """Numbers and operators with every running total >= 0."""
    numbers = [rng.randint(1, MAX_OPERAND)]
    ops: list[str] = []
    total = numbers[0]
    for _ in range(operands - 1):
        number = rng.randint(1, MAX_OPERAND)
        op = rng.choice("+-") if total >= number else "+"
        total = total + number if op == "+" else total - number
        numbers.append(number)
        ops.append(op)
    return numbers, ops


def render(numbers: list[int], ops: list[str]) -> str:
    return str(numbers[0]) + "".join(op + str(n) for op, n in zip(ops, numbers[1:]))


def worked_solution(numbers: list[int], ops: list[str]) -> tuple[str, int]:
    """One line per step (the rewritten expression), then 'Answer: N'."""
    total = numbers[0]
    lines = []
    for i, (op, number) in enumerate(zip(ops, numbers[1:])):
        total = total + number if op == "+" else total - number
        rest = ops[i + 1 :], numbers[i + 2 :]
        if rest[0]:
            lines.append(render([total, *rest[1]], list(rest[0])))
    lines.append(f"Answer: {total}")
    return "\n".join(lines), total


def parse_answer(completion: str) -> int | None:
    """The integer on the last 'Answer:' line, or None when there is none."""
    matches = ANSWER_LINE.findall(completion)
    answer = matches[-1].strip(" \t") if matches else ""
    return int(answer) if INTEGER.fullmatch(answer) else None


class Arithmetic(Task):
    name = "arithmetic"
    default_template = "plain"
    levels = list(OPERANDS)
    eval_only_levels = ["ood"]

    def _problem(self, level: str, numbers: list[int], ops: list[str]) -> Problem:
        solution, answer = worked_solution(numbers, ops)
        return Problem(
            question=render(numbers, ops) + "\n",
            reference=str(answer),
            level=level,
            solution=solution,
        )

    def sample(self, level: str, rng: random.Random) -> Problem:
        while True:
            numbers, ops = random_expression(OPERANDS[level], rng)
            if not is_held_out(render(numbers, ops)):
                return self._problem(level, numbers, ops)

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """Up to n; two operands have only about a dozen held-out expressions."""
        if level not in OPERANDS:
            raise UserError(f"unknown arithmetic level '{level}'; levels: {', '.join(OPERANDS)}")
        if n < 1:
            raise UserError(
                "eval.problems must be >= 1 for task arithmetic (0 means all, for dataset tasks)"
            )
        rng = random.Random(f"arithmetic-eval-{level}")
        seen: dict[str, Problem] = {}
        for _ in range(DRAWS_PER_EVAL_PROBLEM * n):
            if len(seen) == n:
                break
            numbers, ops = random_expression(OPERANDS[level], rng)
            expression = render(numbers, ops)
            if is_held_out(expression) and expression not in seen:
                seen[expression] = self._problem(level, numbers, ops)
        return list(seen.values())

    def judge(self, completion: str, reference: str) -> tuple[bool, float]:
        """Linear-time regex work on a bounded string: bounded in time by construction."""
        correct = parse_answer(completion) == int(reference)
        return correct, float(correct)


register_task("arithmetic")(Arithmetic)
