"""The reasoning tree: the root is the prompt, every other node a segment of generated tokens.

A leaf's value is its reward (the verifier's score of the whole root-to-leaf text); an inner node's value
is the mean of its children's values. GRPO's n samples are a tree of depth 1; TreeRPO samples deeper
trees and learns at every branch point; Re-Schedule reads the tree's shape.

A node is addressed by its path: the child indices from the root, so `()` is the root, `(0,)` the
root's first child and `(0, 1)` that node's second child.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

Path = tuple[int, ...]
Nested = Union[float, list["Nested"]]


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
    value: float = 0.0

    @property
    def is_leaf(self) -> bool:
        return not self.children


class ReasoningTree:
    def __init__(self, root: Node | None = None, prompt_ids: list[int] | None = None):
        self.root = root or Node()
        self.prompt_ids = prompt_ids or []

    @classmethod
    def from_leaf_rewards(cls, nested: list[Nested]) -> ReasoningTree:
        """A tree from nested rewards: a list is an inner node, a number is a leaf, e.g. [[1, 0], [[0, 1], 1]]."""
        def build(item: Nested) -> Node:
            if isinstance(item, list):
                if not item:
                    raise ValueError("an inner node needs at least one child")
                return Node(children=[build(child) for child in item])
            return Node(reward=float(item), finished=True)

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
            stack.extend((path + (i,), child) for i, child in reversed(list(enumerate(node.children))))

    def leaves(self) -> list[tuple[Path, Node]]:
        return [(path, node) for path, node in self.walk() if node.is_leaf and path]

    @property
    def depth(self) -> int:
        return max((len(path) for path, _ in self.walk()), default=0)

    def backup(self) -> None:
        """Values from the leaves up: a leaf's value is its reward, an inner node's the mean of its children's."""
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

    def text_ids(self, path: Path) -> list[int]:
        """The generated tokens from the root to a node (its ancestors' segments and its own)."""
        return self.prefix_ids(path)[len(self.prompt_ids):] + self.node(path).token_ids
