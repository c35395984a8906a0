import runpy
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).parents[1]
DOC = (ROOT / "docs" / "config.md").read_text()
CONFIG_TABLES = runpy.run_path(str(ROOT / "docs" / "config_tables.py"))
"""The generator of docs/config.md's key tables: its functions by name (it is a script, not a module
of treerl)."""


def test_config_md_s_key_tables_are_written_from_the_config_classes():
    """Every key of Config and PretrainConfig has one row, with its default and its Field
    description, in the classes' order, and no row is of a key that is gone."""
    assert DOC == CONFIG_TABLES["generated"](DOC), (
        "docs/config.md's key tables differ from the config classes: run .venv/bin/python "
        "docs/config_tables.py"
    )


def test_a_key_table_row_holds_the_default_as_yaml_and_the_description():
    class Inner(BaseModel):
        names: list[str] = Field(default_factory=lambda: ["medium", "hard"], description="levels")
        mix: dict[str, float] = Field(default_factory=lambda: {"easy": 0.25}, description="shares")

    class Outer(BaseModel):
        lr: float = Field(5e-5, description="rate")
        peak: float = Field(2e-3, description="peak")
        tau: float | None = Field(0.1, description="tau")
        zero: float = Field(0.0, description="zero")
        steps: int = Field(600, description="steps")
        mode: str | None = Field(None, description="mode")
        on: bool = Field(True, description="on")
        name: str = Field("off", description="name")
        params: dict[str, float] = Field(default_factory=dict, description="params")
        inner: Inner = Inner()

    assert CONFIG_TABLES["rows"](Outer) == [
        "| `lr` | 5e-5 | rate |",
        "| `peak` | 2e-3 | peak |",
        "| `tau` | 0.1 | tau |",
        "| `zero` | 0.0 | zero |",
        "| `steps` | 600 | steps |",
        "| `mode` | null | mode |",
        "| `on` | true | on |",
        "| `name` | `off` | name |",
        "| `params` | `{}` | params |",
        "| `inner.names` | `[medium, hard]` | levels |",
        "| `inner.mix` | `{easy: 0.25}` | shares |",
    ]


def test_a_key_without_a_description_stops_the_table_generator():
    class Bare(BaseModel):
        steps: int = 600

    with pytest.raises(ValueError, match="Bare.steps has no description"):
        CONFIG_TABLES["rows"](Bare)
    with pytest.raises(ValueError, match="needs one '<!-- keys: config -->'"):
        CONFIG_TABLES["generated"]("# Configuration\n")


def table_cells(line: str) -> int:
    """Cells of a markdown table row: pipes inside `code` or escaped as \\| do not separate
    cells."""
    count, in_code, previous = 1, False, ""
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        elif char == "|" and not in_code and previous != "\\":
            count += 1
        previous = char
    return count


def test_every_table_row_has_the_header_s_cells():
    root = Path(__file__).parents[1]
    for page in [
        root / "README.md",
        root / "CONTRIBUTING.md",
        *sorted((root / "docs").glob("*.md")),
    ]:
        header, in_fence = None, False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            in_fence ^= line.startswith("```")
            if in_fence or not line.startswith("|"):
                header = None
                continue
            if header is None:
                header = table_cells(line)
            assert table_cells(line) == header, (
                f"{page.name}:{number} has {table_cells(line)} cells, not {header}"
            )


def test_every_test_that_reliability_md_names_exists():
    import re

    root = Path(__file__).parents[1]
    page = (root / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", page)
    named += [
        (file, test)
        for file, rest in re.findall(r"`(test_\w+\.py)::test_\w+`((?:, `test_\w+`)+)", page)
        for test in re.findall(r"`(test_\w+)`", rest)
    ]
    assert len(named) > 20
    for file, test in named:
        source = (root / "tests" / file).read_text()
        assert not test or f"def {test}(" in source, f"{file}::{test}"


def config_row(key: str) -> str:
    """The docs/config.md row of a key, or of the dict key it sits in (algo.params for
    algo.params.norm)."""
    while key:
        rows = [line for line in DOC.splitlines() if line.startswith(f"| `{key}` |")]
        if rows:
            return rows[0]
        key = key.rpartition(".")[0]
    raise AssertionError("no row")


def test_every_registry_and_every_name_in_it_is_documented():
    """A new registry, or a new name in one, cannot go undocumented: its key is in
    docs/architecture.md's table of registries, and each name it takes is in the key's row of
    docs/config.md."""
    from treerl import commands  # noqa: F401  (imports every registry)
    from treerl.registry import REGISTRIES

    architecture = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert len(REGISTRIES) >= 13
    for key, registry in REGISTRIES.items():
        assert f"| `{key}` |" in architecture, (
            f"add {key} to the registries of docs/architecture.md"
        )
        row = config_row(key)
        missing = [name for name in registry.names() if f"`{name}`" not in row]
        assert not missing, f"document {key}: {missing} in docs/config.md"
