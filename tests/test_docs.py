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


def test_documented_defaults_match_the_code():
    """The table's default column must follow the code, for the keys whose default is a plain scalar."""
    defaults = Config()
    for line in DOC.split("## `treerl pretrain`")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`") or cells[0] == "`key`":
            continue
        value = defaults
        for part in cells[0].strip("`").split("."):
            value = getattr(value, part)
        if isinstance(value, (bool, int, float)) and not isinstance(value, bool):
            assert float(cells[1]) == float(value), cells[0]
        elif isinstance(value, str) and cells[1].startswith("`") and cells[0] != "`output.dir`":
            assert cells[1].strip("`") == value, cells[0]
