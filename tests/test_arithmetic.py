import random
import re
import time

import pytest

from treerl.tasks import get_task, score
from treerl.tasks.arithmetic import MAX_OPERAND, OPERANDS, Arithmetic, is_held_out, worked_solution
from treerl.tasks.base import Problem

TRAIN_LEVELS = ["trivial", "easy", "medium", "hard"]


def evaluate_chain(expression: str) -> tuple[int, list[int]]:
    """Left-to-right evaluation of a +/- chain; the value and every running total."""
    tokens = re.findall(r"\d+|[+-]", expression)
    total, totals = int(tokens[0]), [int(tokens[0])]
    for op, number in zip(tokens[1::2], tokens[2::2]):
        total = total + int(number) if op == "+" else total - int(number)
        totals.append(total)
    assert "".join(tokens) == expression, f"unexpected characters in {expression!r}"
    return total, totals


def test_worked_solution_example():
    solution, answer = worked_solution([7, 5, 8, 6], ["+", "-", "+"])
    assert solution == "12-8+6\n4+6\nAnswer: 10"
    assert answer == 10


def test_levels_set_operand_count():
    task = Arithmetic()
    rng = random.Random(0)
    assert task.levels == ["trivial", "easy", "medium", "hard", "ood"]
    assert task.eval_only_levels == ["ood"]
    for level in task.levels:
        for _ in range(20):
            prompt = task.sample(level, rng).question
            assert prompt.endswith("\n")
            assert len(re.findall(r"\d+", prompt)) == OPERANDS[level]
    counts = [OPERANDS[level] for level in task.levels]
    assert counts[0] == 2 and counts == sorted(
        set(counts)
    )  # trivial = 2 operands, more at every level


@pytest.mark.parametrize("level", ["trivial", "hard", "ood"])
def test_answers_and_solutions_are_right(level):
    task, rng = Arithmetic(), random.Random(1)
    problems = [task.sample(level, rng) for _ in range(300)] + task.eval_problems(level, 100)
    for p in problems:
        value, totals = evaluate_chain(p.question.strip())
        assert int(p.reference) == value
        assert min(totals) >= 0
        assert all(1 <= int(n) <= MAX_OPERAND for n in re.findall(r"\d+", p.question))
        lines = p.solution.split("\n")
        assert lines[-1] == f"Answer: {value}"
        # each step line is the remaining expression, with the same value
        assert len(lines) == OPERANDS[level] - 1
        for line in lines[:-1]:
            assert evaluate_chain(line)[0] == value


@pytest.mark.parametrize("level", TRAIN_LEVELS + ["ood"])
def test_train_and_eval_are_disjoint(level):
    task, rng = Arithmetic(), random.Random(2)
    train = {task.sample(level, rng).question for _ in range(3000)}
    evals = task.eval_problems(level, 200)
    eval_prompts = [p.question for p in evals]
    assert not any(is_held_out(p.strip()) for p in train)
    assert all(is_held_out(p.strip()) for p in eval_prompts)
    assert (
        len(set(eval_prompts)) == len(eval_prompts) == (200 if level != "trivial" else len(evals))
    )
    assert all(p.level == level for p in evals)
    assert not train & set(eval_prompts)


def test_eval_problems_are_deterministic():
    a = Arithmetic().eval_problems("medium", 50)
    b = Arithmetic().eval_problems("medium", 80)
    assert a == b[:50]  # the first n of a fixed sequence


def test_training_samples_follow_the_rng():
    task = Arithmetic()
    a = [task.sample("easy", random.Random(5)) for _ in range(3)]
    b = [task.sample("easy", random.Random(5)) for _ in range(3)]
    assert a == b


PROBLEM = Problem(
    question="37+52-18+64\n", reference="135", level="medium"
)  # the verifier reads any integer


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("89-18+64\n71+64\nAnswer: 135", 1.0),
        ("Answer: 135", 1.0),
        ("Answer: 135\n", 1.0),
        ("Answer: 136", 0.0),
        ("Answer: -135", 0.0),
        ("Answer: twelve", 0.0),
        ("135", 0.0),
        ("", 0.0),
        ("Answer: 135abc", 0.0),
        ("The Answer: 135", 0.0),
        ("Answer: 1\nAnswer: 135", 1.0),  # the last answer line wins
        ("Answer: 135\nAnswer: 1", 0.0),
    ],
)
def test_verify_binary(completion, reward):
    assert get_task("arithmetic").verify(completion, PROBLEM.reference) == reward
    assert get_task("arithmetic").grade(completion, PROBLEM.reference).correct == (reward == 1.0)
    assert score("arithmetic", completion, "135") == reward


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("71+64\nAnswer: 135", 1.0),  # 0.9 * correct + 0.1 * well-formed
        ("71+64\nAnswer: 7", 0.1),  # wrong but well-formed
        ("71+64\n135", 0.0),  # no answer line
        ("Answer: 135\nso that is it", 0.9),  # right answer, but the answer line is not last
    ],
)
def test_verify_with_format_reward(completion, reward):
    task = get_task("arithmetic", format_reward=0.1)
    assert task.verify(completion, PROBLEM.reference) == pytest.approx(reward)


@pytest.mark.parametrize("format_reward", [0.0, 0.1])
@pytest.mark.parametrize(
    "completion",
    [
        "1" * 10_000_000,
        "Answer: 135\n" * 1_000_000,
        "Answer: " + "9" * 10_000_000,
        " " * 10_000_000 + "Answer: 135",
    ],
    ids=["digits", "answer-lines", "long-number", "leading-spaces"],
)
def test_verify_is_bounded_on_huge_completions(completion, format_reward):
    task = get_task("arithmetic", format_reward=format_reward)
    start = time.perf_counter()
    reward = task.verify(completion, PROBLEM.reference)
    assert time.perf_counter() - start < 1.0
    assert 0.0 <= reward <= 1.0


def test_a_level_with_few_held_out_problems_gives_all_of_them_without_hanging():
    """Two one-digit operands make only ~120 expressions, a tenth of them held out."""
    held_out = {
        f"{a}{op}{b}\n"
        for a in range(1, MAX_OPERAND + 1)
        for b in range(1, MAX_OPERAND + 1)
        for op in ("+-" if a >= b else "+")
        if is_held_out(f"{a}{op}{b}")
    }
    start = time.perf_counter()
    problems = Arithmetic().eval_problems("trivial", 200)
    assert time.perf_counter() - start < 5.0
    assert {p.question for p in problems} == held_out


def test_unknown_level_is_a_user_error():
    from treerl.errors import UserError

    with pytest.raises(UserError, match="unknown arithmetic level 'expert'"):
        Arithmetic().eval_problems("expert", 5)
