"""The reasoning-tree viewer: records of graded trees, their HTML page, trees saved in training,
`treerl tree`."""

import json

import pytest

from treerl.algo.advantages import ESTIMATORS
from treerl.cli import main
from treerl.commands.tree import find_problem
from treerl.config import load_config
from treerl.curriculum.rscore import greedy_choices
from treerl.errors import UserError
from treerl.rollout.tree import ReasoningTree
from treerl.rundir import RunDir
from treerl.tasks import get_task
from treerl.tasks.base import Problem
from treerl.tree_records import NodeRecord, tree_record
from treerl.viewer import id_by_prefix, layout, pick_trees, render_tree, render_trees, value_colour


class Letters:
    """A stand-in tokenizer: token i decodes to the i-th letter."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def hand_tree():
    # root -> A (two leaves 1, 0: values differ by 1, kept) and B (two leaves 0, 0: pruned at any
    # tau > 0)
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [0, 0]])
    tree.prompt_ids = [2, 3]
    for path, node in tree.walk():
        node.token_ids = [len(path)] * 2 if path else []
    return tree


def record_of(tree, problem, **keywords):
    """A tree's record as training saves it, at prune_tau 0.1: the r-score's greedy picks at
    rscore's defaults."""
    return tree_record(tree, problem, Letters(), 0.1, greedy_choices(tree), **keywords)


def test_record_marks_pruned_groups_picks_and_leaves():
    record = record_of(hand_tree(), Problem("q?", "1", "easy"))
    root = record["root"]
    assert (
        root["value"] == 0.25 and not root["pruned"]
    )  # children's values 0.5 and 0.0 differ by 0.5
    assert not root["children"][0]["pruned"] and root["children"][1]["pruned"]
    assert [leaf["correct"] for child in root["children"] for leaf in child["children"]] == [
        True,
        False,
        False,
        False,
    ]
    assert root["children"][0]["text"] == "bb" and record["prompt"] == "cd"
    # r-score: keeping child A of the root makes ACC 1/2 (gain 1/4), then keeping its first leaf
    # makes it 1 (1/2)
    assert record["picks"] == [[[], 0, 0.25], [[0], 0, 0.5]] and record["r_score"] == pytest.approx(
        0.75
    )


def test_page_shows_every_node_with_its_marks():
    page = render_tree(record_of(hand_tree(), Problem("q?", "1", "easy")))
    assert page.count("<details") == 4  # the list, the root and the two inner nodes collapse
    assert page.count("class='node right") == 1 and page.count("class='node wrong") == 3
    assert page.count("group pruned") == 1 and page.count("r-score pick") == 2
    assert "1 of 4 leaves correct" in page and "http" not in page


def test_layout_puts_leaves_in_order_and_each_parent_midway_between_its_children():
    """root -> (leaf, inner -> (leaf, leaf)): the leaves at x = 0, 1, 2; the inner node at 1.5; the
    root at (0 + 1.5) / 2 = 0.75; depth is the path's length."""
    root = NodeRecord(
        text="",
        value=0.5,
        children=[
            NodeRecord(text="a", value=1.0),
            NodeRecord(
                text="b",
                value=0.0,
                children=[NodeRecord(text="c", value=0.0), NodeRecord(text="d", value=0.0)],
            ),
        ],
    )
    assert layout(root) == {
        (0,): (0.0, 1),
        (1, 0): (1.0, 2),
        (1, 1): (2.0, 2),
        (1,): (1.5, 1),
        (): (0.75, 0),
    }


