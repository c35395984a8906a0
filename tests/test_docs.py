from pathlib import Path

from pydantic import BaseModel

from treerl.config import Config
from treerl.train.pretrain import PretrainConfig

DOC = (Path(__file__).parents[1] / "docs" / "config.md").read_text()


def dotted_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += dotted_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_config_key_is_documented():
    missing = [key for key in dotted_keys(Config) + dotted_keys(PretrainConfig) if f"`{key}`" not in DOC]
    assert not missing, f"add to docs/config.md: {missing}"


def table_rows(section: str) -> list[tuple[str, str]]:
    """(key, default cell) of each row of the tables in a section of docs/config.md."""
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`key`" and "," not in cells[0]:
            rows.append((cells[0].strip("`"), cells[1]))
    return rows


def as_documented(value) -> str:
    """A default as the table writes it: YAML's spelling, strings in backticks."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, list):
        return f"`[{', '.join(value)}]`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    return repr(value)


def test_documented_defaults_match_the_code():
    """Every key's default cell follows the code: numbers by value, everything else as it is spelled."""
    main, pretrain = DOC.split("## `treerl pretrain`")
    checked = 0
    for defaults, section in ((Config(), main), (PretrainConfig(), pretrain)):
        for key, cell in table_rows(section):
            value = defaults
            for part in key.split("."):
                value = getattr(value, part)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(cell) == float(value), key
            elif not (key == "level_mix" and cell.startswith("see ")):
                assert cell == as_documented(value), key
            checked += 1
    # hidden, layers, heads share a row
    assert checked == len(dotted_keys(Config)) + len(dotted_keys(PretrainConfig)) - 3


def table_cells(line: str) -> int:
    """Cells of a markdown table row: pipes inside `code` or escaped as \\| do not separate cells."""
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
    for page in [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]:
        header, in_fence = None, False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            in_fence ^= line.startswith("```")
            if in_fence or not line.startswith("|"):
                header = None
                continue
            if header is None:
                header = table_cells(line)
            assert table_cells(line) == header, f"{page.name}:{number} has {table_cells(line)} cells, not {header}"


def test_every_test_that_reliability_md_names_exists():
    import re

    root = Path(__file__).parents[1]
    page = (root / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", page)
    named += [(file, test) for file, rest in re.findall(r"`(test_\w+\.py)::test_\w+`((?:, `test_\w+`)+)", page)
              for test in re.findall(r"`(test_\w+)`", rest)]
    assert len(named) > 20
    for file, test in named:
        source = (root / "tests" / file).read_text()
        assert not test or f"def {test}(" in source, f"{file}::{test}"


def config_row(key: str) -> str:
    """The docs/config.md row of a key, or of the dict key it sits in (algo.params for algo.params.norm)."""
    while key:
        rows = [line for line in DOC.splitlines() if line.startswith(f"| `{key}` |")]
        if rows:
            return rows[0]
        key = key.rpartition(".")[0]
    raise AssertionError("no row")


def test_every_registry_and_every_name_in_it_is_documented():
    """A new registry, or a new name in one, cannot go undocumented: its key is in docs/architecture.md's table of
    registries, and each name it takes is in the key's row of docs/config.md."""
    from treerl import commands  # noqa: F401  (imports every registry)
    from treerl.registry import REGISTRIES

    architecture = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert len(REGISTRIES) >= 13
    for key, registry in REGISTRIES.items():
        assert f"| `{key}` |" in architecture, f"add {key} to the registries of docs/architecture.md"
        row = config_row(key)
        missing = [name for name in registry.names() if f"`{name}`" not in row]
        assert not missing, f"document {key}: {missing} in docs/config.md"
