"""The lean forward samples exactly what the transformers forward samples, and steps aside where it does not fit."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from treerl.rollout import engine
from treerl.rollout.engine import generate
from treerl.rollout.lean import KVCache, lean_decoder
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
    assert_same_samples(*lean_then_transformers(lambda: draw(model, tok), monkeypatch), atol=1e-5)


def test_other_architectures_sample_through_transformers(policy):
    _, tok = policy
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    assert lean_decoder(model) is None
    gen = draw(model, tok)
    assert all(1 <= len(ids) <= 16 for ids in gen.completion_ids)


def test_scaled_rope_is_left_to_transformers():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    assert lean_decoder(model) is None


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
