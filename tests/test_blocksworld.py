import random
import time

import pytest

from treerl.errors import UserError
from treerl.tasks import get_task
from treerl.tasks.blocksworld import (
    HAND,
    MAX_BLOCKS,
    MIN_BLOCKS,
    PLAN_LENGTH,
    Blocksworld,
    distances,
    is_held_out,
    question,
    shortest_plan,
)

# Two blocks, red on blue; the goal holds red: one unstack away.
TWO = {
    "initial": {"red": "blue", "blue": "table"},
    "goal": {"red": "hand", "blue": "table"},
    "optimal_length": 1,
}
# Three blocks, red on blue, green on the table; the goal is red on green, blue on the table: two
# actions.
THREE = {
    "initial": {"red": "blue", "blue": "table", "green": "table"},
    "goal": {"red": "green", "blue": "table", "green": "table"},
    "optimal_length": 2,
}


def answer(*lines: str) -> str:
    return "<think>plan it</think>\n<answer>\n" + "\n".join(lines) + "\n</answer>"


def test_levels():
    task = Blocksworld()
    assert task.levels == ["trivial", "easy", "medium", "hard", "ood"]
    assert [PLAN_LENGTH[level] for level in task.levels] == [1, 2, 4, 6, 8]
    assert task.eval_only_levels == ["ood"]
    assert task.default_template == "think" and task.template.name == "think"
    assert isinstance(get_task("blocksworld", plan_shaping="ratio"), Blocksworld)


def test_question_wording():
    text = question(TWO["initial"], TWO["goal"])
    assert (
        "[STATEMENT]\nAs initial conditions I have that, the red block is clear, the hand is "
        "empty, the red block is on top of the blue block and the blue block is on the table.\n"
    ) in text
    assert (
        "My goal is to have that the blue block is on the table and I am holding the red block.\n"
        in text
    )
    assert text.endswith("unstack the X block from on top of the Y block.")


@pytest.mark.parametrize(
    "plan",
    [
        "unstack the red block from on top of the blue block",
        "Unstack the red block from on top of the blue block.",
        "1. unstack the red block from on top of the blue block",
        "- unstack red from blue",
        "(unstack red blue)",
        "(UNSTACK Red Blue)",
    ],
)
def test_one_step_plan_forms(plan):
    assert Blocksworld().judge(answer(plan), TWO) == (True, 1.0)


@pytest.mark.parametrize(
    "lines",
    [
        ["1. pick up the green block", "2. stack the green block on top of the red block"],
        ["(pick-up green)", "(put-down green)"],
        [
            "pick up the green block",
            "put down the green block",
            "unstack the red block from on top of the blue block",
        ],
    ],
)
def test_legal_plans_that_end_elsewhere_are_wrong(lines):
    assert Blocksworld().judge(answer(*lines), THREE) == (False, 0.0)


@pytest.mark.parametrize(
    "lines",
    [
        ["pick up the blue block"],  # blue has red on it
        ["pick up the red block"],  # red is on blue, not on the table
        ["put down the red block"],  # the hand is empty
        [
            "pick up the green block",
            "stack the green block on top of the blue block",
        ],  # red is on blue
        ["unstack the red block from on top of the green block"],  # red is not on green
        [
            "unstack the red block from on top of the blue block",
            "pick up the green block",
        ],  # hand full
        [
            "unstack the red block from on top of the blue block",
            "stack the red block on top of the red block",
        ],
    ],
)
def test_illegal_actions_score_zero(lines):
    assert Blocksworld().judge(answer(*lines), THREE) == (False, 0.0)


@pytest.mark.parametrize(
    "lines",
    [
        [
            "unstack the red block from on top of the blue block",
            "stack the red block on top of the green block",
        ],
        ["(unstack red blue)", "(stack red green)"],
        [
            "Step 1: Unstack the red block from on top of the blue block.",
            "Step 2: Stack the red block onto the green block.",
        ],
        ["", "1) unstack red from blue", "", "2) stack red on green", ""],
    ],
)
def test_optimal_plans(lines):
    assert Blocksworld().judge(answer(*lines), THREE) == (True, 1.0)


def test_plan_shaping_for_plans_longer_than_optimal():
    lines = [
        "unstack the red block from on top of the blue block",
        "put down the red block",
        "pick up the red block",
        "stack the red block on top of the green block",
    ]
    assert Blocksworld().judge(answer(*lines), THREE) == (True, 1.0)
    assert Blocksworld(plan_shaping="ratio").judge(answer(*lines), THREE) == (True, 0.5)
    assert Blocksworld(plan_shaping="ratio").judge(answer(*lines[:1], *lines[-1:]), THREE) == (
        True,
        1.0,
    )


