import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import treerl.models
from treerl.cli import main
from treerl.errors import UserError
from treerl.models import TINY_DIR, load_policy, resolve_model_path, usable_cores, use_threads
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

    from treerl.loop.pretrain import PretrainConfig, pretrain
    from treerl.models import load_policy

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

    from treerl.loop.pretrain import task_characters
    from treerl.models import load_tokenizer
    from treerl.models.tiny import build_model
    from treerl.tasks import get_task
    from treerl.tasks.prompts import render_prompt

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


HUB_ID = "treerl-test/tiny-random"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(home, model_dir, repo_id=HUB_ID):
    """A Hugging Face cache under `home` (HF_HOME) that holds `model_dir` as the snapshot of
    `repo_id`'s main branch, in huggingface_hub's layout: hub/models--OWNER--NAME/refs/main names
    the commit, snapshots/COMMIT/ holds the files."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache for this test (huggingface_hub read HF_HOME when it was imported)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


def test_a_hub_id_loads_from_the_local_cache_without_a_network(hub_cache, model_dir):
    snapshot = fake_hub_cache(hub_cache, model_dir)
    model, tokenizer = load_policy(HUB_ID)
    assert resolve_model_path(HUB_ID) == snapshot
    assert model.config.hidden_size == 32 and tokenizer("1+2")["input_ids"]


def test_a_hub_id_missing_from_the_cache_is_one_line_saying_how_to_download_it(hub_cache, capsys):
    argv = ["eval", "--model", "treerl-test/absent", "eval.problems=1", "output.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'treerl-test/absent' is no local directory" in err[0]
    assert "model.allow_download=true (or HF_HUB_OFFLINE=0)" in err[0]


@pytest.mark.parametrize(
    "allow_download, offline, downloads",
    [(False, "1", False), (True, "1", True), (False, "0", True), (False, None, False)],
)
def test_a_hub_model_downloads_only_with_allow_download_or_hf_hub_offline_0(
    allow_download, offline, downloads, hub_cache, model_dir, monkeypatch
):
    """HF_HUB_OFFLINE unset at load time (None) is offline: treerl set it to 1 at import."""
    from huggingface_hub import constants

    import treerl.models.hub as hub

    calls = []

    def snapshot_download(repo_id, **options):
        calls.append((repo_id, options, constants.HF_HUB_OFFLINE))
        return str(model_dir)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert resolve_model_path(HUB_ID, allow_download) == model_dir
    [(repo_id, options, offline_during_call)] = calls
    assert repo_id == HUB_ID and offline_during_call is not downloads
    if downloads:
        assert options == {"allow_patterns": hub.HUB_FILES} and "*.bin" not in hub.HUB_FILES
    else:
        assert options == {"local_files_only": True}
    assert constants.HF_HUB_OFFLINE is True  # as it was before


def test_a_failed_download_is_one_line_naming_the_reason(hub_cache, monkeypatch):
    import treerl.models.hub as hub

    def unreachable(repo_id, **options):
        raise OSError("[Errno -3] Temporary failure in name resolution\nmore detail")

    monkeypatch.setattr(hub, "snapshot_download", unreachable)
    with pytest.raises(UserError, match="downloading it from the Hugging Face Hub failed: "):
        load_policy(HUB_ID, allow_download=True)


def test_a_model_directory_without_a_tokenizer_is_one_line(model_dir, tmp_path, capsys):
    """transformers itself builds an empty tokenizer from such a directory, without a word."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, weights_only / name)
    argv = ["eval", "--model", str(weights_only), "eval.problems=1", "output.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model path '{weights_only}' has no tokenizer" in err[0]


@pytest.mark.slow
def test_treerl_eval_takes_a_hub_id_from_the_cache_hf_home_names(model_dir, tmp_path):
    import json
    import subprocess
    import sys

    fake_hub_cache(tmp_path / "hf", model_dir)
    argv = ["eval", "--model", HUB_ID, "--json", "eval.problems=1", "eval.levels=[easy]"]
    done = subprocess.run(
        [sys.executable, "-m", "treerl", *argv, "eval.max_new_tokens=4", "output.progress=false"],
        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["model"] == HUB_ID
