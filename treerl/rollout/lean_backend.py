"""The lean backend: continuous batching over a paged KV cache, on the lean forward of `lean.py`.

- **Paged cache.** Every layer's keys and values live in one pool of blocks of BLOCK token slots. A prompt is
  encoded once, however many sequences continue it; a fork refers to its parent's slots instead of copying them.
  The pool holds each distinct token once: a tree's KV memory grows with its distinct tokens, not its paths.
- **Groups.** Sequences that continue the same prefix (a prompt's samples, a fork point's continuations) form a
  group; decoding reads a group's prefix once for all of its rows (cascade attention, `LeanDecoder.attend_paged`).
- **Continuous batching.** A sequence that stops (EOS or its budget) leaves the batch at once and frees its
  blocks; waiting sequences (more than the KV budget holds, forks as they appear) take its place. Forks join the
  batch the step their fork point is decoded, without encoding anything again.
- **KV budget.** The pool holds at most `kv_budget_gib` (0: all the call can need). A sequence joins only when
  the pool can hold its whole budget, so no running sequence is ever stopped or swapped out.

A sequence's tokens depend on its key and the model only (see `draws.py`); which sequences share its batch
changes the floating-point order of its log-probs' sums, so they agree with a sequence sampled alone to about
1e-6, and its tokens are the same unless a draw falls that close to a boundary.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import torch

from treerl.errors import UserError
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling, pick
from treerl.rollout.hf_backend import left_pad
from treerl.rollout.lean import KVCache, LeanDecoder, Plan

BLOCK = 16
"""Token slots per block of the pool."""
REFILL_SHARE = 8
"""New prompts join the batch once room for 1/REFILL_SHARE of the running rows is free (one prefill for all)."""


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


class Pool:
    """Keys and values of every layer, [KV heads, blocks x BLOCK, head dim] each, and how many holders each block
    has: a sequence holds the blocks of its own tokens, a group those of its prefix. A block without holders is
    free."""

    def __init__(self, decoder: LeanDecoder, size: int, like: torch.Tensor):
        shape = (decoder.kv_heads, size * BLOCK, decoder.head_dim)
        # zeros: padding reads slots that may never be written, and a masked-out NaN would still give 0 x NaN
        self.layers = [(like.new_zeros(shape), like.new_zeros(shape)) for _ in decoder.layers]
        self.holders = [0] * size
        self.free = list(range(size - 1, -1, -1))
        self.peak = 0
        """The most blocks held at once."""

    @property
    def size(self) -> int:
        return len(self.holders)

    def take(self, count: int) -> list[int]:
        taken = [self.free.pop() for _ in range(count)]
        for block in taken:
            self.holders[block] = 1
        self.peak = max(self.peak, self.size - len(self.free))
        return taken

    def hold(self, held: list[int]) -> None:
        for block in held:
            self.holders[block] += 1

    def drop(self, held: list[int]) -> None:
        for block in held:
            self.holders[block] -= 1
            if not self.holders[block]:
                self.free.append(block)


@dataclass
class Group:
    """A prefix shared by the sequences that continue it."""
    slots: torch.Tensor
    """The pool slots of its tokens, in order."""
    held: list[int]
    """The blocks it holds."""
    waiting: int
    """Its sequences not yet finished."""
    joining: int
    """Its sequences not yet in the batch."""
    logits: torch.Tensor | None
    """The next-token logits after the prefix, until its last sequence has joined the batch."""


@dataclass
class Waiting:
    sequence: int
    key: torch.Tensor
    group: int | None
    """None: a prompt's sequence (its group is its prompt's)."""


@dataclass
class Rows:
    """The running sequences, one row each, as tensors over the rows."""
    sequence: torch.Tensor
    key: torch.Tensor
    group: torch.Tensor
    prefix: torch.Tensor
    """Tokens of the group's prefix (where the row's own tokens start)."""
    start: torch.Tensor
    """Tokens the sequence inherited (where its own tokens count from)."""
    length: torch.Tensor
    """Own tokens in the cache."""
    limit: torch.Tensor
    """Own tokens it may sample."""
    table: torch.Tensor
    """[B, blocks] the blocks of its own tokens."""
    promised: torch.Tensor
    """Blocks of its budget not taken yet."""
    logits: torch.Tensor

    def select(self, keep: torch.Tensor) -> Rows:
        return Rows(*(getattr(self, name)[keep] for name in self.__dataclass_fields__))

    def extend(self, other: Rows) -> Rows:
        return Rows(*(torch.cat([getattr(self, name), getattr(other, name)]) for name in self.__dataclass_fields__))

    def own_slots(self, columns: int) -> torch.Tensor:
        """[B, columns] the pool slots of each row's first `columns` own tokens."""
        at = torch.arange(columns, device=self.table.device)
        return self.table[:, at // BLOCK] * BLOCK + at % BLOCK


@dataclass
class Call:
    """One `sample` call's bookkeeping."""
    max_new_tokens: int
    forks: Forks | None
    prompts: list[tuple[int, ...]]
    groups: list[Group] = field(default_factory=list)
    prompt_group: dict[tuple[int, ...], int] = field(default_factory=dict)
    """The group of each encoded prompt."""
    uses: Counter[tuple[int, ...]] = field(default_factory=Counter)
    """How many of the call's sequences start at each prompt."""
    sequences: list[Sequence] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    waiting: deque[Waiting] = field(default_factory=deque)
    """Prompts' sequences not yet in the batch, in order."""
    forked: deque[Waiting] = field(default_factory=deque)
    """Forks not yet in the batch: they join first (they hold their parents' blocks while they wait)."""

    def add_sequence(self, prompt: int, parent: int | None, start: int, child: int) -> int:
        self.sequences.append(Sequence(prompt, parent, start, child, [], torch.zeros(0), False))
        self.tokens.append([])
        self.logprobs.append([])
        return len(self.sequences) - 1

    def result(self, n: int, eos_id: int) -> Sequence:
        seq, tokens = self.sequences[n], self.tokens[n]
        return Sequence(seq.prompt, seq.parent, seq.start, seq.child, tokens, torch.tensor(self.logprobs[n]),
                        bool(tokens) and tokens[-1] == eos_id)


class LeanBackend:
    def __init__(self, decoder: LeanDecoder, kv_budget_gib: float = 0.0):
        self.decoder, self.kv_budget_gib = decoder, kv_budget_gib
        self.pool: Pool | None = None
        """The last call's pool (its `peak` says how many blocks it held at most)."""

    def block_bytes(self) -> int:
        d = self.decoder
        return 2 * len(d.layers) * d.kv_heads * BLOCK * d.head_dim * d.embed.element_size()

    def pool_size(self, prompts: list[list[int]], max_new_tokens: int, forks: Forks | None) -> int:
        """Blocks for the call's worst case (every sequence runs to its budget and forks), or the KV budget."""
        need = sum(blocks(len(p)) for p in {tuple(p) for p in prompts}) + len(prompts) * blocks(max_new_tokens)
        running = len(prompts)
        for level in range(1, forks.depth if forks else 0):
            assert forks is not None
            new = running * (forks.branching - 1)
            need += new * blocks(max_new_tokens - level * forks.step_tokens)
            running += new
        if not self.kv_budget_gib:
            return need
        budget = int(self.kv_budget_gib * 2**30) // self.block_bytes()
        least = blocks(max(len(p) for p in prompts)) + blocks(max_new_tokens)
        if budget < least:
            raise UserError(f"rollout.kv_budget_gib={self.kv_budget_gib:g} holds {budget} blocks of {BLOCK} tokens, "
                            f"and one sequence needs {least}; raise rollout.kv_budget_gib to at least "
                            f"{least * self.block_bytes() / 2**30:.3g}")
        return min(need, budget)

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], keys: torch.Tensor, max_new_tokens: int, sampling: Sampling,
               eos_id: int, forks: Forks | None = None) -> list[Sequence]:
        if forks and forks.branching < 2:
            forks = None
        device = self.decoder.embed.device
        pool = self.pool = Pool(self.decoder, self.pool_size(prompts, max_new_tokens, forks), self.decoder.embed)
        call = Call(max_new_tokens, forks, [tuple(p) for p in prompts])
        call.uses.update(call.prompts)
        for index, key in enumerate(keys.to(device)):
            call.waiting.append(Waiting(call.add_sequence(index, None, 0, 0), key, None))
        rows = self.join(call, pool, self.no_rows(call, device))
        while len(rows.sequence):
            tokens, logps = pick(rows.logits, rows.key, rows.start + rows.length, sampling)
            for n, token, logp in zip(rows.sequence.tolist(), tokens.tolist(), logps.tolist()):
                call.tokens[n].append(token)
                call.logprobs[n].append(logp)
            stop = (tokens == eos_id) | (rows.length + 1 >= rows.limit)
            if bool(stop.any()):
                self.finish(call, pool, rows.select(stop))
                rows, tokens = rows.select(~stop), tokens[~stop]
            if len(rows.sequence):
                rows = self.feed(call, pool, rows, tokens)
            rows = self.join(call, pool, rows)
        return [call.result(n, eos_id) for n in range(len(call.sequences))]

    def no_rows(self, call: Call, device: torch.device) -> Rows:
        long = torch.zeros(0, dtype=torch.long, device=device)
        return Rows(long, long, long, long, long, long, long, long.new_zeros(0, blocks(call.max_new_tokens)), long,
                    self.decoder.embed.new_zeros(0, self.decoder.embed.shape[0]).float())

    def join(self, call: Call, pool: Pool, rows: Rows) -> Rows:
        """Waiting sequences join the batch while the pool can hold their budgets: forks first, then prompts'
        sequences, whose new prompts are encoded together once room for 1/REFILL_SHARE of the batch is free."""
        room = len(pool.free) - int(rows.promised.sum())
        joining: list[Waiting] = []
        while call.forked and blocks(call.max_new_tokens - call.sequences[call.forked[0].sequence].start) <= room:
            room -= blocks(call.max_new_tokens - call.sequences[call.forked[0].sequence].start)
            joining.append(call.forked.popleft())
        fresh: list[tuple[int, ...]] = []
        admitted = 0
        for waiting in call.waiting:
            prompt = call.prompts[call.sequences[waiting.sequence].prompt]
            new = prompt not in call.prompt_group and prompt not in fresh
            need = blocks(call.max_new_tokens) + (blocks(len(prompt)) if new else 0)
            if need > room:
                break
            room -= need
            admitted += 1
            if new:
                fresh.append(prompt)
        running = len(rows.sequence) + len(joining)
        if admitted and (admitted == len(call.waiting) or admitted * REFILL_SHARE >= running or not running):
            self.encode(call, pool, fresh)
            joining += [call.waiting.popleft() for _ in range(admitted)]
        if not joining:
            if not len(rows.sequence) and (call.waiting or call.forked):
                raise UserError(f"rollout.kv_budget_gib={self.kv_budget_gib:g} cannot hold the prefixes that waiting "
                                "sequences continue and their budgets at once; raise it")
            return rows
        return rows.extend(self.new_rows(call, joining))

    def new_rows(self, call: Call, joining: list[Waiting]) -> Rows:
        device = self.decoder.embed.device
        group_ids = [w.group if w.group is not None
                     else call.prompt_group[call.prompts[call.sequences[w.sequence].prompt]] for w in joining]
        logits = []
        for g in group_ids:
            group = call.groups[g]
            assert group.logits is not None
            logits.append(group.logits)
            group.joining -= 1
            if not group.joining:
                group.logits = None
        starts = [call.sequences[w.sequence].start for w in joining]
        limits = [call.max_new_tokens - start for start in starts]

        def long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return Rows(long([w.sequence for w in joining]), torch.stack([w.key for w in joining]), long(group_ids),
                    long([len(call.groups[g].slots) for g in group_ids]), long(starts), long([0] * len(joining)),
                    long(limits), torch.zeros(len(joining), blocks(call.max_new_tokens), dtype=torch.long,
                                              device=device),
                    long([blocks(limit) for limit in limits]), torch.stack(logits))

    def encode(self, call: Call, pool: Pool, prompts: list[tuple[int, ...]]) -> None:
        """The prompts' keys and values into fresh blocks, one group each, with their next-token logits."""
        if not prompts:
            return
        device = self.decoder.embed.device
        ids, mask = left_pad([list(p) for p in prompts], pad_id=0)
        ids, mask = ids.to(device), mask.to(device)
        count, width = ids.shape
        cache = KVCache.empty(self.decoder, count, width, like=self.decoder.embed)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # padding positions attend to themselves, so that no attention row is empty (NaN on some kernels)
        attend = causal & mask.bool()[:, None, :] | torch.eye(width, dtype=torch.bool, device=device)
        logits = self.decoder.forward(ids, (mask.cumsum(-1) - 1).clamp(min=0), cache, attend[:, None]).float()
        sources, targets = [], []
        for i, prompt in enumerate(prompts):
            taken = pool.take(blocks(len(prompt)))
            slots = (torch.tensor(taken, device=device)[:, None] * BLOCK
                     + torch.arange(BLOCK, device=device)).flatten()[:len(prompt)]
            uses = call.uses[prompt]
            call.prompt_group[prompt] = len(call.groups)
            call.groups.append(Group(slots, taken, uses, uses, logits[i]))
            sources.append(torch.arange(width - len(prompt), width, device=device) + i * width)
            targets.append(slots)
        source, target = torch.cat(sources), torch.cat(targets)
        for (keys, values), (new_keys, new_values) in zip(pool.layers, cache.layers):
            for pooled, new in ((keys, new_keys), (values, new_values)):
                flat = new.transpose(0, 1).reshape(new.shape[1], count * width, new.shape[3])
                pooled.index_copy_(1, target, flat.index_select(1, source).to(pooled.dtype))

    def finish(self, call: Call, pool: Pool, done: Rows) -> None:
        """Stopped rows give back their blocks (a fork's group keeps those it refers to) and their promises."""
        for row in range(len(done.sequence)):
            pool.drop(done.table[row, :blocks(int(done.length[row]))].tolist())
        for g in done.group.tolist():
            group = call.groups[g]
            group.waiting -= 1
            if not group.waiting:
                pool.drop(group.held)

    def feed(self, call: Call, pool: Pool, rows: Rows, tokens: torch.Tensor) -> Rows:
        """One decode step: each row writes its token's keys and values to its next slot (taking a block when
        it starts one) and gets its next logits; then the rows that reached a fork point fork."""
        opening = torch.nonzero(rows.length % BLOCK == 0).squeeze(-1)
        if len(opening):
            taken = torch.tensor(pool.take(len(opening)), device=rows.table.device)
            rows.table[opening, rows.length[opening] // BLOCK] = taken
            rows.promised[opening] -= 1
        width = int(rows.length.max()) + 1
        own = rows.own_slots(width)
        sequence_rows = torch.arange(len(rows.sequence), device=own.device)
        groups, local = torch.unique(rows.group, return_inverse=True)
        counts = torch.bincount(local, minlength=len(groups))
        order = torch.argsort(local, stable=True)
        slot = torch.empty_like(local)
        slot[order] = sequence_rows - (counts.cumsum(0) - counts)[local[order]]
        shared_width = max(len(call.groups[g].slots) for g in groups.tolist())
        shared = torch.zeros(len(groups), shared_width, dtype=torch.long, device=own.device)
        for i, g in enumerate(groups.tolist()):
            shared[i, :len(call.groups[g].slots)] = call.groups[g].slots
        columns = torch.arange(max(shared_width, width), device=own.device)
        visible = torch.cat([columns[None, :shared_width] < rows.prefix[:, None],
                             columns[None, :width] <= rows.length[:, None]], dim=1)
        plan = Plan(own[sequence_rows, rows.length], own, shared, local, slot, int(counts.max()), visible)
        rows.logits = self.decoder.step(tokens, rows.prefix + rows.length, pool.layers, plan).float()
        rows.length += 1
        if call.forks:
            self.fork(call, pool, rows)
        return rows

    def fork(self, call: Call, pool: Pool, rows: Rows) -> None:
        """Rows at a fork point get branching - 1 continuations: a group over their prefix so far, waiting."""
        forks = call.forks
        assert forks is not None
        generated = rows.start + rows.length
        at = torch.nonzero((generated % forks.step_tokens == 0) & (generated < forks.depth * forks.step_tokens))
        for row in at.squeeze(-1).tolist():
            length, total = int(rows.length[row]), int(generated[row])
            parent = call.groups[int(rows.group[row])]
            own = rows.own_slots(length)[row]
            held = parent.held + rows.table[row, :blocks(length)].tolist()
            pool.hold(held)
            call.groups.append(Group(torch.cat([parent.slots, own]), held, forks.branching - 1, forks.branching - 1,
                                     rows.logits[row].clone()))
            n = int(rows.sequence[row])
            for child in range(1, forks.branching):
                m = call.add_sequence(call.sequences[n].prompt, n, total, child)
                call.forked.append(Waiting(m, forks.child_key(rows.key[row], total // forks.step_tokens, child),
                                           len(call.groups) - 1))
