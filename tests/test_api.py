"""The Python API (docs/api.md): `from treerl import load_config, train, evaluate, generate,
sample_trees, score` works, `import treerl` stays light, and the page's examples run as they are
written (in a fresh process, in a temporary folder)."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

API_DOC = Path(__file__).parents[1] / "docs" / "api.md"
API = ["load_config", "train", "evaluate", "generate", "sample_trees", "score"]


def doc_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_api_page_shows_each_function_once_and_in_order():
    sections = re.findall(r"^## (\w+)$", API_DOC.read_text(), flags=re.M)
    assert sections[: len(API)] == API
    examples = doc_examples()
    assert len(examples) == len(API)
    for name, example in zip(API, examples):
        assert f"from treerl import {name}\n" in example


@pytest.mark.slow
def test_import_treerl_stays_light_and_gives_the_api_functions(tmp_path):
    """`import treerl` loads no torch; each API name is treerl.api's function, even after the loop
    package (treerl.loop, named apart from the function `train`) is imported."""
    done = python(
        "import sys, treerl\n"
        "print('torch' in sys.modules)\n"
        "import treerl.loop.trainer\n"
        "from treerl import load_config, train, evaluate, generate, sample_trees, score\n"
        "import treerl.api as api\n"
        "print([getattr(treerl, name) is getattr(api, name) for name in treerl.API])",
        tmp_path,
    )
    assert done.stdout.splitlines() == ["False", "[True, True, True, True, True, True]"]


@pytest.mark.slow
def test_load_config_checks_every_name_against_its_registry_in_a_fresh_process(tmp_path):
    done = python(
        "from treerl import load_config\n"
        "from treerl.errors import UserError\n"
        "for key in ('algo.name', 'curriculum.name', 'train.lr_schedule', 'reschedule.rank_by'):\n"
        "    try:\n"
        "        load_config(None, [f'{key}=nope'])\n"
        "    except UserError as err:\n"
        "        print(err)",
        tmp_path,
    )
    assert [line.split(" '")[0] for line in done.stdout.splitlines()] == [
        "unknown algo.name",
        "unknown curriculum.name",
        "unknown train.lr_schedule",
        "unknown reschedule.rank_by",
    ]


@pytest.mark.slow
def test_the_api_examples_run_as_written(tmp_path):
    done = python("\n".join(doc_examples()), tmp_path)
    out = done.stdout.splitlines()
    assert out[0] == "treerpo 4 2"
    run = tmp_path / "runs" / "api-demo"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["algo"]["name"], config["tree"]["depth"], config["train"]["steps"]) == (
        "treerpo",
        2,
        2,
    )
    assert (run / "report.html").is_file() and (run / "checkpoints" / "step_2").is_dir()
    assert "<html" in (tmp_path / "trees.html").read_text()
    scores = [json.loads(line) for line in (tmp_path / "runs" / "api-scores.jsonl").open()]
    assert len(scores) == 6 and {row["level"] for row in scores} == {"easy", "hard"}
    completions = ast.literal_eval(next(line for line in out if line.startswith("['")))
    assert len(completions) == 2 and all(isinstance(text, str) for text in completions)