@pytest.mark.parametrize(
    "bad",
    [
        ["unstack the purple block from on top of the blue block"],  # unknown block
        ["unstack the red block"],  # no second block
        ["pick up the red block from on top of the blue block"],
        ["unstack the red block from on top of the blue block", "then celebrate"],
        ["unstack the red block from on top of the blue block and put it down"],
    ],
)
def test_unparseable_or_unknown_scores_zero(bad):
    assert Blocksworld().judge(answer(*bad), TWO) == (False, 0.0)


def test_plan_caps():
    one_line = "unstack the red block from on top of the blue block"
    cycle = ["stack the red block on top of the blue block", one_line]
    assert Blocksworld().judge(answer(one_line, *cycle * 49), TWO) == (True, 1.0)  # 99 lines
    assert Blocksworld().judge(answer(one_line, *cycle * 50), TWO) == (False, 0.0)  # 101 lines
    assert Blocksworld().judge(answer(one_line + " " * 200 + "."), TWO) == (
        False,
        0.0,
    )  # a 250-char line


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "garbage",
        "__import__('os')",
        answer("__import__('os').system('echo hi')"),
        answer(""),
        "<answer>(((((((((((((((((((((((((((((((</answer>",
        "\\boxed{unstack the red block from on top of}",
        answer("x" * 10_000_000),
        "unstack the red block from on top of the blue block " * 200_000,
        answer(*["pick up the red block"] * 10_000),
        "\n" * 10_000,
    ],
)
def test_junk_scores_zero_without_raising(completion):
    task = Blocksworld(format_reward=0.1)
    start = time.perf_counter()
    assert task.judge(completion, TWO) == (False, 0.0)
    assert task.verify(completion, TWO) in (0.0, pytest.approx(0.1))
    assert time.perf_counter() - start < 2.0


def test_random_token_soup_never_raises():
    tokens = [
        "pick up",
        "put down",
        "stack",
        "unstack",
        "the",
        "red",
        "blue",
        "block",
        "from on top of",
        "(",
        ")",
        ".",
        "1.",
        "-",
        "\n",
        " ",
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        "\\boxed{",
        "}",
        "Answer:",
    ]
    rng, task = random.Random(0), Blocksworld(plan_shaping="ratio")
    for _ in range(2000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 40)))
        correct, credit = task.judge(text, TWO)
        assert 0.0 <= credit <= 1.0 and correct == (credit > 0)


@pytest.mark.parametrize(
    "completion, reward",
    [
        (answer("unstack the red block from on top of the blue block"), 1.0),
        ("<answer>unstack the red block from on top of the blue block</answer>", 0.9),
        ("Answer: unstack the red block from on top of the blue block", 0.9),
        (answer("pick up the blue block"), 0.1),
        ("unstack the red block from on top of the blue block", 0.0),  # no final answer to read
    ],
)
def test_format_reward(completion, reward):
    assert Blocksworld(format_reward=0.1).verify(completion, TWO) == pytest.approx(reward)


@pytest.mark.parametrize(
    "reference",
    [
        None,
        "unstack red from blue",
        {"initial": {"red": "table"}, "goal": {"red": "hand"}},  # no length
        {
            "initial": {"red": "table"},
            "goal": {"red": "hand", "blue": "table"},
            "optimal_length": 1,
        },  # extra block
        {
            "initial": {"red": "blue", "blue": "red"},
            "goal": {"red": "table", "blue": "table"},
            "optimal_length": 1,
        },
        {"initial": {"red": "red"}, "goal": {"red": "table"}, "optimal_length": 1},
        {"initial": {"red": "green"}, "goal": {"red": "table"}, "optimal_length": 1},
        {
            "initial": {"red": "table", "blue": "red", "green": "red"},
            "goal": {"red": "table", "blue": "table", "green": "table"},
            "optimal_length": 4,
        },
        {
            "initial": {"red": "hand", "blue": "hand"},
            "goal": {"red": "table", "blue": "table"},
            "optimal_length": 2,
        },
        {**TWO, "optimal_length": 0},
        {**TWO, "initial": {"Red Block": "table"}},
        {**TWO, "goal": {"red": ["hand"], "blue": "table"}},
    ],
)
def test_malformed_references_are_user_errors(reference):
    with pytest.raises(UserError, match="expected {'initial'") as error:
        Blocksworld().judge(answer("pick up the red block"), reference)
    assert "\n" not in str(error.value)


