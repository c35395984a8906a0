r"""Grading math answers as the field does: extract, normalise, compare as
numbers, else math-verify.

An answer that hedges is wrong before any comparison: several values joined by "or" (`\lor`,
`\vee`), by "and" (`\land`, `\wedge`) or by a top-level comma or semicolon where the reference is
one value, several boxes with different contents, or a boxed answer followed by "or", "maybe",
"otherwise", "could be", ... or by a value with a question mark (`\boxed{5} (or maybe 7)`,
`\boxed{5} (7?)`, `\boxed{5}?`; a rhetorical "Why?" passes). Otherwise a policy learns to list
candidates, which math-verify would accept when one of them matches. Full-width forms
(`ｏｒ`, `１８`) read as ASCII first, as NFKC maps them; a box that holds only a placeholder
(`\boxed{\phantom{2}}`, `\boxed{?}`) is a blank quoted from the problem, not an answer
(treerl.tasks.extract.boxes).

Normalisation handles what math-verify leaves to the caller: `\text{}` and units, thousands
separators, percent, degrees, currency, `\dfrac`, `x = ...`, a trailing period. Numbers compare as
numbers, exactly (`18`, `18.0`, `\$18`, `18.00` agree; `1000000001` and `1000000000` do not), except
that a decimal may be a rounding of the other side (numbers_equal). Anything else goes to
math-verify's LaTeX parser (never sympy's `parse_expr`, which evaluates Python) in a child
process bounded in time.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

from treerl.tasks.bounded import BoundedWorker
from treerl.tasks.extract import boxes, final_answer

MAX_ANSWER_CHARS = 1000
UNITS = (
    r"(?:square |cubic )?(?:centi|milli|kilo)?(?:meters?|metres?|grams?|liters?|litres?)|"
    r"(?:sq\.? )?(?:cm|mm|km|kg|mg|ml|ft|yd|mph|km/h)(?:\^?\{?[23]\}?)?|"
    r"inches|inch|feet|foot|yards?|miles?|seconds?|minutes?|hours?|days?|weeks?|months?|years?|"
    r"dollars?|cents?|units?|degrees?|points?|people|students?|times|ways|sec|mins?|hrs?"
)
TEXT_COMMAND = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
TRAILING_UNIT = re.compile(rf"(?<=[\d}}])\s*(?:{UNITS})\.?\s*$", re.IGNORECASE)
SPACING = re.compile(r"\\[,;:!> ]|\\(?:quad|qquad|displaystyle|left|right)\b|~")
DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
VARIABLE_EQUALS = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d{1,3})?$", re.IGNORECASE)
NESTED_EXPONENT = re.compile(r"\^\s*\{[^{}]*\^|\^\s*[\w.]*\s*\^|\*\*[^*]*\*\*")
BIG_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*-?\d{6,}")
BIG_FACTORIAL = re.compile(r"\d{4,}\s*!")
BASE_SUBSCRIPT = re.compile(r"^\w+_\{?\d+\}?$")
OR_WORDS = re.compile(r"\\(?:lor|vee)(?![a-zA-Z])|\bor\b", re.IGNORECASE)
AND_WORDS = re.compile(r"\\(?:land|wedge)(?![a-zA-Z])|\band\b", re.IGNORECASE)
HEDGE_AFTER_BOX = re.compile(
    r"\\(?:lor|vee)(?![a-zA-Z])|"
    r"(?:[\d)\]}%.]|\\[a-zA-Z]+|(?<![a-zA-Z])[a-zA-Z])[\s$]*\?|"
    r"\b(?:or|maybe|perhaps|possibly|alternatively|otherwise|else|unless|(?:could|might)\s+be)\b",
    re.IGNORECASE,
)
"""Words that offer another answer, or a question mark after a value (a number, a bracket, `%`, a
command, a one-letter variable: `(6 - 6i?)`), not after a word (a rhetorical "Why?")."""
FULL_WIDTH = str.maketrans({code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: " "})
"""Full-width ASCII forms (U+FF01-U+FF5E) and the ideographic space -> ASCII, as NFKC maps them; a
table, since NFKC itself takes quadratic time on a run of combining marks (6.5 s
for 80,000 of them)."""
FRACTION = re.compile(r"^(-?)\\frac\{(-?\d{1,30})\}\{(-?\d{1,30})\}$|^(-?\d{1,30})/(\d{1,30})$")


def normalize(answer: str) -> str:
    """A canonical string for an extracted answer; linear-time regex work on a bounded string."""
    s = answer.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left) : -len(right)].strip()
    s = (
        s.replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\$", "")
        .replace("$", "")
    )
    s = TEXT_COMMAND.sub(lambda m: m.group(1), s)
    s = SPACING.sub(" ", s)
    s = DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    s = TRAILING_UNIT.sub("", s).strip()
    s = VARIABLE_EQUALS.sub("", s)
    if THOUSANDS.match(s):
        s = s.replace(",", "")
    return " ".join(s.split())


def is_list(s: str) -> bool:
    """Whether a normalised answer is several values: a comma or semicolon outside every bracket."""
    depth = 0
    for char in s:
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth = max(0, depth - 1)
        elif char in ",;" and depth == 0:
            return True
    return False


def offers_several(answer: str, reference: str) -> bool:
    """Whether an extracted answer hedges: "or" between values (no reference has one), or "and" or a
    list where the reference is a single value."""
    if OR_WORDS.search(answer) and not OR_WORDS.search(reference):
        return True
    if is_list(normalize(reference)):
        return False
    return bool(AND_WORDS.search(answer) and not AND_WORDS.search(reference)) or is_list(
        normalize(answer)
    )


def half_unit(decimal: str) -> Fraction:
    """Half a unit in the last written place of a decimal: `0.33` -> 0.005, `3.89e-10` -> 5e-13,
    `1e5` -> 5e4; 0 for an integer, which is exact."""
    mantissa, _, exponent = decimal.lower().partition("e")
    if "." not in mantissa and not exponent:
        return Fraction(0)
    return Fraction(1, 2) * Fraction(10) ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def as_number(s: str) -> tuple[Fraction, Fraction] | None:
    """The exact value of a plain number or an integer fraction (`\\frac{14}{3}`, `14/3`) and half a
    unit in its last written place (0 unless a decimal); None for anything else."""
    if NUMBER.match(s):
        try:
            return Fraction(s), half_unit(s)
        except ValueError:  # more digits than int() reads
            return None
    m = FRACTION.match(s)
    if m:
        sign, num, den = (
            (m.group(1), m.group(2), m.group(3)) if m.group(2) else ("", m.group(4), m.group(5))
        )
        if int(den) != 0:
            return (-1 if sign else 1) * Fraction(int(num), int(den)), Fraction(0)
    return None


def nesting_depth(s: str) -> int:
    depth = deepest = 0
    for char in s:
        if char in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")}]":
            depth = max(0, depth - 1)
    return deepest


def too_costly(prediction: str, reference: str) -> bool:
    """Whether a prediction is so much bigger than the reference that it cannot be worth
    math-verify's time: more than twice as long plus 50 characters, 4 more levels of nesting, or a
    power tower, a huge exponent or a huge factorial that the reference does not have (sympy would
    try to compute them)."""
    if (
        len(prediction) > 2 * len(reference) + 50
        or nesting_depth(prediction) > nesting_depth(reference) + 3
    ):
        return True
    return any(
        pattern.search(prediction) and not pattern.search(reference)
        for pattern in (NESTED_EXPONENT, BIG_EXPONENT, BIG_FACTORIAL)
    )


def numbers_equal(a: tuple[Fraction, Fraction], b: tuple[Fraction, Fraction]) -> bool:
    """Two `as_number` values: integers and fractions compare exactly; a decimal may be a rounding
    of the other side, so |a - b| <= min(max(half_unit_a, half_unit_b), 1e-9 max(|a|, |b|)).
    `0.3333333333` matches 1/3 (3.3e-11 <= min(5e-11, 3.3e-10)); `0.33` does not (tolerance
    3.3e-10), nor `1000000001.0` 1e9 (0.05)."""
    (a_value, a_unit), (b_value, b_unit) = a, b
    tolerance = min(max(a_unit, b_unit), Fraction(1, 10**9) * max(abs(a_value), abs(b_value)))
    return abs(a_value - b_value) <= tolerance


logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that we bound time ourselves


@lru_cache(maxsize=8192)
def _parsed(answer: str) -> list:
    from math_verify import LatexExtractionConfig, parse

    return parse(
        f"\\boxed{{{answer}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None
    )


def math_verify_equal(prediction: str, reference: str) -> bool:
    """math-verify's verdict on two normalised answers; runs inside the bounded worker."""
    from math_verify import verify

    gold, guess = _parsed(reference), _parsed(prediction)
    return bool(gold and guess and verify(gold, guess, timeout_seconds=None))


