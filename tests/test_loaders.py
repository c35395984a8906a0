"""Hugging Face datasets as training and evaluation data: a save_to_disk folder, a dataset of the
local cache by name, config and split, a datasets.Dataset from Python; rows in the conversational
format (`messages`)."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import yaml
from datasets.arrow_writer import ArrowWriter

import treerl.loop.trainer as trainer
from treerl.config import load_config
from treerl.errors import UserError
from treerl.tasks import Problem, get_task, make_task
from treerl.tasks.loaders import Fields, load_problems, problems_from

ROWS = {
    "train": [{"question": "2+2?", "gold": 4}, {"question": "3+3?", "gold": 6}],
    "test": [{"question": "1+1?", "gold": 2}],
}
GOLD = {"problem": "question", "answer": "gold"}


def saved_dict(path):
    """ROWS as a DatasetDict written by save_to_disk."""
    datasets.DatasetDict(
        {split: datasets.Dataset.from_list(rows) for split, rows in ROWS.items()}
    ).save_to_disk(str(path))
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A local datasets cache holding `org/toy`, config `main`, split `test`, as `load_dataset`
    leaves it after a download."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    folder = cache / "org___toy" / "main" / "0.0.0" / "0123abcd"
    folder.mkdir(parents=True)
    data = datasets.Dataset.from_list(ROWS["test"])
    with ArrowWriter(path=str(folder / "toy-test.arrow")) as writer:
        writer.write_table(data.data.table)
        writer.finalize()
    split = datasets.SplitInfo(name="test", num_examples=len(data), dataset_name="toy")
    datasets.DatasetInfo(
        dataset_name="toy",
        config_name="main",
        features=data.features,
        splits=datasets.SplitDict({"test": split}),
    ).write_to_directory(str(folder))
    return cache


def references(problems):
    return [p.reference for p in problems]


def test_a_save_to_disk_folder_gives_its_train_and_test_splits(tmp_path):
    folder = saved_dict(tmp_path / "saved")
    task = get_task("math", train_data=str(folder), eval_data=str(folder), fields=GOLD)
    assert references(task.train_pools["all"]) == ["4", "6"]
    assert references(task.eval_problems("all", 0)) == ["2"]
    fields = Fields(problem="question", answer="gold")
    assert references(load_problems(f"{folder}:train", fields)) == ["4", "6"]
    with pytest.raises(
        UserError, match=r"has no split 'dev' \(splits: train, test\); give .*:SPLIT"
    ):
        load_problems(f"{folder}:dev", fields)


def test_a_saved_dataset_without_splits_is_used_whole(tmp_path):
    datasets.Dataset.from_list(ROWS["train"]).save_to_disk(str(tmp_path / "one"))
    fields = Fields(problem="question", answer="gold")
    assert references(load_problems(str(tmp_path / "one"), fields, "train")) == ["4", "6"]
    assert references(load_problems(str(tmp_path / "one"), fields, "test")) == ["4", "6"]
    with pytest.raises(UserError, match="holds one dataset, not splits"):
        load_problems(f"{tmp_path / 'one'}:test", fields)


def test_a_cached_dataset_by_name_config_and_split(hf_cache):
    fields = Fields(problem="question", answer="gold")
    assert references(load_problems("org/toy:main:test", fields)) == ["2"]
    assert references(load_problems("org/toy:test", fields)) == ["2"]
    with pytest.raises(
        UserError, match=r"config 'other' Available configs in the cache: \['main'\]"
    ):
        load_problems("org/toy:other:test", fields)
    with pytest.raises(
        UserError, match=r"has no split 'train' \(splits: test\); give org/toy:main"
    ):
        load_problems("org/toy:main:train", fields)
    with pytest.raises(UserError, match="a dataset is `name`, `name:split` or `name:config:split`"):
        load_problems("org/toy:main:test:more", fields)


def test_a_datasets_dataset_from_python():
    rows = datasets.Dataset.from_list(ROWS["train"])
    task = get_task("gsm8k", train_data=rows, eval_data=rows, fields=GOLD)
    assert references(task.train_pools["all"]) == ["4", "6"]
    assert references(task.eval_problems("all", 1)) == ["4"]
    both = datasets.DatasetDict({"train": rows})
    with pytest.raises(UserError, match=r"DatasetDict has no split 'test' .* dataset\['test'\]"):
        problems_from(both, Fields(problem="question", answer="gold"), "test")
    with pytest.raises(UserError, match="a dataset name, a path, or a datasets.Dataset; got list"):
        problems_from(ROWS["train"], None, "train")


def test_messages_rows_keep_their_conversation_up_to_the_last_user_turn(tmp_path):
    """The conversational format: the last user turn is the problem, the turns before it its
    context; a trailing assistant turn (an SFT set's solution) is not part of the prompt."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": " 2+2? "},
                {"role": "assistant", "content": "The answer is 4."},
            ],
            "answer": "4",
        },
        {"messages": [{"role": "user", "content": "3+3?"}], "answer": "6"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = load_problems(path)
    assert (first.question, first.reference) == ("2+2?", "4")
    assert first.context == (("system", "Answer briefly."), ("user", "1+1?"), ("assistant", "2"))
    assert (second.question, second.context) == ("3+3?", ())
    assert first.id != Problem("2+2?", "4", "all").id  # the conversation is part of the problem


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "assistant", "content": "4"}], "has messages without a user turn"),
        ("2+2?", "has messages that are not a list of {role, content} text turns"),
        ([{"role": "user", "content": ["2+2?"]}], "has messages that are not a list of"),
    ],
)
def test_bad_messages_are_one_line_naming_the_row(tmp_path, messages, error):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages, "answer": "4"}) + "\n")
    with pytest.raises(UserError, match=f"chat.jsonl:1: the row {error}"):
        load_problems(path)


