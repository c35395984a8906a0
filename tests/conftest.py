"""Shared fixtures: a tiny random character-level model saved as a local HF directory."""

from __future__ import annotations

import os

import pytest

# The suite runs in parallel (pytest-xdist, a worker per core), so the commands the tests start in
# child processes share their cores with other workers. OpenMP's threads spin while they wait for
# work by default, and on a shared core that spinning took the README's 2-step "How to add" run
# from 13 s to 75 s. Passive waiting changes no result, only how an idle thread waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402 - after the environment its OpenMP runtime reads when it loads


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The models here are tiny: a second intra-op thread only adds contention on a busy 2-core
    machine (test_engine.py took ~50 s with 2 threads next to another CPU job, ~4 s with 1). The
    commands' default, train.threads=0 (the cores this process may use), is one core here too."""
    import treerl.models

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(treerl.models, "usable_cores", lambda: 1)
        yield
    torch.set_num_threads(previous)


def save_random_model(path, hidden: int):
    """A random 2-layer character-level model with 2 heads, saved with its tokenizer as a local HF
    directory."""
    from treerl.models.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model(tok, hidden=hidden, layers=2, heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("small-model"), hidden=32)


@pytest.fixture(scope="session")
def vllm_dir(tmp_path_factory):
    """The same with heads of 32 dimensions: vLLM's CPU attention takes no fewer."""
    return save_random_model(tmp_path_factory.mktemp("vllm-model"), hidden=64)


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory):
    """LoRA adapters (r=4, alpha=8, random B) on the embedded model, saved with its tokenizer as a
    LoRA checkpoint saves them; and the adapted model (treat as read-only)."""
    from treerl.config import LoraSettings
    from treerl.models import load_policy

    model, tok = load_policy("tiny", lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("tiny-adapters")
    model.save_pretrained(path, save_embedding_layers=False)
    tok.save_pretrained(path)
    return path, model.eval()


@pytest.fixture(scope="session")
def policy(model_dir):
    """(model, tokenizer) loaded the way the trainer loads them; treat as read-only."""
    from treerl.models import load_policy

    model, tokenizer = load_policy(str(model_dir))
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def trained_run(model_dir, tmp_path_factory):
    """One short training run made by `treerl train` (so with its report), shared by the report,
    viewer and browser tests (read-only): TreeRPO trees of 3 x 3 leaves, 2 saved per step, a cosine
    level schedule, online Re-Schedule weights, evaluation at steps 0, 2 and 4, a checkpoint every
    step."""
    from treerl.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                f"model.name_or_path={model_dir}",
                "algo.name=treerpo",
                "tree.depth=2",
                "rollout.n=3",
                "rollout.max_new_tokens=8",
                "rollout.batch_prompts=3",
                "output.save_trees=2",
                "eval.problems=2",
                "eval.max_new_tokens=4",
                "eval.every=2",
                "output.progress=false",
                "train.threads=1",
                "train.steps=4",
                "train.save_every=1",
                "curriculum.name=cosine",
                "reschedule.rank_by=acc",
                "reschedule.scores=online",
            ]
        )
        == 0
    )
    return out
