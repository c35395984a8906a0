"""The reasoning tree: the root is the prompt, every other node a segment of generated tokens.

A leaf's value is its reward (the verifier's score of the whole root-to-leaf text); an inner node's
value is the mean of its children's values. GRPO's n samples are a tree of depth 1; TreeRPO samples
deeper trees and learns at every branch point; Re-Schedule reads the tree's shape.

A node is addressed by its path: the child indices from the root, so `()` is the root, `(0,)` the
root's first child and `(0, 1)` that node's second child.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import RolloutConfig
from treerl.errors import UserError
from treerl.registry import Registry
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.engine import backend_name, sample_sequences

Path = tuple[int, ...]
Nested = float | list["Nested"]


@dataclass
class Node:
    token_ids: list[int] = field(default_factory=list)
    """This node's segment (empty at the root)."""
    logprobs: list[float] = field(default_factory=list)
    """The behaviour policy's log-probs of `token_ids`."""
    children: list[Node] = field(default_factory=list)
    finished: bool = False
    """The segment ends in EOS."""
    reward: float | None = None
    """Leaves only: the verifier's reward of the root-to-leaf text."""
    correct: bool | None = None
    """Leaves only: whether that text's final answer is right (what accuracy and the r-score
    count)."""
    value: float = 0.0

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class TrainingSample:
    path: Path
    context_ids: list[int]
    """The prompt and the node's ancestors' segments: conditioned on, not trained."""
    segment_ids: list[int]
    """The node's own tokens: every one carries `advantage`."""
    old_logprobs: list[float]
    advantage: float
    weight: float = 1.0
    """How much this sample's policy-loss terms count (Re-Schedule's query weight)."""


