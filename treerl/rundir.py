"""The run directory, its one owner: what a run writes, where, and how it is read back.

    config.yaml        the resolved config
    metrics.jsonl      one JSON object per step, appended
    eval.json          {step: {group: metrics}}
    trees.jsonl        saved reasoning trees (output.save_trees), appended
    timing.json        where the time went
    report.html, plots/
    checkpoints/step_N/  a Hugging Face model directory plus trainer_state.pt

Files are replaced atomically (written beside, then renamed); an appended JSONL file may end in a torn line
after a crash, which the reader leaves out. Checkpoints are written to a temporary folder and renamed, so a
crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from treerl.config import config_yaml
from treerl.errors import UserError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
TREES_FILE = "trees.jsonl"
TIMING_FILE = "timing.json"
REPORT_FILE = "report.html"
TRAINER_STATE = "trainer_state.pt"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def write_jsonl(path: Path, records: list[Any]) -> None:
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def append_jsonl(path: Path, records: list[Any]) -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: Path) -> list[Any]:
    """One JSON value per line of a file a run appends to. A torn last line (the process was killed while writing
    it) is left out; a bad line before it is not a torn write, so it is a UserError naming the file and line."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}:{number}: not a JSON line; the file is damaged (only a torn last line "
                                "is expected after a crash)") from None
    return records


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


class RunDir:
    """A run directory: the files above, read and written through one object."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.eval_path = self.path / EVAL_FILE
        self.trees_path = self.path / TREES_FILE
        self.checkpoints_path = self.path / "checkpoints"

    def write_config(self, cfg: BaseModel) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, config_yaml(cfg))

    def config_text(self) -> str:
        return self.config_path.read_text() if self.config_path.is_file() else ""

    def metrics(self) -> list[dict[str, Any]]:
        """The logged steps; a torn last line (the process was killed while writing it) is left out."""
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []

    def evals(self) -> dict[str, Any]:
        return json.loads(self.eval_path.read_text()) if self.eval_path.is_file() else {}

    def trees(self) -> list[dict[str, Any]]:
        if not self.trees_path.is_file():
            raise UserError(f"{self.trees_path} does not exist: train with output.save_trees=N to save trees, or "
                            "sample one with treerl tree --model PATH --problem ID")
        return read_jsonl(self.trees_path)

    def log(self, metrics: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, [metrics])

    def save_trees(self, records: list[dict[str, Any]]) -> None:
        append_jsonl(self.trees_path, records)

    def record_eval(self, step: int, results: dict[str, Any]) -> None:
        write_json(self.eval_path, {**self.evals(), str(step): results})

    def write_timing(self, timing: dict[str, Any]) -> None:
        write_json(self.path / TIMING_FILE, timing)

    def truncate_to(self, step: int) -> None:
        """Forget what was logged after `step` (work lost in a crash, to be redone on resume)."""
        if self.metrics_path.is_file():
            write_jsonl(self.metrics_path, [m for m in self.metrics() if m["step"] <= step])
        write_json(self.eval_path, {k: v for k, v in self.evals().items() if int(k) <= step})
        if self.trees_path.is_file():
            write_jsonl(self.trees_path, [r for r in self.trees() if r["step"] <= step])

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first (a temporary folder of an interrupted save is never one)."""
        return sorted((p for p in self.checkpoints_path.glob("step_*") if (p / TRAINER_STATE).is_file()),
                      key=checkpoint_step)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, model, model_state: dict[str, torch.Tensor], tokenizer,
                        trainer_state: dict[str, Any], keep: int = 0) -> Path:
        """Write model_state as the HF model's weights, and the trainer state, into a temporary folder, then rename
        it: a crash never leaves a half-written step_N. With keep > 0, only the newest `keep` checkpoints stay."""
        final, tmp = self.checkpoints_path / f"step_{step}", self.checkpoints_path / f".step_{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        torch.save({"step": step, **trainer_state}, tmp / TRAINER_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / TRAINER_STATE, weights_only=True)
