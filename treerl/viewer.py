"""The reasoning-tree viewer: tree records (treerl.tree_records: saved in training, or sampled now)
as one HTML page (`treerl tree`, the report's trees.html): each tree drawn by depth in SVG (nodes
coloured by value, leaves marked, TreeRPO's pruned sibling groups faded, the r-score's greedy picks
ringed, a click showing a node's text under its path's), then every node's text in
collapsible branches."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator
from typing import Any

from treerl.errors import UserError
from treerl.tree_records import NodeRecord, TreeRecord, typed

MAX_PAGE_NODES = 30_000
"""A page of saved trees holds the newest trees up to this many nodes in all (the tiny model's:
about 8 MB); --step picks others."""


def saved_steps(trees: list[dict[str, Any]]) -> str:
    """The steps of saved trees in a few words, e.g. "1..4, 2 without a step (10 trees)"."""
    steps = sorted({t["step"] for t in trees if t["step"] is not None})
    unstepped = sum(t["step"] is None for t in trees)
    parts = [f"{steps[0]}..{steps[-1]}"] if steps else []
    parts += [f"{unstepped} without a step"] if unstepped else []
    return f"{', '.join(parts)} ({len(trees)} trees)"


def id_by_prefix(prefix: str, ids: Iterable[str]) -> str | None:
    """The one id among `ids` that starts with `prefix` (the id itself when it is one of them, as
    the report's first 10 characters are); None when none does. A prefix that several ids start with
    is a UserError naming two of them."""
    ids = set(ids)
    if prefix in ids:
        return prefix
    found = sorted(i for i in ids if i.startswith(prefix))
    if len(found) > 1:
        raise UserError(
            f"problem '{prefix}' is the start of {len(found)} ids ({found[0]}, {found[1]}"
            f"{', ...' if found[2:] else ''}); give more of the id"
        )
    return found[0] if found else None


def pick_trees(
    trees: list[dict[str, Any]],
    step: int | None,
    problem: str | None,
    max_nodes: int = MAX_PAGE_NODES,
) -> tuple[list[dict[str, Any]], int]:
    """The saved trees (typed records: tree_records.saved_trees) that match the step and the problem
    id or a unique start of one (either may be None: any), the newest that fit in max_nodes nodes
    (at least one), in the order they were saved; and how many matching trees were left out."""
    if problem is not None:
        problem = id_by_prefix(problem, (t["id"] for t in trees)) or problem
    matches = [
        t
        for t in trees
        if (step is None or t["step"] == step) and (problem is None or t["id"] == problem)
    ]
    if not matches:
        raise UserError(
            f"no saved tree for step {step} and problem {problem}; saved steps: "
            f"{saved_steps(trees)}"
            if trees
            else "no tree saved in the file"
        )
    kept: list[dict[str, Any]] = []
    nodes = 0
    for tree in reversed(matches):
        nodes += count_nodes(tree["root"])
        if kept and nodes > max_nodes:
            break
        kept.append(tree)
    return kept[::-1], len(matches) - len(kept)


def count_nodes(node: dict[str, Any]) -> int:
    return 1 + sum(count_nodes(child) for child in node.get("children", []))


def signed(advantage: float | None) -> str:
    return "" if advantage is None else f"{advantage:+.2f}"


def _node_html(node: NodeRecord, path: list[int], picked: dict[tuple[int, ...], int]) -> str:
    key = tuple(path)
    classes = ["node"]
    badge = ""
    if not node.children:
        classes.append("right" if node.correct else "wrong")
        badge = "&#10003;" if node.correct else "&#10007;"
    if len(path) and picked.get(key[:-1]) == key[-1]:
        classes.append("picked")
    label = (
        f"<span class='path'>{'.'.join(map(str, path)) or 'root'}</span> "
        f"<span class='value'>v={node.value:.2f}</span>"
        + (
            f" <span class='adv'>A={signed(node.advantage)}</span>"
            if node.advantage is not None
            else ""
        )
        + f" <span class='badge'>{badge}</span>"
        + (" <span class='tag'>child group pruned</span>" if node.pruned else "")
        + (" <span class='tag pick'>r-score pick</span>" if "picked" in classes else "")
    )
    text = f"<pre>{html.escape(node.text)}</pre>" if node.text else ""
    if not node.children:
        return f"<div class='{' '.join(classes)}'>{label}{text}</div>"
    children = "".join(
        _node_html(child, path + [i], picked) for i, child in enumerate(node.children)
    )
    return (
        f"<details open class='{' '.join(classes)}'><summary>{label}</summary>{text}"
        f"<div class='children'>{children}</div></details>"
    )


def walk(root: NodeRecord) -> Iterator[tuple[tuple[int, ...], NodeRecord]]:
    """(path, node) of every node of a record, depth first, the root's path ()."""
    stack: list[tuple[tuple[int, ...], NodeRecord]] = [((), root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        stack += [(path + (i,), child) for i, child in reversed(list(enumerate(node.children)))]


def layout(root: NodeRecord) -> dict[tuple[int, ...], tuple[float, int]]:
    """Each node's place in the drawing, (x, depth) by its path: the leaves at x = 0, 1, 2, ... from
    left to right, an inner node midway between its first and last child."""
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
    """The tree drawn by depth: a circle per node coloured by its value (a thick gold ring: the
    r-score's pick, faded: a sibling group TreeRPO pruned), its advantage beside each node trained
    on, a mark under each leaf, a line to each child; `data-path` ties a circle to its text."""
    nodes = dict(walk(tree.root))
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
        marks = ""
        if not node.children:
            marks = (
                f"<text x='{x:.1f}' y='{y + 2.4 * RADIUS:.1f}' "
                f"class='{'right' if node.correct else 'wrong'}'>"
                f"{'&#10003;' if node.correct else '&#10007;'}</text>"
            )
        if node.advantage is not None:
            marks += (
                f"<text x='{x:.1f}' y='{y - 1.4 * RADIUS:.1f}' class='adv'>"
                f"{node.advantage:+.1f}</text>"
            )
        name = ".".join(map(str, path)) or "root"
        circles.append(
            f"<g class='{' '.join(classes)}' data-path='{name}' data-value='{node.value:.4f}' "
            f"data-advantage='{signed(node.advantage)}' data-tokens='{node.tokens or ''}' "
            "onclick='show(this)'>"
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{RADIUS}' "
            f"fill='{value_colour(node.value)}'/>{marks}"
            f"<title>{name}: v={node.value:.2f}"
            + (f", A={signed(node.advantage)}" if node.advantage is not None else "")
            + "</title></g>"
        )
    width = X_STEP * max(x for x, _ in places.values()) + 4 * RADIUS
    height = Y_STEP * max(depth for _, depth in places.values()) + 5 * RADIUS
    return (
        f"<svg class='drawing' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' "
        f"data-width='{width:.0f}' data-height='{height:.0f}' role='img'>"
        f"<g class='edges'>{''.join(edges)}</g>{''.join(circles)}</svg>"
    )


def _texts(tree: TreeRecord) -> str:
    """Every node's text by path, and the prompt, as JSON inside a script element: '<' is written as
    \\u003c, so no text can close the element."""
    texts = {"prompt": tree.prompt} | {
        ".".join(map(str, path)) or "root": node.text for path, node in walk(tree.root)
    }
    return json.dumps(texts).replace("<", "\\u003c")


STYLE = """body{font-family:sans-serif;margin:1.5em}
nav{position:sticky;top:0;background:#fff;padding:0.4em 0;border-bottom:1px solid #ddd;z-index:1}
nav input{width:14em}#missing{color:#c33}
.scroll{overflow:auto;max-width:100%}
.drawing line{stroke:#999;stroke-width:1.2}.drawing g.n{cursor:pointer}\
.drawing g.pruned{opacity:0.3}
.drawing g.picked circle{stroke:#e6a800;stroke-width:3.5}\
.drawing text{text-anchor:middle;font-size:11px}
.drawing text.right{fill:#2a2}.drawing text.wrong{fill:#c33}\
.drawing text.adv{font-size:9px;fill:#335}
.drawing g.chosen circle{stroke:#000;stroke-width:2.5}
.detail pre.context{color:#777}#legend span{padding:0 0.5em;color:#fff}
.node{border-left:3px solid #bbb;margin:0.3em 0 0.3em 1.2em;padding-left:0.5em}
.right{border-color:#2a2}.wrong{border-color:#c33}.picked{background:#fff6d5}
pre{white-space:pre-wrap;margin:0.2em 0;font-size:0.9em;background:#f6f6f6;padding:0.3em}
.path{color:#666}.value{font-weight:bold}.adv{color:#335}
.right>.badge,.right .badge{color:#2a2}.wrong .badge{color:#c33}
.tag{font-size:0.8em;background:#eee;padding:0 0.4em;border-radius:0.3em}.tag.pick{background:#fc6}
summary{cursor:pointer}"""

SCRIPT = """let scale = 1, current = 0, fitted = false;
const sections = () => [...document.querySelectorAll('section.tree')];
function show(g) {
  const section = g.closest('section'), path = g.dataset.path;
  const texts = JSON.parse(section.querySelector('script.texts').textContent);
  const parts = path === 'root' ? [] : path.split('.'), panel = section.querySelector('.detail');
  section.querySelectorAll('g.chosen').forEach(n => n.classList.remove('chosen'));
  g.classList.add('chosen');
  panel.replaceChildren();
  const add = (text, cls) => { const pre = document.createElement('pre'); pre.textContent = text;
                               pre.className = cls; panel.appendChild(pre); };
  const head = document.createElement('p'); panel.appendChild(head);
  head.textContent = 'node ' + path + ', value ' + g.dataset.value
    + (g.dataset.advantage ? ', advantage ' + g.dataset.advantage : ', not trained on')
    + (g.dataset.tokens ? ', ' + g.dataset.tokens + ' tokens' : '')\
 + ', ' + texts[path].length + ' characters';
  add(texts.prompt, 'context'); add(texts.root, 'context');
  for (let i = 1; i < parts.length; i++) add(texts[parts.slice(0, i).join('.')], 'context');
  if (path !== 'root') add(texts[path], 'node');
}
function select(i) {
  const all = sections();
  current = (i + all.length) % all.length;
  all.forEach((s, j) => { s.hidden = j !== current; });
  const s = all[current];
  document.getElementById('position').textContent = 'tree ' + (current + 1) + ' of ' + all.length;
  document.getElementById('step').value = s.dataset.step;
  document.getElementById('missing').textContent = '';
  history.replaceState(null, '', '#step=' + encodeURIComponent(s.dataset.step)
                                 + '&problem=' + encodeURIComponent(s.dataset.id));
  if (fitted) fit();
}
function turn(by) { select(current + by); }
function byStep(step) { select(Math.max(0, sections().findIndex(s => s.dataset.step === step))); }
function search(text) {
  if (!text) return;
  const all = sections(), step = all[current].dataset.step;
  const hits = all.map((s, i) => [s, i]).filter(([s]) => s.dataset.id.startsWith(text));
  const hit = hits.find(([s]) => s.dataset.step === step) || hits[0];
  if (hit) select(hit[1]);
  else document.getElementById('missing').textContent = 'no saved tree of problem ' + text;
}
function fromHash() {
  const q = new URLSearchParams(location.hash.slice(1)), all = sections();
  if (!location.hash) { select(all.length - 1); return; }
  const i = all.findIndex(s => (!q.has('step') || s.dataset.step === q.get('step'))
                               && (!q.has('problem') || s.dataset.id === q.get('problem')));
  select(i >= 0 ? i : all.length - 1);
}
function resize() {
  document.querySelectorAll('svg.drawing').forEach(svg => {
    svg.setAttribute('width', Math.round(svg.dataset.width * scale));
    svg.setAttribute('height', Math.round(svg.dataset.height * scale)); });
}
function zoom(f) { fitted = false; scale = f ? scale * f : 1; resize(); }
function fit() {
  const s = sections()[current], svg = s.querySelector('svg.drawing');
  fitted = true;
  scale = Math.min(1, Math.floor(s.querySelector('.scroll').clientWidth) / svg.dataset.width);
  resize();
}
function openAll(open) {\
 document.querySelectorAll('section.tree details').forEach(d => { d.open = open; }); }
window.addEventListener('hashchange', fromHash);
window.addEventListener('resize', () => { if (fitted) fit(); });
document.addEventListener('DOMContentLoaded', fromHash);"""


def _section(tree: TreeRecord) -> str:
    """One tree: its header, the drawing with its text panel, and every node's text in
    collapsible branches."""
    picked = {tuple(path): child for path, child, _ in tree.picks}
    leaves = [node.correct for _, node in walk(tree.root) if not node.children]
    step = f"step {tree.step}" if tree.step is not None else "sampled now"
    weight = f", loss weight {tree.weight:.2f}" if tree.weight is not None else ""
    return (
        f"<section class='tree' data-step='{'' if tree.step is None else tree.step}' "
        f"data-id='{html.escape(tree.id)}' hidden>"
        f"<h2>{step}: problem <code>{html.escape(tree.id)}</code> "
        f"(level {html.escape(tree.level)})</h2>"
        f"<p>{sum(map(bool, leaves))} of {len(leaves)} leaves correct, "
        f"r-score {tree.r_score:.3f}{weight}; sibling groups whose values differ by less than "
        f"{tree.prune_tau:g} are pruned by TreeRPO.</p><pre>{html.escape(tree.prompt)}</pre>"
        f"<div class='scroll'>{_svg(tree, picked)}</div><div class='detail'></div>"
        f"<script type='application/json' class='texts'>{_texts(tree)}</script>"
        f"<details class='every'><summary>every node as text</summary>"
        f"{_node_html(tree.root, [], picked)}</details></section>"
    )


def render_trees(records: list[dict[str, Any]], left_out: int = 0) -> str:
    """One self-contained page of trees (inline style and script, nothing fetched), one shown at a
    time: pages turned with buttons, a step chosen from a list, a problem found by its id, a wide
    tree zoomed or fitted to the window's width, the shown tree named in the URL fragment
    (#step=S&problem=ID) so that a view can be shared. Records are typed first and every string is
    escaped, so a hostile record shows as text and runs nothing."""
    trees = [typed(record) for record in records]
    steps = list(dict.fromkeys("" if t.step is None else str(t.step) for t in trees))
    options = "".join(f"<option value='{s}'>{s or 'sampled'}</option>" for s in steps)
    ids = "".join(f"<option value='{html.escape(i)}'>" for i in dict.fromkeys(t.id for t in trees))
    older = (
        f" The {left_out} older saved trees are left out: pick them with --step."
        if left_out
        else ""
    )
    nav = (
        f"<nav><button onclick='turn(-1)'>&larr; previous</button> <span id='position'></span> "
        "<button onclick='turn(1)'>next &rarr;</button> "
        f"step <select id='step' onchange='byStep(this.value)'>{options}</select> "
        "problem <input id='search' list='ids' placeholder='problem id (or its start)' "
        f"onchange='search(this.value)'><datalist id='ids'>{ids}</datalist> "
        "<button onclick='zoom(1.25)'>zoom in</button> "
        "<button onclick='zoom(0.8)'>zoom out</button> "
        "<button onclick='zoom(0)'>reset</button> "
        "<button onclick='fit()' title='shrink a wide tree to the window'>fit width</button> "
        "<button onclick='openAll(true)'>expand all</button> "
        "<button onclick='openAll(false)'>collapse all</button> <span id='missing'></span></nav>"
    )
    legend = (
        "<p id='legend'>value <span style='background:" + value_colour(0.0) + "'>0</span><span "
        "style='background:"
        + value_colour(0.5)
        + "'>0.5</span><span style='background:"
        + value_colour(1.0)
        + "'>1</span>; numbers above nodes: the advantage each node was trained with; a gold ring: "
        "the r-score's pick; faded: a pruned sibling group; click a node for its text, with its "
        f"path's above it.{older}</p>"
    )
    title = (
        f"{len(trees)} reasoning trees"
        if len(trees) > 1
        else f"tree {html.escape(trees[0].id[:12])}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{title}</h1>{nav}{legend}"
        + "".join(_section(tree) for tree in trees)
        + "</body></html>"
    )


def render_tree(record: dict[str, Any]) -> str:
    """A page of one tree."""
    return render_trees([record])
