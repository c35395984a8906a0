"""Shared by the benches: run `treerl train` into a directory unless it finished there, and read it
back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from treerl.config import Config, build, changes, load_config
from treerl.rundir import RunDir

RUN_OPTIONS = ["output.progress=false", "train.threads=1"]
"""How every bench run trains: no progress bar, one thread (the benches run several side by
side)."""


def finished(run_dir: Path, *overrides: str, config: str | None = None) -> bool:
    """Whether run_dir holds a run of this config (its output keys aside) that ended: timing.json
    is the last file a run writes, after its final evaluation and checkpoint."""
    run = RunDir(run_dir)
    if not (run.config_path.is_file() and run.timing() is not None):
        return False
    asked = load_config(config, [*RUN_OPTIONS, *overrides])
    differ = changes(build(Config, run.config_data()), asked)
    return not [key for key in differ if not key.startswith("output.")]


def train(run_dir: Path, *overrides: str, config: str | None = None) -> dict:
    """Train into run_dir (one thread, no progress bar) unless a finished run of this config is
    there; its metrics and evals. Anything else there (an unfinished run, another config's) is
    removed and the run started again."""
    if not finished(run_dir, *overrides, config=config):
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        command = [sys.executable, "-m", "treerl.cli", "train", "--out", str(run_dir)]
        command += ["--config", config] if config else []
        subprocess.run(
            command + [*RUN_OPTIONS, *overrides],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return read(run_dir)


def score(path: Path, *overrides: str) -> Path:
    """One `treerl score` pass (two threads) into path unless it is there; shared by every seed of a
    bench."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "treerl.cli",
                "score",
                "--out",
                str(path),
                "output.progress=false",
                "train.threads=2",
                *overrides,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def read(run_dir: Path) -> dict:
    """A run's metrics and evals as they stand: one stopped by a time limit is read as far as it
    got."""
    evals = json.loads((run_dir / "eval.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "metrics": metrics,
        "evals": evals,
        "before": evals["0"],
        "after": evals[max(evals, key=int)],
    }
