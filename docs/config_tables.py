"""Writes the key tables of docs/config.md from the config classes: each key, its default and its
Field description, which is the one place a key's meaning is written. Run
`.venv/bin/python docs/config_tables.py` after adding or changing a key; tests/test_docs.py checks
that docs/config.md is what this writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from treerl.config import Config
from treerl.loop.pretrain import PretrainConfig

PAGE = Path(__file__).parent / "config.md"
TABLES: dict[str, type[BaseModel]] = {"config": Config, "pretrain": PretrainConfig}
"""Each generated table's name, as in its opening marker `<!-- keys: NAME -->`, and the class it
lists."""
END = "<!-- end of generated keys -->"


def as_documented(value: Any) -> str:
    """A default as YAML spells it: null, true, false, numbers (below 0.01 as 5e-5), the rest in
    backticks."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and 0 < abs(value) < 1e-2:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"`{value}`"
    return (
        f"`{yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()}`"
    )


def rows(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """`| key | default | meaning |` of each key in the class's order, a nested section's keys
    dotted."""
    lines = []
    for name, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            lines += rows(field.annotation, f"{prefix}{name}.")
        elif not field.description:
            raise ValueError(f"{schema.__name__}.{name} has no description: give its Field one")
        else:
            default = as_documented(field.get_default(call_default_factory=True))
            lines.append(f"| `{prefix}{name}` | {default} | {field.description} |")
    return lines


def generated(page: str) -> str:
    """`page` with each table between `<!-- keys: NAME -->` and END written anew from
    TABLES[NAME]."""
    for name, schema in TABLES.items():
        opening = f"<!-- keys: {name} -->\n"
        if page.count(opening) != 1 or END not in page.partition(opening)[2]:
            raise ValueError(f"docs/config.md needs one '{opening.strip()}' followed by '{END}'")
        before, _, rest = page.partition(opening)
        after = rest.partition(END)[2]
        table = "\n".join(["| key | default | meaning |", "|---|---|---|", *rows(schema)])
        page = f"{before}{opening}\n{table}\n\n{END}{after}"
    return page


if __name__ == "__main__":
    PAGE.write_text(generated(PAGE.read_text()))
