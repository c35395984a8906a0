"""The layers of the package only point down, and no module imports itself through others.

Every import in treerl/ is read from the source, those inside functions included, and checked
against LAYERS and APART (README's Layout and docs/architecture.md describe the same layers)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "treerl"

LAYERS = [  # top first: a module may import from its own layer and the layers below it
    ("commands", ["treerl", "treerl.__main__", "treerl.cli", "treerl.commands"]),
    ("loop", ["treerl.loop"]),
    ("views", ["treerl.report", "treerl.viewer"]),
    ("evaluation", ["treerl.eval"]),
    ("methods", ["treerl.algo", "treerl.curriculum"]),
    ("sampling", ["treerl.rollout"]),
    ("problems", ["treerl.tasks"]),
    (
        "ground",
        [
            "treerl.config",
            "treerl.models",
            "treerl.rundir",
            "treerl.tree_records",
            "treerl.parallel",
            "treerl.registry",
            "treerl.errors",
            "treerl.progress",
            "treerl.trackers",
        ],
    ),
]
APART = [("loop", "views")]
"""(upper, lower): layers that never import each other although one is above the other. The loop
draws no pages: the train command composes training and the report."""


def layer(module: str) -> int:
    """The index in LAYERS of a module: the layer whose longest prefix names it (0 = the top)."""
    best = max(
        (
            (len(prefix), index)
            for index, (_, prefixes) in enumerate(LAYERS)
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        default=None,
    )
    if best is None:
        raise AssertionError(
            f"{module} is in no layer: add it to LAYERS (and to the README's Layout)"
        )
    return best[1]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, known: set[str]) -> set[str]:
    """The treerl modules a source imports anywhere in it: `from a.b import c` is a.b.c when that is
    a module."""
    package = module if f"{module}.__init__" in known else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known}


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """{module: the treerl modules it imports}; `sources` maps module names (a package as
    `pkg.__init__` too)."""
    known = {name.removesuffix(".__init__") for name in sources} | set(sources)
    return {
        name.removesuffix(".__init__"): imports(source, name.removesuffix(".__init__"), known)
        - {name}
        for name, source in sources.items()
    }


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import that points to a higher layer, or from one layer to another that APART keeps it
    away from."""
    return [
        f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer(target) < layer(module)
        or (LAYERS[layer(module)][0], LAYERS[layer(target)][0]) in APART
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle through each module that is on one (depth-first search)."""
    found, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def package_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path, PACKAGE)
        sources[f"{name}.__init__" if path.name == "__init__.py" else name] = path.read_text()
    return sources


def test_every_import_points_down_and_none_forms_a_cycle():
    graph = import_graph(package_sources())
    assert len(graph) > 40
    assert forbidden_imports(graph) == []
    assert cycles(graph) == []


def test_pure_parts_never_reach_the_loop_the_commands_or_the_views():
    """Through any chain of imports, not only directly."""
    graph = import_graph(package_sources())

    def reach(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    above = {"commands", "loop", "views"}
    for module in graph:
        if LAYERS[layer(module)][0] in {"methods", "sampling", "problems", "ground"}:
            assert not {m for m in reach(module) if LAYERS[layer(m)][0] in above}, module


@pytest.mark.parametrize(
    "sources, problem",
    [
        (
            {
                "treerl.algo.__init__": "",
                "treerl.algo.x": "def f():\n    from treerl.loop import trainer\n",
                "treerl.loop.__init__": "",
                "treerl.loop.trainer": "",
            },
            "forbidden",
        ),
        (
            {
                "treerl.tasks.__init__": "from treerl.tasks import a\n",
                "treerl.tasks.a": "from treerl.tasks import b\n",
                "treerl.tasks.b": "import treerl.tasks.a\n",
            },
            "cycle",
        ),
        (
            {
                "treerl.eval": "from treerl.loop.parallel import Parallel\n",
                "treerl.loop.__init__": "",
                "treerl.loop.parallel": "",
            },
            "forbidden",
        ),
        (
            {
                "treerl.loop.__init__": "",
                "treerl.loop.trainer": "from treerl.report import write_report\n",
                "treerl.report": "",
            },
            "forbidden",
        ),
        (
            {
                "treerl.loop.__init__": "",
                "treerl.loop.trainer": "def f():\n    from treerl.viewer import render_tree\n",
                "treerl.viewer": "",
            },
            "forbidden",
        ),
    ],
)
def test_the_checker_finds_a_forbidden_import_and_a_cycle(sources, problem):
    graph = import_graph(sources)
    assert bool(forbidden_imports(graph)) == (problem == "forbidden")
    assert bool(cycles(graph)) == (problem == "cycle")
    if problem == "cycle":
        assert cycles(graph) == [["treerl.tasks.a", "treerl.tasks.b", "treerl.tasks.a"]]
