"""The reasoning-tree viewer: a graded tree as a JSON record (saved during training with output.save_trees, in
the run directory's trees.jsonl) and as one HTML page (`treerl tree`): the tree drawn by depth in SVG (nodes
coloured by value, leaves marked, TreeRPO's pruned sibling groups faded, the r-score's greedy picks ringed, a
click showing a node's text under its path's), then every node's text in collapsible branches."""

from __future__ import annotations

import html
import json
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


def layout(root: NodeRecord) -> dict[tuple[int, ...], tuple[float, int]]:
    """Each node's place in the drawing, (x, depth) by its path: the leaves at x = 0, 1, 2, ... from left to
    right, an inner node midway between its first and last child."""
    places: dict[tuple[int, ...], tuple[float, int]] = {}
    leaves = 0

    def place(node: NodeRecord, path: tuple[int, ...]) -> float:
        nonlocal leaves
        if node.children:
            xs = [place(child, path + (i,)) for i, child in enumerate(node.children)]
            x = (xs[0] + xs[-1]) / 2
        else:
            x, leaves = float(leaves), leaves + 1
        places[path] = (x, len(path))
        return x

    place(root, ())
    return places


def value_colour(value: float) -> str:
    """Red at value 0, through yellow, to green at 1."""
    return f"hsl({120 * min(max(value, 0.0), 1.0):.0f},65%,45%)"


X_STEP, Y_STEP, RADIUS = 26, 64, 9


def _svg(tree: TreeRecord, picked: dict[tuple[int, ...], int]) -> str:
    """The tree drawn by depth: a circle per node coloured by its value (a thick gold ring: the r-score's pick,
    faded: a sibling group TreeRPO pruned), a mark under each leaf, a line to each child; `data-path` ties a
    circle to its text."""
    nodes: dict[tuple[int, ...], NodeRecord] = {}

    def collect(node: NodeRecord, path: tuple[int, ...]) -> None:
        nodes[path] = node
        for i, child in enumerate(node.children):
            collect(child, path + (i,))

    collect(tree.root, ())
    places = layout(tree.root)

    def at(path: tuple[int, ...]) -> tuple[float, float]:
        x, depth = places[path]
        return X_STEP * x + 2 * RADIUS, Y_STEP * depth + 2 * RADIUS

    edges, circles = [], []
    for path, node in nodes.items():
        x, y = at(path)
        for i in range(len(node.children)):
            cx, cy = at(path + (i,))
            edges.append(f"<line x1='{x:.1f}' y1='{y:.1f}' x2='{cx:.1f}' y2='{cy:.1f}'/>")
        classes = ["n"]
        if path and nodes[path[:-1]].pruned:
            classes.append("pruned")
        if path and picked.get(path[:-1]) == path[-1]:
            classes.append("picked")
        mark = ""
        if not node.children:
            mark = (f"<text x='{x:.1f}' y='{y + 2.4 * RADIUS:.1f}' class='{'right' if node.correct else 'wrong'}'>"
                    f"{'&#10003;' if node.correct else '&#10007;'}</text>")
        name = ".".join(map(str, path)) or "root"
        circles.append(f"<g class='{' '.join(classes)}' data-path='{name}' data-value='{node.value:.4f}' "
                       "onclick='show(this)'>"
                       f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{RADIUS}' fill='{value_colour(node.value)}'/>{mark}"
                       f"<title>{name}: v={node.value:.2f}</title></g>")
    width = X_STEP * max(x for x, _ in places.values()) + 4 * RADIUS
    height = Y_STEP * max(depth for _, depth in places.values()) + 5 * RADIUS
    return (f"<svg id='drawing' width='{width:.0f}' height='{height:.0f}' role='img'>"
            f"<g class='edges'>{''.join(edges)}</g>{''.join(circles)}</svg>")


def _texts(tree: TreeRecord) -> str:
    """Every node's text by path, and the prompt, as JSON inside a script element: '<' is written as \\u003c, so
    no text can close the element."""
    texts: dict[str, str] = {"prompt": tree.prompt}

    def collect(node: NodeRecord, path: list[int]) -> None:
        texts[".".join(map(str, path)) or "root"] = node.text
        for i, child in enumerate(node.children):
            collect(child, path + [i])

    collect(tree.root, [])
    return json.dumps(texts).replace("<", "\\u003c")


STYLE = """body{font-family:sans-serif;margin:1.5em}
#drawing line{stroke:#999;stroke-width:1.2}#drawing g.n{cursor:pointer}#drawing g.pruned{opacity:0.3}
#drawing g.picked circle{stroke:#e6a800;stroke-width:3.5}#drawing text{text-anchor:middle;font-size:11px}
#drawing text.right{fill:#2a2}#drawing text.wrong{fill:#c33}#drawing g.chosen circle{stroke:#000;stroke-width:2.5}
#detail pre.context{color:#777}#legend span{padding:0 0.5em;color:#fff}
#tree{transform-origin:0 0}
.node{border-left:3px solid #bbb;margin:0.3em 0 0.3em 1.2em;padding-left:0.5em}
.right{border-color:#2a2}.wrong{border-color:#c33}.picked{background:#fff6d5}
pre{white-space:pre-wrap;margin:0.2em 0;font-size:0.9em;background:#f6f6f6;padding:0.3em}
.path{color:#666}.value{font-weight:bold}.right>.badge,.right .badge{color:#2a2}.wrong .badge{color:#c33}
.tag{font-size:0.8em;background:#eee;padding:0 0.4em;border-radius:0.3em}.tag.pick{background:#fc6}
summary{cursor:pointer}"""

SCRIPT = """let scale = 1;
function show(g) {
  const texts = JSON.parse(document.getElementById('texts').textContent), path = g.dataset.path;
  const parts = path === 'root' ? [] : path.split('.'), panel = document.getElementById('detail');
  document.querySelectorAll('#drawing g.chosen').forEach(n => n.classList.remove('chosen'));
  g.classList.add('chosen');
  panel.replaceChildren();
  const add = (text, cls) => { const pre = document.createElement('pre'); pre.textContent = text;
                               pre.className = cls; panel.appendChild(pre); };
  const head = document.createElement('p'); panel.appendChild(head);
  head.textContent = 'node ' + path + ', value ' + g.dataset.value + ', ' + texts[path].length + ' characters';
  add(texts.prompt, 'context'); add(texts.root, 'context');
  for (let i = 1; i < parts.length; i++) add(texts[parts.slice(0, i).join('.')], 'context');
  if (path !== 'root') add(texts[path], 'node');
}
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
    legend = ("<p id='legend'>value <span style='background:" + value_colour(0.0) + "'>0</span><span "
              "style='background:" + value_colour(0.5) + "'>0.5</span><span style='background:" + value_colour(1.0)
              + "'>1</span>; a gold ring: the r-score's pick; faded: a pruned sibling group; click a node for its "
              "text, with its path's above it.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tree {html.escape(tree.id[:12])}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{head}"
            f"{legend}{_svg(tree, picked)}<div id='detail'></div>"
            f"<script type='application/json' id='texts'>{_texts(tree)}</script>"
            f"<h2>every node</h2><div id='tree'>{_node_html(tree.root, [], picked)}</div></body></html>")
