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
