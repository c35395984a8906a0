"""The lean backend's paged cache: cascade attention is attention, a tree holds each distinct token once, forks
join at once, and a KV budget bounds the batch without changing what is sampled."""

import pytest
import torch
import torch.nn.functional as F

from treerl.errors import UserError
from treerl.rollout.backend import Forks
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import LeanDecoder, Plan, lean_decoder
from treerl.rollout.lean_backend import BLOCK, LeanBackend, blocks

PROMPTS = ["37+52\n", "1+2-3+4-5+6\n", "9\n"]


def test_cascade_attention_is_attention_over_the_whole_context():
    """Rows 0 and 2 share group 0's prefix (5 slots), row 1 group 1's (3 slots); own tokens 2, 4 and 1. Four
    query heads over two key-value heads. Against sdpa over each row's prefix and own slots gathered."""
    torch.manual_seed(0)
    kv, dim, heads = 2, 8, 4
    keys, values = torch.randn(kv, 40, dim), torch.randn(kv, 40, dim)
    prefixes = [torch.tensor([3, 4, 5, 6, 7]), torch.tensor([20, 21, 22])]
    owns = [torch.tensor([30, 31]), torch.tensor([10, 11, 12, 13]), torch.tensor([35])]
    group = torch.tensor([0, 1, 0])
    shared = torch.zeros(2, 5, dtype=torch.long)
    shared[0], shared[1, :3] = prefixes[0], prefixes[1]
    own = torch.zeros(3, 4, dtype=torch.long)
    for row, slots in enumerate(owns):
        own[row, :len(slots)] = slots
    columns = torch.arange(5)
    visible = torch.cat([torch.stack([columns < len(prefixes[g]) for g in group.tolist()]),
                         torch.stack([torch.arange(4) < len(slots) for slots in owns])], dim=1)
    plan = Plan(own[:, 0], own, shared, group, torch.tensor([0, 0, 1]), 2, visible)
    decoder = LeanDecoder.__new__(LeanDecoder)
    decoder.kv_heads = kv
    q = torch.randn(3, heads, dim)
    out = decoder.attend_paged(q, keys, values, plan, scaling=0.3)
    for row in range(3):
        slots = torch.cat([prefixes[int(group[row])], owns[row]])
        k = keys[:, slots].repeat_interleave(heads // kv, 0)
        v = values[:, slots].repeat_interleave(heads // kv, 0)
        expected = F.scaled_dot_product_attention(q[row][:, None], k, v, scale=0.3)[:, 0]
        assert torch.allclose(out[row], expected, atol=1e-6)


def backend_sample(policy, prompts, max_new_tokens, forks=None, budget=0.0, seed=0):
    model, tok = policy
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    backend = LeanBackend(lean_decoder(model), budget)
    keys = row_keys(torch.Generator().manual_seed(seed), len(ids), "cpu")
    return backend, ids, backend.sample(ids, keys, max_new_tokens, Sampling(), tok.eos_token_id, forks)


def count_steps(monkeypatch):
    rows = []
    real = LeanDecoder.step
    monkeypatch.setattr(LeanDecoder, "step", lambda self, tokens, *args: rows.append(len(tokens))
                        or real(self, tokens, *args))
    return rows


def test_a_tree_holds_each_distinct_token_once_and_forks_join_at_once(policy, monkeypatch):
    steps = count_steps(monkeypatch)
    forks = Forks(branching=3, depth=3, step_tokens=4)
    backend, ids, sequences = backend_sample(policy, PROMPTS[:2] * 3, 12, forks)
    assert any(seq.start == 8 for seq in sequences)                       # forks of forks: the last level
    own = sum(blocks(len(seq.token_ids)) for seq in sequences)
    prompts = sum(blocks(len(p)) for p in {tuple(p) for p in ids})
    paths = sum(len(ids[seq.prompt]) + seq.start + len(seq.token_ids) for seq in sequences)
    assert backend.pool is not None and backend.pool.peak <= own + prompts   # nothing is copied
    assert backend.pool.peak * BLOCK < paths                                 # which copying prefixes would need
    assert len(steps) <= 12   # forks join the step their prefix is decoded: no level waits for the one above


def test_a_kv_budget_bounds_the_batch_and_changes_no_sample(policy, monkeypatch):
    steps = count_steps(monkeypatch)
    _, _, free = backend_sample(policy, PROMPTS * 8, 24)
    unbounded = len(steps)
    steps.clear()
    decoder = lean_decoder(policy[0])
    room = 4 * blocks(24) + sum(blocks(len(policy[1](p, add_special_tokens=False)["input_ids"])) for p in PROMPTS)
    backend, _, bounded = backend_sample(policy, PROMPTS * 8, 24,
                                         budget=room * LeanBackend(decoder).block_bytes() / 2**30)
    assert max(steps) <= 4 < len(PROMPTS * 8) and len(steps) > unbounded     # at most 4 rows at once, refilled
    assert backend.pool is not None and backend.pool.size == room
    assert [s.token_ids for s in bounded] == [s.token_ids for s in free]
    for a, b in zip(bounded, free):
        assert torch.allclose(a.logprobs, b.logprobs, rtol=0.0, atol=1e-5)


def test_a_budget_below_one_sequence_is_a_user_error(policy):
    with pytest.raises(UserError, match="rollout.kv_budget_gib"):
        backend_sample(policy, PROMPTS, 24, budget=1e-9)
