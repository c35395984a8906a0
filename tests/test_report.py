"""`treerl report` and `treerl compare`: the plots of a run, in PNG files and one self-contained
HTML page."""

import base64
import json
import re

import pytest
import yaml

from treerl.cli import main
from treerl.report import PLOTS, load_run, trailing_mean
from treerl.rundir import RunDir

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_train_command_writes_the_report_with_every_plot(trained_run):
    assert sorted(p.name for p in (trained_run / "plots").iterdir()) == sorted(
        f"{name}.png" for name in PLOTS
    )
    assert all(
        (trained_run / "plots" / f"{name}.png").read_bytes().startswith(PNG) for name in PLOTS
    )
    page = (trained_run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(PLOTS) and all(
        base64.b64decode(image).startswith(PNG) for image in images
    )
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # opens offline: nothing to fetch
    assert "<script" not in page
    # the first screen: accuracy before and after, the run's size, where the time went, its trees;
    # then the curves; the config folded at the bottom
    first, curves, config = (
        page.index("held-out accuracy (%)"),
        page.index("<h2>curves"),
        page.index("<details><summary>config"),
    )
    assert (
        first < page.index("where the time went") < curves < page.index("<img") and curves < config
    )
    assert "step 0 to 4" in page and "<b>4</b><br>steps" in page and "tokens generated" in page
    assert "generation" in page[page.index("class='bar'") : curves]
    assert "curriculum:" in page[config:] and "name: cosine" in page[config:]  # the resolved config
    trees = (trained_run / "trees.html").read_text()
    assert (
        "href='trees.html'>8 saved reasoning trees" in page
        and trees.count("<section class='tree'") == 8
    )
    last = RunDir(trained_run).trees()[-1]
    assert f"href='trees.html#step=4&amp;problem={last['id']}'" in page


@pytest.mark.slow
def test_compare_overlays_runs_and_report_reads_a_torn_metrics_line(trained_run, tmp_path, capsys):
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("metrics.jsonl", "eval.json", "config.yaml"):
        (torn / name).write_text((trained_run / name).read_text())
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')  # killed while writing
    assert len(load_run(torn).metrics) == 4
    assert main(["compare", str(trained_run), str(torn), "--out", str(tmp_path / "both.html")]) == 0
    page = (tmp_path / "both.html").read_text()
    assert (
        "run vs torn" in page and page.count("class='card'") == 2
    )  # the report's layout, a card per run
    assert page.count("<td>run</td><td>hard</td>") == page.count("<td>torn</td><td>hard</td>") == 1
    assert page.count("<details><summary>config of") == 2 and "<h2>curves" in page
    assert "comparison:" in capsys.readouterr().out


def test_report_of_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_trailing_mean_by_hand():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_stalls_are_five_or_more_steps_in_a_row_that_trained_nothing():
    """Steps 1-5 trained nothing and earned nothing, step 6 trained, steps 7-9 trained nothing (only
    3), step 10 trained, steps 11-16 trained nothing but earned a reward at step 12: two stalls,
    each said once, at its fifth step."""
    from treerl.rundir import Stall, stall_begun, stalls

    trained = {step: 40 if step in (6, 10) else 0 for step in range(1, 17)}
    records = [
        {"step": step, "tokens/trained": trained[step], "reward/mean": 0.25 if step == 12 else 0.0}
        for step in range(1, 17)
    ]
    assert stalls(records) == [Stall(1, 5, False), Stall(11, 16, True)]
    assert [step for step in range(1, 17) if stall_begun(records[:step])] == [5, 15]
    assert (
        "every sample's reward was 0" in Stall(1, 5, False).line()
        and "task.template" in Stall(1, 5, False).line()
    )
    assert (
        "equal rewards" in Stall(11, 16, True).line() and "rollout.n" in Stall(11, 16, True).line()
    )


def test_a_level_has_one_colour_and_a_flat_reschedule_plot_is_left_out(tmp_path):
    import matplotlib.pyplot as plt

    from treerl.report import RunData, draw, plot_accuracy, plot_eval

    metrics = [
        {
            "step": s,
            "acc/mean": 0.5,
            "acc/hard": 0.3,
            "acc/medium": 0.7,
            "reward/mean": 0.5,
            "reschedule/weight_mean": 1.0,
            "reschedule/score_mean": None,
            "timing/step_s": 1.0,
            "timing/rollout_s": 0.5,
            "timing/reward_s": 0.1,
            "timing/update_s": 0.4,
            "curriculum/share/medium": 0.5,
            "curriculum/share/hard": 0.5,
            "curriculum/p/medium": 0.5,
            "curriculum/p/hard": 0.5,
            "response_length/mean": 9.0,
        }
        for s in (1, 2)
    ]
    evals = {
        "0": {"easy": {"accuracy": 1.0}, "medium": {"accuracy": 0.9}, "hard": {"accuracy": 0.5}},
        "2": {"easy": {"accuracy": 1.0}, "medium": {"accuracy": 0.95}, "hard": {"accuracy": 0.6}},
    }
    run = RunData("run", metrics, evals, "")
    colours = {}
    for plot in (plot_accuracy, plot_eval):
        fig, ax = plt.subplots()
        plot(ax, [run])
        for line in ax.get_lines():
            if line.get_label() in ("medium", "hard"):
                colours.setdefault(line.get_label(), set()).add(line.get_color())
        plt.close(fig)
    assert colours["medium"] != colours["hard"] and all(len(c) == 1 for c in colours.values())
    # two runs: each level keeps its colour, each run has its line style
    styles = {}
    fig, ax = plt.subplots()
    plot_eval(ax, [run, RunData("other", metrics, evals, "")])
    for line in ax.get_lines():
        name, level = line.get_label().split(": ")
        assert line.get_color() == colours.get(level, {line.get_color()}).copy().pop()
        styles.setdefault(name, set()).add(line.get_linestyle())
    plt.close(fig)
    assert styles == {"run": {"-"}, "other": {"--"}}
    assert "reschedule" not in draw([run], tmp_path / "plots")
    one_level = [
        {k: v for k, v in m.items() if not k.startswith("curriculum/") or k.endswith("hard")}
        for m in metrics
    ]
    assert "curriculum" not in draw(
        [RunData("hard only", one_level, evals, "")], tmp_path / "plots-one"
    )
    assert "reschedule" in draw(
        [RunData("on", [{**m, "reschedule/weight_mean": 1.5} for m in metrics], evals, "")],
        tmp_path / "plots-on",
    )


def test_legends_list_levels_easiest_first_and_the_page_explains_faint_lines(tmp_path):
    """Issue 31 item 9: the levels' order is the held-out groups' (the task's levels), then
    curriculum.levels; the legends listed them alphabetically (easy, hard, medium)."""
    import matplotlib.pyplot as plt

    from treerl.report import RunData, plot_accuracy, plot_curriculum, write_report

    levels = ["easy", "medium", "hard"]
    metrics = [
        {"step": 1, "reward/mean": 0.5}
        | {f"acc/{level}": 0.5 for level in levels}
        | {f"curriculum/{kind}/{level}": 1 / 3 for level in levels for kind in ("share", "p")}
    ]
    config = "curriculum:\n  levels: [easy, medium, hard]\n"
    for evals in ({}, {"0": {"trivial": {"accuracy": 1.0}, "easy": {}, "medium": {}, "hard": {}}}):
        for plot, legend in ((plot_accuracy, [*levels, "reward"]), (plot_curriculum, levels)):
            fig, ax = plt.subplots()
            plot(ax, [RunData("run", metrics, evals, config)])
            assert ax.get_legend_handles_labels()[1] == legend
            plt.close(fig)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(metrics[0]) + "\n")
    (run / "config.yaml").write_text(config)
    page = write_report(run).read_text()
    assert "the faint line behind it, in its colour, is the value of each step" in page