def test_drawing_has_a_circle_per_node_coloured_by_value_with_its_marks():
    page = render_tree(record_of(hand_tree(), Problem("q?", "1", "easy")))
    drawing = page[page.index("<svg class='drawing'") : page.index("</svg>")]
    assert drawing.count("<circle") == 7 and drawing.count("<line") == 6
    assert value_colour(0.0) == "hsl(0,65%,45%)" and value_colour(1.0) == "hsl(120,65%,45%)"
    # root 0.25, A 0.5 (leaves 1 and 0), B 0.0 (leaves 0 and 0); leaves at x = 0..3, A at 0.5,
    # B at 2.5, the root at 1.5: 26 x 1.5 + 2 x 9 = 57
    root = (
        "data-path='root' data-value='0.2500' data-advantage='' data-tokens='' "
        "onclick='show(this)'>"
        "<circle cx='57.0' cy='18.0' r='9' fill="
    )
    assert root + f"'{value_colour(0.25)}'" in drawing
    assert (
        drawing.count(f"fill='{value_colour(0.0)}'") == 4
        and drawing.count(f"fill='{value_colour(1.0)}'") == 1
    )
    assert drawing.count("class='n pruned'") == 2  # B's two leaves: its sibling group is pruned
    assert (
        drawing.count("picked") == 2
        and drawing.count("&#10003;") == 1
        and drawing.count("&#10007;") == 3
    )
    start = page.index("class='texts'>") + 14
    texts = json.loads(page[start : page.index("</script>", start)])
    assert texts == {
        "prompt": "cd",
        "root": "",
        "0": "bb",
        "1": "bb",
        "0.0": "cc",
        "0.1": "cc",
        "1.0": "cc",
        "1.1": "cc",
    }


def test_each_node_carries_the_advantage_it_was_trained_with():
    """TreeRPO on the hand tree (bernoulli norm, A = (v - mu) / (mu (1 - mu))): the root's group
    {0.5, 0.0} has mu = 0.25, so A = +-0.25 / 0.1875 = +-4/3; A's leaves {1, 0} have mu = 0.5,
    A = +-0.5 / 0.25 = +-2; B's leaves agree and are pruned, so they carry none."""
    tree = hand_tree()
    advantages = ESTIMATORS.lookup("treerpo").advantages([tree], {"prune_tau": 0.1})[0]
    record = record_of(tree, Problem("q?", "1", "easy"), advantages=advantages, weight=1.5)
    root = record["root"]
    assert [child["advantage"] for child in root["children"]] == [1.3333, -1.3333]
    assert [leaf["advantage"] for leaf in root["children"][0]["children"]] == [2.0, -2.0]
    assert [leaf["advantage"] for leaf in root["children"][1]["children"]] == [None, None]
    assert root["advantage"] is None and root["children"][0]["tokens"] == 2
    page = render_tree(record)
    drawing = page[page.index("<svg class='drawing'") : page.index("</svg>")]
    assert drawing.count("class='adv'") == 4 and "data-advantage='+2.00'" in drawing
    assert all(f">{label}</text>" in drawing for label in ("+1.3", "-1.3", "+2.0", "-2.0"))
    assert (
        "loss weight 1.50" in page and page.count("A=+") == 4
    )  # two in the drawing's titles, two in the list


def several_records():
    records = []
    for step in (1, 2):
        for question in ("1+1", "2+2", "3+3"):
            records.append(record_of(hand_tree(), Problem(question, "1", "easy"), step=step))
    return records


def test_several_trees_on_one_page_each_named_by_step_and_problem():
    records = several_records()
    page = render_trees(records)
    assert page.count("<section class='tree'") == 6 and page.count("<svg class='drawing'") == 6
    for record in records:
        assert (
            f"<section class='tree' data-step='{record['step']}' data-id='{record['id']}' hidden>"
            in page
        )
    assert page.count("<option value='") == 2 + 3  # the steps' list, and the ids to search


def test_pick_trees_keeps_the_newest_that_fit():
    records = several_records()  # 7 nodes each
    assert pick_trees(records, None, None) == (records, 0)
    assert pick_trees(records, 2, None) == (records[3:], 0)
    assert pick_trees(records, None, records[0]["id"]) == ([records[0], records[3]], 0)
    assert pick_trees(records, None, None, max_nodes=20) == (records[4:], 4)
    assert pick_trees(records, None, None, max_nodes=3) == (records[5:], 5)  # always at least one
    with pytest.raises(UserError, match="saved steps: 1..2"):
        pick_trees(records, 3, None)


def test_an_id_is_found_by_any_unique_start():
    ids = ["ab12", "ab34", "cd56", "cd"]
    assert id_by_prefix("ab1", ids) == "ab12" and id_by_prefix("cd", ids) == "cd"  # the id itself
    assert id_by_prefix("ef", ids) is None
    with pytest.raises(
        UserError, match="^problem 'ab' is the start of 2 ids \\(ab12, ab34\\); give"
    ):
        id_by_prefix("ab", ids)


