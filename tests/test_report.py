"""`treerl report` and `treerl compare`: the plots of a run, in PNG files and one self-contained HTML page."""

import base64
import re

import pytest

from treerl.cli import main
from treerl.report import PLOTS, load_run, trailing_mean

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_training_writes_the_report_with_every_plot(trained_run):
    assert sorted(p.name for p in (trained_run / "plots").iterdir()) == sorted(f"{name}.png" for name in PLOTS)
    assert all((trained_run / "plots" / f"{name}.png").read_bytes().startswith(PNG) for name in PLOTS)
    page = (trained_run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(PLOTS) and all(base64.b64decode(image).startswith(PNG) for image in images)
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)   # opens offline: nothing to fetch
    assert "<script" not in page
    assert "step 0" in page and "step 4" in page                   # the evaluation table, first and last
    assert "curriculum:" in page and "name: cosine" in page        # the resolved config


@pytest.mark.slow
def test_compare_overlays_runs_and_report_reads_a_torn_metrics_line(trained_run, tmp_path, capsys):
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("metrics.jsonl", "eval.json", "config.yaml"):
        (torn / name).write_text((trained_run / name).read_text())
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')                                 # killed while writing
    assert len(load_run(torn).metrics) == 4
    assert main(["compare", str(trained_run), str(torn), "--out", str(tmp_path / "both.html")]) == 0
    page = (tmp_path / "both.html").read_text()
    assert "run vs torn" in page and page.count("final evaluation") == 2
    assert "comparison:" in capsys.readouterr().out


def test_report_of_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_trailing_mean_by_hand():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_a_level_has_one_colour_and_a_flat_reschedule_plot_is_left_out(tmp_path):
    import matplotlib.pyplot as plt

    from treerl.report import RunData, draw, plot_accuracy, plot_eval

    metrics = [{"step": s, "acc/mean": 0.5, "acc/hard": 0.3, "acc/medium": 0.7, "reward/mean": 0.5,
                "reschedule/weight_mean": 1.0, "reschedule/score_mean": None, "timing/step_s": 1.0,
                "timing/rollout_s": 0.5, "timing/reward_s": 0.1, "timing/update_s": 0.4,
                "curriculum/share/medium": 0.5, "curriculum/share/hard": 0.5, "curriculum/p/medium": 0.5,
                "curriculum/p/hard": 0.5, "response_length/mean": 9.0} for s in (1, 2)]
    evals = {"0": {"easy": {"accuracy": 1.0}, "medium": {"accuracy": 0.9}, "hard": {"accuracy": 0.5}},
             "2": {"easy": {"accuracy": 1.0}, "medium": {"accuracy": 0.95}, "hard": {"accuracy": 0.6}}}
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
    assert "reschedule" not in draw([run], tmp_path / "plots")
    assert "reschedule" in draw([RunData("on", [{**m, "reschedule/weight_mean": 1.5} for m in metrics], evals, "")],
                                tmp_path / "plots-on")
