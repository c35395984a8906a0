"""A user mistake or a hostile file ends in one line on stderr and exit code 2, never a traceback,
and writes nothing (docs/reliability.md); where treerl can go on instead, it says in one warning
what it did."""

import errno
import json
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treerl.cli import main
from treerl.config import Config, flat


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("treerl: error: "), err
    return err[0]


def small(model_dir, *extra):
    return [
        f"model.name_or_path={model_dir}",
        "train.steps=1",
        "rollout.batch_prompts=2",
        "rollout.n=2",
        "rollout.max_new_tokens=6",
        "eval.problems=2",
        "eval.levels=[easy]",
        "eval.max_new_tokens=6",
        "output.progress=false",
        "train.threads=1",
        *extra,
    ]


@pytest.fixture
def broken_models(model_dir, tmp_path):
    """Copies of a good model directory: a config.json that is not JSON, weights cut short, custom
    code."""
    made = {}
    for name in ("config", "weights", "code"):
        made[name] = tmp_path / name
        shutil.copytree(model_dir, made[name])
    (made["config"] / "config.json").write_text('{"model_type": "qwen2", ')
    weights = made["weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = json.loads((made["code"] / "config.json").read_text())
    config.update(
        model_type="homemade",
        auto_map={
            "AutoConfig": "conf.HomemadeConfig",
            "AutoModelForCausalLM": "model.HomemadeModel",
        },
    )
    (made["code"] / "config.json").write_text(json.dumps(config))
    for module in ("conf", "model"):
        (made["code"] / f"{module}.py").write_text(
            "raise SystemExit('the model directory's code ran')\n"
        )
    return made


@pytest.mark.parametrize(
    "kind, message",
    [
        ("config", "config.json is not valid JSON"),
        ("weights", "model.safetensors is damaged"),
        ("code", "model.trust_remote_code=true"),
    ],
)
def test_a_broken_model_directory_is_one_line(broken_models, kind, message, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                str(broken_models[kind]),
                "eval.problems=1",
                "output.progress=false",
            ]
        )
        == 2
    )
    assert message in error_line(capsys)


def test_files_that_are_not_utf8_name_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("train:\n  steps: 3  # durée\n".encode("latin-1"))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "latin1.yaml' is not UTF-8 text" in error_line(capsys)
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
    assert main(["eval", "--model", "tiny", "--benchmark", str(data), "output.progress=false"]) == 2
    assert "rows.jsonl:2: not UTF-8 text" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_read_only_output_directory_is_one_line(model_dir, tmp_path, monkeypatch, capsys):
    target = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["train", "--out", str(target), *small(model_dir)]) == 2
    line = error_line(capsys)
    assert "permission is denied" in line and str(target) in line


def test_tree_out_into_a_missing_folder_creates_it(model_dir, tmp_path):
    from treerl.tasks import get_task

    problem = get_task("arithmetic").eval_problems("easy", 1)[0]
    out = tmp_path / "new" / "deeper" / "tree.html"
    assert (
        main(
            [
                "tree",
                "--model",
                str(model_dir),
                "--problem",
                problem.id,
                "--out",
                str(out),
                "rollout.n=2",
                "tree.depth=2",
                "rollout.max_new_tokens=6",
            ]
        )
        == 0
    )
    assert out.is_file()


def test_prompts_longer_than_the_context_are_counted_not_indexed_past(tmp_path, capsys):
    rows = tmp_path / "long.jsonl"
    rows.write_text(
        json.dumps({"problem": "1+1", "answer": "2"})
        + "\n"
        + json.dumps({"problem": "1+" * 300 + "1", "answer": "301"})
        + "\n"
    )
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny",
                "--benchmark",
                str(rows),
                "--json",
                "eval.max_new_tokens=16",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    report = json.loads(out.out)["groups"]["all"]
    assert report["problems"] == 2 and report["too_long"] == 1 and report["accuracy"] <= 0.5
    assert (
        "1 of 2 prompts leave no room for eval.max_new_tokens=16 in the model's context of 512"
        in out.err
    )


def test_training_refuses_a_prompt_longer_than_the_context(model_dir, tmp_path, capsys):
    rows = tmp_path / "long.jsonl"
    rows.write_text(json.dumps({"problem": "1+" * 300 + "1", "answer": "301"}) + "\n")
    code = main(
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            *small(
                model_dir,
                "task.name=math",
                f"task.train_data={rows}",
                f"task.eval_data={rows}",
                "curriculum.levels=[all]",
                "eval.levels=[all]",
                "eval.problems=0",
                "eval.max_new_tokens=600",
            ),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith(
        "treerl: warning: 1 of 1 prompts"
    )  # the evaluation at step 0 said so
    assert (
        len(err) == 2
        and err[1].startswith("treerl: error: ")
        and "exceed the model's context of 512" in err[1]
    )


@pytest.mark.slow
def test_a_step_that_filters_every_sample_gives_no_scheduler_warning(model_dir, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(
                ["train", "--out", str(tmp_path / "run"), *small(model_dir, "train.filter_tau=100")]
            )
            == 0
        )
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


@pytest.mark.slow
def test_timing_counts_every_process_of_a_resumed_run(model_dir, tmp_path):
    import torch

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *small(model_dir, "train.save_every=1")]) == 0
    saved = torch.load(run / "checkpoints" / "step_1" / "trainer_state.pt", weights_only=True)[
        "spent"
    ]
    assert saved["eval"] > 0  # the evaluation at step 0, before that checkpoint
    assert main(["train", "--resume", str(run), "train.steps=2"]) == 0
    seconds = json.loads((run / "timing.json").read_text())["seconds"]
    assert seconds["evaluation"] > saved["eval"] and seconds["checkpoints"] > saved["checkpoint"]


KEYS = sorted(flat(Config().model_dump()))
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
OVERRIDES = st.lists(
    st.tuples(st.sampled_from(KEYS) | st.text(min_size=1, max_size=12), VALUES), max_size=4
)


class Started(Exception):
    """Raised where the command would start its work: everything before it accepted the input."""


def one_line_or_started(argv, capsys) -> None:
    capsys.readouterr()  # what earlier examples printed
    try:
        code = main(argv)
    except Started:
        return
    except SystemExit as stop:  # argparse refusing an argument
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("treerl: error: "), (argv, err)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=OVERRIDES, command=st.sampled_from(["train", "eval"]))
def test_random_overrides_are_run_or_refused_in_one_line(
    pairs, command, monkeypatch, tmp_path_factory, capsys
):
    import treerl.api as api
    import treerl.loop.trainer as trainer

    def start(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trainer.TrainState, "start", start)
    monkeypatch.setattr(api, "load_model", start)
    argv = [
        command,
        *([] if command == "eval" else ["--out", str(tmp_path_factory.mktemp("fuzz") / "run")]),
        *(f"{key}={json.dumps(value)}" for key, value in pairs),
    ]
    one_line_or_started(argv, capsys)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    document=st.text(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from([*KEYS[:20], "train", "algo", "x"]), inner, max_size=3
            )
        ),
        max_leaves=8,
    ).map(json.dumps)
)
def test_random_yaml_configs_are_run_or_refused_in_one_line(
    document, monkeypatch, tmp_path_factory, capsys
):
    import treerl.loop.trainer as trainer

    def start(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trainer.TrainState, "start", start)
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "c.yaml").write_text(document)
    one_line_or_started(
        ["train", "--config", str(folder / "c.yaml"), "--out", str(folder / "run")], capsys
    )
