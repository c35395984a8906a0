"""The lean backend: continuous batching over a paged KV cache, on the lean forward of `lean.py`.

- **Paged cache.** Every layer's keys and values live in one pool of blocks of BLOCK token slots. A
  prompt is encoded once, however many sequences continue it; a fork refers to its parent's blocks
  instead of copying them. The pool holds each distinct token once: a tree's KV memory grows with
  its distinct tokens, not its paths.
- **Groups.** Sequences that continue the same prefix (a prompt's samples, a fork point's
  continuations) form a group; decoding reads a group's prefix once for all of its rows (cascade
  attention, `LeanDecoder.attend_paged`).
- **Continuous batching.** A sequence that stops (EOS or its budget) leaves the batch at once and
  frees its blocks; waiting sequences (more than the KV budget holds, forks as they appear) take its
  place. Forks join the batch the step their fork point is decoded, without encoding anything again.
- **KV budget.** The pool holds at most `kv_budget_gib` (0: all the call can need). A sequence joins
  when the pool can hold its prefix and the tokens it is expected to sample (the mean length of the
  call's finished sequences; the whole budget until one finishes) next to what the running rows are
  expected to take. Memory goes to the tokens sampled, not to budgets that most sequences never
  reach; when it runs out all the same, the rows that joined last are preempted: their own blocks
  are freed, and they join again first, replaying their tokens (fed, not sampled) before they sample
  on. Prefixes that waiting sequences continue stay held, so a budget below `least_blocks` (every
  prompt and inner node held at once, and one leaf) can run out with one row left; the call then
  stops in one line naming that least, which training checks for before its first step.

A sequence's tokens depend on its key and the model only (see `draws.py`); which sequences share its
batch (and a replay) changes the floating-point order of its log-probs' sums, so they agree with a
sequence sampled alone to about 1e-6, and its tokens are the same unless a draw falls that close to
a boundary.

Bookkeeping invariants (what `sample` and its helpers keep true between decode steps):
- **Rows stay in the order they joined.** `Rows.select` keeps the order, `Rows.extend` appends the
  newcomers and a fork changes its row in place. The rows that joined last are therefore the tail,
  which is where `make_room` preempts from; it puts them back at the head of `Call.prefix_queue` in
  the same order.
- **`Rows.length` excludes the token just drawn.** It counts a row's own tokens whose keys and
  values are in the pool. A step draws the token at position `start + length`, `feed` writes it and
  only then adds 1; so a row stops when `length + 1` reaches its `limit`, and its next slot is
  `offset + length`.
- **The block table keeps one extra column.** A row that forks in the middle of a block goes on
  writing in that block, which it shares with the new group (`Rows.offset` > 0); its own tokens then
  span up to blocks(limit) + 1 blocks, hence `Call.table_columns`.
- **Each block counts its holders.** A row holds the blocks of its own tokens; a group holds its
  prefix's blocks while it has unfinished sequences (`Group.unfinished`), waiting ones included.
  When `sample` returns, every block is free again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field, fields

import torch

from treerl.errors import UserError
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling, pick
from treerl.rollout.hf_backend import left_pad
from treerl.rollout.lean import KVCache, LeanDecoder, Plan

BLOCK = 16
"""Token slots per block of the pool."""
REFILL_SHARE = 8
"""New prompts join the batch once room for 1/REFILL_SHARE of the running rows is free
(one prefill for all)."""


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


def least_blocks(
    prompt_lengths: list[int], rows: int, forks: Forks | None, max_new_tokens: int
) -> int:
    """The fewest blocks that no sampling of `rows` sequences over distinct prompts of these lengths
    can run out of. A group holds its prefix while any of its sequences waits, so at worst every
    prompt and every inner node's segment is held at once, next to the one leaf that runs; a row's
    own tokens take at most blocks(own tokens) new blocks (a fork's first row goes on in its group's
    last block). With N children, depth D and steps of s tokens:
    sum_p blocks(p) + rows (1 + N + ... + N^(D-2)) blocks(s) + blocks(max_new_tokens - (D-1) s);
    flat: no inner nodes, one leaf of max_new_tokens. No call then preempts all but one row and
    still lacks a block for it, nor waits with nothing running (the module's docstring)."""
    prompts = sum(blocks(length) for length in prompt_lengths)
    if forks is None or forks.branching < 2:
        return prompts + blocks(max_new_tokens)
    inner = rows * sum(forks.branching**level for level in range(forks.depth - 1))
    return (
        prompts
        + inner * blocks(forks.step_tokens)
        + blocks(max_new_tokens - (forks.depth - 1) * forks.step_tokens)
    )


def gib_up(gib: float) -> float:
    """`gib` rounded up to three significant digits: a budget that holds it, short enough to
    read."""
    scale = 10.0 ** (2 - math.floor(math.log10(gib)))
    return math.ceil(gib * scale) / scale


class Pool:
    """Keys and values of every layer, [KV heads, blocks x BLOCK, head dim] each, and how many
    holders each block has: a sequence holds the blocks of its own tokens, a group those of its
    prefix. A block without holders is free."""

    def __init__(self, decoder: LeanDecoder, size: int, like: torch.Tensor):
        shape = (decoder.kv_heads, size * BLOCK, decoder.head_dim)
        # zeros: padding reads slots that may never be written, and a masked-out NaN would still
        # give 0 x NaN
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

    blocks: torch.Tensor
    """The pool blocks of its tokens, in order (a block shared with the row that goes on writing in
    it may come twice: once for the slots before the fork, once for those after)."""
    visible: torch.Tensor
    """[blocks x BLOCK] which slots of those blocks are its tokens."""
    length: int
    """Its tokens."""
    held: list[int]
    """The blocks it holds."""
    unfinished: int
    """How many of its sequences have not finished (running or waiting): it holds `held` until none
    is left."""
    joining: int
    """Its sequences not yet in the batch."""
    logits: torch.Tensor | None
    """The next-token logits after the prefix, until its last sequence has joined the batch."""


@dataclass
class Waiting:
    """A sequence in a queue of `Call`, not yet in the batch."""

    sequence: int
    """Its index in `Call.sequences`."""
    key: torch.Tensor
    group: int | None
    """None: a prompt's sequence (its group is its prompt's)."""
    resume_at: int | None = None
    """A preempted sequence: the tokens of its path in its group's prefix. It replays the ones it
    sampled after them."""


@dataclass
class Rows:
    """The running sequences, one row each, as tensors over the rows, in the order they joined (see
    the module's docstring)."""

    sequence: torch.Tensor
    """Its index in `Call.sequences`."""
    key: torch.Tensor
    group: torch.Tensor
    """Its group in `Call.groups`."""
    prefix: torch.Tensor
    """Tokens of the group's prefix (where the row's own tokens start)."""
    start: torch.Tensor
    """Tokens of the sequence's path in its group's prefix (where its own tokens count from)."""
    length: torch.Tensor
    """Own tokens in the cache: not the token just drawn, until `feed` writes it."""
    limit: torch.Tensor
    """Own tokens it may sample."""
    table: torch.Tensor
    """[B, `Call.table_columns`] the blocks of its own tokens."""
    offset: torch.Tensor
    """Where its own tokens start in its first block: a row that forked goes on in the block where
    its group's prefix ends."""
    replay: torch.Tensor
    """Tokens it sampled before it was preempted and has not fed again."""
    logits: torch.Tensor
    """[B, vocab] the logits its next token is drawn from."""

    def select(self, keep: torch.Tensor) -> Rows:
        """The rows `keep` picks, in their order."""
        return Rows(**{column.name: getattr(self, column.name)[keep] for column in fields(self)})

    def extend(self, other: Rows) -> Rows:
        """These rows, then `other`'s."""
        return Rows(
            **{
                column.name: torch.cat([getattr(self, column.name), getattr(other, column.name)])
                for column in fields(self)
            }
        )

    def used(self) -> torch.Tensor:
        """Slots of its blocks in use, counted from its first block's first."""
        return self.offset + self.length

    def held(self, row: int) -> list[int]:
        """The blocks the row holds."""
        return self.table[row, : blocks(int(self.used()[row]))].tolist()

    def opening(self) -> torch.Tensor:
        """Whether each row's next token starts a block."""
        return self.used() % BLOCK == 0

    def next_slots(self) -> torch.Tensor:
        """[B] the pool slot of each row's next token."""
        used = self.used()
        return self.table.gather(1, (used // BLOCK)[:, None]).squeeze(1) * BLOCK + used % BLOCK


@dataclass
class Grouping:
    """The running rows' groups laid out for cascade attention (`Plan`): G distinct groups over B
    rows. A call keeps it while its rows' groups stay the same."""

    row_groups: tuple[int, ...]
    """Each row's group in `Call.groups`: what the rest is computed from."""
    shared: torch.Tensor
    """[G, N] the blocks of each group's prefix, padded."""
    shared_visible: torch.Tensor
    """[G, N x BLOCK] which slots of those blocks are the group's tokens."""
    local: torch.Tensor
    """[B] each row's group among the G."""
    slot: torch.Tensor
    """[B] each row's place among its group's rows: 0, 1, ... in row order."""
    most_rows: int
    """The most rows in one group (`Plan.most_rows`)."""

    @classmethod
    def of(cls, groups: list[Group], row_groups: torch.Tensor) -> Grouping:
        """The layout for rows in groups `row_groups` (indices into `groups`)."""
        device = row_groups.device
        distinct, local = torch.unique(row_groups, return_inverse=True)
        counts = torch.bincount(local, minlength=len(distinct))
        order = torch.argsort(local, stable=True)  # rows by group, in row order within each
        slot = torch.empty_like(local)
        slot[order] = (
            torch.arange(len(row_groups), device=device) - (counts.cumsum(0) - counts)[local[order]]
        )
        prefixes = [groups[g] for g in distinct.tolist()]
        width = max(len(prefix.blocks) for prefix in prefixes)
        shared = torch.zeros(len(distinct), width, dtype=torch.long, device=device)
        shared_visible = torch.zeros(len(distinct), width * BLOCK, dtype=torch.bool, device=device)
        for i, prefix in enumerate(prefixes):
            shared[i, : len(prefix.blocks)] = prefix.blocks
            shared_visible[i, : len(prefix.visible)] = prefix.visible
        return cls(
            tuple(row_groups.tolist()), shared, shared_visible, local, slot, int(counts.max())
        )


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
    entropies: list[list[float]] = field(default_factory=list)
    """With Sampling.entropy: each sequence's draws' entropies."""
    prompt_queue: deque[Waiting] = field(default_factory=deque)
    """Prompts' sequences not yet in the batch, in order."""
    prefix_queue: deque[Waiting] = field(default_factory=deque)
    """Forks and preempted sequences not yet in the batch, in order: they continue a prefix already
    in the pool (their groups hold its blocks while they wait), so they join before any prompt's
    sequence."""
    grouping: Grouping | None = None
    """The last decode step's rows' groups, laid out for cascade attention."""
    finished_tokens: int = 0
    finished: int = 0
    """Own tokens of the sequences that finished, and how many they were: the expected length of the
    others."""

    def table_columns(self) -> int:
        """Columns of `Rows.table`: the blocks of a whole budget's own tokens, and one for a last
        block shared with a fork (own tokens that start at offset o < BLOCK take at most
        blocks(limit) + 1 blocks)."""
        return blocks(self.max_new_tokens) + 1

    def expected_blocks(self) -> int:
        """Blocks of own tokens a sequence is expected to need: the mean of the finished ones (the
        whole budget until one finishes)."""
        return (
            blocks(-(-self.finished_tokens // self.finished))
            if self.finished
            else blocks(self.max_new_tokens)
        )

    def start_and_replay(self, waiting: Waiting) -> tuple[int, int]:
        """Where a waiting sequence's own tokens count from, and how many sampled tokens it replays
        first."""
        seq = self.sequences[waiting.sequence]
        if waiting.resume_at is None:
            return seq.start, 0
        return waiting.resume_at, seq.start + len(self.tokens[waiting.sequence]) - waiting.resume_at

    def add_sequence(self, prompt: int, parent: int | None, start: int, child: int) -> int:
        self.sequences.append(Sequence(prompt, parent, start, child, [], torch.zeros(0), False))
        self.tokens.append([])
        self.logprobs.append([])
        self.entropies.append([])
        return len(self.sequences) - 1

    def result(self, n: int, eos_id: int) -> Sequence:
        seq, tokens = self.sequences[n], self.tokens[n]
        return Sequence(
            seq.prompt,
            seq.parent,
            seq.start,
            seq.child,
            tokens,
            torch.tensor(self.logprobs[n]),
            bool(tokens) and tokens[-1] == eos_id,
            entropies=torch.tensor(self.entropies[n]) if self.entropies[n] else None,
        )


class LeanBackend:
    def __init__(self, decoder: LeanDecoder, kv_budget_gib: float = 0.0):
        self.decoder, self.kv_budget_gib = decoder, kv_budget_gib
        self.pool: Pool | None = None
        """The last call's pool (its `peak` says how many blocks it held at most)."""

    def block_bytes(self) -> int:
        d = self.decoder
        return 2 * len(d.layers) * d.kv_heads * BLOCK * d.head_dim * d.embed.element_size()

    def least_gib(
        self, prompt_lengths: list[int], rows: int, forks: Forks | None, max_new_tokens: int
    ) -> float:
        """`least_blocks` in GiB, rounded up (`gib_up`): the least rollout.kv_budget_gib such a call
        fits in."""
        return gib_up(
            least_blocks(prompt_lengths, rows, forks, max_new_tokens) * self.block_bytes() / 2**30
        )

    def out_of_room(self, call: Call) -> UserError:
        """The call ran out of room: what it holds is prefixes waiting sequences continue."""
        prompts = [len(prompt) for prompt in set(call.prompts)]
        need = self.least_gib(prompts, len(call.prompts), call.forks, call.max_new_tokens)
        return UserError(
            f"rollout.kv_budget_gib={self.kv_budget_gib:g} cannot hold the prefixes that waiting "
            f"sequences continue and one sequence's tokens at once; raise it to {need:g}, which no "
            f"sampling of these {len(call.prompts)} sequences runs out of"
        )

    def pool_size(self, prompts: list[list[int]], max_new_tokens: int, forks: Forks | None) -> int:
        """Blocks for the call's worst case (every sequence runs to its budget and forks), or the KV
        budget."""
        need = sum(blocks(len(p)) for p in {tuple(p) for p in prompts}) + len(prompts) * blocks(
            max_new_tokens
        )
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
            raise UserError(
                f"rollout.kv_budget_gib={self.kv_budget_gib:g} holds {budget} blocks of {BLOCK} "
                f"tokens, and one sequence needs {least}; raise rollout.kv_budget_gib to at least "
                f"{least * self.block_bytes() / 2**30:.3g}"
            )
        return min(need, budget)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        keys: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        eos_id: int,
        forks: Forks | None = None,
    ) -> list[Sequence]:
        """One sequence per prompt and key, and with `forks` its tree's continuations, in the order
        they began.

        Each step: every row draws its next token (a replaying row takes the one it drew before it
        was preempted); the rows that stop give back their blocks; when fewer blocks are free than
        rows, `make_room` preempts the last rows to join until each row about to open a block gets
        one; the others feed their tokens (and fork); waiting sequences join."""
        if forks and forks.branching < 2:
            forks = None
        device = self.decoder.embed.device
        pool = self.pool = Pool(
            self.decoder, self.pool_size(prompts, max_new_tokens, forks), self.decoder.embed
        )
        call = Call(max_new_tokens, forks, [tuple(p) for p in prompts])
        call.uses.update(call.prompts)
        for index, key in enumerate(keys.to(device)):
            call.prompt_queue.append(Waiting(call.add_sequence(index, None, 0, 0), key, None))
        rows = self.join(call, pool, self.no_rows(call, device))
        while len(rows.sequence):
            tokens, logps, entropies = pick(
                rows.logits, rows.key, rows.start + rows.length, sampling
            )
            replaying = rows.replay > 0
            for row in torch.nonzero(replaying).squeeze(-1).tolist():
                n = int(rows.sequence[row])
                tokens[row] = call.tokens[n][
                    int(rows.start[row] + rows.length[row]) - call.sequences[n].start
                ]
            for n, token, logp, fed in zip(
                rows.sequence.tolist(), tokens.tolist(), logps.tolist(), replaying.tolist()
            ):
                if not fed:
                    call.tokens[n].append(token)
                    call.logprobs[n].append(logp)
            for n, entropy, fed in zip(
                rows.sequence.tolist(),
                [] if entropies is None else entropies.tolist(),
                replaying.tolist(),
            ):
                if not fed:
                    call.entropies[n].append(entropy)
            stop = ~replaying & (
                (tokens == eos_id) | (rows.length + 1 >= rows.limit)
            )  # + 1: the token just drawn
            if bool(stop.any()):
                self.finish(call, pool, rows.select(stop))
                rows, tokens = rows.select(~stop), tokens[~stop]
            if len(pool.free) < len(rows.sequence):  # else every row can start a block
                rows, tokens = self.make_room(call, pool, rows, tokens)
            if len(rows.sequence):
                rows = self.feed(call, pool, rows, tokens)
            if call.prompt_queue or call.prefix_queue:
                rows = self.join(call, pool, rows)
        return [call.result(n, eos_id) for n in range(len(call.sequences))]

    def no_rows(self, call: Call, device: torch.device) -> Rows:
        none = torch.zeros(0, dtype=torch.long, device=device)
        return Rows(
            sequence=none,
            key=none,
            group=none,
            prefix=none,
            start=none,
            length=none,
            limit=none,
            table=none.new_zeros(0, call.table_columns()),
            offset=none,
            replay=none,
            logits=self.decoder.embed.new_zeros(0, self.decoder.embed.shape[0]).float(),
        )

    def make_room(
        self, call: Call, pool: Pool, rows: Rows, tokens: torch.Tensor
    ) -> tuple[Rows, torch.Tensor]:
        """Preempt the rows that joined last until the pool has a block for every row about to start
        one: each gives back its own blocks and waits, first in line, to replay its tokens."""
        keep = len(rows.sequence)
        opening = rows.opening()
        while keep > 1 and int(opening[:keep].sum()) > len(pool.free):
            keep -= 1
            pool.drop(rows.held(keep))
            preempted = Waiting(
                int(rows.sequence[keep]),
                rows.key[keep],
                int(rows.group[keep]),
                int(rows.start[keep]),
            )
            call.prefix_queue.appendleft(
                preempted
            )  # ahead of the rows preempted before it, which joined after it
        if int(opening[:keep].sum()) > len(pool.free):
            raise self.out_of_room(call)
        if keep == len(rows.sequence):
            return rows, tokens
        return rows.select(torch.arange(keep, device=tokens.device)), tokens[:keep]

    def join(self, call: Call, pool: Pool, rows: Rows) -> Rows:
        """Waiting sequences join the batch in order while the pool can hold what they are expected
        to need next to the running rows' expectations (see the module's docstring): preempted
        sequences and forks first, then prompts' sequences, whose new prompts are encoded together
        once room for 1/REFILL_SHARE of the batch is free."""
        expected = call.expected_blocks()
        held = (rows.used() + BLOCK - 1) // BLOCK
        to_hold = torch.clamp((rows.offset + rows.limit + BLOCK - 1) // BLOCK, max=expected)
        # blocks each running row may still take: up to what it is expected to hold, at least the
        # one it opens next
        outstanding = torch.maximum(torch.clamp(to_hold - held, min=0), rows.opening().long())
        room = len(pool.free) - int(outstanding.sum())
        joining: list[Waiting] = []
        while call.prefix_queue:
            start, replay = call.start_and_replay(call.prefix_queue[0])
            need = max(blocks(replay + 1), min(blocks(call.max_new_tokens - start), expected))
            if need > room:
                break
            room -= need
            joining.append(call.prefix_queue.popleft())
        fresh: list[tuple[int, ...]] = []
        admitted = 0
        for waiting in call.prompt_queue if not call.prefix_queue else ():
            prompt = call.prompts[call.sequences[waiting.sequence].prompt]
            new = prompt not in call.prompt_group and prompt not in fresh
            need = min(blocks(call.max_new_tokens), expected) + (blocks(len(prompt)) if new else 0)
            if need > room:
                break
            room -= need
            admitted += 1
            if new:
                fresh.append(prompt)
        running = len(rows.sequence) + len(joining)
        if admitted and (
            admitted == len(call.prompt_queue) or admitted * REFILL_SHARE >= running or not running
        ):
            self.encode(call, pool, fresh)
            joining += [call.prompt_queue.popleft() for _ in range(admitted)]
        if not joining:
            if not len(rows.sequence) and (call.prompt_queue or call.prefix_queue):
                raise self.out_of_room(call)
            return rows
        return rows.extend(self.new_rows(call, joining))

    def new_rows(self, call: Call, joining: list[Waiting]) -> Rows:
        device = self.decoder.embed.device
        group_ids = [
            w.group
            if w.group is not None
            else call.prompt_group[call.prompts[call.sequences[w.sequence].prompt]]
            for w in joining
        ]
        logits = []
        for w, g in zip(joining, group_ids):
            group = call.groups[g]
            if w.resume_at is not None:  # its first token is replayed, not drawn from these logits
                logits.append(self.decoder.embed.new_zeros(self.decoder.embed.shape[0]).float())
                continue
            assert group.logits is not None
            logits.append(group.logits)
            group.joining -= 1
            if not group.joining:
                group.logits = None
        starts, replays = zip(*(call.start_and_replay(w) for w in joining))
        limits = [call.max_new_tokens - start for start in starts]

        def long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        zeros = [0] * len(joining)
        return Rows(
            sequence=long([w.sequence for w in joining]),
            key=torch.stack([w.key for w in joining]),
            group=long(group_ids),
            prefix=long([call.groups[g].length for g in group_ids]),
            start=long(list(starts)),
            length=long(zeros),
            limit=long(limits),
            table=torch.zeros(len(joining), call.table_columns(), dtype=torch.long, device=device),
            offset=long(zeros),
            replay=long(list(replays)),
            logits=torch.stack(logits),
        )

    def encode(self, call: Call, pool: Pool, prompts: list[tuple[int, ...]]) -> None:
        """The prompts' keys and values into fresh blocks, one group each, with their next-token
        logits."""
        if not prompts:
            return
        device = self.decoder.embed.device
        ids, mask = left_pad([list(p) for p in prompts], pad_id=0)
        ids, mask = ids.to(device), mask.to(device)
        count, width = ids.shape
        cache = KVCache.empty(self.decoder, count, width, like=self.decoder.embed)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # padding positions attend to themselves, so that no attention row is empty
        # (NaN on some kernels)
        attend = causal & mask.bool()[:, None, :] | torch.eye(
            width, dtype=torch.bool, device=device
        )
        logits = self.decoder.forward(
            ids, (mask.cumsum(-1) - 1).clamp(min=0), cache, attend[:, None]
        ).float()
        sources, targets = [], []
        for i, prompt in enumerate(prompts):
            taken = pool.take(blocks(len(prompt)))
            slots = (
                torch.tensor(taken, device=device)[:, None] * BLOCK
                + torch.arange(BLOCK, device=device)
            ).flatten()[: len(prompt)]
            uses = call.uses[prompt]
            call.prompt_group[prompt] = len(call.groups)
            call.groups.append(
                Group(
                    blocks=torch.tensor(taken, device=device),
                    visible=torch.arange(len(taken) * BLOCK, device=device) < len(prompt),
                    length=len(prompt),
                    held=taken,
                    unfinished=uses,
                    joining=uses,
                    logits=logits[i],
                )
            )
            sources.append(torch.arange(width - len(prompt), width, device=device) + i * width)
            targets.append(slots)
        source, target = torch.cat(sources), torch.cat(targets)
        for (keys, values), (new_keys, new_values) in zip(pool.layers, cache.layers):
            for pooled, new in ((keys, new_keys), (values, new_values)):
                flat = new.transpose(0, 1).reshape(new.shape[1], count * width, new.shape[3])
                pooled.index_copy_(1, target, flat.index_select(1, source).to(pooled.dtype))

    def finish(self, call: Call, pool: Pool, done: Rows) -> None:
        """Stopped rows give back their blocks (a fork's group keeps those it refers to)."""
        call.finished += len(done.sequence)
        call.finished_tokens += int(done.length.sum()) + len(done.sequence)
        for row in range(len(done.sequence)):
            pool.drop(done.held(row))
        for g in done.group.tolist():
            group = call.groups[g]
            group.unfinished -= 1
            if not group.unfinished:
                pool.drop(group.held)

    def feed(self, call: Call, pool: Pool, rows: Rows, tokens: torch.Tensor) -> Rows:
        """One decode step: each row writes its token's keys and values to its next slot (taking a
        block when it starts one) and gets its next logits; then the rows that reached a fork point
        fork."""
        opening = torch.nonzero(rows.opening()).squeeze(-1)
        if len(opening):
            taken = torch.tensor(pool.take(len(opening)), device=rows.table.device)
            rows.table[opening, rows.used()[opening] // BLOCK] = taken
        used = rows.used()
        own = rows.table[:, : blocks(int(used.max()) + 1)]
        columns = torch.arange(own.shape[1] * BLOCK, device=own.device)
        own_visible = (columns >= rows.offset[:, None]) & (columns <= used[:, None])
        if call.grouping is None or call.grouping.row_groups != tuple(rows.group.tolist()):
            call.grouping = Grouping.of(call.groups, rows.group)
        grouping = call.grouping
        visible = torch.cat([grouping.shared_visible[grouping.local], own_visible], dim=1)
        plan = Plan(
            rows.next_slots(),
            own,
            grouping.shared,
            grouping.local,
            grouping.slot,
            grouping.most_rows,
            visible,
            BLOCK,
        )
        rows.logits = self.decoder.step(
            tokens, rows.prefix + rows.length, pool.layers, plan
        ).float()
        rows.length += 1
        rows.replay -= (rows.replay > 0).long()
        if call.forks:
            self.fork(call, pool, rows)
        return rows

    def fork(self, call: Call, pool: Pool, rows: Rows) -> None:
        """Rows at a fork point start a group over their path so far, its first row, and
        branching - 1 waiting continuations; the row's own blocks pass to the group. (A replay never
        passes a fork point again: a row's preempted tokens are those after its last fork.)"""
        forks = call.forks
        assert forks is not None
        generated = rows.start + rows.length
        at = torch.nonzero(
            (generated % forks.step_tokens == 0) & (generated < forks.depth * forks.step_tokens)
        )
        for row in at.squeeze(-1).tolist():
            length, total = int(rows.length[row]), int(generated[row])
            parent = call.groups[int(rows.group[row])]
            pool.hold(parent.held)
            own = rows.held(row)
            columns = torch.arange(len(own) * BLOCK, device=rows.table.device)
            offset = int(rows.offset[row])
            call.groups.append(
                Group(
                    blocks=torch.cat([parent.blocks, rows.table[row, : len(own)]]),
                    visible=torch.cat(
                        [parent.visible, (columns >= offset) & (columns < offset + length)]
                    ),
                    length=parent.length + length,
                    held=parent.held + own,
                    unfinished=forks.branching,
                    joining=forks.branching - 1,
                    logits=rows.logits[row].clone(),
                )
            )
            parent.unfinished -= 1
            if not parent.unfinished:
                pool.drop(parent.held)
            offset = int(rows.used()[row]) % BLOCK
            rows.table[row] = 0
            if (
                offset
            ):  # the row goes on writing in its last block, which it now shares with the group
                rows.table[row, 0] = own[-1]
                pool.hold(own[-1:])
            rows.group[row], rows.prefix[row] = len(call.groups) - 1, call.groups[-1].length
            rows.start[row], rows.limit[row], rows.length[row] = total, rows.limit[row] - length, 0
            rows.offset[row] = offset
            n = int(rows.sequence[row])
            for child in range(1, forks.branching):
                m = call.add_sequence(call.sequences[n].prompt, n, total, child)
                key = forks.child_key(rows.key[row], total // forks.step_tokens, child)
                call.prefix_queue.append(Waiting(m, key, len(call.groups) - 1))
