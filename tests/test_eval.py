import json
from math import comb

import pytest

from treerl.config import EvalConfig
from treerl.eval import evaluate, k_values, pass_at_k
from treerl.tasks.base import Problem, Task


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (5, 5, 5, 1.0),
        (4, 1, 1, 0.25),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 8, 3, 1.0),  # fewer than k wrong samples: always a hit
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_pass_at_k_matches_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_success_rate():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_k_larger_than_n_raises():
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


@pytest.mark.parametrize(
    "samples, expected",
    [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])],
)
def test_k_values(samples, expected):
    assert k_values(samples) == expected


class Judged(Task):
    """Eval problems with levels and subjects whose reference says whether any completion counts as
    correct."""

    name = "judged"
    default_template = "plain"
    levels = ["all"]

    def sample(self, level, rng):
        raise NotImplementedError

    def eval_problems(self, level, n):
        rows = [
            ("2", "Algebra", "yes"),
            ("1", "Geometry", "no"),
            ("1", "Algebra", "yes"),
            ("2", "Algebra", "no"),
        ]
        return [
            Problem(question=f"{i}+1\n", reference=ref, level=lvl, subject=subj)
            for i, (lvl, subj, ref) in enumerate(rows)
        ]

    def judge(self, completion, reference):
        return reference == "yes", float(reference == "yes")


def test_evaluate_groups_by_level_and_subject_with_an_overall_row(policy):
    model, tokenizer = policy
    results = evaluate(model, tokenizer, Judged(), EvalConfig(samples=2, max_new_tokens=2))
    assert list(results) == ["1", "2", "subject:Algebra", "subject:Geometry", "all"]
    assert [results[g]["problems"] for g in results] == [2, 2, 3, 1, 4]
    assert results["1"]["accuracy"] == 0.5 and results["2"]["accuracy"] == 0.5
    assert results["subject:Algebra"]["accuracy"] == pytest.approx(2 / 3)
    assert (
        results["subject:Geometry"]["avg@2"] == 0.0 and results["subject:Geometry"]["pass@2"] == 0.0
    )
    assert results["all"]["accuracy"] == results["all"]["avg@2"] == results["all"]["pass@1"] == 0.5


def test_each_held_out_problem_is_evaluated_once_with_levels_and_the_default_levels(
    policy, tmp_path
):
    """A file of 3 level-1 and 2 level-2 problems: the default eval.levels (1, 2 and all) evaluates
    each problem once and counts n = 3, 2 and 5 (it counted 6, 4 and 10: each problem under its
    level and again under `all`), as eval.levels=[all] (what `treerl eval --benchmark` sets)
    does."""
    from treerl.eval import eval_work
    from treerl.tasks.math_tasks import MathTask

    data = tmp_path / "levels.jsonl"
    rows = [("1+1", "2", 1), ("2+2", "4", 1), ("3+3", "6", 1), ("4+4", "8", 2), ("5+5", "10", 2)]
    data.write_text(
        "".join(json.dumps({"problem": q, "answer": a, "level": lvl}) + "\n" for q, a, lvl in rows)
    )
    task = MathTask(train_data=str(data), eval_data=str(data), fields={"level": "level"})
    assert task.levels == ["1", "2", "all"]
    counts = []
    for levels in (None, ["all"]):
        cfg = EvalConfig(problems=0, levels=levels, max_new_tokens=2)
        assert eval_work(task, cfg) == 5
        results = evaluate(*policy, task, cfg)
        counts.append({group: row["problems"] for group, row in results.items()})
    assert counts == [{"1": 3, "2": 2, "all": 5}] * 2


def test_cli_evaluates_a_benchmark_with_samples(model_dir, capsys):
    from treerl.cli import main

    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--benchmark",
                "amc23",
                "--samples",
                "4",
                "--json",
                "eval.max_new_tokens=4",
                "output.progress=false",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["task"], out["benchmark"]) == ("math", "amc23")
    row = out["groups"]["all"]
    assert row["problems"] == 40
    assert {"accuracy", "avg@4", "pass@1", "pass@2", "pass@4", "response_length"} <= set(row)
    assert 0.0 <= row["pass@1"] <= row["pass@2"] <= row["pass@4"] <= 1.0


def test_saved_completions_hold_every_answer_with_its_grade(policy, tmp_path):
    """eval.save_completions: each problem's greedy answer, then its eval.samples sampled ones, in
    the problems' order, each with its problem and grade (Judged: right where the reference is
    'yes')."""
    path = tmp_path / "deep" / "completions.jsonl"
    cfg = EvalConfig(samples=2, max_new_tokens=2, save_completions=str(path))
    evaluate(*policy, Judged(), cfg)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    problems = Judged().eval_problems("all", 4)
    assert [(r["id"], r["sample"]) for r in rows] == [
        (p.id, sample) for p in problems for sample in (None, 0, 1)
    ]
    assert [r["correct"] for r in rows] == [p.reference == "yes" for p in problems for _ in "abc"]
    assert [r["reward"] for r in rows] == [float(r["correct"]) for r in rows]
    assert all(isinstance(r["completion"], str) and 0 < r["tokens"] <= 2 for r in rows)
    assert rows[0]["question"] == "0+1\n" and rows[0]["level"] == "2" and not rows[0]["too_long"]


def test_cli_saves_every_completion_with_its_grade(tmp_path, capsys):
    """Issue 31 item 9: `treerl eval --save-completions FILE`; the greedy rows give the accuracy
    the command reports, and each row's grade is the task's grade of its completion."""
    from treerl.cli import main
    from treerl.tasks.arithmetic import Arithmetic

    out = tmp_path / "completions.jsonl"
    argv = ["eval", "--model", "tiny", "--save-completions", str(out), "--json"]
    options = ["eval.problems=3", "eval.levels=[hard]", "output.progress=false"]
    assert main([*argv, *options]) == 0
    accuracy = json.loads(capsys.readouterr().out)["groups"]["hard"]["accuracy"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {r["sample"] for r in rows} == {None}
    assert sum(r["correct"] for r in rows) / 3 == accuracy
    task = Arithmetic()
    assert all(task.grade(r["completion"], r["reference"]).correct == r["correct"] for r in rows)


def test_cli_unknown_benchmark_is_a_user_error(capsys):
    from treerl.cli import main

    assert main(["eval", "--benchmark", "mmlu"]) == 2
    assert capsys.readouterr().err.startswith(
        "treerl: error: --benchmark mmlu: not a benchmark; choose from math500"
    )