def test_bfs_distances_by_hand():
    # From red on blue: hold red (1), both on the table (2), hold blue (3), blue on red (4).
    dist = distances(("blue", "red"), ("table", "blue"), depth=10)
    assert dist == {
        ("table", "blue"): 0,
        ("table", "hand"): 1,
        ("table", "table"): 2,
        ("hand", "table"): 3,
        ("red", "table"): 4,
    }
    assert distances(("blue", "red"), ("table", "blue"), depth=2) == {
        k: d for k, d in dist.items() if d <= 2
    }
    # The Sussman anomaly: all three blocks change support, two actions each, so six is optimal.
    sussman = shortest_plan(
        {"red": "blue", "blue": "table", "green": "table"},
        {"red": "table", "blue": "green", "green": "red"},
    )
    assert sussman == [
        ("unstack", "red", "blue"),
        ("put down", "red", None),
        ("pick up", "green", None),
        ("stack", "green", "red"),
        ("pick up", "blue", None),
        ("stack", "blue", "green"),
    ]
    assert shortest_plan(TWO["initial"], TWO["goal"]) == [("unstack", "red", "blue")]


@pytest.mark.parametrize("level", list(PLAN_LENGTH))
def test_generated_problems_have_the_level_optimal_length(level):
    task, rng = Blocksworld(), random.Random(3)
    sampled = [task.sample(level, rng) for _ in range(30)]
    held_out = task.eval_problems(level, 10)
    length = PLAN_LENGTH[level]
    for p in sampled + held_out:
        initial, goal = p.reference["initial"], p.reference["goal"]
        assert p.level == level and p.reference["optimal_length"] == length
        assert MIN_BLOCKS <= len(initial) <= MAX_BLOCKS and HAND not in initial.values()
        assert (HAND in goal.values()) == (length % 2 == 1)  # each action flips the hand
        assert len(shortest_plan(initial, goal)) == length
        assert task.judge(p.solution, p.reference) == (True, 1.0)
        assert Blocksworld(format_reward=0.1).verify(p.solution, p.reference) == pytest.approx(1.0)
        assert (
            p.solution.count("\n") == length + 2
        )  # <think>..</think>, <answer>, L lines, </answer>
        assert p.question.count("[STATEMENT]") == 1
    assert not any(is_held_out(p.reference["initial"], p.reference["goal"]) for p in sampled)
    assert all(is_held_out(p.reference["initial"], p.reference["goal"]) for p in held_out)
    assert len({p.question for p in held_out}) == 10


def test_sampling_follows_the_rng():
    task = Blocksworld()
    assert [task.sample("hard", random.Random(5)) for _ in range(3)] == [
        task.sample("hard", random.Random(5)) for _ in range(3)
    ]
    rng = random.Random(5)
    assert len({task.sample("hard", rng).question for _ in range(20)}) == 20


def test_eval_problems_are_deterministic():
    first = Blocksworld().eval_problems("medium", 5)
    assert first == Blocksworld().eval_problems("medium", 12)[:5]
    assert len(Blocksworld().eval_problems("medium", 12)) == 12


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.sample("impossible", random.Random(0)),
        lambda t: t.eval_problems("impossible", 3),
        lambda t: t.eval_problems("easy", 0),
    ],
)
def test_bad_levels_and_counts_are_user_errors(call):
    with pytest.raises(UserError):
        call(Blocksworld())


def test_unknown_level_message_names_the_levels():
    with pytest.raises(UserError, match="trivial, easy, medium, hard, ood"):
        Blocksworld().eval_problems("expert", 3)


def test_e2h_rewards_on_its_own_scale_divided_by_three():
    """The E2H code: well formed 1 + correct 2 x (1, or (1 + n/v) / 2 for a plan of length v above
    the optimum n); malformed 0. Divided by 3 (the same advantages under GRPO's std scaling): 1,
    (2 + n/v) / 3, 1/3, 0."""
    lines = [
        "unstack the red block from on top of the blue block",
        "put down the red block",
        "pick up the red block",
        "stack the red block on top of the green block",
    ]
    assert Blocksworld(plan_shaping="e2h").judge(answer(*lines), THREE) == (True, 0.75)  # n/v = 2/4
    task = get_task("blocksworld", format_reward=1 / 3, format_required=True, plan_shaping="e2h")
    optimal = answer(*lines[:1], *lines[-1:])
    assert task.verify(optimal, THREE) == pytest.approx(1.0)
    assert task.verify(answer(*lines), THREE) == pytest.approx((2 + 2 / 4) / 3)
    assert task.verify(answer(lines[1]), THREE) == pytest.approx(1 / 3)  # wrong but well formed
    malformed = optimal.replace("<think>", "")
    assert (
        task.grade(malformed, THREE).correct and task.verify(malformed, THREE) == 0.0
    )  # right, but 0
