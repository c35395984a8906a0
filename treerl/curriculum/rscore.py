"""Re-Schedule's r-score (arXiv 2510.24832): how much a query's leaf accuracy rises from a few edits of its tree.

ACC(S) is the share of correct leaves in S. The gain of an inner node n is the rise in ACC over all leaves if
n always took its best child: G(n) = max_c ACC(leaves with L(n) replaced by L(c)) - ACC(all leaves). The
r-score is greedy, as the reference code computes it: pick the eligible node with the largest positive gain
on the current tree, apply it (drop its other children's subtrees), add the gain; stop after `top_m` picks or
when no gain is positive. Ties go to the node met first in preorder, and to its first best child. A high
r-score means a few decisions fix the query: it is simple.

Eligible nodes: `all` inner nodes, the root included; `reference` as the paper's code: neither the root nor
a depth-1 node, nor a node whose children are all leaves.
"""

from __future__ import annotations

from fractions import Fraction

from treerl.errors import UserError
from treerl.rollout.tree import Node, Path, ReasoningTree

ELIGIBLE = ("all", "reference")


def leaf_accuracy(tree: ReasoningTree) -> float:
    """Share of the tree's leaves whose answer is right."""
    leaves = [node for _, node in tree.leaves()]
    return sum(_correct(node) for node in leaves) / len(leaves)


def _correct(leaf: Node) -> bool:
    if leaf.correct is None:
        raise ValueError("every leaf needs `correct` set before scoring the tree")
    return leaf.correct


def _eligible(tree: ReasoningTree, eligible: str) -> list[Path]:
    if eligible not in ELIGIBLE:
        raise UserError(f"unknown rscore.eligible '{eligible}'; available: {', '.join(ELIGIBLE)}")
    inner = [(path, node) for path, node in tree.walk() if len(node.children) > 1]
    if eligible == "all":
        return [path for path, _ in inner]
    return [path for path, node in inner if len(path) >= 2 and not all(c.is_leaf for c in node.children)]


def greedy_choices(tree: ReasoningTree, top_m: int = 4, eligible: str = "all") -> list[tuple[Path, int, float]]:
    """The greedy picks in order: (node path, child kept, gain)."""
    candidates = _eligible(tree, eligible)
    keep: dict[Path, int] = {}

    def children(path: Path, node: Node) -> list[tuple[int, Node]]:
        return [(keep[path], node.children[keep[path]])] if path in keep else list(enumerate(node.children))

    def counts() -> dict[Path, tuple[int, int]]:
        """(correct leaves, leaves) below every node of the current tree."""
        out: dict[Path, tuple[int, int]] = {}

        def visit(path: Path, node: Node) -> tuple[int, int]:
            if node.is_leaf:
                out[path] = (int(_correct(node)), 1)
            else:
                below = [visit(path + (i,), child) for i, child in children(path, node)]
                out[path] = (sum(c for c, _ in below), sum(n for _, n in below))
            return out[path]

        visit((), tree.root)
        return out

    picks: list[tuple[Path, int, float]] = []
    while len(picks) < top_m:
        count = counts()
        correct_all, n_all = count[()]
        base = Fraction(correct_all, n_all)
        best: tuple[Fraction, Path, int] | None = None
        for path in candidates:
            if path not in count or path in keep:  # pruned away, or already decided
                continue
            c_n, n_n = count[path]
            for i in range(len(tree.node(path).children)):
                c_c, n_c = count[path + (i,)]
                gain = Fraction(correct_all - c_n + c_c, n_all - n_n + n_c) - base
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, path, i)
        if best is None:
            break
        gain, path, child = best
        keep[path] = child
        picks.append((path, child, float(gain)))
    return picks


def r_score(tree: ReasoningTree, top_m: int = 4, eligible: str = "all") -> float:
    """The sum of the greedy picks' gains: ACC after at most top_m best-child edits minus ACC before."""
    return float(sum(gain for _, _, gain in greedy_choices(tree, top_m, eligible)))
