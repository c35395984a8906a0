"""Shared by the benches: their command-line options, declared by their defaults (standard library
only: TRL's environment imports it too)."""

from __future__ import annotations

import argparse
from typing import Any


def add_options(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """An option --name per keyword (dashes for underscores), typed by its default: an int, float or
    str takes one value of that type, a list one or more of its first item's type, a bool makes a
    flag --name / --no-name. A (default, help) pair adds a help line."""
    for name, default in defaults.items():
        default, help_text = default if isinstance(default, tuple) else (default, None)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif isinstance(default, list):
            parser.add_argument(
                flag, type=type(default[0]), nargs="+", default=default, help=help_text
            )
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def options(doc: str, **defaults: Any) -> argparse.ArgumentParser:
    """A bench's parser, described by the first line of its docstring `doc`, with
    `add_options(**defaults)`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_options(parser, **defaults)
    return parser


GRPO_STEP: dict[str, Any] = {
    "prompts_per_step": 8,
    "n": 8,
    "max_new_tokens": 32,
    "temperature": 0.7,
    "lr": 5e-5,
}
"""The GRPO step that bench/vs_trl.py times in both tools (bench/trl_side.py is TRL's half): its
options' defaults."""
