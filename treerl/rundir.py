"""The run directory, its one owner: what a run writes, where, and how it is read back.

    config.yaml        the resolved config of the run's start, never rewritten
    resumes.jsonl      each resume: when, from which step, which keys it changed (from, to), and
                       when it changed train.steps, what that does to the schedules (`schedules`,
                       the line it printed)
    metrics.jsonl      one JSON object per step, appended (`stalls`: the steps in a row that
                       trained nothing)
    eval.json          {step: {group: metrics}}
    trees.jsonl        saved reasoning trees (output.save_trees), appended
    timing.json        where the time went
    report.html, plots/, trees.html (the saved trees, paged)
    checkpoints/step_N/  a Hugging Face model directory, trainer_state.pt and manifest.json
                         (sizes, sha256)
    .lock              held (flock) by the process that trains in the run

Files are replaced atomically (written beside, flushed to disk, then renamed); an appended JSONL
file may end in a torn line after a crash, which the reader leaves out. Checkpoints are written to a
temporary folder, flushed, listed in a manifest and renamed, so a crash or a power loss never leaves
half of one; a resume verifies the manifest and falls back to the newest intact checkpoint, keeping
a damaged one aside.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from pydantic import BaseModel

from treerl.config import config_yaml, read_yaml_text
from treerl.errors import UserError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
TREES_FILE = "trees.jsonl"
TIMING_FILE = "timing.json"
REPORT_FILE = "report.html"
TREES_PAGE = "trees.html"
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
RESUMES_FILE = "resumes.jsonl"
LOCK_FILE = ".lock"
CHECKPOINT_NAME = re.compile(r"step_(\d+)")
DISK_ERRORS = {
    errno.ENOSPC: "no space is left",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}
"""OSErrors of the disk a run writes to, each said in one line (with the command
that resumes the run)."""
LOW_SPACE_BYTES = 64 * 2**20
"""torch's writer reports a full disk as a generic write failure: with less
than this free, say so."""


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (its entries: a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace a file with `text` in one step: written beside it, flushed,
    renamed, the rename flushed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(
            missing_ok=True
        )  # a failed write (a full disk) leaves the old file and no debris
        raise
    fsync_path(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def write_jsonl(path: Path, records: list[Any]) -> None:
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def append_jsonl(path: Path, records: list[Any]) -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(record) + "\n" for record in records))


class TooDeep:
    """A JSON line nested deeper than Python's parser goes (its recursion limit,
    about 1,000 levels)."""


def numbered_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, JSON value) of each line of a file a run appends to. A torn last line (the
    process was killed while writing it) is left out; a bad line before it is not a torn write, so
    it is a UserError naming the file and line. A line nested too deeply to parse is a TooDeep, for
    the reader to refuse as it sees fit."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        bad_line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{bad_line}: not UTF-8 text; the file is damaged") from None
    records: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            records.append((number, json.loads(line)))
        except RecursionError:
            records.append((number, TooDeep()))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(
                    f"{path}:{number}: not a JSON line; the file is damaged (only a torn last line "
                    "is expected after a crash)"
                ) from None
    return records


def read_jsonl(path: Path) -> list[Any]:
    """The JSON values of numbered_jsonl; a line nested too deeply to parse is a UserError
    naming file and line."""
    records = []
    for number, value in numbered_jsonl(path):
        if isinstance(value, TooDeep):
            raise UserError(f"{path}:{number}: nested too deeply to read; the file is damaged")
        records.append(value)
    return records


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def damage(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be trusted (a file missing, or of another size or checksum than its
    manifest says), or None. A checkpoint from before manifests (trainer_state.pt but no
    manifest.json) is taken as is."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return None if (checkpoint / TRAINER_STATE).is_file() else f"{MANIFEST} is missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"{MANIFEST} is damaged"
    for name, expected in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if sha256(path) != expected["sha256"]:
            return f"{name} differs from its checksum"
    return None


def disk_error_reason(err: BaseException, where: Path) -> str | None:
    """What a failed write says about the disk (no space, read-only, no permission), or
    None for another error."""
    if isinstance(err, OSError) and err.errno in DISK_ERRORS:
        return DISK_ERRORS[err.errno]
    if isinstance(err, RuntimeError) and shutil.disk_usage(where).free < LOW_SPACE_BYTES:
        return DISK_ERRORS[errno.ENOSPC]
    return None


def holds_run(path: Path) -> bool:
    """Whether a directory is a run's: it holds the run's config and its lock,
    metrics or checkpoints."""
    marks = (
        (path / LOCK_FILE).is_file()
        or (path / METRICS_FILE).is_file()
        or (path / "checkpoints").is_dir()
    )
    return marks and (path / CONFIG_FILE).is_file()


def enclosing_run(path: Path) -> Path | None:
    """The run directory that `path` is in (or is), or None."""
    return next((folder for folder in [path, *path.parents] if holds_run(folder)), None)


IDLE_STEPS = 5
"""Steps in a row that train no token before a run says that it learns nothing."""


@dataclass(frozen=True)
class Stall:
    """Steps in a row of a run that trained no token (metrics' tokens/trained 0: every sample's
    advantage 0, or filtered out by train.filter_tau)."""

    first: int
    last: int
    rewarded: bool
    """Whether any of their samples earned a reward."""

    def line(self) -> str:
        """What the stall says, with its likely causes."""
        steps = f"steps {self.first}-{self.last} trained no token"
        if not self.rewarded:
            return (
                f"{steps}: every sample's reward was 0, so the run learns nothing. Likely causes: "
                "the model does not answer in task.template's format (boxed: \\boxed{...}, think: "
                "<answer>...</answer>, plain: an 'Answer:' line), the reward "
                "(task.format_required, task.format_reward), or the data's "
                "answer field (task.fields)"
            )
        return (
            f"{steps}: each prompt's samples earned equal rewards (all right or all wrong) or were "
            "filtered (train.filter_tau), so the run learns nothing. Likely causes: levels too "
            "easy or too hard for the model (curriculum.levels), too few samples "
            "per prompt (rollout.n)"
        )


def stalls(records: list[dict[str, Any]]) -> list[Stall]:
    """Each run of IDLE_STEPS or more steps in a row that trained no token, in metrics records."""
    found = []
    for idle, group in groupby(records, key=lambda record: record.get("tokens/trained") == 0):
        steps = list(group)
        if idle and len(steps) >= IDLE_STEPS:
            found.append(
                Stall(
                    steps[0]["step"],
                    steps[-1]["step"],
                    any((record.get("reward/mean") or 0.0) > 0 for record in steps),
                )
            )
    return found


def stall_begun(records: list[dict[str, Any]]) -> Stall | None:
    """The stall whose IDLE_STEPS-th step is the last record, if any: a run says each stall once,
    when it begins. Only the last IDLE_STEPS + 1 records matter."""
    recent = stalls(records[-IDLE_STEPS - 1 :])
    if (
        recent
        and recent[-1].last == records[-1]["step"]
        and recent[-1].last - recent[-1].first + 1 == IDLE_STEPS
    ):
        return recent[-1]
    return None


class RunDir:
    """A run directory: the files above, read and written through one object."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.resumes_path = self.path / RESUMES_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.eval_path = self.path / EVAL_FILE
        self.trees_path = self.path / TREES_FILE
        self.checkpoints_path = self.path / "checkpoints"

    def check_new(self) -> None:
        """A new run goes into a new or empty directory: a file, a run (that needs --resume) or a
        directory with other files in it is refused, so that nothing of the
        user's is overwritten."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file; give a new or empty directory")
        if self.config_path.exists():
            raise UserError(
                f"--out {self.path} already holds a run; continue it with --resume {self.path} "
                "or choose another --out"
            )
        others = (
            sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
            if self.path.is_dir()
            else []
        )
        if others:
            raise UserError(
                f"--out {self.path} is not empty "
                f"({', '.join(others[:3])}{', ...' if others[3:] else ''}); give a new or empty "
                "directory, so that nothing in it is overwritten"
            )

    def write_config(self, cfg: BaseModel) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, config_yaml(cfg))

    def config_text(self) -> str:
        return self.config_path.read_text(encoding="utf-8") if self.config_path.is_file() else ""

    def resumes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.resumes_path) if self.resumes_path.is_file() else []

    def begun_with(self) -> dict[str, Any]:
        """The config the run began with: config.yaml, without the changes of its resumes."""
        return read_yaml_text(self.config_text()) or {}

    def config_data(self) -> dict[str, Any]:
        """The run's config as it is now: config.yaml with the changes of every resume applied (a
        dotted key names its place: train.steps, rollout.vllm.max_num_seqs)."""
        data = self.begun_with()
        for resume in self.resumes():
            for key, change in resume["changes"].items():
                *sections, name = key.split(".")
                node = data
                for section in sections:
                    node = node.setdefault(section, {})
                node[name] = change["to"]
        return data

    def record_resume(
        self, step: int, changed: dict[str, tuple[Any, Any]], schedules: str | None = None
    ) -> None:
        """A line of resumes.jsonl; `schedules` says what a change of train.steps
        does to the schedules."""
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "step": step,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "changes": {key: {"from": old, "to": new} for key, (old, new) in changed.items()},
        }
        append_jsonl(
            self.resumes_path, [{**record, "schedules": schedules} if schedules else record]
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process: a second process is refused in one line naming the holder.
        The lock is an flock on .lock, which the system releases when its process ends, however it
        ends: a lock left by a killed process is simply taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{self.path} is in use by {holder}; wait for it to end (or stop it), then resume "
                f"with --resume {self.path}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays

    @contextmanager
    def disk_errors(self) -> Iterator[None]:
        """A full, read-only or forbidden disk under the run ends in one line with the
        command that resumes."""
        try:
            yield
        except (OSError, RuntimeError) as err:
            reason = disk_error_reason(err, self.path)
            if reason is None:
                raise
            where = getattr(err, "filename", None) or self.path
            latest = self.latest_checkpoint()
            kept = (
                f"the last good checkpoint is {latest}"
                if latest
                else "no checkpoint was written yet"
            )
            raise UserError(
                f"cannot write the run: {reason} at {where}; {kept}. Make room (or fix the "
                f"permissions), then continue with treerl train --resume {self.path}"
            ) from None

    def metrics(self) -> list[dict[str, Any]]:
        """The logged steps; a torn last line (the process was killed while
        writing it) is left out."""
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []

    def evals(self) -> dict[str, Any]:
        return json.loads(self.eval_path.read_text()) if self.eval_path.is_file() else {}

    def saved_trees_path(self) -> Path:
        """trees.jsonl, which must exist."""
        if not self.trees_path.is_file():
            raise UserError(
                f"{self.trees_path} does not exist: train with output.save_trees=N to save trees, "
                "or sample one with treerl tree --model PATH --problem ID"
            )
        return self.trees_path

    def trees(self) -> list[dict[str, Any]]:
        return read_jsonl(self.saved_trees_path())

    def tree_lines(self) -> list[tuple[int, Any]]:
        """(line number, JSON value) of each saved tree record, not checked to be one."""
        return numbered_jsonl(self.saved_trees_path())

    def log(self, metrics: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, [metrics])

    def save_trees(self, records: list[dict[str, Any]]) -> None:
        append_jsonl(self.trees_path, records)

    def record_eval(self, step: int, results: dict[str, Any]) -> None:
        write_json(self.eval_path, {**self.evals(), str(step): results})

    def write_timing(self, timing: dict[str, Any]) -> None:
        write_json(self.path / TIMING_FILE, timing)

    def timing(self) -> dict[str, Any] | None:
        """Where a finished run's time went (None before the run ends)."""
        path = self.path / TIMING_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def truncate_to(self, step: int) -> None:
        """Forget what was logged after `step` (work lost in a crash, to be redone on resume)."""
        if self.metrics_path.is_file():
            write_jsonl(self.metrics_path, [m for m in self.metrics() if m["step"] <= step])
        write_json(self.eval_path, {k: v for k, v in self.evals().items() if int(k) <= step})
        if self.trees_path.is_file():
            # a record that is not a tree of a numbered step (the viewer skips
            # those) is kept as it is
            write_jsonl(
                self.trees_path,
                [
                    r
                    for r in self.trees()
                    if not (
                        isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] > step
                    )
                ],
            )

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first (a temporary folder of an
        interrupted save is never one)."""
        return sorted(
            (
                p
                for p in self.checkpoints_path.glob("step_*")
                if CHECKPOINT_NAME.fullmatch(p.name)
                and ((p / MANIFEST).is_file() or (p / TRAINER_STATE).is_file())
            ),
            key=checkpoint_step,
        )

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def intact_checkpoint(self, warn: Callable[[str], None]) -> Path | None:
        """The newest checkpoint whose files match its manifest. A damaged newer one is renamed
        step_N.damaged (never deleted; the run may write step_N again) and reported in one
        line through `warn`."""
        for checkpoint in reversed(self.checkpoints()):
            why = damage(checkpoint)
            if why is None:
                return checkpoint
            aside = checkpoint.with_name(f"{checkpoint.name}.damaged")
            while aside.exists():
                aside = aside.with_name(aside.name + "_")
            os.replace(checkpoint, aside)
            warn(f"skipped {checkpoint} ({why}); kept it as {aside.name}")
        return None

    def save_checkpoint(
        self,
        step: int,
        model,
        model_state: dict[str, torch.Tensor],
        tokenizer,
        trainer_state: dict[str, Any],
        keep: int = 0,
    ) -> Path:
        """Write model_state as the HF model's weights, and the trainer state, into a temporary
        folder, then rename it: a crash never leaves a half-written step_N. With keep > 0, only the
        newest `keep` checkpoints stay."""
        final, tmp = (
            self.checkpoints_path / f"step_{step}",
            self.checkpoints_path / f".step_{step}.tmp",
        )
        if final.exists():
            raise UserError(f"{final} exists already; a run never overwrites a checkpoint")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            # a LoRA run saves its adapters alone (treerl never changes the vocabulary, so
            # no embedding layers)
            adapters = {"save_embedding_layers": False} if isinstance(model, PeftModel) else {}
            model.save_pretrained(tmp, state_dict=model_state, **adapters)
            tokenizer.save_pretrained(tmp)
            torch.save({"step": step, **trainer_state}, tmp / TRAINER_STATE)
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                for p in files
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            for path in [*files, tmp / MANIFEST, tmp]:
                fsync_path(path)
        except BaseException:
            shutil.rmtree(
                tmp, ignore_errors=True
            )  # a failed save leaves the last good checkpoint and no debris
            raise
        os.replace(tmp, final)
        fsync_path(self.checkpoints_path)
        if keep:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / TRAINER_STATE, weights_only=True)
