"""Question/answer datasets: the six math benchmarks and two training sets by name, any JSONL or
parquet file with configurable field names, a `datasets` save_to_disk folder, a Hugging Face dataset
from the local cache, or (from Python) a `datasets.Dataset`.

The benchmarks ship inside the package (treerl/data/benchmarks), the training sets in the repository
(data/train); `$TREERL_DATA` overrides both with a folder that holds benchmarks/ and train/. Every
row becomes a `Problem` with the reference answer as a string; a row with a `messages` column (the
conversational format) keeps its conversation. A row that cannot be read is a UserError naming the
file and line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from treerl.errors import UserError
from treerl.tasks.base import Problem
from treerl.tasks.extract import last_boxed
from treerl.tasks.prompts import Turn

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
"""treerl/data: the benchmarks, inside the package (and so inside an installed wheel)."""
REPOSITORY_DATA = Path(__file__).resolve().parents[2] / "data"
"""The repository's data/: the training sets (not in the wheel)."""
ALL_LEVELS = "all"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
"""Files read as rows (a JSON object per line, a JSON list, or parquet); any other source is a
dataset name."""
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")
"""A folder with one of these was written by `datasets`' save_to_disk (a DatasetDict, a Dataset)."""

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    InMemory: TypeAlias = Dataset | DatasetDict
    """A dataset handed over from Python."""


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
    messages: str = "messages"
    """A conversation ([{role, content}, ...]): a row that has it is prompted with its turns up to
    the last user turn, whose text is the problem."""


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


def conversation(value: Any) -> tuple[Turn, ...]:
    """A row's messages as (role, content) turns up to its last user turn: trailing assistant turns
    are an answer, not part of the prompt."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError("has messages that are not a list of {role, content} text turns")
    turns = [(m["role"], m["content"]) for m in value]
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not users:
        raise ValueError("has messages without a user turn")
    return tuple(turns[: users[-1] + 1])


def question_of(row: dict[str, Any], fields: Fields) -> tuple[str, tuple[Turn, ...]]:
    """(question, the turns before it): the last user turn and the conversation before it for a row
    with messages, else the problem field and no turns."""
    try:
        turns = conversation(field(row, fields.messages))
    except KeyError:
        return as_text(field(row, fields.problem)), ()
    return turns[-1][1].strip(), turns[:-1]


def to_problem(row: Any, fields: Fields) -> Problem | None:
    """The row as a Problem; None when its answer is empty (real sets have a few such rows)."""
    if not isinstance(row, dict):
        raise ValueError("is not a JSON object")
    try:
        question, context = question_of(row, fields)
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
    return Problem(question, answer, level, subject, context=context)


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
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if "\\u" in line and not text_only(row):
                    raise UserError(
                        f"{path}:{number}: a \\u escape of a surrogate (\\ud800-\\udfff) "
                        "without its pair, half a character; write the character itself"
                    )
                yield f"{path}:{number}", row


def text_only(row: Any) -> bool:
    """Whether a JSON row's strings are all text: JSON reads a surrogate escape without its pair
    as a lone surrogate, which a tokenizer refuses."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


class UnknownSource(UserError):
    """A data source that is no named dataset, file, save_to_disk folder or cached dataset;
    `reason`: why `datasets` could not load it, in one line."""

    def __init__(self, source: str, reason: str):
        self.reason = reason
        super().__init__(
            f"'{source}' is not a file, a named dataset ({', '.join(NAMED)}), a save_to_disk "
            f"folder or a Hugging Face dataset in the local cache ({reason})"
        )


def hub_parts(source: str) -> tuple[str, str | None, str | None]:
    """(name, config, split) of `name`, `name:split` or `name:config:split` (None where not
    given)."""
    parts = source.split(":")
    if len(parts) > 3:
        raise UserError(f"'{source}': a dataset is `name`, `name:split` or `name:config:split`")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1]
    return name, config or None, split if len(parts) > 1 and split else None


def dataset_rows(data: InMemory, where: str, split: str, fix: str) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a Dataset, or of the `split` of a DatasetDict; `fix` says how
    to name another split."""
    from datasets import DatasetDict

    if isinstance(data, DatasetDict):
        if split not in data:
            raise UserError(f"{where} has no split '{split}' (splits: {', '.join(data)}); {fix}")
        data = data[split]
    yield from ((f"{where}: row {i}", row) for i, row in enumerate(data))


def saved_rows(
    path: Path, source: str, split: str | None, default_split: str
) -> Iterator[tuple[str, Any]]:
    """The rows of a save_to_disk folder: a Dataset whole, a DatasetDict's split."""
    import datasets

    data = datasets.load_from_disk(str(path))
    if split and isinstance(data, datasets.Dataset):
        raise UserError(f"{source}: {path} holds one dataset, not splits; give {path}")
    return dataset_rows(data, source, split or default_split, f"give {path}:SPLIT")


def hub_rows(source: str, default_split: str) -> Iterator[tuple[str, Any]]:
    """The rows of a save_to_disk folder, a folder of data files or a Hugging Face dataset in the
    local cache: `name`, `name:split` or `name:config:split`; nothing is downloaded."""
    import datasets

    datasets.disable_progress_bars()
    name, config, split = hub_parts(source)
    path = Path(name).expanduser()
    if any((path / saved).is_file() for saved in SAVED_DATASET_FILES):
        if config:
            raise UserError(f"'{source}': a save_to_disk folder has no configs; give {name}:SPLIT")
        return saved_rows(path, source, split, default_split)
    # as the environment says (treerl sets it), even where datasets was imported before treerl
    offline = os.environ.get("HF_DATASETS_OFFLINE", "1").upper()
    datasets.config.HF_HUB_OFFLINE = offline in datasets.config.ENV_VARS_TRUE_VALUES
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # not "Using the latest cached version" each time
    try:
        splits = datasets.load_dataset(name, config)
    except Exception as error:
        raise UnknownSource(source, " ".join(str(error).split())) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    stem = f"{name}:{config}" if config else name
    return dataset_rows(splits, source, split or default_split, f"give {stem}:SPLIT")


@lru_cache(maxsize=16)
def load_problems(
    source: str | Path, fields: Fields | None = None, default_split: str = "test"
) -> tuple[Problem, ...]:
    """The problems of a named dataset (NAMED), a .jsonl/.json/.parquet path, a save_to_disk folder
    or a cached HF dataset name."""
    source = str(source)
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


def problems_from(
    source: str | Path | InMemory, fields: Fields | None, default_split: str
) -> tuple[Problem, ...]:
    """load_problems for a name or a path; a datasets.Dataset (or DatasetDict) from Python is read
    as it is."""
    if isinstance(source, str | Path):
        return load_problems(source, fields, default_split)
    import datasets

    if not isinstance(source, datasets.Dataset | datasets.DatasetDict):
        raise UserError(
            "task.train_data / eval_data: a dataset name, a path, or a datasets.Dataset; "
            f"got {type(source).__name__}"
        )
    where = source_name(source)
    rows = dataset_rows(
        source, where, default_split, f"pass one split, as dataset['{default_split}']"
    )
    return tuple(to_problems(rows, fields or Fields(), where))


def save_dataset(data: InMemory, folder: Path) -> None:
    """A Dataset or DatasetDict written with save_to_disk (no progress bar), for load_problems."""
    import datasets

    datasets.disable_progress_bars()
    data.save_to_disk(str(folder))


def source_name(source: str | Path | InMemory) -> str:
    """A data source as messages name it: its name or path, or `the datasets.Dataset`."""
    return (
        str(source) if isinstance(source, str | Path) else f"the datasets.{type(source).__name__}"
    )


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
