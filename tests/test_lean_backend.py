"""The lean backend's paged cache: cascade attention is attention, a tree holds each distinct token
once, forks join at once, a KV budget bounds the batch without changing what is sampled, and every
block goes back to the pool."""

import pytest
import torch
import torch.nn.functional as F

from treerl.errors import UserError
from treerl.rollout import lean_backend
from treerl.rollout.backend import Forks
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import LeanDecoder, Plan, lean_decoder
from treerl.rollout.lean_backend import BLOCK, LeanBackend, blocks, gib_up, least_blocks

PROMPTS = ["37+52\n", "1+2-3+4-5+6\n", "9\n"]


def cascade_attention(dtype: torch.dtype, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0 and 2 share group 0's prefix (5 slots), row 1 group 1's (3 slots); own tokens 2, 4
    and 1. Eight query heads of 64 dimensions over two key-value heads, queries and keys N(0,
    scale^2). The paged output [3, H, D] in `dtype`, and sdpa in fp32 over each row's prefix and own
    slots gathered."""
    torch.manual_seed(0)
    kv, dim, heads = 2, 64, 8
    keys, values = (torch.randn(kv, 40, dim) * scale).to(dtype), torch.randn(kv, 40, dim).to(dtype)
    prefixes = [torch.tensor([3, 4, 5, 6, 7]), torch.tensor([20, 21, 22])]
    owns = [torch.tensor([30, 31]), torch.tensor([10, 11, 12, 13]), torch.tensor([35])]
    group = torch.tensor([0, 1, 0])
    shared = torch.zeros(2, 5, dtype=torch.long)
    shared[0], shared[1, :3] = prefixes[0], prefixes[1]
    own = torch.zeros(3, 4, dtype=torch.long)
    for row, slots in enumerate(owns):
        own[row, : len(slots)] = slots
    columns = torch.arange(5)
    visible = torch.cat(
        [
            torch.stack([columns < len(prefixes[g]) for g in group.tolist()]),
            torch.stack([torch.arange(4) < len(slots) for slots in owns]),
        ],
        dim=1,
    )
    plan = Plan(
        own[:, 0], own, shared, group, torch.tensor([0, 0, 1]), 2, visible, 1
    )  # blocks of one slot
    decoder = LeanDecoder.__new__(LeanDecoder)
    decoder.kv_heads = kv
    q = (torch.randn(3, heads, dim) * scale).to(dtype)
    expected = []
    for row in range(3):
        slots = torch.cat([prefixes[int(group[row])], owns[row]])
        k, v = (t[:, slots].float().repeat_interleave(heads // kv, 0) for t in (keys, values))
        expected.append(
            F.scaled_dot_product_attention(q[row].float()[:, None], k, v, scale=dim**-0.5)[:, 0]
        )
    return decoder.attend_paged(q, keys, values, plan, scaling=dim**-0.5), torch.stack(expected)


def test_cascade_attention_is_attention_over_the_whole_context():
    out, expected = cascade_attention(torch.float32, scale=1.0)
    assert torch.allclose(out, expected, atol=1e-6)


def test_cascade_attention_in_bf16_computes_in_fp32():
    """bf16 queries and keys of std 2.5 (scores up to about 20, as in a trained model's sharp
    heads): the output is fp32 attention rounded to bf16 once, a mean relative error below bf16's
    2^-9 (1.1e-3 here; scores and probabilities in bf16 gave 2.9e-3)."""
    out, expected = cascade_attention(torch.bfloat16, scale=2.5)
    assert out.dtype == torch.bfloat16
    assert float((out.float() - expected).abs().mean() / expected.abs().mean()) < 2.0**-9


def backend_sample(policy, prompts, max_new_tokens, forks=None, budget=0.0, seed=0):
    model, tok = policy
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    backend = LeanBackend(lean_decoder(model), budget)
    keys = row_keys(torch.Generator().manual_seed(seed), len(ids), "cpu")
    return (
        backend,
        ids,
        backend.sample(ids, keys, max_new_tokens, Sampling(), tok.eos_token_id, forks),
    )


def count_steps(monkeypatch):
    rows = []
    real = LeanDecoder.step
    monkeypatch.setattr(
        LeanDecoder,
        "step",
        lambda self, tokens, *args: rows.append(len(tokens)) or real(self, tokens, *args),
    )
    return rows


def preemptions(monkeypatch):
    """How many rows each `make_room` call preempted."""
    counts = []
    real = LeanBackend.make_room

    def make_room(self, call, pool, rows, tokens):
        kept, tokens = real(self, call, pool, rows, tokens)
        counts.append(len(rows.sequence) - len(kept.sequence))
        return kept, tokens

    monkeypatch.setattr(LeanBackend, "make_room", make_room)
    return counts


def test_sampled_log_probs_enter_autograd_as_old_log_probs(policy):
    """The decoding runs under inference mode, whose tensors autograd refuses to save for backward:
    the sequences' log-probs are ordinary tensors, which a loss can multiply by a tensor that
    requires grad and differentiate."""
    _, _, sequences = backend_sample(policy, PROMPTS, 8, Forks(branching=2, depth=2, step_tokens=4))
    weight = torch.ones((), requires_grad=True)
    loss = sum((weight * seq.logprobs.exp()).sum() for seq in sequences)
    loss.backward()
    assert not any(seq.logprobs.is_inference() for seq in sequences)
    assert weight.grad is not None and float(weight.grad) > 0


def test_a_tree_holds_each_distinct_token_once_and_forks_join_at_once(policy, monkeypatch):
    steps = count_steps(monkeypatch)
    forks = Forks(branching=3, depth=3, step_tokens=4)
    backend, ids, sequences = backend_sample(policy, PROMPTS[:2] * 3, 12, forks)
    assert any(seq.start == 8 for seq in sequences)  # forks of forks: the last level
    own = sum(blocks(len(seq.token_ids)) for seq in sequences)
    prompts = sum(blocks(len(p)) for p in {tuple(p) for p in ids})
    paths = sum(len(ids[seq.prompt]) + seq.start + len(seq.token_ids) for seq in sequences)
    assert backend.pool is not None and backend.pool.peak <= own + prompts  # nothing is copied
    assert backend.pool.peak * BLOCK < paths  # which copying prefixes would need
    assert (
        len(steps) <= 12
    )  # forks join the step their prefix is decoded: no level waits for the one above


def test_a_kv_budget_bounds_the_pool_not_the_batch_and_changes_no_sample(policy, monkeypatch):
    """A pool of 4 full sequences' blocks, 24 sequences of up to 64 tokens (3 to 64 here): the pool
    is never exceeded, yet once short sequences have finished more than 4 rows run at once (memory
    goes to the tokens expected), and every sequence samples what it samples with all the memory it
    needs."""
    steps = count_steps(monkeypatch)
    _, _, free = backend_sample(policy, PROMPTS * 8, 64)
    steps.clear()
    decoder = lean_decoder(policy[0])
    room = 4 * blocks(64) + sum(
        blocks(len(policy[1](p, add_special_tokens=False)["input_ids"])) for p in PROMPTS
    )
    backend, _, bounded = backend_sample(
        policy, PROMPTS * 8, 64, budget=room * LeanBackend(decoder).block_bytes() / 2**30
    )
    assert backend.pool is not None and backend.pool.size == room and backend.pool.peak <= room
    assert steps[0] == 4 and max(steps) > 4
    assert [s.token_ids for s in bounded] == [s.token_ids for s in free]
    for a, b in zip(bounded, free):
        assert torch.allclose(a.logprobs, b.logprobs, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize(
    "forks, budget_blocks",
    [(None, 0), (None, 12), (Forks(branching=2, depth=2, step_tokens=6), 0)],
    ids=["flat", "flat, blocks reused", "forks"],
)
def test_slots_never_written_change_no_bit_of_a_sample(policy, monkeypatch, forks, budget_blocks):
    """The pool's and the slab's keys, and a flat call's pool values, are not zeroed (`unset`):
    slots never written, NaN here, sample exactly what zeroed ones sample, as attention masks their
    scores whatever they are and reads no value there that was not zeroed first; also where a tight
    budget hands the blocks of finished prompts and rows to others."""
    block_bytes = LeanBackend(lean_decoder(policy[0])).block_bytes()
    samples = {}
    for fill in (0.0, float("nan")):
        monkeypatch.setattr(
            lean_backend, "unset", lambda like, shape, fill=fill: like.new_full(shape, fill)
        )
        samples[fill] = backend_sample(
            policy, PROMPTS * 4, 24, forks, budget=budget_blocks * block_bytes / 2**30
        )[2]
    zeroed, nan = samples.values()
    assert [s.token_ids for s in nan] == [s.token_ids for s in zeroed]
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(nan, zeroed))


def short_ones_first(tok, monkeypatch):
    """18 prompts (PROMPTS six times) and their keys: the first six sequences stop after 2 tokens,
    no other stops."""
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS * 6]
    keys = row_keys(torch.Generator().manual_seed(2), len(ids), "cpu")
    short = set(keys[:6].tolist())
    real_pick = lean_backend.pick

    def pick(logits, row_keys_, positions, sampling, u=None):
        logits = logits.clone()
        ends = torch.tensor([k in short for k in row_keys_.tolist()]) & (positions == 1)
        logits[:, tok.eos_token_id] = float("-inf")
        logits[ends] = float("-inf")
        logits[ends, tok.eos_token_id] = 0.0
        return real_pick(logits, row_keys_, positions, sampling, u)

    monkeypatch.setattr(lean_backend, "pick", pick)
    return ids, keys


@pytest.mark.parametrize(
    "forks, spare", [(None, 2), (Forks(branching=2, depth=2, step_tokens=20), 30)]
)
def test_preempted_sequences_replay_and_sample_on_as_if_never_stopped(
    policy, monkeypatch, forks, spare
):
    """Six sequences that stop after 2 tokens, then twelve (or twelve trees) that never stop, in a
    pool of two full sequences and `spare` blocks (a tree's fork prefixes hold blocks while their
    continuations wait). The short ones make the long ones look short: too many join, outgrow the
    pool and are preempted; each comes back, replays its tokens and samples the same tokens and
    log-probs as with all the memory it needs (to float noise)."""
    model, tok = policy
    eos = tok.eos_token_id
    ids, keys = short_ones_first(tok, monkeypatch)
    preempted = preemptions(monkeypatch)
    decoder = lean_decoder(model)
    free = LeanBackend(decoder).sample(ids, keys, 40, Sampling(), eos, forks)
    assert sum(preempted) == 0
    room = 2 * blocks(40) + sum(blocks(len(p)) for p in {tuple(p) for p in ids}) + spare
    tight = LeanBackend(decoder, room * LeanBackend(decoder).block_bytes() / 2**30)
    bounded = tight.sample(ids, keys, 40, Sampling(), eos, forks)
    assert sum(preempted) > 3 and tight.pool is not None and tight.pool.peak <= room
    assert [(s.parent, s.start, s.token_ids) for s in bounded] == [
        (s.parent, s.start, s.token_ids) for s in free
    ]
    assert [len(s.token_ids) for s in bounded[:6]] == [2] * 6
    assert all(len(s.token_ids) == 40 - s.start for s in bounded[6:])
    for a, b in zip(bounded, free):
        assert torch.allclose(a.logprobs, b.logprobs, rtol=0.0, atol=1e-5)


def test_least_blocks_by_hand():
    """Prompts of 20 and 3 tokens (2 + 1 blocks of 16), 4 rows of trees with N = 2, D = 3, s = 16
    and 40 new tokens: 4 x (1 + 2) inner segments of 1 block, and a leaf of 40 - 2 x 16 = 8 tokens
    (1 block): 16. Flat: the prompts and one sequence of 40 tokens (3 blocks): 6; one child a node
    never forks, so it is flat."""
    assert least_blocks([20, 3], 4, Forks(branching=2, depth=3, step_tokens=16), 40) == 16
    assert least_blocks([20, 3], 4, None, 40) == least_blocks([20, 3], 4, Forks(1, 3, 16), 40) == 6
    assert gib_up(0.00012207) == 0.000123 and gib_up(2.0) == 2.0 and gib_up(1234.5) == 1240.0


def test_a_call_out_of_room_names_the_least_budget_which_never_runs_out(policy, monkeypatch):
    """Trees of two levels of 20 tokens over 18 prompts' rows, six of which stop at once and make
    the others look short: with 28 blocks the waiting forks' prefixes fill the pool with one row
    left, and the call stops in one line naming least_blocks = 3 prompt blocks + 18 x 2 inner + 2
    leaf = 41 blocks in GiB; with that budget the call preempts and samples what it samples with all
    the memory it needs."""
    model, tok = policy
    ids, keys = short_ones_first(tok, monkeypatch)
    forks = Forks(branching=2, depth=2, step_tokens=20)
    decoder = lean_decoder(model)
    block = LeanBackend(decoder).block_bytes() / 2**30
    assert least_blocks([len(p) for p in {tuple(p) for p in ids}], len(ids), forks, 40) == 41
    with pytest.raises(
        UserError, match=f"raise it to {gib_up(41 * block):g}, which no sampling of these 18 "
    ):
        LeanBackend(decoder, 28 * block).sample(ids, keys, 40, Sampling(), tok.eos_token_id, forks)
    preempted = preemptions(monkeypatch)
    free = LeanBackend(decoder).sample(ids, keys, 40, Sampling(), tok.eos_token_id, forks)
    least = LeanBackend(decoder, 41 * block).sample(
        ids, keys, 40, Sampling(), tok.eos_token_id, forks
    )
    assert sum(preempted) > 0
    assert [(s.parent, s.start, s.token_ids) for s in least] == [
        (s.parent, s.start, s.token_ids) for s in free
    ]


def test_a_budget_below_one_sequence_is_a_user_error(policy):
    with pytest.raises(UserError, match="rollout.kv_budget_gib"):
        backend_sample(policy, PROMPTS, 24, budget=1e-9)


SHAPES = [
    (None, None),
    (Forks(branching=3, depth=3, step_tokens=4), None),
    (None, 2),
    (Forks(branching=2, depth=2, step_tokens=20), 30),
]
"""Flat and forked calls, with all the memory a call can need and (`spare` blocks above two full
sequences and the prompts) under a budget tight enough to preempt."""


def sample_shape(policy, forks, spare, seed=0) -> LeanBackend:
    """A backend after sampling PROMPTS six times, 40 tokens, in a call of this shape."""
    model, tok = policy
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS * 6]
    decoder = lean_decoder(model)
    room = (
        0
        if spare is None
        else 2 * blocks(40) + sum(blocks(len(p)) for p in {tuple(p) for p in ids}) + spare
    )
    backend = LeanBackend(decoder, room * LeanBackend(decoder).block_bytes() / 2**30)
    keys = row_keys(torch.Generator().manual_seed(seed), len(ids), "cpu")
    backend.sample(ids, keys, 40, Sampling(), tok.eos_token_id, forks)
    return backend


@pytest.mark.parametrize("forks, spare", SHAPES)
def test_every_block_is_back_in_the_pool_after_each_sample_call(policy, monkeypatch, forks, spare):
    """A row gives back its own blocks when it stops or is preempted, a group those of its prefix
    when its last sequence finishes, a fork's shared last block is held by both: after each call no
    block has a holder and each is free exactly once (`SHAPES`)."""
    preempted = preemptions(monkeypatch)
    for seed in range(3):
        pool = sample_shape(policy, forks, spare, seed).pool
        assert pool is not None and pool.peak > 0
        assert pool.holders == [0] * pool.size and sorted(pool.free) == list(range(pool.size))
    assert (sum(preempted) > 0) == (spare is not None)


@pytest.mark.parametrize("forks, spare", SHAPES)
def test_a_decode_step_reads_back_only_its_tokens_and_logprobs(policy, monkeypatch, forks, spare):
    """The bookkeeping is on the host: from one draw to the next, the only reads of the device are
    the tokens drawn and their log-probs (two `tolist`), whatever joins, leaves, forks or is
    preempted in between."""
    reads, at_draws = [], []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_pick = lean_backend.pick
    monkeypatch.setattr(
        lean_backend, "pick", lambda *args: at_draws.append(list(reads)) or real_pick(*args)
    )
    sample_shape(policy, forks, spare)
    between = [later[len(earlier) :] for earlier, later in zip(at_draws, at_draws[1:])]
    assert len(between) > 30 and [read for read in between if read != ["tolist"] * 2] == []


@pytest.mark.parametrize("forks, spare", SHAPES)
def test_the_kept_layout_is_the_one_the_rows_would_build(policy, monkeypatch, forks, spare):
    """A layout kept across steps (moved on by `advance`, given the blocks rows open by `opened`)
    equals the one `Layout.of` builds from the rows' bookkeeping at that step; the B running rows
    hold the slab's first B rows, one each, and none is held when the call returns."""
    kept_steps, calls = [], []
    real_feed = LeanBackend.feed

    def feed(self, call, pool, rows, tokens):
        kept, calls[:] = call.layout, [call]
        assert sorted(rows.slab) == list(range(call.slab.held)) == list(range(len(rows.slab)))
        if kept is not None and kept.contexts is not None:  # kept from an earlier step
            fresh = lean_backend.Layout.of(call, rows, tokens.device)
            opening = torch.tensor([used % BLOCK == 0 for used in rows.used()])
            assert torch.equal(kept.cursor[:4], fresh.cursor[:4])
            assert torch.equal(kept.cursor[4][~opening], fresh.cursor[4][~opening])
            assert torch.equal(kept.own_at, fresh.own_at)
            assert torch.equal(kept.own, fresh.own) and torch.equal(kept.visible, fresh.visible)
            assert (kept.furthest, kept.shared_slot) == (fresh.furthest, fresh.shared_slot)
            kept_steps.append(len(rows.sequence))
        return real_feed(self, call, pool, rows, tokens)

    monkeypatch.setattr(LeanBackend, "feed", feed)
    sample_shape(policy, forks, spare)
    assert len(kept_steps) >= 8 and calls[0].slab.held == 0


def test_entropy_trees_fit_the_least_budget_computed_for_their_calls(policy):
    """Sampled level by level (N = 3, D = 3, s = 4, 12 tokens), the level-2 call of forks holds at
    most 3^2 = 9 fork points per prompt, each its prompt and up to 8 tokens, whose 2 rows each
    sample at most 12 - 4 - 1 = 7 tokens (2 fork points with branch_top_k = 2). The least budget
    takes the largest call, more than fixed branching needs; at that budget the trees sample as
    with all the memory they need."""
    import random

    from treerl.config import RolloutConfig
    from treerl.rollout.sampling import TreeShape, least_kv_gib, sample_problem_trees
    from treerl.tasks import get_task

    shape = TreeShape(3, 3, 4, 12, "entropy")
    assert shape.forks_call([5, 7], 2) == ([13] * 9 + [15] * 9, 36, 7)
    assert TreeShape(3, 3, 4, 12, "entropy", 2).forks_call([5, 7], 2) == ([13, 13, 15, 15], 8, 7)
    model, tok = policy
    task = get_task("arithmetic")
    problems = [task.sample("hard", random.Random(i)) for i in range(2)]
    backend = LeanBackend(lean_decoder(model))
    least = least_kv_gib(backend, tok, task, problems, 2, shape)
    assert least > least_kv_gib(backend, tok, task, problems, 2, TreeShape(3, 3, 4, 12))

    def trees(budget):
        found = sample_problem_trees(
            model,
            tok,
            task,
            problems,
            shape,
            temperature=1.0,
            top_p=1.0,
            generator=torch.Generator().manual_seed(0),
            rollout=RolloutConfig(kv_budget_gib=budget),
        )
        return [[node.token_ids for _, node in tree.walk()] for tree in found]

    assert trees(least) == trees(0.0)
