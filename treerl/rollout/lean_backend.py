"""The lean backend: continuous batching over a paged KV cache, on the lean forward of `lean.py`.

- **Paged cache.** Every layer's keys and values live in one pool of blocks of BLOCK token slots. A
  prompt is encoded once, however many sequences continue it; a fork refers to its parent's blocks
  instead of copying them. The pool holds each distinct token once: a tree's KV memory grows with
  its distinct tokens, not its paths.
- **Groups.** Sequences that continue the same prefix (a prompt's samples, a fork point's
  continuations) form a group; decoding reads a group's prefix once for all of its rows (cascade
  attention, `LeanDecoder.attend_paged`).
- **Slab.** The running rows' own keys and values are also kept dense, a row of the slab each
  (`Slab`), where attention reads them in place: a step copies no row's tokens out of the pool, and
  rows that join, leave or fork copy nothing either. In a call with forks the pool keeps them too,
  as a fork's group reads them as its prefix (a running row's own tokens are then held twice); in a
  flat call the pool only counts their blocks against the budget.
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
  stops in one line naming that least, which training checks for before its first step. The slab
  comes on top of the budget: a row for each running sequence, as wide as the longest one's own
  tokens (rounded up to a power of two blocks, or to the most a sequence can take).

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
- **A row's table lists exactly its own blocks.** `Rows.table[row]` holds blocks(offset + length)
  blocks: `feed` appends the block a row opens, a fork keeps only a last block it shares with the
  new group. A row that forks in the middle of a block goes on writing in that block (`Rows.offset`
  > 0); its own tokens then span up to blocks(limit) + 1 blocks, hence `Call.table_columns`, the
  width of `Layout.own`.
- **A row's draws are fixed when it joins.** `Rows.draws` holds uniforms(key, t) (`draws.py`) for
  every generated position t of the call, computed once; the token at t is drawn at `draws[t]`,
  the uniform the row would draw at t alone. A fork's first row keeps its key and so its draws.
- **The bookkeeping is on the host; a step reads back only its tokens.** Lengths, tables, groups
  and replays are Python ints, so which rows stop, open a block, fork or fit in the pool is known
  without reading the device; the one read of a step is its tokens and log-probs (which the call
  returns, and whose EOS stops rows).
- **The layout is kept while the rows stay the same.** `Call.layout` (`Layout`) is what the decoder
  reads on the device: block tables, masks, groups, each row's next position and slot. Whatever
  changes the rows (`join`, `finish`, `make_room`, `fork`) drops it and the next step builds it
  again from the bookkeeping; in between, a step only opens blocks (`Layout.opened`) and moves
  every row on by one slot (`Layout.advance`), so it equals what `Layout.of` would build.
- **The B running rows hold the slab's first B rows.** `new_rows` takes rows B, B + 1, ...
  (`Slab.take`); when rows stop or are preempted, `Slab.keep` moves those held beyond the new B
  into the rows the others left; a fork keeps its row. A row's own slot s (s = offset + length for
  the next token) is column s of its slab row, as it is slot s % BLOCK of its block s // BLOCK; the
  columns it has not written since it took the row are masked out.
- **Each block counts its holders.** A row holds the blocks of its own tokens; a group holds its
  prefix's blocks while it has unfinished sequences (`Group.unfinished`), waiting ones included.
  When `sample` returns, every block is free again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from treerl.errors import UserError
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling, pick, uniforms
from treerl.rollout.hf_backend import left_pad
from treerl.rollout.lean import Context, KVCache, LeanDecoder, Plan

BLOCK = 16
"""Token slots per block of the pool."""
REFILL_SHARE = 8
"""New prompts join the batch once room for 1/REFILL_SHARE of the running rows is free
(one prefill for all)."""


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


def longs(values: list[int] | list[list[int]], device: torch.device) -> torch.Tensor:
    """Host ints as a long tensor on `device`."""
    return torch.tensor(values, dtype=torch.long, device=device)


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


def unset(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Room for keys or values, not zeroed (zeroing the pool and the slab took 4% of a flat call on
    the tiny model). Attention reads slots that were never written (padding, a prefix's last block
    past its end, a row's own slots ahead of it) and masks their scores to -inf (`Plan.hidden`),
    whatever the keys there, NaN included; but a masked slot's weight 0 times a NaN value is NaN, so
    values that attention may read unwritten are zeroed first: the slab's, a prompt's blocks when
    `encode` fills them, and with forks the whole pool, as any row's blocks may become a fork's
    prefix. A flat call's rows' blocks are only counted, never read or written (the slab holds their
    tokens), and never touched. Padding reads block 0, the first block a call takes, for its first
    prompt: zeroed and written then, it holds finite values whoever takes it after."""
    return like.new_empty(shape)