def test_a_start_of_an_id_picks_its_saved_trees_and_a_problem_to_sample():
    """Issue 31 item 9: the report shows ids by their first 10 characters; `treerl tree --problem`
    takes them (it wanted the whole id)."""
    records = several_records()
    assert pick_trees(records, None, records[1]["id"][:10]) == ([records[1], records[4]], 0)
    cfg = load_config(None, ["eval.problems=3"])
    problem = get_task("arithmetic").eval_problems("hard", 3)[2]
    assert find_problem(cfg, problem.id[:10], [])[1] == problem


@pytest.mark.slow
def test_tree_command_opens_a_saved_tree_by_the_start_of_its_id(trained_run, tmp_path):
    first = RunDir(trained_run).trees()[0]
    out = tmp_path / "t.html"
    command = ["tree", "--run", str(trained_run), "--problem", first["id"][:10], "--out", str(out)]
    assert main(command) == 0
    assert f"data-id='{first['id']}'" in out.read_text()


@pytest.mark.slow
def test_training_saves_trees_and_resume_drops_the_lost_ones(trained_run, tmp_path):
    trees = RunDir(trained_run).trees()
    assert [t["step"] for t in trees] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert all(len(t["root"]["children"]) == 3 for t in trees)
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("trees.jsonl", "metrics.jsonl", "eval.json"):
        (copy / name).write_text((trained_run / name).read_text())
    RunDir(copy).truncate_to(2)
    assert [t["step"] for t in RunDir(copy).trees()] == [1, 1, 2, 2]
    assert list(RunDir(copy).evals()) == ["0", "2"] and [
        m["step"] for m in RunDir(copy).metrics()
    ] == [1, 2]


