"""Re-Schedule's r-scores (arXiv 2510.24832): how much a query's leaf accuracy rises from a few
edits of its tree.

ACC(S) is the share of correct leaves in S. Both r-scores are greedy, as the reference code
(`reasoning_tree/analyze_tree.py`) computes them: repeatedly apply the eligible edit with the
largest positive gain in ACC over the current tree's leaves, add the gain, stop after `top_m` edits
or when no gain is positive. A high r-score means a few decisions fix the query: it is simple.

- **Selection** (`r_score`, the paper's): the edit at an inner node n keeps one child c and drops
  the other children's subtrees; its gain is ACC(leaves with L(n) replaced by L(c)) - ACC(leaves).
  The kept child is, by `child`: `accuracy`, the child whose own subtree has the highest share of
  correct leaves (the code's rule), or `gain`, the child whose keeping raises ACC most. They agree
  when sibling subtrees have equally many leaves, and differ when an early end-of-sequence leaf
  stands beside a whole subtree.
- **Pruning** (`r_score_pruning`, the code's second score): the edit removes node n's whole subtree;
  its gain is ACC(leaves outside n) - ACC(leaves), and removing every leaf counts as ACC 0.

Eligible nodes: `all` inner nodes, the root included; `reference` as the code: neither the root nor
a depth-1 node, nor a node whose children are all leaves (and, for selection, only nodes with two or
more children). Ties go to the node met first breadth-first (shallower, then left to right: the
code's node order) and, for selection, to the first best child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from treerl.errors import UserError
from treerl.registry import Registry
from treerl.rollout.tree import Node, Path, ReasoningTree

Counts = dict[Path, tuple[int, int]]
"""(correct leaves, leaves) below each node of the current tree."""


@dataclass(frozen=True)
class Eligibility:
    keeps: Callable[[Path, Node], bool]
    """Whether an inner node (its path, the node) may be edited."""
    shallowest: int
    """The shallowest tree in which some node is eligible."""


ELIGIBLE: Registry[Eligibility] = Registry("rscore.eligible")
ELIGIBLE.add("all", Eligibility(lambda path, node: True, 1))
# the reference code's: a node at depth >= 2 with a child that is not a leaf, so a tree of depth 3
# or less scores 0 whatever its leaves say
ELIGIBLE.add(
    "reference",
    Eligibility(lambda path, node: len(path) >= 2 and not all(c.is_leaf for c in node.children), 4),
)

CHILD_RULES: Registry[Callable[[list[tuple[int, int]], list[Fraction]], list[Fraction]]] = Registry(
    "rscore.child"
)
"""(correct, leaves) below each child, each child's gain -> what the kept child maximises
(the first on ties)."""
CHILD_RULES.add(
    "accuracy", lambda below, gains: [Fraction(c, n) for c, n in below]
)  # the reference code's
CHILD_RULES.add("gain", lambda below, gains: gains)


def check_depth(eligible: str, depth: int, where: str) -> None:
    """A UserError when trees of this depth can only have r-score 0 (nothing in them is
    eligible)."""
    shallowest = ELIGIBLE.lookup(eligible).shallowest
    if depth < shallowest:
        raise UserError(
            f"rscore.eligible={eligible} needs trees of depth {shallowest} or more (a node at "
            f"depth 2 or deeper with a grandchild), but {where} are {depth} deep: every r-score "
            "would be 0. Use rscore.eligible=all, or deeper trees"
        )


def leaf_accuracy(tree: ReasoningTree) -> float:
    """Share of the tree's leaves whose answer is right."""
    leaves = [node for _, node in tree.leaves()]
    return sum(_correct(node) for node in leaves) / len(leaves)


def _correct(leaf: Node) -> bool:
    if leaf.correct is None:
        raise ValueError("every leaf needs `correct` set before scoring the tree")
    return leaf.correct


def _eligible(tree: ReasoningTree, eligible: str, min_children: int) -> list[Path]:
    """The candidate nodes, breadth-first."""
    keeps = ELIGIBLE.lookup(eligible).keeps
    inner = [
        path
        for path, node in tree.walk()
        if len(node.children) >= min_children and keeps(path, node)
    ]
    return sorted(inner, key=lambda path: (len(path), path))


