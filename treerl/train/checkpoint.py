"""Atomic checkpoints: `checkpoints/step_N/` holds an HF model plus optimizer, scheduler, RNG and data state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from treerl.errors import UserError

TRAINER_STATE = "trainer_state.pt"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


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


def save_checkpoint(run_dir: Path, step: int, model, model_state: dict[str, torch.Tensor], tokenizer,
                    trainer_state: dict[str, Any], keep: int = 0) -> Path:
    """Write model_state as the HF model's weights, and the trainer state, into a temporary folder, then rename it:
    a crash never leaves a half-written step_N. With keep > 0, only the newest `keep` checkpoints stay."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=model_state)
    tokenizer.save_pretrained(tmp)
    torch.save({"step": step, **trainer_state}, tmp / TRAINER_STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep:
        for old in sorted(checkpoints(run_dir), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (a temporary folder of an interrupted save is never one)."""
    return [p for p in (run_dir / "checkpoints").glob("step_*") if (p / TRAINER_STATE).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    return max(checkpoints(run_dir), key=lambda p: int(p.name.split("_")[1]), default=None)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / TRAINER_STATE, weights_only=True)