def gib_up(gib: float) -> float:
    """`gib` rounded up to three significant digits: a budget that holds it, short enough to
    read."""
    scale = 10.0 ** (2 - math.floor(math.log10(gib)))
    return math.ceil(gib * scale) / scale


class Pool:
    """Keys and values of every layer, [KV heads, blocks x BLOCK, head dim] each, and how many
    holders each block has: a sequence holds the blocks of its own tokens, a group those of its
    prefix. A block without holders is free."""

    def __init__(self, decoder: LeanDecoder, size: int, like: torch.Tensor, forks: bool):
        shape = (decoder.kv_heads, size * BLOCK, decoder.head_dim)
        self.layers = [
            (unset(like, shape), like.new_zeros(shape) if forks else unset(like, shape))
            for _ in decoder.layers
        ]
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


class Slab:
    """The running rows' own keys and values, dense, next to the pool: each layer's [R, KV, S, D]
    in the pool's dtype, of which the B running rows hold the first B rows (`Rows.slab`); a row's
    own tokens' slots are those of its own blocks (`Rows.offset` + its length). Attention reads the
    rows where they are (`Context`): a row that joins takes row B (its slots are masked out until
    it writes them), one that forks goes on writing in its row, and when rows leave, the rows held
    beyond the new B move into the rows they left (`keep`), a row's slots each. Grown by doubling
    when rows or slots run out; slots go straight to the most a row can take (`most_slots`) when
    one more doubling would pass it, which saves the last growth's copy."""

    def __init__(self, decoder: LeanDecoder, like: torch.Tensor, most_slots: int):
        self.kv_heads, self.head_dim, self.most_slots = (
            decoder.kv_heads,
            decoder.head_dim,
            most_slots,
        )
        self.like, self.layer_count = like, len(decoder.layers)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows, self.slots, self.held = 0, 0, 0
        self.resize(0, min(2 * BLOCK, most_slots))

    def resize(self, rows: int, slots: int) -> None:
        """R = rows, S = slots (not fewer than now), the contents kept."""
        shape = (rows, self.kv_heads, slots, self.head_dim)
        layers = [
            (unset(self.like, shape), self.like.new_zeros(shape)) for _ in range(self.layer_count)
        ]
        for (keys, values), (old_keys, old_values) in zip(layers, self.layers):
            keys[: self.rows, :, : self.slots] = old_keys
            values[: self.rows, :, : self.slots] = old_values
        self.layers, self.rows, self.slots = layers, rows, slots

    def take(self, count: int) -> list[int]:
        """Rows for `count` sequences joining the batch: the next `count` after those held."""
        if self.held + count > self.rows:
            self.resize(max(2 * self.rows, self.held + count), self.slots)
        self.held += count
        return list(range(self.held - count, self.held))

    def keep(self, kept: list[int]) -> list[int]:
        """The rows of the sequences that stay, `kept` (their rows, in their order), once the
        others have left: those at len(kept) or beyond move, slots and all, into the rows below it
        that the others left."""
        self.held = len(kept)
        staying = set(kept)
        left = [row for row in range(self.held) if row not in staying]
        moving = [row for row in kept if row >= self.held]
        if moving:
            device = self.like.device
            sources, targets = longs(moving, device), longs(left, device)
            for keys, values in self.layers:
                keys.index_copy_(0, targets, keys.index_select(0, sources))
                values.index_copy_(0, targets, values.index_select(0, sources))
        moved = dict(zip(moving, left))
        return [moved.get(row, row) for row in kept]

    def fit(self, slots: int) -> bool:
        """Whether S had to grow to hold `slots` slots a row."""
        if slots <= self.slots:
            return False
        grown = max(2 * self.slots, slots)
        # straight to the cap when one more doubling would pass it: no last, short growth
        self.resize(self.rows, self.most_slots if 2 * grown > self.most_slots else grown)
        return True


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
    """The running sequences, one row each, in the order they joined (see the module's docstring).
    Their bookkeeping is kept on the host, so that a step reads back from the device only the
    tokens it drew; `key`, `logits` and `draws` are on the device, and `Layout` holds what the
    decoder reads of the rest."""

    sequence: list[int]
    """Its index in `Call.sequences`."""
    group: list[int]
    """Its group in `Call.groups`."""
    prefix: list[int]
    """Tokens of the group's prefix (where the row's own tokens start)."""
    start: list[int]
    """Tokens of the sequence's path in its group's prefix (where its own tokens count from)."""
    length: list[int]
    """Own tokens in the cache: not the token just drawn, until `feed` writes it."""
    limit: list[int]
    """Own tokens it may sample."""
    table: list[list[int]]
    """The blocks of its own tokens, in order: blocks(offset + length) of them between steps."""
    offset: list[int]
    """Where its own tokens start in its first block: a row that forked goes on in the block where
    its group's prefix ends."""
    replay: list[int]
    """Tokens it sampled before it was preempted and has not fed again."""
    slab: list[int]
    """Its row in `Call.slab`."""
    key: torch.Tensor
    """[B] its key (`draws.py`)."""
    logits: torch.Tensor
    """[B, vocab] the logits its next token is drawn from."""
    draws: torch.Tensor
    """[B, max_new_tokens] float64: the uniform it draws its token at each generated position at,
    uniforms(key, position), computed once when it joins."""

    def bookkeeping(self) -> dict[str, list[Any]]:
        """Its host columns by name: all but the last three fields, which are on the device."""
        return {column.name: getattr(self, column.name) for column in fields(self)[:-3]}

    def select(self, keep: list[int]) -> Rows:
        """The rows `keep` picks, in their order."""
        index = longs(keep, self.key.device)
        return Rows(
            **{name: [column[row] for row in keep] for name, column in self.bookkeeping().items()},
            key=self.key[index],
            logits=self.logits[index],
            draws=self.draws[index],
        )

    def extend(self, other: Rows) -> Rows:
        """These rows, then `other`'s."""
        theirs = other.bookkeeping()
        return Rows(
            **{name: column + theirs[name] for name, column in self.bookkeeping().items()},
            key=torch.cat([self.key, other.key]),
            logits=torch.cat([self.logits, other.logits]),
            draws=torch.cat([self.draws, other.draws]),
        )

    def used(self) -> list[int]:
        """Slots of its blocks in use, counted from its first block's first."""
        return [o + n for o, n in zip(self.offset, self.length)]

    def generated(self) -> list[int]:
        """Tokens its sequence has sampled from its prompt on, in the cache: the position its next
        token is drawn at."""
        return [s + n for s, n in zip(self.start, self.length)]


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
    place: torch.Tensor
    """[B] local x most_rows + slot (`Plan.place`)."""
    in_order: bool
    """Whether place is 0, 1, ..., B - 1 (`Plan.in_order`)."""

    @classmethod
    def of(cls, groups: list[Group], row_groups: list[int], device: torch.device) -> Grouping:
        """The layout for rows in groups `row_groups` (indices into `groups`), worked out on the
        host."""
        distinct = sorted(set(row_groups))
        index = {g: i for i, g in enumerate(distinct)}
        counts = [0] * len(distinct)
        local, slot = [], []
        for g in row_groups:
            local.append(index[g])
            slot.append(counts[index[g]])
            counts[index[g]] += 1
        most_rows = max(counts)
        place = [i * most_rows + s for i, s in zip(local, slot)]
        prefixes = [groups[g] for g in distinct]
        return cls(
            tuple(row_groups),
            pad_sequence([prefix.blocks for prefix in prefixes], batch_first=True),
            pad_sequence([prefix.visible for prefix in prefixes], batch_first=True),
            longs(local, device),
            longs(slot, device),
            most_rows,
            longs(place, device),
            place == list(range(len(distinct) * most_rows)),
        )


