import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import treerl.models
from treerl.errors import UserError
from treerl.models import TINY_DIR, load_policy, usable_cores, use_threads
from treerl.models.tiny import build_tokenizer

TEXT = "7+5-8+6\n12-8+6\n4+6\nAnswer: 10"


def test_saved_tokenizer_keeps_whitespace_when_loaded_by_auto_tokenizer(model_dir):
    """AutoTokenizer loads it as Qwen2Tokenizer (the config is qwen2); newlines and spaces must
    survive."""
    built, loaded = build_tokenizer(), AutoTokenizer.from_pretrained(model_dir)
    ids = loaded(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == built(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)  # one token per character
    assert loaded.decode(ids) == TEXT


def test_embedded_model_loads_with_plain_transformers():
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    assert 5e5 <= sum(p.numel() for p in model.parameters()) <= 2e7
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_policy(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        load_policy(str(tmp_path))


def test_device_names_are_checked():
    import torch

    from treerl.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees none"):
            resolve_device("cuda")


def test_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    """Issue 31 item 9: train.threads=0 is the process's CPU affinity (taskset, a batch system's
    cpuset), not every core of a shared machine (it was torch's default, left as it was)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(treerl.models, "usable_cores", usable_cores)  # conftest's is 1 core
    try:
        assert use_threads(0) == 3 == torch.get_num_threads()
        assert use_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_pretrain_warms_up_a_model_on_another_task_and_template(tmp_path):
    import json

    from treerl.models import load_policy
    from treerl.train.pretrain import PretrainConfig, pretrain

    out = tmp_path / "warm"
    cfg = PretrainConfig(
        task="countdown",
        template="plain",
        steps=3,
        batch_size=4,
        hidden=16,
        layers=1,
        heads=2,
        level_mix={"trivial": 1.0},
        eval_problems=2,
        eval_max_new_tokens=8,
        threads=1,
        out=str(out),
    )
    summary = pretrain(cfg)
    assert set(summary["eval"]) == {"trivial", "easy", "medium", "hard", "ood"}
    assert all(
        group["problems"] == 2 and group["response_length"] <= 8
        for group in summary["eval"].values()
    )
    assert json.loads((out / "pretrain.json").read_text())["parameters"] == summary["parameters"]
    model, _ = load_policy(str(out))
    assert model.config.hidden_size == 16


def test_the_embedded_countdown_model_solves_some_countdown_problems():
    from treerl.config import EvalConfig
    from treerl.eval import evaluate
    from treerl.models import load_policy
    from treerl.tasks import get_task

    model, tokenizer = load_policy("tiny-countdown")
    task = get_task("countdown", template="plain")
    results = evaluate(
        model, tokenizer, task, EvalConfig(problems=20, levels=["trivial"], max_new_tokens=80)
    )
    assert results["trivial"]["accuracy"] >= 0.5  # 80% on 100 held-out problems after its warm-up


def test_a_task_tokenizer_covers_its_characters_and_reloads_identically(tmp_path):
    import random

    from treerl.models import load_tokenizer
    from treerl.models.tiny import build_model
    from treerl.tasks import get_task
    from treerl.tasks.prompts import render_prompt
    from treerl.train.pretrain import task_characters

    task = get_task("countdown", template="plain")
    built = build_tokenizer(task_characters(task, ["trivial", "hard"]))
    build_model(built, hidden=16, layers=1, heads=2).save_pretrained(tmp_path)
    built.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    problem = task.sample("hard", random.Random(3))
    text = render_prompt(task.template, problem.question, built) + problem.solution
    ids = built(text, add_special_tokens=False)["input_ids"]
    assert built.unk_token_id not in ids and "[" in text
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids) == text
    assert (
        build_tokenizer(task_characters(get_task("arithmetic"), ["easy"])).get_vocab()
        == build_tokenizer().get_vocab()
    )
