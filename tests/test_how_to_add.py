"""The README's "How to add" section, run as written: an estimator, a task and a schedule defined
outside the package, then a training run that uses all three (in a fresh process, so that nothing
here is registered)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

README = (Path(__file__).parents[1] / "README.md").read_text()


def section_code() -> list[str]:
    section = README.split("## How to add\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_readme_adds_an_estimator_a_task_and_a_schedule_from_outside_and_trains_with_them(
    tmp_path,
):
    blocks = section_code()
    assert len(blocks) == 4
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "my-own"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["algo"]["name"], config["algo"]["params"], config["task"]["name"]) == (
        "scaled_dr_grpo",
        {"scale": 2},
        "parity",
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # hardest_last with share 0.5 over 2 steps: easy only at t = 0, hard only at t = 1
    assert [(m["curriculum/p/easy"], m["curriculum/p/hard"]) for m in metrics] == [
        (1.0, 0.0),
        (0.0, 1.0),
    ]
    assert [m["curriculum/share/hard"] for m in metrics] == [0.0, 1.0]
