"""Shared by the benches: run `treerl train` into a directory unless it finished there, and read it
back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def finished(run_dir: Path, steps: int) -> bool:
    """Whether the run in run_dir ended: eval.json holds its evaluation after `steps` steps."""
    evals = (
        json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    )
    return str(steps) in evals


def train(run_dir: Path, *overrides: str, config: str | None = None) -> dict:
    """Train into run_dir (one thread, no progress bar) unless a finished run is there; its metrics
    and evals. An unfinished one is started again."""
    config_file = run_dir / "config.yaml"
    if not (
        config_file.is_file()
        and finished(run_dir, yaml.safe_load(config_file.read_text())["train"]["steps"])
    ):
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        command = [sys.executable, "-m", "treerl.cli", "train", "--out", str(run_dir)]
        command += ["--config", config] if config else []
        subprocess.run(
            command + ["output.progress=false", "train.threads=1", *overrides],
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