def _counts(
    tree: ReasoningTree, children: Callable[[Path, Node], list[tuple[int, Node]]]
) -> Counts:
    """(correct leaves, leaves) below every node still in the tree, given which children each node
    keeps."""
    out: Counts = {}

    def visit(path: Path, node: Node) -> tuple[int, int]:
        if node.is_leaf:
            out[path] = (int(_correct(node)), 1)
        else:
            below = [visit(path + (i,), child) for i, child in children(path, node)]
            out[path] = (sum(c for c, _ in below), sum(n for _, n in below))
        return out[path]

    visit((), tree.root)
    return out


def greedy_choices(
    tree: ReasoningTree, top_m: int = 4, eligible: str = "all", child: str = "accuracy"
) -> list[tuple[Path, int, float]]:
    """The selection edits in order: (node path, child kept, gain)."""
    rule = CHILD_RULES.lookup(child)
    candidates = _eligible(tree, eligible, min_children=2)
    keep: dict[Path, int] = {}

    def children(path: Path, node: Node) -> list[tuple[int, Node]]:
        return (
            [(keep[path], node.children[keep[path]])]
            if path in keep
            else list(enumerate(node.children))
        )

    picks: list[tuple[Path, int, float]] = []
    while len(picks) < top_m:
        count = _counts(tree, children)
        correct_all, n_all = count[()]
        base = Fraction(correct_all, n_all)
        best: tuple[Fraction, Path, int] | None = None
        for path in candidates:
            if path not in count or path in keep:  # pruned away, or already decided
                continue
            c_n, n_n = count[path]
            below = [count[path + (i,)] for i in range(len(tree.node(path).children))]
            gains = [
                Fraction(correct_all - c_n + c_c, n_all - n_n + n_c) - base for c_c, n_c in below
            ]
            ranked = rule(below, gains)
            kept = ranked.index(max(ranked))  # the first on ties
            if gains[kept] > 0 and (best is None or gains[kept] > best[0]):
                best = (gains[kept], path, kept)
        if best is None:
            break
        gained, path, kept = best
        keep[path] = kept
        picks.append((path, kept, float(gained)))
    return picks


def r_score(
    tree: ReasoningTree, top_m: int = 4, eligible: str = "all", child: str = "accuracy"
) -> float:
    """The sum of the selection edits' gains: ACC after at most top_m edits minus ACC before."""
    return float(sum(gain for _, _, gain in greedy_choices(tree, top_m, eligible, child)))


def pruning_choices(
    tree: ReasoningTree, top_m: int = 4, eligible: str = "all"
) -> list[tuple[Path, float]]:
    """The pruning edits in order: (node path removed, gain)."""
    candidates = _eligible(tree, eligible, min_children=1)
    removed: set[Path] = set()

    def children(path: Path, node: Node) -> list[tuple[int, Node]]:
        return [(i, child) for i, child in enumerate(node.children) if path + (i,) not in removed]

    picks: list[tuple[Path, float]] = []
    while len(picks) < top_m:
        count = _counts(tree, children)
        correct_all, n_all = count[()]
        base = Fraction(correct_all, n_all) if n_all else Fraction(0)
        best: tuple[Fraction, Path] | None = None
        for path in candidates:
            if path not in count:  # removed, or below a removed node
                continue
            c_n, n_n = count[path]
            after = Fraction(correct_all - c_n, n_all - n_n) if n_all > n_n else Fraction(0)
            if after - base > 0 and (best is None or after - base > best[0]):
                best = (after - base, path)
        if best is None:
            break
        removed.add(best[1])
        picks.append((best[1], float(best[0])))
    return picks


def r_score_pruning(tree: ReasoningTree, top_m: int = 4, eligible: str = "all") -> float:
    """The sum of the pruning edits' gains (the code's pruning improvement top-M sum)."""
    return float(sum(gain for _, gain in pruning_choices(tree, top_m, eligible)))
