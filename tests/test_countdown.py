import hashlib
import random
import re

import pytest

from treerl.errors import UserError
from treerl.tasks.countdown import NUMBERS, Countdown, is_held_out

TRAIN_LEVELS = ["trivial", "easy", "medium", "hard"]
REF = {"numbers": [3, 41, 7], "target": 20}  # 41 - 3 * 7 = 20


def answer(expression: str) -> str:
    return f"<think>I try a few.</think>\n<answer>{expression}</answer>"


@pytest.mark.parametrize(
    "completion",
    [
        answer("41 - 3 * 7"),
        answer("(41 - (3 * 7))"),
        answer("41 - 3 * 7 = 20"),
        answer("-(3 * 7 - 41)"),
        answer("41-7*3"),
        "So the result is \\boxed{(41 - 3*7)}",
        "Thinking... <answer>1 + 2</answer> no wait. <answer> 41 - 3 * 7 </answer>",
    ],
)
def test_correct_answers(completion):
    assert Countdown().verify(completion, REF) == 1.0


def test_exact_fractions_and_repeated_numbers():
    ref = {"numbers": [8, 3, 8, 3], "target": 24}
    assert Countdown().verify(answer("8 / (3 - 8 / 3)"), ref) == 1.0  # 8 / (1/3)
    assert Countdown().verify(answer("8 / (3 - 8 / 8)"), ref) == 0.0  # 8 three times, 3 once


@pytest.mark.parametrize(
    "expression, numbers",
    [
        ("20", [20]),
        ("+20", [20]),
        ("10 + 10", [10, 10]),
        ("2 * 3 + 14", [2, 3, 14]),
    ],
)
def test_controls_for_the_cases_below(expression, numbers):
    assert Countdown().verify(answer(expression), {"numbers": numbers, "target": 20}) == 1.0


@pytest.mark.parametrize(
    "expression, numbers",
    [
        ("41 - 3 * 7 + 7 - 7", [3, 41, 7]),  # 7 used three times
        ("41 - 3 * 7", [3, 41, 7, 1]),  # 1 unused
        ("41 - 21", [3, 41, 7]),  # 21 is not a given number
        ("2 ** 3 + 12", [2, 3, 12]),
        ("41 // 2", [41, 2]),
        ("41 % 21", [41, 21]),
        ("20.0", [20]),
        ("0x14", [20]),
        ("1_0 + 10", [10, 10]),
        ("abs(-20)", [20]),
        ("(20, 0)[0]", [20, 0]),
        ("int('20')", [20]),
    ],
)
def test_value_right_but_numbers_or_syntax_wrong(expression, numbers):
    assert Countdown().verify(answer(expression), {"numbers": numbers, "target": 20}) == 0.0


@pytest.mark.parametrize(
    "expression",
    [
        "41 - 3 - 7",
        "-(3 - 41)",
        "2**3",
        "abs(-3) * 7 - 41",
        "x * 3 + 7 - 41",
        "41 - 3 * 7.0",
        "1.5",
        "41 - 3 * 7j",
        "(41 - 3 * 7) / 0",
        "41 / (7 - 7) + 3",
        "True + 41 - 3 * 7 - 1",
        "'20'",
        "99999999999999999999 - 3 * 7 + 41",
        "(" * 5000 + "41 - 3 * 7" + ")" * 5000,
        "",
        "20",
        "41 - 3 * 7 +",
        "lambda: 20",
        "(yield 20)",
        "41 - 3 * 7;",
    ],
)
def test_wrong_or_unsafe_answers_score_zero(expression):
    assert Countdown().verify(answer(expression), REF) == 0.0


def test_code_is_never_run(tmp_path):
    marker = tmp_path / "x"
    assert Countdown().verify(answer(f"__import__('os').system('touch {marker}')"), REF) == 0.0
    assert not marker.exists()


def test_huge_and_hostile_inputs():
    task = Countdown()
    big = "<answer>" + "41 - 3 * 7 + " * 800_000 + "0</answer>"  # ~10 MB
    assert len(big) > 10_000_000
    assert task.judge(big, REF) == (False, 0.0)
    assert task.verify(big, REF) == 0.0
    assert task.verify("\\boxed{" * 100_000, REF) == 0.0
    assert task.verify("no answer at all", REF) == 0.0
    assert task.verify(answer("9" * 200), REF) == 0.0
    too_long = " + ".join(["41 - 3 * 7"] + ["0"] * 70)  # right, but over 256 characters
    assert task.verify(answer(too_long), {"numbers": [3, 41, 7] + [0] * 70, "target": 20}) == 0.0


def test_magnitude_cap():
    """Literals and intermediate values above 10**12 make an otherwise right answer wrong."""
    task, e7, e12 = Countdown(), 10**7, 10**12
    assert (
        task.verify(answer(f"{e12} / {e12} * 20"), {"numbers": [e12, e12, 20], "target": 20}) == 1.0
    )
    assert (
        task.verify(
            answer(f"{e12 + 1} / {e12 + 1} * 20"), {"numbers": [e12 + 1, e12 + 1, 20], "target": 20}
        )
        == 0.0
    )
    ref = {"numbers": [e7] * 4 + [20], "target": 20}
    assert task.verify(answer(f"{e7} / {e7} * {e7} / {e7} * 20"), ref) == 1.0
    assert task.verify(answer(f"{e7} * {e7} / {e7} / {e7} * 20"), ref) == 0.0  # 10**14 on the way


