"""Countdown (the E2H Reasoner main task): combine the given numbers with + - * / to reach a target.

Levels are the count of numbers: trivial 2, easy 3, medium 4, hard 5, ood 6 (evaluation only).
Numbers are uniform in 1..100; the target is the value of a random chain over them, in a random
order, with exact division only and every intermediate a non-negative integer, kept when it lands
in 0..100. The chain, fully parenthesised, is the worked solution:

    question  Using the numbers [43, 2, 98], create an equation that equals 53. ...
    solution  <think>98 - 2 = 96, 96 - 43 = 53.</think>
              <answer>((98 - 2) - 43)</answer>

A completion is correct when its final answer is an expression of + - * / and parentheses over
the integer literals, using each number exactly once, whose exact value is the target. The
expression is parsed with `ast` and evaluated with fractions, never run.

Held-out problems are a fixed tenth of all (numbers, target) pairs (by hash), so training never sees
them.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from fractions import Fraction
from typing import Any

from treerl.errors import UserError
from treerl.tasks.base import Problem, Task, register_task
from treerl.tasks.extract import final_answer

NUMBERS = {"trivial": 2, "easy": 3, "medium": 4, "hard": 5, "ood": 6}
MAX_NUMBER = 100
MAX_TARGET = 100
DRAWS_PER_EVAL_PROBLEM = 200
MAX_EXPRESSION_CHARS = 256
MAX_MAGNITUDE = 10**12
"""Literals and intermediate values larger than this make an answer wrong (bounded work)."""
EXPRESSION_CHARS = re.compile(r"[\d+\-*/().\s]*")
SYMBOLS = {"\\times": "*", "\\cdot": "*", "×": "*", "·": "*", "\\div": "/", "÷": "/", "−": "-"}
"""Operator spellings models write, mapped to the ASCII the parser takes."""
OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
REFERENCE_SHAPE = '{"numbers": [...], "target": N}'


def is_held_out(numbers: list[int], target: int) -> bool:
    key = ",".join(map(str, sorted(numbers))) + f"={target}"
    return hashlib.sha1(key.encode()).digest()[0] % 10 == 0


def random_chain(numbers: list[int], rng: random.Random) -> tuple[int, str, list[str]]:
    """A chain over the numbers in a random order: (value, fully parenthesised expression, one line
    per step)."""
    order = rng.sample(numbers, len(numbers))
    value, expression, steps = order[0], str(order[0]), []
    for number in order[1:]:
        ops = ["+", "*"] + ["-"] * (value >= number) + ["/"] * (value % number == 0)
        op = rng.choice(ops)
        result = {
            "+": value + number,
            "-": value - number,
            "*": value * number,
            "/": value // number,
        }[op]
        steps.append(f"{value} {op} {number} = {result}")
        value, expression = result, f"({expression} {op} {number})"
    return value, expression, steps


def random_problem(count: int, rng: random.Random) -> tuple[list[int], int, str, list[str]]:
    """Numbers, target, expression and steps; drawn again until the target is in 0..MAX_TARGET."""
    while True:
        numbers = [rng.randint(1, MAX_NUMBER) for _ in range(count)]
        target, expression, steps = random_chain(numbers, rng)
        if target <= MAX_TARGET:
            return numbers, target, expression, steps


def question(numbers: list[int], target: int) -> str:
    return (
        f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once."
    )


def value_of(node: ast.AST, literals: list[int]) -> Fraction:
    """The exact value of an allowed node, collecting its integer literals; ValueError for anything
    else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        value = Fraction(node.value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = value_of(node.operand, literals)
        value = -value if isinstance(node.op, ast.USub) else value
    elif isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        value = OPERATORS[type(node.op)](
            value_of(node.left, literals), value_of(node.right, literals)
        )
    else:
        raise ValueError(f"not allowed: {type(node).__name__}")
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError("too large")
    return value


def evaluate(expression: str) -> tuple[Fraction, list[int]] | None:
    """The exact value and the integer literals of an arithmetic expression; None when it is not
    one."""
    expression = expression.strip()
    if len(expression) > MAX_EXPRESSION_CHARS or not EXPRESSION_CHARS.fullmatch(expression):
        return None
    literals: list[int] = []
    try:
        return value_of(ast.parse(expression, mode="eval").body, literals), literals
    except Exception:  # SyntaxError, RecursionError, MemoryError, ZeroDivisionError, ValueError
        return None


def check_reference(reference: Any) -> tuple[list[int], int]:
    numbers = reference.get("numbers") if isinstance(reference, dict) else None
    target = reference.get("target") if isinstance(reference, dict) else None
    if (
        not isinstance(numbers, list)
        or not all(type(n) is int for n in numbers)
        or type(target) is not int
    ):
        raise UserError(
            f"countdown reference must be {REFERENCE_SHAPE}, got {repr(reference)[:80]}"
        )
    return numbers, target


class Countdown(Task):
    name = "countdown"
    default_template = "think"
    levels = list(NUMBERS)
    eval_only_levels = ["ood"]

    def _count(self, level: str) -> int:
        if level not in NUMBERS:
            raise UserError(f"unknown countdown level '{level}'; levels: {', '.join(NUMBERS)}")
        return NUMBERS[level]

    def _problem(self, level: str, rng: random.Random) -> tuple[Problem, bool]:
        """A random problem of a level, and whether it is held out."""
        numbers, target, expression, steps = random_problem(self._count(level), rng)
        solution = f"<think>{', '.join(steps)}.</think>\n<answer>{expression}</answer>"
        problem = Problem(
            question=question(numbers, target),
            reference={"numbers": numbers, "target": target},
            level=level,
            solution=solution,
        )
        return problem, is_held_out(numbers, target)

    def sample(self, level: str, rng: random.Random) -> Problem:
        while True:
            problem, held_out = self._problem(level, rng)
            if not held_out:
                return problem

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """Up to n distinct held-out problems (fewer only when the bounded draws run out)."""
        self._count(level)
        if n < 1:
            raise UserError("eval.problems must be >= 1 for task countdown")
        rng = random.Random(f"countdown-eval-{level}")
        seen: dict[tuple[tuple[int, ...], int], Problem] = {}
        for _ in range(DRAWS_PER_EVAL_PROBLEM * n):
            if len(seen) == n:
                break
            problem, held_out = self._problem(level, rng)
            key = (tuple(sorted(problem.reference["numbers"])), problem.reference["target"])
            if held_out and key not in seen:
                seen[key] = problem
        return list(seen.values())

    def judge(self, completion: str, reference: Any) -> tuple[bool, float]:
        """Bounded in time: the expression is capped in length and magnitude, and evaluated without
        running it."""
        numbers, target = check_reference(reference)
        answer = final_answer(completion)
        if answer is None:
            return False, 0.0
        for symbol, ascii_op in SYMBOLS.items():
            answer = answer.replace(symbol, ascii_op)
        evaluated = evaluate(answer.split("=", 1)[0])  # '(1 + 2) * 3 = 9' -> the left side
        correct = (
            evaluated is not None
            and sorted(evaluated[1]) == sorted(numbers)
            and abs(evaluated[0] - target) < Fraction(1, 10**5)
        )
        return correct, float(correct)


register_task("countdown")(Countdown)
