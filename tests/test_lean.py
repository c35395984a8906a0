"""The lean forward samples exactly what the transformers forward samples, and steps aside where it does not fit."""

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from treerl.rollout import engine
from treerl.rollout.engine import feed, generate, prefill, sample_tokens, uniforms
from treerl.rollout.lean import GraphedStep, KVCache, lean_decoder
from treerl.rollout.tree import sample_trees

PROMPTS = ["37+52\n", "1+2-3+4-5+6\n", "9\n"] * 3   # different lengths: left padding


def draw(model, tok):
    return generate(model, tok, PROMPTS, max_new_tokens=16, temperature=0.7, generator=torch.Generator().manual_seed(5))


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


def test_lean_samples_equal_transformers_samples_to_the_bit(policy, monkeypatch):
    assert_same_samples(*lean_then_transformers(lambda: draw(*policy), monkeypatch), atol=0.0)


def test_lean_greedy_equals_transformers_greedy(policy, monkeypatch):
    lean, reference = lean_then_transformers(lambda: generate(*policy, PROMPTS, max_new_tokens=16, greedy=True),
                                             monkeypatch)
    assert lean.completion_ids == reference.completion_ids


def trees(model, tok):
    found, _ = sample_trees(model, tok, [[3, 4, 5], [6, 7]], branching=3, depth=3, step_tokens=4,
                            temperature=1.0, generator=torch.Generator().manual_seed(2))
    return [[(node.token_ids, node.logprobs) for _, node in tree.walk()] for tree in found]


def test_forked_lean_caches_give_the_transformers_trees(policy, monkeypatch):
    lean, reference = lean_then_transformers(lambda: trees(*policy), monkeypatch)
    assert lean == reference   # token ids and log-probs, to the bit


def test_grouped_query_attention_with_biasless_llama(policy, monkeypatch):
    """Two query heads per key-value head, no projection biases: the lean forward's log-probs match."""
    _, tok = policy
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    assert lean_decoder(model) is not None
    assert_same_samples(*lean_then_transformers(lambda: draw(model, tok), monkeypatch), atol=0.0)


def test_other_architectures_sample_through_transformers(policy):
    _, tok = policy
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    assert lean_decoder(model) is None
    gen = draw(model, tok)
    assert all(1 <= len(ids) <= 16 for ids in gen.completion_ids)