@dataclass
class Layout:
    """What a decode step reads of the running rows on the device, kept across steps while the rows
    stay the same: `Call.layout` is dropped when a row joins, leaves or forks, and built again from
    the rows' bookkeeping (`of`), as it is when the slab grows. In between, a step only moves every
    row on by one slot (`advance`) and writes the blocks that rows open (`opened`); its plan is a
    few slices of the layout, and nothing is read back."""

    grouping: Grouping
    own: torch.Tensor
    """[B, `Call.table_columns`] the blocks of each row's own tokens, padded."""
    visible: torch.Tensor
    """[B, N x BLOCK + `Call.table_columns` x BLOCK] which slots of its group's prefix blocks and of
    its own blocks each row attends to: its own up to the slot of the token it is fed next."""
    cursor: torch.Tensor
    """[5, B], each row's: position of its next token (rotary), generated position (its draw's),
    that position's place in `Rows.draws` flattened, its next slot's place in `visible` flattened,
    and the pool slot of its next token. Each moves on by one a step (a slot in a new block is set
    when the row opens it)."""
    own_at: torch.Tensor
    """[B x KV] each row's next slot in `Call.slab` flattened, head by head (`Plan.own_at`); moves
    on by one a step."""
    furthest: int
    """The furthest next slot of a row, counted from the first slot of its first own block: the
    step's plan reads own blocks up to the one it is in."""
    shared_slot: int | None
    """The next slot of every row where all share one (`Plan.own_slot`); moves on by one a step."""
    own_rows: tuple[torch.Tensor, torch.Tensor] | None
    """Each row's row in `Call.slab` and, for each of the first B rows of the slab, the row that
    holds it (`Plan.own_rows`, `Plan.own_order`); None: row b's is b."""
    contexts: list[Context] | None = None
    """Each layer's keys and values the rows attend to: their groups' prefixes, read out of the
    pool by the first step, and `Call.slab`."""

    @classmethod
    def of(cls, call: Call, rows: Rows, device: torch.device) -> Layout:
        """The layout of `rows` about to be fed (each with the block of its next token)."""
        if call.grouping is None or call.grouping.row_groups != tuple(rows.group):
            call.grouping = Grouping.of(call.groups, rows.group, device)
        grouping = call.grouping
        columns = call.table_columns()
        used = rows.used()
        own = longs([table + [0] * (columns - len(table)) for table in rows.table], device)
        slots = torch.arange(columns * BLOCK, device=device)
        offset, next_slot = (longs(values, device)[:, None] for values in (rows.offset, used))
        visible = torch.cat(
            [grouping.shared_visible[grouping.local], (slots >= offset) & (slots <= next_slot)],
            dim=1,
        )
        width, shared_width = visible.shape[1], grouping.shared_visible.shape[1]
        generated = rows.generated()
        cursor = [
            [p + n for p, n in zip(rows.prefix, rows.length)],
            generated,
            [row * call.max_new_tokens + g for row, g in enumerate(generated)],
            [row * width + shared_width + u for row, u in enumerate(used)],
            # a row about to open a block gets its slot in `opened`
            [
                table[u // BLOCK] * BLOCK + u % BLOCK if u % BLOCK else 0
                for table, u in zip(rows.table, used)
            ],
        ]
        heads, slab_slots = call.slab.kv_heads, call.slab.slots
        own_at = [
            (slab_row * heads + head) * slab_slots + u
            for slab_row, u in zip(rows.slab, used)
            for head in range(heads)
        ]
        in_order = rows.slab == list(range(len(rows.slab)))
        order = [0] * len(rows.slab)
        for row, slab_row in enumerate(rows.slab):
            order[slab_row] = row
        return cls(
            grouping,
            own,
            visible,
            longs(cursor, device),
            longs(own_at, device),
            max(used),
            used[0] if len(set(used)) == 1 else None,
            None if in_order else (longs(rows.slab, device), longs(order, device)),
        )

    def opened(self, rows: list[int], columns: list[int], taken: list[int]) -> None:
        """Rows `rows` start block `taken` in their column `columns`: their next token goes to its
        first slot."""
        device = self.own.device
        index, blocks_taken = longs(rows, device), longs(taken, device)
        self.own[index, longs(columns, device)] = blocks_taken
        self.cursor[4, index] = blocks_taken * BLOCK

    def plan(self, decoder: LeanDecoder, pool: Pool, slab: Slab, forks: bool) -> Plan:
        """This step's plan: the own blocks up to the last one in use, and each layer's context
        (its prefixes read out of the pool the first time). The rows' new tokens go to the pool
        only where they may fork: else no one reads them there (the slab holds them for
        attention, and a preempted row replays its tokens)."""
        grouping = self.grouping
        own_columns = blocks(self.furthest + 1)
        plan = Plan(
            self.cursor[4] if forks else None,
            self.own[:, :own_columns],
            grouping.shared,
            grouping.local,
            grouping.slot,
            grouping.most_rows,
            self.visible[:, : grouping.shared_visible.shape[1] + own_columns * BLOCK],
            BLOCK,
            grouping.place,
            grouping.in_order,
        )
        if self.contexts is None:
            self.contexts = [
                Context(
                    decoder.read(keys, grouping.shared, BLOCK),
                    decoder.read(values, grouping.shared, BLOCK),
                    *own,
                )
                for (keys, values), own in zip(pool.layers, slab.layers)
            ]
        plan.contexts, plan.own_at, plan.own_slot = self.contexts, self.own_at, self.shared_slot
        if self.own_rows is not None:
            plan.own_rows, plan.own_order = self.own_rows
        return plan

    def advance(self) -> None:
        """Every row moves on to its next slot, which it attends to from then on."""
        self.cursor += 1
        self.own_at += 1
        self.visible.view(-1).index_fill_(0, self.cursor[3], True)
        self.furthest += 1
        if self.shared_slot is not None:
            self.shared_slot += 1


@dataclass
class Call:
    """One `sample` call's bookkeeping."""

    max_new_tokens: int
    forks: Forks | None
    prompts: list[tuple[int, ...]]
    slab: Slab
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
    layout: Layout | None = None
    """What the decode steps read of the running rows, until one joins, leaves or forks."""
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

    # inference mode: each of a decode step's hundreds of small operations skips autograd's view
    # and version bookkeeping (the same bits; a call 1.08x as fast on the tiny model)
    @torch.inference_mode()
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
            self.decoder,
            self.pool_size(prompts, max_new_tokens, forks),
            self.decoder.embed,
            forks is not None,
        )
        call = Call(
            max_new_tokens,
            forks,
            [tuple(p) for p in prompts],
            Slab(self.decoder, self.decoder.embed, (blocks(max_new_tokens) + 1) * BLOCK),
        )
        self.decoder.keep_rotary(max(map(len, prompts)) + max_new_tokens)
        call.uses.update(call.prompts)
        for index, key in enumerate(keys.to(device)):
            call.prompt_queue.append(Waiting(call.add_sequence(index, None, 0, 0), key, None))
        rows = self.join(call, pool, self.no_rows(call, device))
        while rows.sequence:
            if call.layout is None:
                call.layout = Layout.of(call, rows, device)
            generated, drawn_at = call.layout.cursor[1], call.layout.cursor[2]
            u = rows.draws.view(-1).index_select(0, drawn_at)
            tokens, logps, entropies = pick(rows.logits, rows.key, generated, sampling, u)
            drawn = self.replayed(call, rows, tokens, tokens.tolist())
            spread = [None] * len(drawn) if entropies is None else entropies.tolist()
            for n, token, logp, entropy, fed in zip(
                rows.sequence, drawn, logps.tolist(), spread, rows.replay
            ):
                if not fed:
                    call.tokens[n].append(token)
                    call.logprobs[n].append(logp)
                    if entropy is not None:
                        call.entropies[n].append(entropy)
            stop = [  # + 1: the token just drawn
                not fed and (token == eos_id or n + 1 >= limit)
                for token, fed, n, limit in zip(drawn, rows.replay, rows.length, rows.limit)
            ]
            if any(stop):
                keep = [row for row, stops in enumerate(stop) if not stops]
                self.finish(call, pool, rows, [row for row, stops in enumerate(stop) if stops])
                rows, tokens = rows.select(keep), tokens[longs(keep, device)]
                rows.slab = call.slab.keep(rows.slab)
                call.layout = None
            if len(pool.free) < len(rows.sequence):  # else every row can start a block
                rows, tokens = self.make_room(call, pool, rows, tokens)
            if rows.sequence:
                rows = self.feed(call, pool, rows, tokens)
            if call.prompt_queue or call.prefix_queue:
                rows = self.join(call, pool, rows)
        with torch.inference_mode(False):  # tensors that autograd may save (old log-probs)
            return [call.result(n, eos_id) for n in range(len(call.sequences))]

    @staticmethod
    def replayed(call: Call, rows: Rows, tokens: torch.Tensor, drawn: list[int]) -> list[int]:
        """The tokens `drawn`, a replaying row's replaced by the one it drew before it was
        preempted (in `tokens` too)."""
        replaying = [row for row, fed in enumerate(rows.replay) if fed]
        if not replaying:
            return drawn
        for row in replaying:
            n = rows.sequence[row]
            drawn[row] = call.tokens[n][
                rows.start[row] + rows.length[row] - call.sequences[n].start
            ]
        tokens[longs(replaying, tokens.device)] = longs(
            [drawn[row] for row in replaying], tokens.device
        )
        return drawn

    def no_rows(self, call: Call, device: torch.device) -> Rows:
        none = torch.zeros(0, dtype=torch.long, device=device)
        return Rows(
            sequence=[],
            group=[],
            prefix=[],
            start=[],
            length=[],
            limit=[],
            table=[],
            offset=[],
            replay=[],
            slab=[],
            key=none,
            logits=self.decoder.embed.new_zeros(0, self.decoder.embed.shape[0]).float(),
            draws=torch.zeros(0, call.max_new_tokens, dtype=torch.float64, device=device),
        )

    def make_room(
        self, call: Call, pool: Pool, rows: Rows, tokens: torch.Tensor
    ) -> tuple[Rows, torch.Tensor]:
        """Preempt the rows that joined last until the pool has a block for every row about to start
        one: each gives back its own blocks and waits, first in line, to replay its tokens."""
        keep = len(rows.sequence)
        opening = [used % BLOCK == 0 for used in rows.used()]
        while keep > 1 and sum(opening[:keep]) > len(pool.free):
            keep -= 1
            pool.drop(rows.table[keep])
            preempted = Waiting(
                rows.sequence[keep], rows.key[keep], rows.group[keep], rows.start[keep]
            )
            call.prefix_queue.appendleft(
                preempted
            )  # ahead of the rows preempted before it, which joined after it
        if sum(opening[:keep]) > len(pool.free):
            raise self.out_of_room(call)
        if keep == len(rows.sequence):
            return rows, tokens
        call.layout = None
        rows = rows.select(list(range(keep)))
        rows.slab = call.slab.keep(rows.slab)
        return rows, tokens[:keep]

    def join(self, call: Call, pool: Pool, rows: Rows) -> Rows:
        """Waiting sequences join the batch in order while the pool can hold what they are expected
        to need next to the running rows' expectations (see the module's docstring): preempted
        sequences and forks first, then prompts' sequences, whose new prompts are encoded together
        once room for 1/REFILL_SHARE of the batch is free."""
        expected = call.expected_blocks()
        # blocks each running row may still take: up to what it is expected to hold, at least the
        # one it opens next
        outstanding = sum(
            max(min(blocks(offset + limit), expected) - blocks(used), int(used % BLOCK == 0))
            for offset, limit, used in zip(rows.offset, rows.limit, rows.used())
        )
        room = len(pool.free) - outstanding
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
            if not rows.sequence and (call.prompt_queue or call.prefix_queue):
                raise self.out_of_room(call)
            return rows
        call.layout = None
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
        zeros = [0] * len(joining)
        keys = torch.stack([w.key for w in joining])
        return Rows(
            sequence=[w.sequence for w in joining],
            group=group_ids,
            prefix=[call.groups[g].length for g in group_ids],
            start=list(starts),
            length=list(zeros),
            limit=[call.max_new_tokens - start for start in starts],
            table=[[] for _ in joining],
            offset=list(zeros),
            replay=list(replays),
            slab=call.slab.take(len(joining)),
            key=keys,
            logits=torch.stack(logits),
            draws=uniforms(
                keys[:, None].expand(-1, call.max_new_tokens),
                torch.arange(call.max_new_tokens, device=device),
            ),
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
        taken_blocks = torch.cat([call.groups[call.prompt_group[p]].blocks for p in prompts])
        for (keys, values), (new_keys, new_values) in zip(pool.layers, cache.layers):
            # the slots past a prompt's end are read, masked (see `unset`)
            values.view(values.shape[0], -1, BLOCK * values.shape[-1]).index_fill_(
                1, taken_blocks, 0.0
            )
            for pooled, new in ((keys, new_keys), (values, new_values)):
                flat = new.transpose(0, 1).reshape(new.shape[1], count * width, new.shape[3])
                pooled.index_copy_(1, target, flat.index_select(1, source).to(pooled.dtype))

    def finish(self, call: Call, pool: Pool, rows: Rows, done: list[int]) -> None:
        """Stopped rows `done` give back their blocks (a fork's group keeps those it refers to)."""
        call.finished += len(done)
        call.finished_tokens += sum(rows.length[row] + 1 for row in done)
        for row in done:
            pool.drop(rows.table[row])
            group = call.groups[rows.group[row]]
            group.unfinished -= 1
            if not group.unfinished:
                pool.drop(group.held)

    def feed(self, call: Call, pool: Pool, rows: Rows, tokens: torch.Tensor) -> Rows:
        """One decode step: each row writes its token's keys and values to its next slot (taking a
        block when it starts one) and gets its next logits; then the rows that reached a fork point
        fork."""
        used = rows.used()
        if call.slab.fit(blocks(max(used) + 1) * BLOCK):
            call.layout = None
        if call.layout is None:
            call.layout = Layout.of(call, rows, tokens.device)
        layout = call.layout
        opening = [row for row, slots in enumerate(used) if slots % BLOCK == 0]
        if opening:
            taken = pool.take(len(opening))
            for row, block in zip(opening, taken):
                rows.table[row].append(block)
            layout.opened(opening, [used[row] // BLOCK for row in opening], taken)
        rows.logits = self.decoder.step(
            tokens,
            layout.cursor[0],
            pool.layers,
            layout.plan(self.decoder, pool, call.slab, call.forks is not None),
        ).float()
        layout.advance()
        rows.length = [n + 1 for n in rows.length]
        rows.replay = [max(fed - 1, 0) for fed in rows.replay]
        if call.forks:
            self.fork(call, pool, rows)
        return rows

    def fork(self, call: Call, pool: Pool, rows: Rows) -> None:
        """Rows at a fork point start a group over their path so far, its first row, and
        branching - 1 waiting continuations; the row's own blocks pass to the group. (A replay never
        passes a fork point again: a row's preempted tokens are those after its last fork.)"""
        forks = call.forks
        assert forks is not None
        device = rows.key.device
        for row, total in enumerate(rows.generated()):
            if total % forks.step_tokens or total >= forks.depth * forks.step_tokens:
                continue
            length, offset, own = rows.length[row], rows.offset[row], rows.table[row]
            parent = call.groups[rows.group[row]]
            pool.hold(parent.held)
            columns = torch.arange(len(own) * BLOCK, device=device)
            call.groups.append(
                Group(
                    blocks=torch.cat([parent.blocks, longs(own, device)]),
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
            offset = (offset + length) % BLOCK
            # a row that forks mid-block goes on writing in its last block, which it now shares
            # with the group
            rows.table[row] = own[-1:] if offset else []
            pool.hold(rows.table[row])
            rows.group[row], rows.prefix[row] = len(call.groups) - 1, call.groups[-1].length
            rows.start[row], rows.limit[row], rows.length[row] = total, rows.limit[row] - length, 0
            rows.offset[row] = offset
            call.layout = None
            n = rows.sequence[row]
            for child in range(1, forks.branching):
                m = call.add_sequence(call.sequences[n].prompt, n, total, child)
                key = forks.child_key(rows.key[row], total // forks.step_tokens, child)
                call.prefix_queue.append(Waiting(m, key, len(call.groups) - 1))