def test_compare_opens_with_the_config_keys_that_differ(tmp_path):
    """Issue 31 item 9: the keys whose values differ, a column per run, above everything else;
    output.dir (always different) and the keys the runs share are left out; a resume's change
    counts."""
    configs = {
        "a": {"algo": {"name": "grpo"}, "train": {"lr": 1e-5, "steps": 10}, "output": {"dir": "a"}},
        "b": {
            "algo": {"name": "treerpo"},
            "train": {"lr": 1e-5, "steps": 10},
            "output": {"dir": "b"},
        },
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    resume = {"step": 10, "changes": {"train.steps": {"from": 10, "to": 20}}}
    (tmp_path / "b" / "resumes.jsonl").write_text(json.dumps(resume) + "\n")
    out = tmp_path / "both.html"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    page = out.read_text()
    table = page[page.index("<table class='differ'>") : page.index("</table>")]
    assert page.index("<table class='differ'>") < page.index("held-out accuracy")
    assert table.count("<tr>") == 3 and "<th>key</th><th>a</th><th>b</th>" in table
    assert "<td>algo.name</td><td>grpo</td><td>treerpo</td>" in table
    assert "<td>train.steps</td><td>10</td><td>20</td>" in table


def test_report_skips_saved_records_that_are_not_trees(tmp_path, capsys):
    """A null line, an array, a record without a root, children as a string and a tree 3,000 levels
    deep are skipped, counted and the first named; the last tree, saved without a step, is linked by
    step=''."""

    def record(step, root):
        return json.dumps(
            {
                "step": step,
                "id": f"id{step}",
                "level": "easy",
                "prompt": "p",
                "r_score": 0.0,
                "prune_tau": 0.1,
                "picks": [],
                **({"root": root} if root else {}),
            }
        )

    leaf = {"text": "a", "value": 1.0, "correct": True}
    deep = '{"text": "", "value": 0.0, "children": [' * 3000 + json.dumps(leaf) + "]}" * 3000
    lines = [
        record(1, leaf),
        "null",
        "[1, 2]",
        record(2, None),
        record(3, {**leaf, "children": "abc"}),
        record(4, leaf).removesuffix("}}") + ', "children": [' + deep + "]}}",
        record(None, leaf),
    ]
    (tmp_path / "trees.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "reward/mean": 0.5, "timing/step_s": 1.0}) + "\n"
    )
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "trees.html").read_text().count("<section class='tree'") == 2
    assert (
        "skipped 5 of the 7 saved records that are not trees; the first: "
        f"{tmp_path}/trees.jsonl:2: not a tree record: null"
    ) in capsys.readouterr().err
    assert "href='trees.html#step=&amp;problem=idNone'" in (tmp_path / "report.html").read_text()