def family(kind: str, tok):
    """A tiny random model of each architecture the lean forward covers, in its own transformers class."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if kind == "qwen2.5":    # biases on q, k and v
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if kind == "qwen3":      # RMSNorm on each head's queries and keys
        return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16)).eval()
    if kind == "llama3":     # Llama 3.x's rotary scaling
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        return LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope)).eval()
    if kind == "yarn":       # a scaled rotary with an attention factor on cos and sin
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
        return LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope)).eval()
    return MistralForCausalLM(MistralConfig(**common, sliding_window=None)).eval()


@pytest.mark.parametrize("kind", ["qwen2.5", "qwen3", "llama3", "yarn", "mistral"])
def test_each_family_samples_lean_to_the_bit(policy, monkeypatch, kind):
    model = family(kind, policy[1])
    assert lean_decoder(model) is not None
    assert_same_samples(*lean_then_transformers(lambda: draw(model, policy[1]), monkeypatch), atol=0.0)
    lean, reference = lean_then_transformers(lambda: trees(model, policy[1]), monkeypatch)
    assert lean == reference


def test_a_dynamic_rope_is_left_to_transformers_and_said_once(capsys):
    from treerl.rollout import lean

    lean._told.discard("llama")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2,
                                         rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                          "factor": 2.0}))
    assert lean_decoder(model) is None and lean_decoder(model) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("treerl: warning: a llama model samples through its transformers")


def test_reserve_grows_the_buffers_and_keeps_what_they_held():
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    cache = KVCache([(keys.clone(), -keys.clone())], width=3)
    cache.reserve(0)
    assert cache.layers[0][0].shape[2] == 3
    cache.reserve(5)
    grown_keys, grown_values = cache.layers[0]
    assert grown_keys.shape == (2, 1, 8, 2) and cache.width == 3
    assert torch.equal(grown_keys[:, :, :3], keys) and torch.equal(grown_values[:, :, :3], -keys)


def test_gather_copies_chosen_rows_of_several_caches_with_room_to_grow():
    keys = torch.arange(3 * 1 * 4 * 2, dtype=torch.float32).view(3, 1, 4, 2)
    roomy = KVCache([(keys.clone(), -keys.clone())], width=2)   # columns 2 and 3 are not filled yet
    tight = KVCache([(keys[:, :, :2] + 100, -keys[:, :, :2] - 100)], width=2)   # no spare column: copied apart
    chosen = KVCache.gather([(roomy, torch.tensor([2, 0, 2])), (tight, torch.tensor([1]))], width=2, room=2)
    chosen_keys, chosen_values = chosen.layers[0]
    assert chosen_keys.shape == (4, 1, 4, 2) and chosen.width == 2
    expected = torch.cat([keys[[2, 0, 2], :, :2], keys[[1], :, :2] + 100])
    assert torch.equal(chosen_keys[:, :, :2], expected) and torch.equal(chosen_values[:, :, :2], -expected)
    chosen_keys[0, 0, 0, 0] = -1.0
    assert roomy.layers[0][0][2, 0, 0, 0] != -1.0   # a copy, not a view


class EagerReplay(GraphedStep):
    """GraphedStep with each capture replaced by running its step eagerly: the static-shape steps, on the CPU."""

    def capture(self, span):
        self.captured = [*getattr(self, "captured", []), span]
        logits = self.step(span)
        return SimpleNamespace(replay=lambda: logits.copy_(self.step(span))), logits


@torch.no_grad()
@pytest.mark.parametrize("autocast", [False, True])
def test_static_shape_steps_give_the_logits_of_growing_ones(policy, monkeypatch, autocast):
    """What CUDA graphs replay: a fixed attention span under a mask, the column to write as a tensor, fp32 weights
    and cache under bf16 autocast too. The room past the prompt starts as NaN, as uninitialised memory may."""
    model, tok = policy
    monkeypatch.setattr(GraphedStep, "SPAN_STEP", 8)   # 12-column prompts and room for 16: three spans
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]

    def run(static: bool):
        state = prefill(model, prompt_ids, tok.pad_token_id, room=16)
        for keys, values in state.cache.layers:
            keys[:, :, state.cache.width:] = values[:, :, state.cache.width:] = float("nan")
        step = EagerReplay(state.lean, state.cache, state.mask) if static else None
        logits = [state.logits]
        for _ in range(15):
            feed(model, state, sample_tokens(state.logits, 1.0, 1.0, uniforms(state.keys, state.generated))[0], step)
            logits.append(state.logits)
        return torch.stack(logits), state, step

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        growing, grown, _ = run(static=False)
        fixed, state, step = run(static=True)
    assert step.captured == [16, 24, 28] and state.cache.width == grown.cache.width == 12 + 15
    assert torch.allclose(fixed, growing, rtol=0.0, atol=1e-5)   # bf16 matmuls on the same inputs: same bits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graph_sampling_matches_eager_sampling(policy, monkeypatch, autocast):
    model, tok = copy.deepcopy(policy[0]).cuda(), policy[1]
    monkeypatch.setattr(GraphedStep, "SPAN_STEP", 8)

    def sample():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return generate(model, tok, PROMPTS, max_new_tokens=100, greedy=True)

    graphed = sample()
    monkeypatch.setattr(engine, "GraphedStep", lambda *args: None)
    eager = sample()
    assert max(map(len, eager.completion_ids)) > 8   # past the first span
    assert graphed.completion_ids == eager.completion_ids
    for a, b in zip(graphed.logprobs, eager.logprobs):
        assert torch.allclose(a, b, rtol=0.0, atol=1e-3 if autocast else 1e-5)