MATH_VERIFY = BoundedWorker(math_verify_equal, default=False, warmup=("1+1", "2"))


def answers_match(prediction: str, reference: str, timeout: float, symbolic: bool = True) -> bool:
    """Whether an extracted answer equals the reference answer; with `symbolic`, math-verify decides
    what string and number comparison cannot, in at most `timeout` seconds."""
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    pred, ref = normalize(prediction), normalize(reference)
    pred_key, ref_key = pred.replace(" ", ""), ref.replace(" ", "")
    if not pred_key:
        return False
    if pred_key == ref_key:
        return True
    pred_value, ref_value = as_number(pred_key), as_number(ref_key)
    if pred_value is not None and ref_value is not None:
        return numbers_equal(pred_value, ref_value)
    if (
        not symbolic or BASE_SUBSCRIPT.match(ref_key) or too_costly(pred_key, ref_key)
    ):  # 52_8: only the same digits
        return False
    return MATH_VERIFY(pred, ref, timeout=timeout)


def is_correct(completion: str, reference: str, numeric: bool, timeout: float) -> bool:
    """Extract the final answer of a completion and compare it; `numeric` answers (GSM8K) may be a
    bare last number and compare only as numbers, as GSM8K is graded."""
    completion = completion.translate(FULL_WIDTH)
    answer = final_answer(completion, numeric=numeric)
    if answer is None or offers_several(answer, reference):
        return False
    boxed = boxes(completion)
    if boxed and boxed[-1][0] == answer and HEDGE_AFTER_BOX.search(completion[boxed[-1][1] - 1 :]):
        return False
    if (
        len(
            {
                normalize(content).replace(" ", "")
                for content, _ in boxed
                if "\\boxed" not in content and "\\fbox" not in content
            }
        )
        > 1
    ):
        return False
    return answers_match(answer, reference, timeout, symbolic=not numeric)
