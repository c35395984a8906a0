"""Finding the final answer in a completion; linear time on any input."""

from __future__ import annotations

import re

ANSWER_MARKER = re.compile(
    r"the (?:final )?answer is:?|answer:|^[ \t]*a:|####", re.IGNORECASE | re.MULTILINE
)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
BOX_COMMANDS = ("\\boxed", "\\fbox")
PLACEHOLDER = re.compile(
    r"(?:\\[hv]?phantom\s*\{[^{}]*\}|\\square|\\Box|\?|\\q?quad|\\(?:[,;: ]|$)|\s)*"
)
"""What a box holds when it is a blank to fill in (a problem's `\\boxed{\\phantom{2}}`,
quoted), not an answer."""


def matching_braces(text: str) -> dict[int, int]:
    """Position of each '{' -> position of its '}', for the braces that close; one pass."""
    open_at: list[int] = []
    pairs: dict[int, int] = {}
    for i, char in enumerate(text):
        if char == "{":
            open_at.append(i)
        elif char == "}" and open_at:
            pairs[open_at.pop()] = i
    return pairs


def boxes(text: str) -> list[tuple[str, int]]:
    r"""Every complete `\boxed{...}` (or `\fbox{...}`, or `\boxed 5`) that is not a blank, in order:
    its content, nested braces handled, and where the text after it starts. A blank holds only a
    PLACEHOLDER (nothing, `?`, `\square`, `\phantom{..}`)."""
    starts = sorted(
        m.start() for command in BOX_COMMANDS for m in re.finditer(re.escape(command), text)
    )
    pairs = matching_braces(text) if starts else {}
    found = []
    for start in starts:
        command = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
        after = start + len(command)
        brace = after + len(text[after : after + 8]) - len(text[after : after + 8].lstrip())
        if brace < len(text) and text[brace] == "{" and brace in pairs:
            found.append((text[brace + 1 : pairs[brace]].strip(), pairs[brace] + 1))
        elif text.startswith(" ", after) and command == "\\boxed":  # \boxed 5
            word = text[after:].split(None, 1)
            if word:
                found.append(
                    (word[0].split("$")[0], len(text) - len(text[after:].lstrip()) + len(word[0]))
                )
    return [(content, end) for content, end in found if not PLACEHOLDER.fullmatch(content)]


def last_box(text: str) -> tuple[str, int] | None:
    """The last of `boxes`."""
    found = boxes(text)
    return found[-1] if found else None


def last_boxed(text: str) -> str | None:
    r"""The content of the last complete `\boxed{...}` (or `\fbox{...}`), nested braces handled."""
    box = last_box(text)
    return box[0] if box else None


def last_answer_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end].strip() if start >= 0 else None


def last_answer_line(text: str) -> str | None:
    """What follows the last 'The answer is', 'Answer:', 'A:' (at a line start) or '####', to
    the end of its line."""
    matches = list(ANSWER_MARKER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    rest = text[last.end() :].split("\n", 1)[0]
    return rest.strip().rstrip(".").strip() or None


def last_number(text: str) -> str | None:
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def final_answer(text: str, numeric: bool = False) -> str | None:
    r"""The last `\boxed{}`, else the last `<answer>`, else a final answer line, else
    (numeric) the last number."""
    for find in (last_boxed, last_answer_tag, last_answer_line):
        answer = find(text)
        if answer:
            return answer
    return last_number(text) if numeric else None
