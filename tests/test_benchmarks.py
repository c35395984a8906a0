"""The six math benchmarks and the training sets: loaders, and the grader on every
row's own reference."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treerl.errors import UserError
from treerl.tasks import get_task
from treerl.tasks.loaders import BENCHMARKS, Fields, load_problems

ROWS = {
    "math500": 500,
    "gsm8k": 1319,
    "aime24": 30,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
}
CHANGED_BUT_EQUAL = {
    # the unit's exponent changes, and units are not part of the answer
    "math500": {r"15\mbox{ cm}^2"},
    # math-verify reads E_{1} and E_{2} as the same symbol
    "minerva_math": {r"\frac{1}{3} E_{1}+\frac{2}{3} E_{2}"},
}


def changed(reference: str) -> str:
    """A different answer: the last digit plus one, or '+1' when there is no digit."""
    digits = list(re.finditer(r"\d", reference))
    if not digits:
        return reference + "+1"
    i = digits[-1].start()
    return reference[:i] + str((int(reference[i]) + 1) % 10) + reference[i + 1 :]


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_reference_is_graded_correct_and_a_changed_one_wrong(name):
    problems = load_problems(name)
    assert len(problems) == ROWS[name]
    task = get_task(BENCHMARKS[name].task)
    right = [
        task.grade(
            f"Let me work it out step by step.\nSo the answer is $\\boxed{{{p.reference}}}$.",
            p.reference,
        ).correct
        for p in problems
    ]
    assert sum(right) / len(problems) >= 0.995
    wrongly_right = {
        p.reference
        for p in problems
        if task.grade(f"So the answer is $\\boxed{{{changed(p.reference)}}}$.", p.reference).correct
    }
    assert wrongly_right == CHANGED_BUT_EQUAL.get(name, set())


def test_loaders_normalise_each_files_fields():
    math500 = load_problems("math500")[0]
    assert (math500.reference, math500.level, math500.subject) == (
        r"\left( 3, \frac{\pi}{2} \right)",
        "2",
        "Precalculus",
    )
    assert load_problems("gsm8k")[0].reference == "18"  # after '####'
    assert load_problems("amc23")[0].reference == "27"  # 27.0 in the file
    assert load_problems("minerva_math")[0].reference == "1.6"  # inside the solution's \boxed{}
    olympiad = load_problems("olympiadbench")
    assert olympiad[0].reference == "2" and olympiad[0].subject == "Combinatorics"
    assert olympiad[1].reference == r"\frac{1}{2 n+2}"  # '$...$' stripped
    load_problems.cache_clear()
    with pytest.warns(
        UserWarning,
        match=r"skipped 2 row\(s\) with an empty answer: .*math_train.parquet: row 1435",
    ):
        math_train = load_problems("math_train")
    assert len(math_train) == 7498
    assert math_train[0].question.startswith("What is the slope")  # the user turn of the chat
    assert math_train[0].reference == "-2"
    assert len(load_problems("gsm8k_train")) == 7473


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_custom_jsonl_with_configured_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"q": "1+1?", "meta": {"gold": 2}, "difficulty": 1},
            {"q": "2+2?", "meta": {"gold": 4}, "difficulty": 3},
        ],
    )
    fields = Fields(problem="q", answer="meta.gold", level="difficulty")
    problems = load_problems(path, fields)
    assert [(p.question, p.reference, p.level) for p in problems] == [
        ("1+1?", "2", "1"),
        ("2+2?", "4", "3"),
    ]
    task = get_task(
        "math",
        train_data=path,
        eval_data=path,
        fields={"problem": "q", "answer": "meta.gold", "level": "difficulty"},
    )
    assert task.levels == ["1", "3", "all"]
    assert [p.reference for p in task.eval_problems("3", 0)] == ["4"]


def test_parquet_file(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "x?", "answer": "7"}]), path)
    assert load_problems(str(path))[0].reference == "7"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"q.jsonl:2: not valid JSON"),
        (
            '{"problem": "2+2?"}',
            r"q.jsonl:2: the row has no field 'answer' \(fields: problem\); set task.fields",
        ),
        ('{"problem": "", "answer": "4"}', r"q.jsonl:2: the row has an empty problem"),
        ("[1, 2]", r"q.jsonl:2: the row is not a JSON object"),
        ('{"problem": "2+2? \\ud800", "answer": "4"}', r"q.jsonl:2: a \\u escape of a surrogate"),
    ],
)
def test_a_bad_row_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "q.jsonl", [{"problem": "1+1?", "answer": "2"}, line])
    with pytest.raises(UserError, match=message):
        load_problems(path)


def test_escaped_surrogate_pairs_in_a_row_are_their_character(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", ['{"problem": "\\ud83d\\ude00 + 1?", "answer": "2"}'])
    assert load_problems(path)[0].question == "\U0001f600 + 1?"


def test_rows_without_an_answer_are_skipped_with_a_warning(tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "?", "answer": ""}]
    )
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) with an empty answer: .*q.jsonl:2"):
        assert len(load_problems(path)) == 1


def test_a_hugging_face_dataset_folder_with_splits(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "2+2?", "gold": 4}])
    write_jsonl(folder / "test.jsonl", [{"question": "1+1?", "gold": 2}])
    task = get_task(
        "gsm8k",
        train_data=str(folder),
        eval_data=str(folder),
        fields={"problem": "question", "answer": "gold"},
    )
    assert [p.reference for p in task.train_pools["all"]] == ["4"]  # train_data: the train split
    assert [p.reference for p in task.eval_problems("all", 0)] == ["2"]  # eval_data: the test split
    assert [
        p.reference
        for p in load_problems(f"{folder}:train", Fields(problem="question", answer="gold"))
    ] == ["4"]


def test_unknown_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data file .*missing.jsonl not found"):
        load_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="'no/such-dataset' is not a file, a named dataset"):
        load_problems("no/such-dataset")
    with pytest.raises(UserError, match="task.fields: unknown key"):
        get_task("math", fields={"question": "q"})


HEDGES = [
    r"\boxed{{{ref} \lor {other}}}",
    r"\boxed{{{other} \vee {ref}}}",
    r"\boxed{{{ref} \text{{ or }} {other}}}",
    r"\boxed{{{ref}}}\text{{ (or maybe {other})}}",
    r"\boxed{{{other}}} or \boxed{{{ref}}}",
    r"The answer is {ref} or {other}.",
    r"\boxed{{{ref}}} (otherwise {other})",
    r"\boxed{{{ref}}} (else {other})",
    r"\boxed{{{ref}}} (could be {other})",
    r"\boxed{{{ref}}} ({other}?)",
    r"\boxed{{{ref}}} (unless it is {other})",
    r"\boxed{{{ref}}} (ｏｒ {other})",
    r"\boxed{{{ref}}}?",
    r"\boxed{{{ref} \land {other}}}",
    r"\boxed{{{ref}, {other}}}",
    r"\boxed{{{ref}; {other}}}",
]
"""Several values offered around a right answer; the last three hedge only where the
reference is one value."""


@pytest.mark.parametrize("name", BENCHMARKS)
def test_an_answer_that_hedges_around_the_reference_is_wrong(name):
    from treerl.tasks.math_grader import is_list, normalize

    task = get_task(BENCHMARKS[name].task)
    graded_right = []
    for problem in load_problems(name):
        hedges = HEDGES if not is_list(normalize(problem.reference)) else HEDGES[:-3]
        # a different value: the changed reference, unless that change leaves it
        # equal (CHANGED_BUT_EQUAL)
        other = (
            "7919"
            if problem.reference in CHANGED_BUT_EQUAL.get(name, ())
            else changed(problem.reference)
        )
        for hedge in hedges:
            completion = "So we find " + hedge.format(ref=problem.reference, other=other)
            if task.grade(completion, problem.reference).correct:
                graded_right.append((problem.reference, hedge))
    assert graded_right == []


@settings(max_examples=150, deadline=None)
@given(
    reference=st.sampled_from(
        [p.reference for name in ("math500", "aime24", "amc23") for p in load_problems(name)]
    ),
    other=st.integers(-(10**6), 10**6).map(str)
    | st.sampled_from([r"\frac{1}{2}", r"\sqrt{2}", "x", r"\pi"]),
    joiner=st.sampled_from(
        [r" \lor ", r" \vee ", " or ", r" \text{or} ", r"\ \mathrm{or}\ ", " OR "]
    ),
    first=st.booleans(),
)
def test_any_or_between_values_is_wrong(reference, other, joiner, first):
    values = [reference, other] if first else [other, reference]
    assert get_task("math").grade(rf"\boxed{{{joiner.join(values)}}}", reference).correct is False


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_response_that_quotes_a_blank_box_is_graded_on_its_answer(name):
    task = get_task(BENCHMARKS[name].task)
    answer = r"So the answer is $\boxed{{{reference}}}$."
    quoting = r"We must find what goes in $\boxed{{\phantom{{2}}}}$. " + answer
    graded_otherwise = [
        p.reference
        for p in load_problems(name)
        if task.grade(quoting.format(reference=p.reference), p.reference).correct
        != task.grade(answer.format(reference=p.reference), p.reference).correct
    ]
    assert graded_otherwise == []