def test_format_reward():
    task = Countdown(format_reward=0.1)
    assert task.verify(answer("41 - 3 * 7"), REF) == pytest.approx(1.0)
    assert task.verify("<answer>41 - 3 * 7</answer>", REF) == pytest.approx(0.9)
    assert task.verify(answer("41 - 3 - 7"), REF) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "reference",
    [
        None,
        "20",
        {"numbers": [3, 41, 7]},
        {"numbers": "3 41 7", "target": 20},
        {"numbers": [3, 41.0, 7], "target": 20},
        {"numbers": [3, 41, 7], "target": "20"},
    ],
)
def test_malformed_reference_is_a_user_error(reference):
    with pytest.raises(UserError, match=re.escape('{"numbers": [...], "target": N}')):
        Countdown().verify(answer("41 - 3 * 7"), reference)


def test_question_wording():
    task = Countdown()
    assert task.levels == ["trivial", "easy", "medium", "hard", "ood"]
    assert task.eval_only_levels == ["ood"]
    assert task.template.name == "think"
    p = task.sample("easy", random.Random(0))
    numbers, target = p.reference["numbers"], p.reference["target"]
    assert p.question == (
        f"Using the numbers {numbers}, create an equation that equals {target}. You can use "
        "basic arithmetic operations (+, -, *, /) and each number can only be used once."
    )
    assert re.fullmatch(r"<think>[^\n]+</think>\n<answer>[\d ()+\-*/]+</answer>", p.solution)


def test_same_seed_same_problems():
    task = Countdown()
    a = [task.sample(level, random.Random(5)) for level in TRAIN_LEVELS]
    b = [task.sample(level, random.Random(5)) for level in TRAIN_LEVELS]
    assert a == b
    assert task.sample("medium", random.Random(6)) != a[2]


@pytest.mark.parametrize("level", TRAIN_LEVELS + ["ood"])
def test_problems_are_valid_and_solved_by_their_solution(level):
    task, rng = Countdown(), random.Random(1)
    train = [task.sample(level, rng) for _ in range(300 if level != "ood" else 30)]
    evals = task.eval_problems(level, 100)
    for p in train + evals:
        numbers, target = p.reference["numbers"], p.reference["target"]
        assert len(numbers) == NUMBERS[level] and p.level == level
        assert all(type(n) is int and 1 <= n <= 100 for n in numbers)
        assert type(target) is int and 0 <= target <= 100
        assert task.grade(p.solution, p.reference).correct
    assert not any(is_held_out(**p.reference) for p in train)
    assert all(is_held_out(**p.reference) for p in evals)
    keys = {(tuple(sorted(p.reference["numbers"])), p.reference["target"]) for p in evals}
    assert len(keys) == len(evals) == 100


def test_held_out_key_is_sorted_numbers_and_target():
    expected = [hashlib.sha1(f"3,7,41={t}".encode()).digest()[0] % 10 == 0 for t in range(101)]
    assert [is_held_out([41, 3, 7], t) for t in range(101)] == [
        is_held_out([7, 41, 3], t) for t in range(101)
    ]
    assert [is_held_out([41, 3, 7], t) for t in range(101)] == expected and any(expected)
    keys = [([a, b], t) for a in range(1, 30) for b in range(1, 30) for t in range(20)]
    assert 0.07 < sum(is_held_out(*key) for key in keys) / len(keys) < 0.13


def test_levels_get_harder():
    assert [NUMBERS[level] for level in Countdown().levels] == [2, 3, 4, 5, 6]


def test_eval_problems_are_deterministic():
    a = Countdown().eval_problems("medium", 30)
    b = Countdown().eval_problems("medium", 50)
    assert a == b[:30]


def test_eval_problems_errors():
    with pytest.raises(UserError, match="eval.problems must be >= 1 for task countdown"):
        Countdown().eval_problems("easy", 0)
    with pytest.raises(UserError, match="trivial, easy, medium, hard, ood"):
        Countdown().eval_problems("impossible", 10)


@pytest.mark.parametrize(
    "expression",
    [r"41 - 3 \times 7", "41 − 3 × 7", r"41 - 3 \cdot 7", r"(41 - 3 \cdot 7) \div 1 + 0"],
)
def test_latex_and_unicode_operators_are_read(expression):
    numbers = [3, 41, 7] if "div" not in expression else [3, 41, 7, 1, 0]
    assert Countdown().verify(f"\\boxed{{{expression}}}", {"numbers": numbers, "target": 20}) == 1.0


def test_e2h_rewards_right_well_formed_and_malformed():
    """E2H's Countdown reward: right 1.0, wrong but well formed 0.1, malformed 0 however right."""
    task = Countdown(format_reward=0.1, format_required=True)
    reference = REF
    assert task.verify(answer("41 - 3 * 7"), reference) == pytest.approx(1.0)
    assert task.verify(answer("41 - 3 - 7"), reference) == pytest.approx(0.1)
    assert task.verify("so 41 - 3 * 7 = 20 <answer>41 - 3 * 7</answer>", reference) == 0.0
    assert Countdown(format_reward=0.1).verify(
        "<answer>41 - 3 * 7</answer>", reference
    ) == pytest.approx(0.9)  # without format_required, treerl's own mix
