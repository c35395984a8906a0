"""Question/answer datasets: the six math benchmarks and two training sets by name, any JSONL or
parquet file with configurable field names, or a Hugging Face dataset from the local cache.

The benchmarks ship inside the package (treerl/data/benchmarks), the training sets in the repository
(data/train); `$TREERL_DATA` overrides both with a folder that holds benchmarks/ and train/. Every
row becomes a `Problem` with the reference answer as a string; a row that cannot be read is a
UserError naming the file and line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

from treerl.errors import UserError
from treerl.tasks.base import Problem
from treerl.tasks.extract import last_boxed

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
"""treerl/data: the benchmarks, inside the package (and so inside an installed wheel)."""
REPOSITORY_DATA = Path(__file__).resolve().parents[2] / "data"
"""The repository's data/: the training sets (not in the wheel)."""
ALL_LEVELS = "all"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
"""Files read as rows (a JSON object per line, a JSON list, or parquet); any other source is a
dataset name."""


@dataclass(frozen=True)
class Fields:
    """Where a row keeps its parts; dotted names reach into nested fields
    (`reward_model.ground_truth`)."""

    problem: str = "problem"
    answer: str = "answer"
    answer_format: Literal["plain", "boxed", "gsm8k"] = "plain"
    """plain: the field is the answer; boxed: the answer is the last \\boxed{} in it; gsm8k: it
    follows '####'."""
    level: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class Source:
    file: str
    """Relative to the data folder: benchmarks/NAME or train/NAME."""
    task: str
    fields: Fields

    def path(self) -> Path:
        """Under $TREERL_DATA when set; else benchmarks in the package, training sets in the
        repository."""
        override = os.environ.get("TREERL_DATA")
        if override:
            return Path(override) / self.file
        return (
            PACKAGE_DATA if self.file.startswith("benchmarks/") else REPOSITORY_DATA
        ) / self.file


BENCHMARKS = {
    "math500": Source("benchmarks/math500.jsonl", "math", Fields(level="level", subject="subject")),
    "gsm8k": Source(
        "benchmarks/gsm8k.jsonl", "gsm8k", Fields(problem="question", answer_format="gsm8k")
    ),
    "aime24": Source("benchmarks/aime24.jsonl", "math", Fields()),
    "amc23": Source("benchmarks/amc23.jsonl", "math", Fields()),
    "minerva_math": Source(
        "benchmarks/minerva_math.jsonl",
        "math",
        Fields(answer="solution", answer_format="boxed", subject="type"),
    ),
    "olympiadbench": Source(
        "benchmarks/olympiadbench.jsonl",
        "math",
        Fields(problem="question", answer="final_answer", subject="subfield"),
    ),
}
TRAINING_SETS = {
    "math_train": Source(
        "train/math_train.parquet",
        "math",
        Fields(problem="prompt", answer="reward_model.ground_truth"),
    ),
    "gsm8k_train": Source(
        "train/gsm8k_train.jsonl", "gsm8k", Fields(problem="question", answer_format="gsm8k")
    ),
}
NAMED = {**BENCHMARKS, **TRAINING_SETS}


