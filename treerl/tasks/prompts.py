"""Prompt templates: how a question becomes a prompt, and what a well-formed answer looks like.

- `plain`: the question as it is; the answer is a final `Answer: ...` line (the arithmetic task).
- `boxed`: the system prompt of the TreeRPO runs; the answer goes in `\\boxed{}`.
- `think`: the E2H format, `<think>...</think><answer>...</answer>`.

With a chat template in the tokenizer, `boxed` and `think` go through it; without one they are plain
text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from treerl.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ANSWER_LINE = re.compile(r"^[ \t]*Answer:([^\n]*)$", re.MULTILINE)
"""A final answer line of the plain template; group 1 is the answer with its surrounding blanks."""


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    instruction: str
    well_formed: Callable[[str], bool]


def ends_with_answer_line(text: str) -> bool:
    match = ANSWER_LINE.fullmatch(text.strip().rsplit("\n", 1)[-1])
    return match is not None and bool(match.group(1).strip())


def has_boxed(text: str) -> bool:
    return "\\boxed{" in text


def think_then_answer(text: str) -> bool:
    """Exactly `<think>...</think>` then `<answer>...</answer>`, nothing else around them; linear
    time."""
    text = text.strip()
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    if any(text.count(tag) != 1 for tag in tags):
        return False
    positions = [text.index(tag) for tag in tags]
    between = text[positions[1] + len(tags[1]) : positions[2]]
    return (
        positions == sorted(positions)
        and positions[0] == 0
        and text.endswith(tags[3])
        and not between.strip()
    )


TEMPLATES: Registry[Template] = Registry("task.template")
TEMPLATES.add("plain", Template("plain", "", "", ends_with_answer_line))
TEMPLATES.add(
    "boxed",
    Template(
        "boxed",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "",
        has_boxed,
    ),
)
TEMPLATES.add(
    "think",
    Template(
        "think",
        "You are a helpful assistant. You first think about the reasoning process in the mind "
        "and then provide the user with the answer.",
        "Show your work in <think> </think> tags, "
        "and return the final answer in <answer> </answer> tags.",
        think_then_answer,
    ),
)


def render_prompt(template: Template, question: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text for a question: through the tokenizer's chat template when it has one."""
    if template.name == "plain":
        return question
    user = f"{question}\n{template.instruction}" if template.instruction else question
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": template.system},
            {"role": "user", "content": user},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{template.system}\n\n{user}\n"
