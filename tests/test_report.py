"""`treerl report` and `treerl compare`: the plots of a run, in PNG files and one self-contained HTML page."""

import base64
import re

import pytest

from treerl.cli import main
from treerl.config import load_config
from treerl.report import PLOTS, load_run, trailing_mean
from treerl.train.trainer import train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    train(load_config(None, [f"model.name_or_path={model_dir}", "rollout.batch_prompts=2", "rollout.n=4",
                             "rollout.max_new_tokens=8", "eval.problems=2", "eval.max_new_tokens=8", "eval.every=2",
                             "output.progress=false", "train.threads=1", "train.steps=4", "curriculum.name=cosine",
                             "reschedule.rank_by=acc", "reschedule.scores=online"]), out)
    return out


def test_training_writes_the_report_with_every_plot(run_dir):
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(f"{name}.png" for name in PLOTS)
    assert all((run_dir / "plots" / f"{name}.png").read_bytes().startswith(PNG) for name in PLOTS)
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(PLOTS) and all(base64.b64decode(image).startswith(PNG) for image in images)
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)   # opens offline: nothing to fetch
    assert "<script" not in page
    assert "step 0" in page and "step 4" in page                   # the evaluation table, first and last
    assert "curriculum:" in page and "name: cosine" in page        # the resolved config


def test_compare_overlays_runs_and_report_reads_a_torn_metrics_line(run_dir, tmp_path, capsys):
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("metrics.jsonl", "eval.json", "config.yaml"):
        (torn / name).write_text((run_dir / name).read_text())
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')                                 # killed while writing
    assert len(load_run(torn).metrics) == 4
    assert main(["compare", str(run_dir), str(torn), "--out", str(tmp_path / "both.html")]) == 0
    page = (tmp_path / "both.html").read_text()
    assert "run vs torn" in page and page.count("final evaluation") == 2
    assert "comparison:" in capsys.readouterr().out


def test_report_of_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_trailing_mean_by_hand():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