def field(row: dict[str, Any], name: str) -> Any:
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def as_text(value: Any) -> str:
    """A field as text: chat messages give the last user turn, numbers drop a '.0', lists join with
    ', '."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "content" in m for m in value)
    ):
        users = [m["content"] for m in value if m.get("role") == "user"]
        return str(users[-1] if users else value[-1]["content"])
    if isinstance(value, list):
        return ", ".join(as_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        return text[1:-1].strip() if len(text) > 2 and text[0] == text[-1] == "$" else text
    if value is None:
        raise ValueError("is empty")
    return str(value)


def reference_answer(value: Any, answer_format: str) -> str:
    if answer_format == "boxed":
        answer = last_boxed(as_text(value))
        if answer is None:
            raise ValueError("has no \\boxed{} answer")
        return answer
    if answer_format == "gsm8k":
        text = as_text(value)
        if "####" not in text:
            raise ValueError("has no '#### answer' line")
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return as_text(value)


def to_problem(row: Any, fields: Fields) -> Problem | None:
    """The row as a Problem; None when its answer is empty (real sets have a few such rows)."""
    if not isinstance(row, dict):
        raise ValueError("is not a JSON object")
    try:
        question = as_text(field(row, fields.problem))
        answer = reference_answer(field(row, fields.answer), fields.answer_format)
        level = as_text(field(row, fields.level)) if fields.level else ALL_LEVELS
        subject = as_text(field(row, fields.subject)) if fields.subject else ""
    except KeyError as missing:
        raise ValueError(
            f"has no field {missing} (fields: {', '.join(row)}); set task.fields"
        ) from None
    if not question:
        raise ValueError("has an empty problem")
    if not answer:
        return None
    return Problem(question=question, reference=answer, level=level, subject=subject)


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a JSONL, JSON-list or parquet file; `where` is 'file:line' or
    'file: row N'."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:
            raise UserError(f"{path}: not a readable parquet file ({error})") from None
        yield from ((f"{path}: row {i}", row) for i, row in enumerate(rows))
        return
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(
                    f"{path}:{number}: not UTF-8 text; save the file as UTF-8"
                ) from None
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def to_problems(
    rows: Iterable[tuple[str, Any]], fields: Fields, source: str | Path
) -> list[Problem]:
    problems, skipped = [], []
    for where, row in rows:
        try:
            problem = to_problem(row, fields)
        except ValueError as error:
            raise UserError(f"{where}: the row {error}") from None
        if problem is None:
            skipped.append(where)
        else:
            problems.append(problem)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} row(s) with an empty answer: {'; '.join(skipped[:5])}",
            stacklevel=2,
        )
    if not problems:
        raise UserError(f"{source}: no rows with a problem and an answer")
    return problems


def hub_rows(name: str, default_split: str) -> Iterator[tuple[str, Any]]:
    """A Hugging Face dataset from the local cache or a local folder: 'name' or 'name:split';
    nothing is downloaded."""
    import datasets

    datasets.disable_progress_bars()
    repo, _, split = name.partition(":")
    try:
        rows = datasets.load_dataset(repo, split=split or default_split)
    except Exception:
        raise UserError(
            f"'{name}' is not a file, a named dataset ({', '.join(NAMED)}) or a Hugging Face "
            f"dataset in the local cache"
        ) from None
    yield from ((f"{name}: row {i}", row) for i, row in enumerate(rows))


@lru_cache(maxsize=16)
def load_problems(
    source: str, fields: Fields | None = None, default_split: str = "test"
) -> tuple[Problem, ...]:
    """The problems of a named dataset (NAMED), a .jsonl/.json/.parquet path, or a cached HF dataset
    name."""
    if source in NAMED:
        named = NAMED[source]
        path = named.path()
        if not path.exists():
            raise UserError(
                f"{source}: {path} not found; the training sets are in the repository's data/ "
                "folder (not in an installed package): set TREERL_DATA to a folder that holds "
                "benchmarks/ and train/"
            )
        return tuple(to_problems(read_rows(path), named.fields, path))
    fields = fields or Fields()
    path = Path(source).expanduser()
    if path.suffix in DATA_SUFFIXES:
        if not path.exists():
            raise UserError(f"data file {path} not found")
        return tuple(to_problems(read_rows(path), fields, path))
    return tuple(to_problems(hub_rows(source, default_split), fields, source))


def with_fields(fields: dict[str, str] | None) -> Fields | None:
    """Fields from a config mapping (keys: problem, answer, answer_format, level, subject)."""
    if not fields:
        return None
    unknown = set(fields) - set(Fields.__dataclass_fields__)
    if unknown:
        raise UserError(
            f"task.fields: unknown key(s) {', '.join(sorted(unknown))}; "
            f"keys: {', '.join(Fields.__dataclass_fields__)}"
        )
    if fields.get("answer_format", "plain") not in ("plain", "boxed", "gsm8k"):
        raise UserError(
            f"task.fields.answer_format: '{fields['answer_format']}' is not plain, boxed or gsm8k"
        )
    return replace(
        Fields(), **cast(dict[str, Any], fields)
    )  # answer_format is one of its literals (checked above)
