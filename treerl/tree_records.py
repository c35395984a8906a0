"""A tree record, the run directory's format of one graded reasoning tree: a line of trees.jsonl
(written during training with output.save_trees) and what a tree page draws. Built from a tree as
plain data; read back typed, a record that is not one skipped with a warning. The ground layer: it
knows a tree and a problem by the fields it reads (the protocols below), and takes the r-score's
picks from its caller."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import PreTrainedTokenizerBase

from treerl.errors import UserError, warn
from treerl.rundir import RunDir, TooDeep

Path = tuple[int, ...]
"""A node's place: the child indices from the root (the root's is ())."""
Pick = tuple[Path, int, float]
"""One of the r-score's greedy edits: (node path, child kept, gain)."""


class GradedNode(Protocol):
    """What a record reads of a node of a graded tree (treerl.rollout.tree.Node)."""

    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def children(self) -> Sequence[GradedNode]: ...
    @property
    def value(self) -> float: ...
    @property
    def reward(self) -> float | None: ...
    @property
    def correct(self) -> bool | None: ...
    @property
    def finished(self) -> bool: ...


class GradedTree(Protocol):
    """What a record reads of a graded tree (treerl.rollout.tree.ReasoningTree)."""

    @property
    def root(self) -> GradedNode: ...
    @property
    def prompt_ids(self) -> Sequence[int]: ...


class RecordedProblem(Protocol):
    """What a record reads of a problem (treerl.tasks.base.Problem)."""

    @property
    def id(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def question(self) -> str: ...
    @property
    def reference(self) -> Any: ...


def tree_record(
    tree: GradedTree,
    problem: RecordedProblem,
    tokenizer: PreTrainedTokenizerBase,
    prune_tau: float,
    picks: list[Pick],
    step: int | None = None,
    advantages: dict[Path, float] | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    """A graded tree as plain data: nested nodes with their decoded text, token count and (where the
    estimator trained on it) advantage, the pruned groups, the r-score's greedy picks (r_score = the
    sum of their gains) and the query's loss weight."""
    trained = advantages or {}

    def node_record(node: GradedNode, path: Path) -> dict[str, Any]:
        values = [child.value for child in node.children]
        advantage = trained.get(path)
        return {
            "text": tokenizer.decode(node.token_ids, skip_special_tokens=True),
            "tokens": len(node.token_ids),
            "value": round(node.value, 4),
            "reward": node.reward,
            "correct": node.correct,
            "finished": node.finished,
            "advantage": None if advantage is None else round(advantage, 4),
            "pruned": bool(values) and max(values) - min(values) < prune_tau,
            "children": [node_record(child, path + (i,)) for i, child in enumerate(node.children)],
        }

    return {
        "step": step,
        "id": problem.id,
        "level": problem.level,
        "question": problem.question,
        "reference": problem.reference,
        "prompt": tokenizer.decode(tree.prompt_ids, skip_special_tokens=True),
        "r_score": float(sum(gain for _, _, gain in picks)),
        "prune_tau": prune_tau,
        "picks": [[list(path), child, gain] for path, child, gain in picks],
        "weight": weight,
        "root": node_record(tree.root, ()),
    }


class NodeRecord(BaseModel):
    """A node as a record holds it: every value typed, so that nothing but text reaches
    the page as a string."""

    model_config = ConfigDict(coerce_numbers_to_str=True)
    text: str
    tokens: int | None = None
    value: float
    advantage: float | None = None
    reward: float | None = None
    correct: bool | None = None
    finished: bool = False
    pruned: bool = False
    children: list[NodeRecord] = []


class TreeRecord(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)
    step: int | None = None
    id: str
    level: str
    question: str = ""
    reference: Any = None
    prompt: str
    r_score: float
    prune_tau: float
    picks: list[tuple[list[int], int, float]]
    weight: float | None = None
    root: NodeRecord


MAX_DEPTH = 100
"""The most levels below its root that a tree record may have: far more than any tree.depth trains
with, and fewer than the nesting where Python's recursion (about 1,000 frames) or pydantic's
(255 levels) give up."""
JSON_KINDS = {
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
    TooDeep: "nested too deeply to read",
}


def deeper_than(root: Any, levels: int) -> bool:
    """Whether a node tree read from JSON (possibly malformed: a non-node counts as a leaf) has a
    node more than `levels` levels below its root; walked with a stack, so any depth is safe."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > levels:
            return True
        children = node.get("children") if isinstance(node, dict) else None
        if isinstance(children, list):
            stack += [(child, depth + 1) for child in children]
    return False


def typed(record: Any) -> TreeRecord:
    """The record typed: a JSON object whose tree is at most MAX_DEPTH levels deep and whose numbers
    are numbers, so that nothing but text reaches the page as a string."""
    if not isinstance(record, dict):
        raise UserError(f"not a tree record: {JSON_KINDS.get(type(record), 'not a JSON object')}")
    if deeper_than(record.get("root"), MAX_DEPTH):
        raise UserError(f"not a tree record: root: deeper than {MAX_DEPTH} levels")
    try:
        return TreeRecord.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(
            f"not a tree record: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None


def saved_trees(run: RunDir) -> list[dict[str, Any]]:
    """The records of a run's trees.jsonl that are trees, typed (as plain data, for pick_trees); the
    others are skipped, with one warning that counts them and names the first by file and line."""
    lines = run.tree_lines()
    kept, skipped = [], []
    for number, value in lines:
        try:
            kept.append(typed(value).model_dump())
        except UserError as err:
            skipped.append(f"{run.trees_path}:{number}: {err}")
    if skipped:
        warn(
            f"skipped {len(skipped)} of the {len(lines)} saved records that are not trees; "
            f"the first: {skipped[0]}"
        )
    return kept
