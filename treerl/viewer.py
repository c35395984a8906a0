"""The reasoning-tree viewer: a graded tree as a JSON record (saved during training with output.save_trees, in
the run directory's trees.jsonl) and as one HTML page: each node's text, value and leaf correctness, TreeRPO's
pruned sibling groups and the r-score's greedy picks, with collapsible branches and zoom (`treerl tree`)."""

from __future__ import annotations

import html
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import PreTrainedTokenizerBase

from treerl.config import RScoreConfig
from treerl.curriculum.rscore import greedy_choices
from treerl.errors import UserError
from treerl.rollout.tree import Node, ReasoningTree
from treerl.tasks.base import Problem


def tree_record(tree: ReasoningTree, problem: Problem, tokenizer: PreTrainedTokenizerBase, prune_tau: float,
                rscore: RScoreConfig | None = None, step: int | None = None) -> dict[str, Any]:
    """A graded tree as plain data: nested nodes with their decoded text, the pruned groups and greedy picks."""
    def node_record(node: Node) -> dict[str, Any]:
        values = [child.value for child in node.children]
        return {"text": tokenizer.decode(node.token_ids, skip_special_tokens=True), "value": round(node.value, 4),
                "reward": node.reward, "correct": node.correct, "finished": node.finished,
                "pruned": bool(values) and max(values) - min(values) < prune_tau,
                "children": [node_record(child) for child in node.children]}

    r = rscore or RScoreConfig()
    picks = greedy_choices(tree, r.top_m, r.eligible, r.child)
    return {"step": step, "id": problem.id, "level": problem.level, "question": problem.question,
            "reference": problem.reference,
            "prompt": tokenizer.decode(tree.prompt_ids, skip_special_tokens=True),
            "r_score": float(sum(gain for _, _, gain in picks)), "prune_tau": prune_tau,   # r_score's definition
            "picks": [[list(path), child, gain] for path, child, gain in picks], "root": node_record(tree.root)}


class NodeRecord(BaseModel):
    """A node as a record holds it: every value typed, so that nothing but text reaches the page as a string."""
    model_config = ConfigDict(coerce_numbers_to_str=True)
    text: str
    value: float
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
    root: NodeRecord


def pick_tree(trees: list[dict[str, Any]], step: int | None, problem: str | None) -> dict[str, Any]:
    """The last saved tree that matches the step and the problem id (either may be None: any)."""
    matches = [t for t in trees if (step is None or t["step"] == step) and (problem is None or t["id"] == problem)]
    if not matches:
        steps = sorted({t["step"] for t in trees})
        raise UserError(f"no saved tree for step {step} and problem {problem}; saved steps: "
                        f"{steps[0]}..{steps[-1]} ({len(trees)} trees)" if trees else "no tree saved in the file")
    return matches[-1]


def _node_html(node: NodeRecord, path: list[int], picked: dict[tuple[int, ...], int]) -> str:
    key = tuple(path)
    classes = ["node"]
    badge = ""
    if not node.children:
        classes.append("right" if node.correct else "wrong")
        badge = "&#10003;" if node.correct else "&#10007;"
    if len(path) and picked.get(key[:-1]) == key[-1]:
        classes.append("picked")
    label = (f"<span class='path'>{'.'.join(map(str, path)) or 'root'}</span> "
             f"<span class='value'>v={node.value:.2f}</span> <span class='badge'>{badge}</span>"
             + (" <span class='tag'>child group pruned</span>" if node.pruned else "")
             + (" <span class='tag pick'>r-score pick</span>" if "picked" in classes else ""))
    text = f"<pre>{html.escape(node.text)}</pre>" if node.text else ""
    if not node.children:
        return f"<div class='{' '.join(classes)}'>{label}{text}</div>"
    children = "".join(_node_html(child, path + [i], picked) for i, child in enumerate(node.children))
    return (f"<details open class='{' '.join(classes)}'><summary>{label}</summary>{text}"
            f"<div class='children'>{children}</div></details>")


STYLE = """body{font-family:sans-serif;margin:1.5em}
#tree{transform-origin:0 0}
.node{border-left:3px solid #bbb;margin:0.3em 0 0.3em 1.2em;padding-left:0.5em}
.right{border-color:#2a2}.wrong{border-color:#c33}.picked{background:#fff6d5}
pre{white-space:pre-wrap;margin:0.2em 0;font-size:0.9em;background:#f6f6f6;padding:0.3em}
.path{color:#666}.value{font-weight:bold}.right>.badge,.right .badge{color:#2a2}.wrong .badge{color:#c33}
.tag{font-size:0.8em;background:#eee;padding:0 0.4em;border-radius:0.3em}.tag.pick{background:#fc6}
summary{cursor:pointer}"""

SCRIPT = """let scale = 1;
function zoom(f) {
  scale = f ? scale * f : 1; document.getElementById('tree').style.transform = 'scale(' + scale + ')';
}
function openAll(open) { document.querySelectorAll('#tree details').forEach(d => d.open = open); }"""


def render_tree(record: dict[str, Any]) -> str:
    """One self-contained page (inline style and script, nothing fetched). The record is typed first: numbers
    must be numbers, and every string is escaped, so a hostile record shows as text and runs nothing."""
    try:
        tree = TreeRecord.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"not a tree record: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    picked = {tuple(path): child for path, child, _ in tree.picks}
    leaves = []

    def collect(node: NodeRecord) -> None:
        if not node.children:
            leaves.append(node.correct)
        for child in node.children:
            collect(child)

    collect(tree.root)
    step = f" at step {tree.step}" if tree.step is not None else ""
    head = (f"<h1>reasoning tree{step}</h1><p>problem <code>{html.escape(tree.id)}</code> "
            f"(level {html.escape(tree.level)}): {sum(map(bool, leaves))} of {len(leaves)} leaves "
            f"correct, r-score {tree.r_score:.3f}, sibling groups whose values differ by less than "
            f"{tree.prune_tau:g} are pruned by TreeRPO.</p><pre>{html.escape(tree.prompt)}</pre>"
            "<p><button onclick='zoom(1.25)'>zoom in</button> <button onclick='zoom(0.8)'>zoom out</button> "
            "<button onclick='zoom(0)'>reset</button> <button onclick='openAll(true)'>expand all</button> "
            "<button onclick='openAll(false)'>collapse all</button></p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tree {html.escape(tree.id[:12])}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{head}"
            f"<div id='tree'>{_node_html(tree.root, [], picked)}</div></body></html>")
