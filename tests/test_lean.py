"""The lean backend samples what the transformers backend samples (to the bit where both run the
same operations, to float rounding where cascade attention sums differently), and steps aside where
it does not fit."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from treerl.rollout import engine
from treerl.rollout.engine import generate
from treerl.rollout.lean import lean_decoder
from treerl.rollout.tree import sample_trees

PROMPTS = ["37+52\n", "1+2-3+4-5+6\n", "9\n"] * 3  # different lengths: left padding


def draw(model, tok):
    return generate(
        model,
        tok,
        PROMPTS,
        max_new_tokens=16,
        temperature=0.7,
        generator=torch.Generator().manual_seed(5),
    )


def lean_then_transformers(sample, monkeypatch):
    """What `sample()` gives through the lean forward, then through the transformers forward."""
    lean = sample()
    monkeypatch.setattr(engine, "lean_decoder", lambda model: None)
    return lean, sample()


def assert_same_samples(lean, reference, atol):
    assert lean.completion_ids == reference.completion_ids
    for a, b in zip(lean.logprobs, reference.logprobs):
        assert torch.allclose(a, b, rtol=0.0, atol=atol)


def test_the_tiny_model_runs_lean(policy):
    assert lean_decoder(policy[0]) is not None


def test_lean_samples_equal_transformers_samples(policy, monkeypatch):
    assert_same_samples(*lean_then_transformers(lambda: draw(*policy), monkeypatch), atol=1e-5)


def test_lean_greedy_equals_transformers_greedy(policy, monkeypatch):
    lean, reference = lean_then_transformers(
        lambda: generate(*policy, PROMPTS, max_new_tokens=16, greedy=True), monkeypatch
    )
    assert lean.completion_ids == reference.completion_ids


def trees(model, tok, branch_at="fixed"):
    found, _ = sample_trees(
        model,
        tok,
        [[3, 4, 5], [6, 7]],
        branching=3,
        depth=3,
        step_tokens=4,
        temperature=1.0,
        generator=torch.Generator().manual_seed(2),
        branch_at=branch_at,
    )
    return [[(path, node.token_ids, node.logprobs) for path, node in tree.walk()] for tree in found]


def assert_same_trees(lean, reference):
    """The same nodes and tokens; log-probs to float rounding (a fork's prefix is read in another
    order)."""
    assert [[(path, ids) for path, ids, _ in tree] for tree in lean] == [
        [(path, ids) for path, ids, _ in tree] for tree in reference
    ]
    for a, b in zip(lean, reference):
        for (_, _, x), (_, _, y) in zip(a, b):
            assert max((abs(u - v) for u, v in zip(x, y)), default=0.0) < 1e-5


def test_forked_lean_caches_give_the_transformers_trees(policy, monkeypatch):
    assert_same_trees(*lean_then_transformers(lambda: trees(*policy), monkeypatch))


def test_both_backends_record_the_same_entropies_and_fork_at_them_alike(policy, monkeypatch):
    assert_same_trees(*lean_then_transformers(lambda: trees(*policy, "entropy"), monkeypatch))


def test_grouped_query_attention_with_biasless_llama(policy, monkeypatch):
    """Two query heads per key-value head, no projection biases: the lean forward's log-probs
    match."""
    _, tok = policy
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    assert lean_decoder(model) is not None
    assert_same_samples(*lean_then_transformers(lambda: draw(model, tok), monkeypatch), atol=1e-5)


def test_other_architectures_sample_through_transformers(policy):
    _, tok = policy
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=64,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    assert lean_decoder(model) is None
    gen = draw(model, tok)
    assert all(1 <= len(ids) <= 16 for ids in gen.completion_ids)


def family(kind: str, tok):
    """A tiny random model of each architecture the lean forward covers, in its own transformers
    class."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    if kind == "qwen2.5":  # biases on q, k and v
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if kind == "qwen3":  # RMSNorm on each head's queries and keys
        return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16)).eval()
    if kind == "llama3":  # Llama 3.x's rotary scaling
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope)).eval()
    if kind == "yarn":  # a scaled rotary with an attention factor on cos and sin
        rope = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope)).eval()
    return MistralForCausalLM(MistralConfig(**common, sliding_window=None)).eval()


@pytest.mark.parametrize("kind", ["qwen2.5", "qwen3", "llama3", "yarn", "mistral"])
def test_each_family_samples_lean_as_transformers_does(policy, monkeypatch, kind):
    model = family(kind, policy[1])
    assert lean_decoder(model) is not None
    assert_same_samples(
        *lean_then_transformers(lambda: draw(model, policy[1]), monkeypatch), atol=1e-5
    )
    assert_same_trees(*lean_then_transformers(lambda: trees(model, policy[1]), monkeypatch))


def test_a_dynamic_rope_is_left_to_transformers_and_said_once(capsys):
    from treerl.rollout import lean

    lean._told.discard("llama")
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        )
    )
    assert lean_decoder(model) is None and lean_decoder(model) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "treerl: warning: a llama model samples through its transformers"
    )