@pytest.mark.slow
def test_tree_command_shows_a_saved_tree_and_says_what_is_missing(trained_run, tmp_path, capsys):
    first = RunDir(trained_run).trees()[0]
    out = tmp_path / "t.html"
    assert (
        main(
            [
                "tree",
                "--run",
                str(trained_run),
                "--step",
                "1",
                "--problem",
                first["id"],
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert first["id"] in out.read_text() and out.read_text().count("<section class='tree'") == 1
    assert main(["tree", "--run", str(trained_run), "--out", str(out)]) == 0
    assert out.read_text().count("<section class='tree'") == 8  # every saved tree, paged
    assert main(["tree", "--run", str(trained_run), "--step", "9"]) == 2
    assert "saved steps: 1..4" in capsys.readouterr().err
    assert main(["tree", "--run", str(tmp_path)]) == 2
    assert "train with output.save_trees=N" in capsys.readouterr().err
    assert main(["tree", "--model", "tiny", "--problem", "no-such-id"]) == 2
    assert "not among" in capsys.readouterr().err


def test_tree_command_samples_a_held_out_problem(model_dir, tmp_path):
    from treerl.tasks import get_task

    problem = get_task("arithmetic").eval_problems("easy", 1)[0]
    out = tmp_path / "fresh.html"
    assert (
        main(
            [
                "tree",
                "--model",
                str(model_dir),
                "--problem",
                problem.id,
                "--out",
                str(out),
                "rollout.n=2",
                "tree.depth=2",
                "rollout.max_new_tokens=6",
                "output.progress=false",
            ]
        )
        == 0
    )
    page = out.read_text()
    assert (
        problem.id in page and page.count("<details") == 4
    )  # list, root, 2 inner nodes of a 2 x 2 tree


def test_trees_file_with_a_bad_middle_line_is_a_clear_error(tmp_path):
    path = tmp_path / "trees.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="trees.jsonl:2"):
        RunDir(tmp_path).trees()
    path.write_text('{"step": 1}\n{"step": 2, "ro')  # a torn last line is dropped
    assert RunDir(tmp_path).trees() == [json.loads('{"step": 1}')]


def chain(levels):
    """A record's line whose tree is a chain `levels` levels below its root, written as text
    (json.dumps would refuse to nest that deep)."""
    good = json.dumps(record_of(hand_tree(), Problem("deep", "1", "easy"), step=1))
    root = (
        '{"text": "", "value": 0.0, "children": [' * levels
        + '{"text": "", "value": 0.0}'
        + "]}" * levels
    )
    return good[: good.index('"root": ')] + '"root": ' + root + "}"


def saved_record(step=1, **changes):
    record = record_of(hand_tree(), Problem(f"q{step}?", "1", "easy"), step=step)
    return json.dumps(
        {key: value for key, value in {**record, **changes}.items() if value != "drop"}
    )


MALFORMED = {
    "3,000 levels deep": chain(3000),
    "101 levels deep": chain(101),
    "without a root": saved_record(root="drop"),
    "an array": "[1, 2]",
    "null": "null",
    "children a string": saved_record(root={"text": "", "value": 0.0, "children": "abc"}),
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
def test_tree_command_skips_a_malformed_record_and_names_its_line(bad, tmp_path, capsys):
    (tmp_path / "trees.jsonl").write_text(f"{saved_record(1)}\n{bad}\n{saved_record(2)}\n")
    out = tmp_path / "t.html"
    assert main(["tree", "--run", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text().count("<section class='tree'") == 2
    assert (
        "skipped 1 of the 3 saved records that are not trees; the first: "
        f"{tmp_path}/trees.jsonl:2: not a tree record" in capsys.readouterr().err
    )


def test_a_tree_as_deep_as_allowed_is_drawn(tmp_path):
    (tmp_path / "trees.jsonl").write_text(chain(100) + "\n")
    assert main(["tree", "--run", str(tmp_path), "--out", str(tmp_path / "t.html")]) == 0
    assert (tmp_path / "t.html").read_text().count("<circle") == 101


def test_saved_steps_mixing_null_and_numbers_are_listed(tmp_path, capsys):
    (tmp_path / "trees.jsonl").write_text(
        f"{saved_record(None)}\n{saved_record(3)}\n{saved_record(5)}\n"
    )
    assert main(["tree", "--run", str(tmp_path), "--step", "9"]) == 2
    assert "saved steps: 3..5, 1 without a step (3 trees)" in capsys.readouterr().err
    assert (
        main(["tree", "--run", str(tmp_path), "--step", "3", "--out", str(tmp_path / "t.html")])
        == 0
    )


def test_a_line_too_deep_to_parse_is_one_line_where_every_record_is_read(tmp_path):
    (tmp_path / "trees.jsonl").write_text(f"{saved_record(1)}\n{chain(3000)}\n")
    with pytest.raises(UserError, match="trees.jsonl:2: nested too deeply to read"):
        RunDir(tmp_path).trees()  # as a resume reads it, to cut it back


ATTACK = (
    "<img src=x onerror=\"document.body.dataset.pwned='yes'\">"
    "<script>document.body.dataset.pwned='yes'</script>"
)


def hostile_record(**numbers):
    """A record whose every string field carries markup that would run if it reached the page
    unescaped."""
    record = record_of(hand_tree(), Problem("q?", "1", "easy"), step=3)
    record.update(id=ATTACK, level=ATTACK, question=ATTACK, prompt=ATTACK, **numbers)

    def poison(node):
        node["text"] = ATTACK
        for child in node["children"]:
            poison(child)

    poison(record["root"])
    return record


def test_hostile_strings_are_shown_as_text():
    page = render_tree(hostile_record())
    assert "<img" not in page and "<script>document" not in page and "</script><script>" not in page
    # the id (as the section's data-id, in its heading and among the ids to search), level, prompt,
    # 7 nodes' texts
    assert page.count("&lt;img src=x onerror=") == 3 + 1 + 1 + 7


@pytest.mark.parametrize("field", ["step", "prune_tau", "r_score", "weight"])
def test_a_record_whose_numbers_are_not_numbers_is_refused(field):
    with pytest.raises(UserError, match=f"not a tree record: {field}"):
        render_tree(hostile_record(**{field: ATTACK}))
    record = hostile_record()
    record["root"]["children"][0]["value"] = ATTACK
    with pytest.raises(UserError, match="root.children.0.value"):
        render_tree(record)


def test_tree_command_samples_a_problem_saved_in_a_run(trained_run, model_dir, tmp_path):
    saved = RunDir(trained_run).trees()[-1]
    out = tmp_path / "again.html"
    assert (
        main(
            [
                "tree",
                "--run",
                str(trained_run),
                "--model",
                str(model_dir),
                "--problem",
                saved["id"],
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert saved["id"] in out.read_text() and saved["reference"] is not None
