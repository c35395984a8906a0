"""The project carries its own data: a copy of the repository with nothing beside it loads every
named dataset, and an installed wheel has the benchmarks (and the embedded models) inside it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from treerl.tasks.loaders import BENCHMARKS, NAMED, load_problems

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without TREERL_DATA (so that only the project's own data is found)."""
    return {**{k: v for k, v in os.environ.items() if k != "TREERL_DATA"}, **extra}


def test_every_named_dataset_is_inside_the_repository(monkeypatch):
    monkeypatch.delenv("TREERL_DATA", raising=False)
    for name, source in NAMED.items():
        path = source.path()
        assert path.is_file() and path.is_relative_to(ROOT), name
        if name in BENCHMARKS:
            assert path.is_relative_to(ROOT / "treerl"), (
                name
            )  # inside the package, so inside the wheel


def test_treerl_data_points_every_named_dataset_elsewhere(monkeypatch, tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "aime24.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    monkeypatch.setenv("TREERL_DATA", str(tmp_path))
    assert NAMED["aime24"].path() == tmp_path / "benchmarks" / "aime24.jsonl"
    assert NAMED["math_train"].path() == tmp_path / "train" / "math_train.parquet"


@pytest.mark.slow
def test_a_copy_of_the_repository_with_nothing_beside_it_runs_the_data_tests(tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    copy = tmp_path / "alone" / "treerl-copy"
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    assert not (copy.parent / "shared").exists()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_benchmarks.py",
            "tests/test_eval.py",
            "tests/test_packaging.py",
            "-k",
            "not copy_of_the_repository and not wheel",
            # every file is read and graded by the quick tests; the slow sweeps over every
            # reference (about 4 CPU minutes) run once, in the suite itself
            "-m",
            "not slow",
        ],
        cwd=copy,
        env=clean_env(PYTHONPATH=str(copy)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.slow
def test_the_installed_wheel_evaluates_a_shipped_benchmark(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("treerl-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sorted(p.name for p in (site / "treerl" / "data" / "benchmarks").iterdir()) == sorted(
        Path(source.file).name for source in BENCHMARKS.values()
    )
    assert not (site / "data").exists()  # the training sets stay in the repository
    assert sorted(p.name for p in (site / "treerl" / "configs").iterdir()) == sorted(
        p.name for p in (ROOT / "treerl" / "configs").glob("*.yaml")
    )
    env = clean_env(PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import treerl; print(treerl.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(site)
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from treerl.config import load_config; print(load_config('treerpo_demo').algo.name)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert found.strip() == "treerpo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "treerl",
            "eval",
            "--benchmark",
            "amc23",
            "--model",
            "tiny",
            "--json",
            "eval.max_new_tokens=4",
            "train.threads=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["benchmark"] == "amc23" and report["groups"]["all"]["problems"] == len(
        load_problems("amc23")
    )
    missing = subprocess.run(
        [sys.executable, "-m", "treerl", "eval", "task.name=gsm8k", "task.eval_data=gsm8k_train"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        missing.returncode == 2
        and "set TREERL_DATA" in missing.stderr
        and len(missing.stderr.splitlines()) == 1
    )