def test_the_same_question_in_two_conversations_is_two_problems(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": s}, {"role": "user", "content": "Q"}], "a": 1}
        for s in ("A", "B")
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = load_problems(path, Fields(answer="a"))
    assert len({p.id for p in problems}) == 2


def tiny_math(model_dir, *overrides):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "task.name=math",
            "task.template=plain",
            "task.fields={problem: question, answer: gold}",
            "curriculum.levels=[all]",
            "rollout.batch_prompts=2",
            "rollout.n=2",
            "rollout.max_new_tokens=4",
            "eval.max_new_tokens=4",
            "output.progress=false",
            "train.threads=1",
            "train.steps=1",
            *overrides,
        ],
    )


def test_a_save_to_disk_dataset_trains(model_dir, tmp_path, capsys):
    folder = saved_dict(tmp_path / "saved")
    run = tmp_path / "run"
    cfg = tiny_math(model_dir, f"task.train_data={folder}", f"task.eval_data={folder}")
    result = trainer.train(cfg, run)
    assert result["after"]["all"]["problems"] == 1  # the test split
    assert load_config(run / "config.yaml").task.train_data == str(folder)
    assert "  | 2+2?" in capsys.readouterr().out  # the first prompt: the first training row


def test_a_datasets_dataset_trains_and_the_run_records_it(model_dir, tmp_path):
    """From Python: the run saves the Dataset in its directory and records that folder, so that
    `treerl eval` and --resume read the same rows."""
    run = tmp_path / "run"
    cfg = tiny_math(model_dir)
    cfg.task.train_data = datasets.Dataset.from_list(ROWS["train"])
    cfg.task.eval_data = datasets.Dataset.from_list(ROWS["test"])
    trainer.train(cfg, run)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["task"]
    assert recorded["train_data"] == str((run / "data" / "train_data").resolve())
    task = make_task(load_config(run / "config.yaml").task)
    assert references(task.train_pools["all"]) == ["4", "6"]
    assert references(task.eval_problems("all", 0)) == ["2"]


def test_eval_benchmark_takes_a_save_to_disk_folder_and_a_cached_dataset(
    model_dir, tmp_path, hf_cache, capsys
):
    from treerl.cli import main

    folder = saved_dict(tmp_path / "saved")
    for benchmark in (str(folder), "org/toy:main:test"):
        args = ["eval", "--model", str(model_dir), "--benchmark", benchmark, "--json"]
        fields = ["task.fields={problem: question, answer: gold}", "eval.max_new_tokens=2"]
        assert main([*args, *fields, "output.progress=false"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["task"], out["groups"]["all"]["problems"]) == ("math", 1)
    assert main(["eval", "--benchmark", "org/nothing"]) == 2
    assert (
        "--benchmark org/nothing: not a benchmark; choose from math500" in capsys.readouterr().err
    )


def test_a_messages_dataset_trains_with_the_system_prompt_shown_first(model_dir, tmp_path, capsys):
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}], "gold": "4"},
        {"messages": [{"role": "user", "content": "3+3?"}], "gold": "6"},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "chat"))
    overrides = [f"task.{key}_data={tmp_path / 'chat'}" for key in ("train", "eval")]
    cfg = tiny_math(model_dir, *overrides, "task.template=boxed", "task.system_prompt=Be brief.")
    trainer.train(cfg, tmp_path / "run")
    assert (
        "(task.template=boxed; plain text: the tokenizer has no chat template):\n"
        "  | Be brief.\n  | \n  | 2+2?\n  | \n"
    ) in capsys.readouterr().out


@pytest.mark.slow
def test_a_dataset_name_is_never_looked_up_online_even_if_datasets_came_first(tmp_path):
    """datasets reads HF_DATASETS_OFFLINE when it is imported: imported before treerl it used to
    ask the Hub for a name (five tries, about 90 s without a network)."""
    script = (
        "import datasets, time\n"
        "from treerl.errors import UserError\n"
        "from treerl.tasks.loaders import load_problems\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    load_problems('org/not-cached')\n"
        "except UserError as error:\n"
        "    print(error)\n"
        "print(round(time.perf_counter() - start))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "Couldn't reach 'org/not-cached' on the Hub (OfflineModeIsEnabled)" in out
    assert int(out.split()[-1]) < 5
