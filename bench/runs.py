"""Shared by the benches: run `treerl train` into a directory unless it finished there, and read it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def train(run_dir: Path, *overrides: str, config: str | None = None) -> dict:
    """Train into run_dir (one thread, no progress bar) unless a finished run is there; its metrics and evals.
    A run is finished when eval.json holds its final evaluation; an unfinished one is started again."""
    steps = None
    if (run_dir / "config.yaml").is_file():
        steps = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"]
    evals = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    if steps is None or str(steps) not in evals:
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        command = [sys.executable, "-m", "treerl.cli", "train", "--out", str(run_dir)]
        command += ["--config", config] if config else []
        subprocess.run(command + ["output.progress=false", "train.threads=1", *overrides], check=True,
                       stdout=subprocess.DEVNULL)
    return read(run_dir)


def read(run_dir: Path) -> dict:
    """A run's metrics and evals as they stand: one stopped by a time limit is read as far as it got."""
    evals = json.loads((run_dir / "eval.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "evals": evals, "before": evals["0"], "after": evals[max(evals, key=int)]}
