"""Rewards and tasks from the user's own code (issue 31, items 1 and 2): `task.reward` and
`task.rewards` take functions with TRL's reward signature, `task.name` a Task subclass, each as
`MODULE:NAME` (a module name or a .py path), recorded so that a resume and `treerl eval` find them.

Module names differ between tests: a process imports a module name once."""

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from treerl.cli import main
from treerl.config import load_config
from treerl.errors import UserError
from treerl.tasks import TASKS, Problem, get_task, make_task
from treerl.tasks.base import Completions, Grade
from treerl.tasks.rewards import UserRewards

REWARDS = '''
def one(completions, **kwargs):
    return [1.0] * len(completions)


def answer_length(completions, answer):
    """A reward that reads a field of the problem (TRL passes the dataset's columns)."""
    return [float(len(str(a))) for a in answer]


def raises(completions, **kwargs):
    raise ZeroDivisionError("the user's bug")


def not_a_number(completions, **kwargs):
    return [float("nan")] * len(completions)


def too_few(completions, **kwargs):
    return [1.0]


def nothing(completions, **kwargs):
    return [None] * len(completions)


def sleeps(completions, **kwargs):
    import time

    time.sleep(60)


def positional(texts):
    return [0.0] * len(texts)


NOT_CALLABLE = 3
'''

PARITY = """
import random

from treerl.tasks import Problem, Task


class Parity(Task):
    name, default_template, levels = "parity", "plain", ["easy", "hard"]

    def sample(self, level, rng):
        n = rng.randrange(10 if level == "easy" else 10_000)
        return Problem(f"Is {n} even? Answer yes or no.", "yes" if n % 2 == 0 else "no", level)

    def eval_problems(self, level, n):
        rng = random.Random(f"parity-eval-{level}")
        return [self.sample(level, rng) for _ in range(n)]

    def judge(self, completion, reference):
        correct = completion.strip().lower().startswith(reference)
        return correct, float(correct)


class Unfinished(Task):
    name, default_template, levels = "unfinished", "plain", ["easy"]


def not_a_task():
    pass
"""

SMALL_RUN = [
    "rollout.batch_prompts=2",
    "rollout.n=4",
    "rollout.max_new_tokens=8",
    "eval.problems=2",
    "eval.max_new_tokens=8",
    "output.progress=false",
    "train.threads=1",
]


def write(folder, name, source):
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def batch(*completions):
    """Completions of the problem 1+2 (answer 3)."""
    problem = Problem("1+2", "3", "easy")
    n = len(completions)
    return Completions(["1+2="] * n, list(completions), [[1]] * n, [problem] * n)


