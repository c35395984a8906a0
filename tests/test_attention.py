"""On the CPU, attention runs in fp32 under bf16 autocast, in the transformers forward and in the
lean one alike."""

import pytest
import torch
import torch.nn.functional as F

from treerl.loop.batch import completion_logprobs, make_batch
from treerl.models import load_policy
from treerl.models.attention import NAME
from treerl.rollout import engine
from treerl.rollout.engine import generate
from treerl.rollout.lean import LeanDecoder


@pytest.fixture
def attention_calls(monkeypatch):
    """(query dtype, whether autocast was on) of every scaled_dot_product_attention call."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        calls.append((query.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_loaded_models_use_it_and_do_not_save_it(model_dir, tmp_path):
    model, tokenizer = load_policy(str(model_dir))
    assert model.config._attn_implementation == NAME
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # a model folder needs its tokenizer to load
    assert NAME not in (tmp_path / "config.json").read_text()
    assert load_policy(str(tmp_path))[0].config._attn_implementation == NAME


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
@pytest.mark.parametrize("lean", [True, False])
def test_sampling_attention_is_fp32_under_bf16_autocast(
    model_dir, attention_calls, monkeypatch, lean, weights
):
    model, tok = load_policy(str(model_dir), dtype=weights)
    if not lean:
        monkeypatch.setattr(engine, "lean_decoder", lambda model: None)
    paged, real = (
        [],
        LeanDecoder.attend_paged,
    )  # the lean decode steps' attention (prefill runs sdpa)
    monkeypatch.setattr(
        LeanDecoder,
        "attend_paged",
        lambda self, q, *args: (
            paged.append((q.dtype, torch.is_autocast_enabled("cpu"))) or real(self, q, *args)
        ),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generate(model, tok, ["1+2\n"] * 2, max_new_tokens=3, greedy=True)
    assert attention_calls and set(attention_calls) == {(torch.float32, False)}
    assert (torch.float32, False) in paged if lean else not paged


def test_training_attention_is_fp32_and_the_matmuls_bf16(policy, attention_calls):
    model, _ = policy
    batch = make_batch([[3, 4, 5], [3, 4, 5]], [[6, 7], [8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=batch.completion_ids).logits
        logprobs, _ = completion_logprobs(model, batch)
    assert logits.dtype == torch.bfloat16  # the head ran under autocast
    logprobs.sum().backward()
    model.zero_grad(set_to_none=True)
    assert set(attention_calls) == {(torch.float32, False)}


def test_without_autocast_attention_keeps_the_model_dtype(model_dir, attention_calls):
    model, tok = load_policy(str(model_dir), dtype="bfloat16")
    generate(model, tok, ["1+2\n"], max_new_tokens=2, greedy=True)
    model(input_ids=torch.tensor([[3, 4, 5]]))
    assert set(attention_calls) == {(torch.bfloat16, False)}


def test_lean_and_transformers_sample_alike_under_bf16_autocast(policy, monkeypatch):
    model, tok = policy

    def draw():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return generate(
                model,
                tok,
                ["37+52\n", "9\n"] * 3,
                max_new_tokens=12,
                temperature=0.7,
                generator=torch.Generator().manual_seed(3),
            )

    lean = draw()
    monkeypatch.setattr(engine, "lean_decoder", lambda model: None)
    reference = draw()
    assert lean.completion_ids == reference.completion_ids
    for a, b in zip(lean.logprobs, reference.logprobs):
        assert torch.allclose(a, b, rtol=0.0, atol=1e-5)