class ReasoningTree:
    def __init__(self, root: Node | None = None, prompt_ids: list[int] | None = None):
        self.root = root or Node()
        self.prompt_ids = prompt_ids or []

    @classmethod
    def from_leaf_rewards(cls, nested: list[Nested]) -> ReasoningTree:
        """A tree from nested rewards: a list is an inner node, a number is a leaf,
        e.g. [[1, 0], [[0, 1], 1]]; a leaf counts as correct when its reward is 1."""

        def build(item: Nested) -> Node:
            if isinstance(item, list):
                if not item:
                    raise ValueError("an inner node needs at least one child")
                return Node(children=[build(child) for child in item])
            return Node(reward=float(item), correct=float(item) == 1.0, finished=True)

        if not isinstance(nested, list):
            raise ValueError("the root is a list of its children")
        tree = cls(build(nested))
        tree.backup()
        return tree

    def node(self, path: Path) -> Node:
        node = self.root
        for index in path:
            node = node.children[index]
        return node

    def walk(self) -> Iterator[tuple[Path, Node]]:
        """Every node with its path, parents before children, children in order."""
        stack: list[tuple[Path, Node]] = [((), self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            stack.extend(
                (path + (i,), child) for i, child in reversed(list(enumerate(node.children)))
            )

    def leaves(self) -> list[tuple[Path, Node]]:
        return [(path, node) for path, node in self.walk() if node.is_leaf and path]

    @property
    def depth(self) -> int:
        return max((len(path) for path, _ in self.walk()), default=0)

    def backup(self) -> None:
        """Values from the leaves up: a leaf's value is its reward, an inner node's the mean of its
        children's."""
        for path, node in reversed(list(self.walk())):
            if node.is_leaf:
                if path and node.reward is None:
                    raise ValueError(f"leaf {path} has no reward")
                node.value = node.reward or 0.0
            else:
                node.value = sum(child.value for child in node.children) / len(node.children)

    def prefix_ids(self, path: Path) -> list[int]:
        """The context of a node: the prompt and its ancestors' segments."""
        ids = list(self.prompt_ids)
        node = self.root
        for index in path[:-1]:
            node = node.children[index]
            ids += node.token_ids
        return ids

    def training_samples(self, advantages: dict[Path, float]) -> list[TrainingSample]:
        """One sample per node with an advantage: its prefix as context, its own segment as the
        trained tokens."""
        return [
            TrainingSample(
                path,
                self.prefix_ids(path),
                self.node(path).token_ids,
                self.node(path).logprobs,
                advantage,
            )
            for path, advantage in sorted(advantages.items())
        ]

    def text_ids(self, path: Path) -> list[int]:
        """The generated tokens from the root to a node (its ancestors' segments and its own)."""
        return self.prefix_ids(path)[len(self.prompt_ids) :] + self.node(path).token_ids


@dataclass
class TreeStats:
    generated_tokens: int = 0
    """Tokens sampled, all of which end up in some node."""
    prefix_tokens_saved: int = 0
    """Prompt and prefix tokens that encoding each continuation from scratch would have cost and
    that it did not cost (vLLM: those its prefix cache served)."""
    prefix_tokens_inherited: int = 0
    """The prompt and prefix tokens of every continuation."""
    prefix_tokens_cacheable: int = 0
    """vLLM: of those, the tokens in whole KV blocks before each continuation's last, all its cache
    can serve."""

    def __iadd__(self, other: TreeStats) -> TreeStats:
        self.generated_tokens += other.generated_tokens
        self.prefix_tokens_saved += other.prefix_tokens_saved
        self.prefix_tokens_inherited += other.prefix_tokens_inherited
        self.prefix_tokens_cacheable += other.prefix_tokens_cacheable
        return self

    @classmethod
    def of(
        cls,
        sequences: list[Sequence],
        prompt_ids: list[list[int]],
        vllm: bool,
        encoded: int = 0,
    ) -> TreeStats:
        """One call's counts. The lean and transformers backends reuse every inherited token but the
        `encoded` ones, the prefixes that sampling level by level encodes again (0 when the backend
        forks its own cache); vLLM reuses those its prefix cache served."""
        forks = [seq for seq in sequences if seq.parent is not None]
        inherited = sum(len(prompt_ids[seq.prompt]) + seq.start for seq in forks)
        return cls(
            sum(len(seq.token_ids) for seq in sequences),
            sum(seq.cached_tokens for seq in forks) if vllm else inherited - encoded,
            inherited,
            sum(seq.cacheable_tokens for seq in forks),
        )


Cuts = list[list[int]]
"""Per sequence, where its nodes end and the next begin: positions counted in generated tokens,
inherited ones included, ascending, each after its start and before its end."""


def grow_trees(
    prompt_ids: list[list[int]], sequences: list[Sequence], rows_per_prompt: int, cuts: Cuts
) -> list[ReasoningTree]:
    """The trees of sampled sequences: each cut at its `cuts` into a chain of nodes (the last holds
    the rest); a fork's first node hangs under the node its parent ended where the fork starts,
    after the parent's own next node."""
    trees = [ReasoningTree(prompt_ids=list(p)) for p in prompt_ids]
    ends: dict[tuple[int, int], Node] = {}
    """(sequence, position) -> that sequence's node that ends at that position."""
    for n, seq in enumerate(sequences):
        parent = (
            trees[seq.prompt // rows_per_prompt].root
            if seq.parent is None
            else ends[(seq.parent, seq.start)]
        )
        stop = seq.start + len(seq.token_ids)
        bounds = [seq.start, *cuts[n], stop]
        for start, end in zip(bounds, bounds[1:]):
            own = slice(start - seq.start, end - seq.start)
            node = Node(
                token_ids=seq.token_ids[own],
                logprobs=seq.logprobs[own].tolist(),
                finished=seq.finished and end == stop,
            )
            parent.children.append(node)
            ends[(n, end)] = parent = node
    return trees


Sample = Callable[[list[list[int]], torch.Tensor, int, Forks | None], list[Sequence]]
"""(prompts, their keys, max_new_tokens, forks) -> the sequences the backend samples, with the
call's temperature and top-p."""


@dataclass(frozen=True)
class TreeCall:
    """One call's trees to sample: `forks.branching` rows of each prompt, their keys, the response
    budget, the tree's shape and tree.branch_top_k."""

    sample: Sample
    rows: list[list[int]]
    keys: torch.Tensor
    max_new_tokens: int
    forks: Forks
    top_k: int


@dataclass(frozen=True)
class Grown:
    """A call's sampled sequences, where each is cut into nodes, and the prefix tokens encoded again
    to sample forks."""

    sequences: list[Sequence]
    cuts: Cuts
    encoded: int


@dataclass(frozen=True)
class Branching:
    """Where a tree's nodes fork (tree.branch_at)."""

    grow: Callable[[TreeCall], Grown]
    """A call's trees -> their sequences and where they are cut."""
    by_level: bool
    """Forks are chosen from the draws' entropies once a level is sampled, and sampled level by
    level, each fork point's prefix encoded once more (not forked in the backend's cache as it
    decodes)."""


BRANCHINGS: Registry[Branching] = Registry("tree.branch_at")


def fixed_cuts(seq: Sequence, forks: Forks) -> list[int]:
    """Every step_tokens tokens of the response down to forks.depth levels: l s for 0 < l < depth,
    within the sequence's own tokens (start < l s < start + length)."""
    stop = seq.start + len(seq.token_ids)
    return [
        level * forks.step_tokens
        for level in range(1, forks.depth)
        if seq.start < level * forks.step_tokens < stop
    ]


def every_step(call: TreeCall) -> Grown:
    """TreeRPO's: the backend forks every sequence that goes on past l x step_tokens tokens as it
    decodes, its KV cache the continuations' prefix."""
    forks = call.forks
    backend_forks = forks if forks.depth > 1 else None
    sequences = call.sample(call.rows, call.keys, call.max_new_tokens, backend_forks)
    return Grown(sequences, [fixed_cuts(seq, forks) for seq in sequences], 0)


BRANCHINGS.add("fixed", Branching(every_step, by_level=False))


def fork_point(entropies: torch.Tensor, lowest: int) -> int:
    """The position of the highest of `entropies` (those of positions lowest, lowest + 1, ...),
    the last of equal ones: flat entropies fork where `fixed` does."""
    flipped = torch.argmax(entropies.flip(0)).item()
    return lowest + len(entropies) - 1 - int(flipped)


def fork_points(
    starts: list[int],
    entropies: list[torch.Tensor],
    trees: list[int],
    level: int,
    step_tokens: int,
    top_k: int,
) -> list[tuple[int, int]]:
    """(sequence, position) of each fork at `level` (1 .. depth - 1): every sequence that began
    before the level's window W = (level - 1) s + 1 .. level s (start <= (level - 1) s) and drew all
    of it (more than level s tokens, inherited ones included, as `fixed` asks) forks at the token of
    W whose draw had the highest entropy; with top_k > 0 only the top_k highest of each tree (ties:
    the sequence sampled first). `entropies[n]` covers every position of sequence n's path,
    `trees[n]` is its tree."""
    lowest, highest = (level - 1) * step_tokens + 1, level * step_tokens
    found = [
        (n, fork_point(path[lowest : highest + 1], lowest))
        for n, (start, path) in enumerate(zip(starts, entropies))
        if start < lowest and len(path) > highest
    ]
    if not top_k:
        return found
    ranked = sorted(found, key=lambda point: -float(entropies[point[0]][point[1]]))
    taken: Counter[int] = Counter()
    kept = []
    for n, position in ranked:
        if taken[trees[n]] < top_k:
            taken[trees[n]] += 1
            kept.append((n, position))
    return sorted(kept)


NO_ENTROPIES = (
    "tree.branch_at=entropy needs the entropy of every draw, which rollout.backend=vllm does not "
    "give (it returns top-k log-probs only); use rollout.backend=lean or hf, or "
    "tree.branch_at=fixed"
)


def drawn_entropies(seq: Sequence) -> torch.Tensor:
    """The entropies a backend sampling with Sampling.entropy gives (vLLM is refused before)."""
    assert seq.entropies is not None, NO_ENTROPIES
    return seq.entropies


def cut_to(seq: Sequence, length: int) -> Sequence:
    """The sequence's first `length` own tokens (finished only if its EOS is among them)."""
    entropies = seq.entropies
    return replace(
        seq,
        token_ids=seq.token_ids[:length],
        logprobs=seq.logprobs[:length],
        finished=seq.finished and len(seq.token_ids) <= length,
        entropies=None if entropies is None else entropies[:length],
    )


def highest_entropy(call: TreeCall) -> Grown:
    """The rows' full responses first, then level by level (`fork_points`): each fork point's
    branching - 1 continuations, keyed from its sequence's key as `fixed` keys them and sampled in
    one call, which encodes each fork point's prefix once (one call's budget is the longest any fork
    has left; each fork keeps the max_new_tokens - position it has, the draws after it are
    dropped). A sequence's path is cut at each of its fork points."""
    sample, rows, forks, budget = call.sample, call.rows, call.forks, call.max_new_tokens
    sequences = sample(rows, call.keys, budget, None)
    paths = [seq.token_ids for seq in sequences]
    entropies = [drawn_entropies(seq) for seq in sequences]
    """Each sequence's draws' entropies along its whole path, inherited ones included."""
    sequence_keys = list(call.keys)
    cuts: Cuts = [[] for _ in sequences]
    encoded = 0
    for level in range(1, forks.depth):
        points = fork_points(
            [seq.start for seq in sequences],
            entropies,
            [seq.prompt // forks.branching for seq in sequences],
            level,
            forks.step_tokens,
            call.top_k,
        )
        for n, position in points:
            cuts[n].append(position)
        requests = [(n, p, child) for n, p in points for child in range(1, forks.branching)]
        if not requests:
            continue
        prompts = [rows[sequences[n].prompt] + paths[n][:p] for n, p, _ in requests]
        encoded += sum(len(rows[sequences[n].prompt]) + p for n, p in points)
        fork_keys = torch.stack(
            [forks.child_key(sequence_keys[n], level, c) for n, _, c in requests]
        )
        longest = budget - min(p for _, p, _ in requests)
        for (n, p, child), key, drawn in zip(
            requests, fork_keys, sample(prompts, fork_keys, longest, None)
        ):
            seq = cut_to(drawn, budget - p)
            sequences.append(
                replace(seq, prompt=sequences[n].prompt, parent=n, start=p, child=child)
            )
            paths.append(paths[n][:p] + seq.token_ids)
            entropies.append(torch.cat([entropies[n][:p], drawn_entropies(seq)]))
            sequence_keys.append(key)
            cuts.append([])
    return Grown(sequences, cuts, encoded)


BRANCHINGS.add("entropy", Branching(highest_entropy, by_level=True))


@torch.no_grad()
def sample_trees(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    *,
    branching: int,
    depth: int,
    step_tokens: int,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    rollout: RolloutConfig | None = None,
    branch_at: str = "fixed",
    branch_top_k: int = 0,
) -> tuple[list[ReasoningTree], TreeStats]:
    """One tree per prompt, sampled as the TreeRPO code does: `branching` full rollouts of
    max_new_tokens (default depth x step_tokens), cut into nodes down to `depth` levels, where the
    last node holds the rest of its rollout; every unfinished node above `depth` gets branching - 1
    fresh continuations of the remaining budget, its own rollout supplying its first child. The
    l-th fork of a response is at token l x step_tokens (branch_at=fixed: continuations reuse the
    KV cache of their prefix instead of encoding it again), or at the token of highest entropy in
    the step before it (branch_at=entropy, `highest_entropy`; with branch_top_k, only the top k of
    each tree and level). Sampled through rollout.backend, the rows keyed from one draw of
    `generator` whatever the branching; rewards are left to the caller."""
    budget = depth * step_tokens if max_new_tokens is None else max_new_tokens
    if budget <= (depth - 1) * step_tokens:
        raise ValueError(
            f"max_new_tokens {budget} leaves nothing for depth {depth} "
            f"at {step_tokens} tokens a step"
        )
    branch = BRANCHINGS.lookup(branch_at)
    vllm = backend_name(model, (rollout or RolloutConfig()).backend) == "vllm"
    if branch.by_level and vllm:
        raise UserError(NO_ENTROPIES)
    sampling = Sampling(temperature, top_p, entropy=branch.by_level)

    def sample(
        prompts: list[list[int]], keys: torch.Tensor, max_new: int, forks: Forks | None
    ) -> list[Sequence]:
        return sample_sequences(
            model,
            prompts,
            max_new_tokens=max_new,
            sampling=sampling,
            eos_id=tokenizer.eos_token_id,
            generator=None,
            rollout=rollout,
            forks=forks,
            keys=keys,
        )

    rows = [p for p in prompt_ids for _ in range(branching)]
    keys = row_keys(generator, len(rows), next(model.parameters()).device)
    grown = branch.grow(
        TreeCall(sample, rows, keys, budget, Forks(branching, depth, step_tokens), branch_top_k)
    )
    stats = TreeStats.of(grown.sequences, rows, vllm, grown.encoded)
    return grow_trees(prompt_ids, grown.sequences, branching, grown.cuts), stats
