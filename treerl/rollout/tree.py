"""The reasoning tree: the root is the prompt, every other node a segment of generated tokens.

A leaf's value is its reward (the verifier's score of the whole root-to-leaf text); an inner node's
value is the mean of its children's values. GRPO's n samples are a tree of depth 1; TreeRPO samples
deeper trees and learns at every branch point; Re-Schedule reads the tree's shape.

A node is addressed by its path: the child indices from the root, so `()` is the root, `(0,)` the
root's first child and `(0, 1)` that node's second child.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import RolloutConfig
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling
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
    def of(cls, sequences: list[Sequence], prompt_ids: list[list[int]], vllm: bool) -> TreeStats:
        """One call's counts. The lean and transformers backends reuse every inherited token by
        construction; vLLM reuses those its prefix cache served."""
        forks = [seq for seq in sequences if seq.parent is not None]
        inherited = sum(len(prompt_ids[seq.prompt]) + seq.start for seq in forks)
        return cls(
            sum(len(seq.token_ids) for seq in sequences),
            sum(seq.cached_tokens for seq in forks) if vllm else inherited,
            inherited,
            sum(seq.cacheable_tokens for seq in forks),
        )


def grow_trees(
    prompt_ids: list[list[int]],
    sequences: list[Sequence],
    rows_per_prompt: int,
    depth: int,
    step_tokens: int,
) -> list[ReasoningTree]:
    """The trees of sampled sequences: each cut into step_tokens slices down to `depth` (the last
    slice holds the rest), each slice a node under the previous one; a fork's first slice hangs
    under the node its parent ended at the fork point, after the parent's own next slice."""
    trees = [ReasoningTree(prompt_ids=list(p)) for p in prompt_ids]
    nodes: dict[tuple[int, int], Node] = {}
    """(sequence, depth) -> the node of that sequence at that depth."""
    for n, seq in enumerate(sequences):
        level = seq.start // step_tokens
        parent = (
            trees[seq.prompt // rows_per_prompt].root
            if seq.parent is None
            else nodes[(seq.parent, level)]
        )
        stop = len(seq.token_ids)
        for d, start in enumerate(list(range(0, stop, step_tokens))[: depth - level], level + 1):
            ids = seq.token_ids[start : stop if d == depth else min(start + step_tokens, stop)]
            node = Node(
                token_ids=ids,
                logprobs=seq.logprobs[start : start + len(ids)].tolist(),
                finished=seq.finished and start + len(ids) == stop,
            )
            parent.children.append(node)
            nodes[(n, d)] = parent = node
    return trees


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
) -> tuple[list[ReasoningTree], TreeStats]:
    """One tree per prompt, sampled as the TreeRPO code does: `branching` full rollouts of
    max_new_tokens (default depth x step_tokens), cut into step_tokens slices down to `depth`, where
    the last node holds the rest of its rollout; every unfinished node above `depth` gets
    branching - 1 fresh continuations of the remaining budget, its own rollout supplying its first
    child. Continuations reuse the KV cache of their prefix instead of encoding it again. Sampled
    through rollout.backend; rewards are left to the caller."""
    budget = depth * step_tokens if max_new_tokens is None else max_new_tokens
    if budget <= (depth - 1) * step_tokens:
        raise ValueError(
            f"max_new_tokens {budget} leaves nothing for depth {depth} "
            f"at {step_tokens} tokens a step"
        )
    rows = [p for p in prompt_ids for _ in range(branching)]
    sequences = sample_sequences(
        model,
        rows,
        max_new_tokens=budget,
        sampling=Sampling(temperature, top_p),
        eos_id=tokenizer.eos_token_id,
        generator=generator,
        rollout=rollout,
        forks=Forks(branching, depth, step_tokens) if depth > 1 else None,
    )
    stats = TreeStats.of(
        sequences, rows, backend_name(model, (rollout or RolloutConfig()).backend) == "vllm"
    )
    return grow_trees(prompt_ids, sequences, branching, depth, step_tokens), stats