def test_weighted_reward_functions_sum_and_keep_each_value(tmp_path, monkeypatch):
    """reward_j = sum_i w_i f_i(...)_j: with one = 1 and answer_length = len('3') = 1,
    0.5 * 1 + 2 * 1 = 2.5 for every completion; correct stays the task's verdict."""
    write(tmp_path, "rewards_sum.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    rewards = UserRewards([("rewards_sum:one", 0.5), ("rewards_sum.py:answer_length", 2.0)], 30)
    grades = rewards.regrade([Grade(True, 1.0), Grade(False, 0.0)], batch("3", "4"))
    assert grades == [
        Grade(True, 2.5, {"one": 1.0, "answer_length": 1.0}),
        Grade(False, 2.5, {"one": 1.0, "answer_length": 1.0}),
    ]


def test_a_reward_that_raises_returns_nan_or_the_wrong_count_stops_in_one_line(
    tmp_path, monkeypatch
):
    write(tmp_path, "rewards_bad.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    grades = [Grade(False, 0.0), Grade(False, 0.0)]
    expected = {
        "raises": "reward function rewards_bad:raises raised ZeroDivisionError: the user's bug",
        "not_a_number": "reward function rewards_bad:not_a_number returned nan for completion 0",
        "too_few": "reward function rewards_bad:too_few returned 1 values for 2 completions",
        "nothing": "reward function rewards_bad:nothing returned NoneType for completion 0",
    }
    for name, message in expected.items():
        with pytest.raises(UserError) as err:
            UserRewards([(f"rewards_bad:{name}", 1.0)], 30).regrade(grades, batch("3", "4"))
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_reward_that_runs_over_its_bound_stops_in_one_line(tmp_path):
    path = write(tmp_path, "rewards_slow.py", REWARDS)
    slow = UserRewards([(f"{path}:sleeps", 1.0)], 1.0)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"rewards_slow.py:sleeps did not return within 1 s"):
        slow.regrade([Grade(False, 0.0)], batch("3"))
    assert time.monotonic() - start < 30  # the child's start (once) plus the 1 s bound


def test_a_reward_function_that_cannot_be_called_is_refused_before_anything_runs(
    tmp_path, monkeypatch
):
    write(tmp_path, "rewards_refused.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    refused = {
        "rewards_refused:positional": "its parameter 'texts' is not one treerl passes",
        "rewards_refused:NOT_CALLABLE": "that is a int, not a function",
        "rewards_refused:missing": "rewards_refused has no 'missing'",
        "no_such_module:one": "importing no_such_module failed (ModuleNotFoundError",
        "nowhere.py:one": "nowhere.py is not a file",
    }
    for reference, message in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            make_task(load_config(None, [f"task.reward={reference}"]).task)
    twice = "task.rewards=[{fn: rewards_refused:one}, {fn: rewards_refused.py:one}]"
    with pytest.raises(UserError, match="two reward functions are named 'one'"):
        make_task(load_config(None, [twice]).task)


def test_the_config_records_py_paths_absolute_and_refuses_what_cannot_be_meant(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        None, ["task.name=my/task.py:Mine", "task.rewards=[{fn: r.py:f, weight: 2}, {fn: m:g}]"]
    )
    assert cfg.task.name == f"{tmp_path}/my/task.py:Mine"
    assert [(r.fn, r.weight) for r in cfg.task.rewards] == [(f"{tmp_path}/r.py:f", 2.0), ("m:g", 1)]
    assert load_config(None, ["task.reward=r.py:f"]).task.reward == f"{tmp_path}/r.py:f"
    refused = {
        ("task.reward=accuracy",): "'accuracy' is not MODULE:FUNCTION",
        ("task.reward=m:f", "task.rewards=[{fn: m:g}]"): "set task.reward or task.rewards",
        ("task.reward=m:f", "task.format_reward=0.1"): "add the format reward as a function",
        ("task.rewards=[{weight: 2}]",): "task.rewards.0.fn",
    }
    for overrides, message in refused.items():
        with pytest.raises(UserError, match=message):
            load_config(None, list(overrides))


def test_only_a_registry_that_takes_user_code_accepts_module_colon_name():
    """The one rule: check accepts any MODULE:NAME in a registry made with user_code=True (lookup
    imports it); the others refuse it like any unknown name."""
    from treerl.algo import advantages  # noqa: F401  (the algo.name registry)

    with pytest.raises(UserError, match="unknown algo.name 'my_module:estimator'"):
        load_config(None, ["algo.name=my_module:estimator"])
    assert load_config(None, ["task.name=my_module:Task"]).task.name == "my_module:Task"
    with pytest.raises(UserError, match="unknown task.name 'parity'.*or MODULE:NAME"):
        load_config(None, ["task.name=parity"])
    TASKS.check("package.module:name")
    TASKS.check("some/file.py:name")
    for not_code in ("module:", ":name", "a b:c", "module:na-me"):
        with pytest.raises(UserError):
            TASKS.check(not_code)


def test_a_task_class_that_is_no_task_is_refused_in_one_line(tmp_path):
    path = write(tmp_path, "tasks_refused.py", PARITY)
    with pytest.raises(UserError, match="not a subclass of treerl.tasks.Task"):
        get_task(f"{path}:not_a_task")
    with pytest.raises(UserError, match="does not implement eval_problems, judge, sample"):
        get_task(f"{path}:Unfinished")
    assert get_task(f"{path}:Parity", template="boxed").template.name == "boxed"


@pytest.mark.slow
def test_a_user_reward_module_in_a_folder_trains_resumes_and_evaluates(
    model_dir, tmp_path, monkeypatch
):
    """The journey of a TRL user: two reward functions in their own folder, one by module name and
    one by path, weighted; each one's mean is logged; `--resume` and `treerl eval` read the run's
    config."""
    write(tmp_path, "rewards_journey.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    rewards = (
        "task.rewards=[{fn: rewards_journey:one, weight: 0.5}, "
        "{fn: rewards_journey.py:answer_length, weight: 2}]"
    )
    args = ["--out", str(run), f"model.name_or_path={model_dir}", rewards, *SMALL_RUN]
    assert main(["train", *args, "train.steps=2"]) == 0
    assert main(["train", "--resume", str(run), "train.steps=3"]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["task"]["rewards"]
    assert recorded[1]["fn"] == f"{tmp_path}/rewards_journey.py:answer_length"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    metrics_doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    assert "| `rewards/<function>/mean` |" in metrics_doc
    for m in metrics:  # arithmetic answers of 1 or 2 characters
        assert m["rewards/one/mean"] == 1.0 and 1.0 <= m["rewards/answer_length/mean"] <= 2.0
        expected = 0.5 * m["rewards/one/mean"] + 2 * m["rewards/answer_length/mean"]
        assert m["reward/mean"] == pytest.approx(expected)
    checkpoint = run / "checkpoints" / "step_3"
    config = str(run / "config.yaml")
    assert main(["eval", "--config", config, "--model", str(checkpoint), "--json"]) == 0


@pytest.mark.slow
def test_a_reward_that_raises_in_training_stops_the_run_in_one_line(
    model_dir, tmp_path, monkeypatch, capsys
):
    write(tmp_path, "rewards_stop.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    args = ["--out", "run", f"model.name_or_path={model_dir}", *SMALL_RUN, "train.steps=1"]
    assert main(["train", *args, "task.reward=rewards_stop:raises"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "treerl: error: reward function rewards_stop:raises raised "
        "ZeroDivisionError: the user's bug"
    ]


@pytest.mark.slow
def test_a_user_task_class_trains_resumes_and_evaluates_from_another_folder(
    model_dir, tmp_path, monkeypatch
):
    (tmp_path / "mine").mkdir()
    write(tmp_path / "mine", "parity_task.py", PARITY)
    monkeypatch.chdir(tmp_path / "mine")
    run = tmp_path / "run"
    task = ["task.name=parity_task.py:Parity", "curriculum.levels=[easy,hard]"]
    args = ["--out", str(run), f"model.name_or_path={model_dir}", *task, *SMALL_RUN]
    assert main(["train", *args, "train.steps=1"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(run), "train.steps=2"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    evals = json.loads((run / "eval.json").read_text())
    assert set(evals["2"]) == {"easy", "hard"}
    checkpoint = run / "checkpoints" / "step_2"
    config = str(run / "config.yaml")
    assert main(["eval", "--config", config, "--model", str(checkpoint), "--json"]) == 0
