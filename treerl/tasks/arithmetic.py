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
from treerl.tasks import register_task
from treerl.tasks.base import Problem

OPERANDS = {"trivial": 2, "easy": 3, "medium": 4, "hard": 5, "ood": 6}
MAX_OPERAND = 9
DRAWS_PER_EVAL_PROBLEM = 200
MAX_COMPLETION_CHARS = 4096
ANSWER_LINE = re.compile(r"^Answer:[ \t]*(-?\d{1,12})[ \t]*$", re.MULTILINE)


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
        rest = ops[i + 1:], numbers[i + 2:]
        if rest[0]:
            lines.append(render([total, *rest[1]], list(rest[0])))
    lines.append(f"Answer: {total}")
    return "\n".join(lines), total


def parse_answer(completion: str) -> int | None:
    """The integer on the last 'Answer:' line, or None when there is none."""
    matches = ANSWER_LINE.findall(completion[:MAX_COMPLETION_CHARS])
    return int(matches[-1]) if matches else None


class Arithmetic:
    name = "arithmetic"
    levels = list(OPERANDS)
    eval_only_levels = ["ood"]

    def __init__(self, format_reward: float = 0.0):
        self.format_reward = format_reward

    def _problem(self, level: str, numbers: list[int], ops: list[str]) -> Problem:
        solution, answer = worked_solution(numbers, ops)
        return Problem(prompt=render(numbers, ops) + "\n", answer=str(answer), level=level, solution=solution)

    def sample(self, level: str, rng: random.Random) -> Problem:
        while True:
            numbers, ops = random_expression(OPERANDS[level], rng)
            if not is_held_out(render(numbers, ops)):
                return self._problem(level, numbers, ops)

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """Up to n; fewer when the level has fewer held-out expressions (two operands: about a dozen)."""
        if level not in OPERANDS:
            raise UserError(f"unknown arithmetic level '{level}'; levels: {', '.join(OPERANDS)}")
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

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return parse_answer(completion) == int(problem.answer)

    def verify(self, completion: str, problem: Problem) -> float:
        """Linear-time regex work on at most MAX_COMPLETION_CHARS characters: bounded in time by construction."""
        completion = completion[:MAX_COMPLETION_CHARS]
        correct = float(self.is_correct(completion, problem))
        if self.format_reward == 0.0:
            return correct
        well_formed = ANSWER_LINE.fullmatch(completion.strip().rsplit("\n", 1)[-1]) is not None
        return (1.0 - self.format_reward) * correct + self.format_reward * float(well_formed)


register_task("arithmetic")(Arithmetic)
