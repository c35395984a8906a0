"""Prompt templates: how a question becomes a prompt, and what a well-formed answer looks like.

- `plain`: the question as it is; the answer is a final `Answer: ...` line (the arithmetic task).
- `boxed`: the system prompt of the TreeRPO runs; the answer goes in `\\boxed{}`.
- `think`: the E2H format, `<think>...</think><answer>...</answer>`.
- a format string with `{problem}`: that user message, answers checked as the task's default
  template checks them.

A prompt is a conversation: a system turn, a row's own earlier turns (a dataset row with
`messages`), and the user turn. With a chat template in the tokenizer, every template but `plain`
goes through it as TRL applies it; without one the turns are plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from treerl.errors import UserError
from treerl.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ANSWER_LINE = re.compile(r"^[ \t]*Answer:([^\n]*)$", re.MULTILINE)
"""A final answer line of the plain template; group 1 is the answer with its surrounding blanks."""


PROBLEM = "{problem}"
"""Where a template's user message puts the problem."""
Turn = tuple[str, str]
"""(role, content) of one message of a conversation."""


def is_format_string(value: object) -> bool:
    """A task.template value that is a user message of its own rather than a template's name."""
    return isinstance(value, str) and PROBLEM in value


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    """The system turn; empty: none."""
    user: str
    """The user turn, with `{problem}` replaced by the problem (other braces stay as they are)."""
    well_formed: Callable[[str], bool]
    chat: bool = True
    """Goes through the tokenizer's chat template when it has one; plain does not."""


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


class Templates(Registry[Template]):
    """task.template's values: a registered template's name, or a format string with
    `{problem}` (`template_for` builds its Template)."""

    def check(self, name: Any) -> None:
        if is_format_string(name):
            return
        if not isinstance(name, str) or name not in self:
            raise UserError(
                f"unknown {self.config_key} '{name}'; available: {', '.join(self.names())}, or a "
                "format string with {problem}"
            )


TEMPLATES = Templates("task.template")
TEMPLATES.add("plain", Template("plain", "", PROBLEM, ends_with_answer_line, chat=False))
TEMPLATES.add(
    "boxed",
    Template(
        "boxed",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        PROBLEM,
        has_boxed,
    ),
)
TEMPLATES.add(
    "think",
    Template(
        "think",
        "You are a helpful assistant. You first think about the reasoning process in the mind "
        "and then provide the user with the answer.",
        f"{PROBLEM}\nShow your work in <think> </think> tags, "
        "and return the final answer in <answer> </answer> tags.",
        think_then_answer,
    ),
)


def template_for(value: str | None, default: str) -> Template:
    """task.template's Template: a registered one by name (null: the task's `default`), or a format
    string with `{problem}`: that user message, no system turn, the default's answer format."""
    if value is not None and is_format_string(value):
        return Template(value, "", value, TEMPLATES.lookup(default).well_formed)
    return TEMPLATES.lookup(value or default)


def conversation(
    template: Template,
    question: str,
    context: Sequence[Turn] = (),
    system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """The prompt's messages: the system turn (`system_prompt` when set, else the context's own,
    else the template's; none where empty), the context's other turns, then the user turn."""
    own = [content for role, content in context if role == "system"]
    systems = [system_prompt] if system_prompt is not None else own or [template.system]
    turns = [("system", text) for text in systems if text]
    turns += [(role, content) for role, content in context if role != "system"]
    turns.append(("user", template.user.replace(PROBLEM, question)))
    return [{"role": role, "content": content} for role, content in turns]


def through_chat_template(template: Template, tokenizer: PreTrainedTokenizerBase) -> bool:
    return template.chat and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    template: Template,
    question: str,
    tokenizer: PreTrainedTokenizerBase,
    context: Sequence[Turn] = (),
    system_prompt: str | None = None,
) -> str:
    """The prompt text of a question. Through the tokenizer's chat template when it has one, as TRL
    applies it (the text with the generation prompt, encoded later without special tokens); for
    `plain` or without a chat template, the turns' texts joined by blank lines (a newline after,
    but for `plain`)."""
    messages = conversation(template, question, context, system_prompt)
    if through_chat_template(template, tokenizer):
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as error:
            raise UserError(
                f"the model's chat template refuses the prompt ({error}); a template without a "
                "system role needs task.system_prompt=''"
            ) from None
    text = "\n\n".join(message["content"] for message in messages)
    return f"{text}\n" if template.chat else text


PREVIEW_CHARS = 2000
"""A previewed prompt is cut after this many characters."""


def preview(template: Template, prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Lines that show a rendered prompt and how it was made: a header, then each line of the
    prompt after '  | ' (so that its blank lines and its last newline show)."""
    how = (
        "through the model's chat template"
        if through_chat_template(template, tokenizer)
        else "plain text: the tokenizer has no chat template"
        if template.chat
        else "plain text"
    )
    name = template.name if template.name in TEMPLATES else "your format string"
    cut = len(prompt) - PREVIEW_CHARS
    shown = prompt[:PREVIEW_CHARS] + (f"... ({cut} more characters)" if cut > 0 else "")
    lines = "\n".join(f"  | {line}" for line in shown.split("\n"))
    return f"the first prompt, as the model reads it (task.template={name}; {how}):\n{lines}"
