"""LoRA through peft: only the adapters train and are saved, the lean forward applies them to the
bit, the KL reference is the base model, and an adapter directory loads for evaluation and
resume."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import treerl.loop.trainer as trainer
from test_lean import PROMPTS, assert_same_samples, draw, lean_then_transformers
from test_train import crash_and_resume, parity_reward, read_metrics, tiny_config
from treerl.cli import main
from treerl.config import LoraSettings
from treerl.errors import UserError
from treerl.loop.batch import completion_logprobs, make_batch
from treerl.models import load_policy
from treerl.models.lora import WithoutAdapters
from treerl.rollout.engine import generate
from treerl.rollout.lean import lean_decoder
from treerl.tasks.arithmetic import Arithmetic

LORA = LoraSettings(r=4, alpha=8)


def adapted(model_dir, seed: int = 0, dtype: str = "float32"):
    """The small model with fresh adapters whose B is random (at initialisation B = 0: no effect to
    check)."""
    model, tok = load_policy(str(model_dir), dtype, lora=LORA)
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5)
    return model.eval(), tok


def test_fresh_adapters_freeze_the_base_weights(model_dir):
    model, _ = load_policy(str(model_dir), lora=LORA)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    assert len(trainable) == 2 * 7 * model.config.num_hidden_layers  # A and B on every projection


def test_lean_forward_applies_adapters(model_dir, monkeypatch):
    model, tok = adapted(model_dir)
    assert lean_decoder(model) is not None
    lean, reference = lean_then_transformers(lambda: draw(model, tok), monkeypatch)
    assert_same_samples(lean, reference, atol=1e-5)
    plain, _ = load_policy(str(model_dir))
    assert (
        draw(plain.eval(), tok).completion_ids != lean.completion_ids
    )  # the adapters changed the samples


def test_bf16_weights_with_fp32_adapters_encode_prompts_to_the_bit(model_dir, monkeypatch):
    """peft keeps adapters in fp32 over bf16 weights; the lean forward casts as peft does: the first
    token's distribution (from the prompt's encoding) matches to the bit."""
    model, tok = adapted(model_dir, dtype="bfloat16")
    assert {p.dtype for name, p in model.named_parameters() if "lora_" in name} == {torch.float32}
    lean, reference = lean_then_transformers(
        lambda: generate(model, tok, PROMPTS, max_new_tokens=1, greedy=True), monkeypatch
    )
    assert_same_samples(lean, reference, atol=0.0)


def test_merged_adapters_sample_through_transformers(model_dir):
    model, _ = adapted(model_dir)
    model.merge_adapter()
    assert lean_decoder(model) is None


def test_reference_is_the_base_model_with_the_adapters_off(model_dir):
    model, tok = adapted(model_dir)
    plain, _ = load_policy(str(model_dir))
    batch = make_batch([tok.encode("12+3\n")] * 2, [tok.encode("15\n"), tok.encode("16\n")])
    with torch.no_grad():
        off, _ = completion_logprobs(WithoutAdapters(model), batch)
        base, _ = completion_logprobs(plain.eval(), batch)
        on, _ = completion_logprobs(model, batch)
    assert torch.equal(off, base) and not torch.allclose(on, base)


def test_unknown_target_module_is_a_user_error(model_dir):
    with pytest.raises(UserError, match="model.lora.target_modules"):
        load_policy(str(model_dir), lora=LoraSettings(r=4, target_modules=["no_such_proj"]))


@pytest.mark.slow
def test_lora_run_saves_adapters_that_load_for_evaluation(model_dir, tmp_path, monkeypatch, capsys):
    """Two steps: only adapters change and are saved; the first step's KL to the base is exactly 0
    (B starts at 0); the checkpoint loads with peft, through load_policy (adapters kept, or merged
    for full training)."""
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    run = tmp_path / "run"
    trainer.train(
        tiny_config(
            model_dir,
            "model.lora.r=4",
            "model.lora.alpha=8",
            "train.lr=1e-2",
            "algo.kl_coef=0.1",
            "train.filter_tau=null",
        ),
        run,
    )
    metrics = read_metrics(run)
    assert metrics[0]["kl"] == 0.0 and metrics[1]["kl"] > 0.0
    checkpoint = run / "checkpoints" / "step_2"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert saved and all("lora_A" in key or "lora_B" in key for key in saved)
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "lora_B" in key)
    assert json.loads((checkpoint / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == str(model_dir.resolve())
    by_peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), checkpoint
    ).eval()
    mine, tok = load_policy(str(checkpoint))
    merged, _ = load_policy(str(checkpoint), lora=LoraSettings(r=0))
    assert not isinstance(merged, PeftModel)
    ids = torch.tensor([tok.encode("12+3\n")])
    with torch.no_grad():
        expected = by_peft(input_ids=ids).logits
        assert torch.equal(mine.eval()(input_ids=ids).logits, expected)
        assert torch.allclose(merged.eval()(input_ids=ids).logits, expected, atol=1e-5)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(checkpoint),
                "--json",
                "eval.problems=2",
                "eval.levels=[easy]",
                "eval.max_new_tokens=4",
                "output.progress=false",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["groups"]["easy"]["problems"] == 2


@pytest.mark.slow
def test_lora_resume_reproduces_the_run(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    cfg = tiny_config(
        model_dir,
        "train.steps=4",
        "train.save_every=2",
        "train.lr=1e-2",
        "model.lora.r=4",
        "algo.kl_coef=0.1",
    )
    metrics = crash_and_resume(cfg, tmp_path, monkeypatch)
    assert any(m["grad_norm"] > 0 for m in metrics[2:])


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory):
    """A directory of adapters as a LoRA run saves them (random B), on the small model."""
    model, _ = adapted(model_dir)
    path = tmp_path_factory.mktemp("adapters") / "good"
    model.save_pretrained(path, save_embedding_layers=False)
    return path


def edit_config(**changes):
    def edit(path):
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))

    return edit


def truncate(path):
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def keep_weights(part):
    def edit(path):
        weights = load_file(path / "adapter_model.safetensors")
        save_file(
            {key: t for key, t in weights.items() if part in key},
            path / "adapter_model.safetensors",
        )

    return edit


BROKEN_ADAPTERS = {
    "truncated weights": (truncate, "adapter_model.safetensors is damaged"),
    "target_modules matching nothing": (
        edit_config(target_modules=["no_such_proj"]),
        "adapter_config.json: Target modules {'no_such_proj'} not found",
    ),
    "an edited r": (
        edit_config(r=8),
        "adapter_model.safetensors does not fit adapter_config.json .*torch.Size\\(\\[4",
    ),
    "no weights file": (
        lambda path: (path / "adapter_model.safetensors").unlink(),
        "adapter_model.safetensors does not exist",
    ),
    "a base that is the adapters": (
        lambda path: edit_config(base_model_name_or_path=str(path))(path),
        "adapter_config.json: base_model_name_or_path .* \\(this one\\), not a model",
    ),
    "weights for fewer modules than the config": (
        keep_weights("q_proj"),
        "adapter_model.safetensors holds no weights for 24 of the 28 adapter matrices",
    ),
    "a config naming fewer modules than the weights": (
        edit_config(target_modules=["q_proj"]),
        "adapter_model.safetensors holds 24 adapter matrices that no module takes",
    ),
}


@pytest.mark.parametrize("damage, says", BROKEN_ADAPTERS.values(), ids=BROKEN_ADAPTERS.keys())
def test_a_broken_adapter_directory_is_one_line_naming_the_file(
    adapter_dir, tmp_path, damage, says
):
    broken = tmp_path / "adapters"
    shutil.copytree(adapter_dir, broken)
    damage(broken)
    with pytest.raises(UserError, match=f"^{re.escape(str(broken))}/{says}") as error:
        load_policy(str(broken))
    assert "\n" not in str(error.value)


def test_an_intact_adapter_directory_loads_its_weights(adapter_dir, model_dir):
    model, _ = load_policy(str(adapter_dir))
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    loaded = {
        key.replace(".default", ""): t for key, t in model.state_dict().items() if "lora_" in key
    }
    assert len(saved) == 28 and all(torch.equal(loaded[key], t) for key, t in saved.items())


def same_logits(model, other, tok) -> bool:
    ids = torch.tensor([tok.encode("7+5-8\n")])
    with torch.no_grad():
        return torch.equal(model(input_ids=ids).logits, other(input_ids=ids).logits)


PEFT_OFFLINE = """import sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor([[int(i) for i in sys.argv[3:]]])).logits, sys.argv[2])
"""


@pytest.mark.slow
def test_adapters_of_the_embedded_model_load_through_peft_offline(tiny_adapters, tmp_path):
    """Issue 31 item 7: the adapters name their base by a path transformers opens, so peft's Auto
    class loads them in a Python without treerl and without the Hub (they named it 'tiny', which
    peft looked up on the Hub: five tries, about 90 s, then a failure)."""
    path, model = tiny_adapters
    ids = load_policy("tiny")[1].encode("7+5-8\n")
    subprocess.run(
        [
            sys.executable,
            "-c",
            PEFT_OFFLINE,
            str(path),
            str(tmp_path / "logits.pt"),
            *map(str, ids),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
        timeout=300,
    )
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)


def test_adapters_naming_a_moved_embedded_model_load_on_this_one(tiny_adapters, tmp_path):
    """A base inside another installation of treerl (`.../treerl/models/tiny`, gone) is this
    installation's embedded model of that folder."""
    path, model = tiny_adapters
    moved = tmp_path / "adapters"
    shutil.copytree(path, moved)
    edit_config(base_model_name_or_path="/gone/site-packages/treerl/models/tiny")(moved)
    loaded, tok = load_policy(str(moved))
    assert same_logits(loaded.eval(), model, tok)
