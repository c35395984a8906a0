"""`treerl score`: sample Re-Schedule's tree for every query of the training pools, write each
query's r-score, leaf accuracy and rank as JSONL (for reschedule.scores_file), and print
their means per level.

The destination is checked before any work: never a run directory or a file in one, never a
directory, and an existing file only with --overwrite. Scores are kept as they are made, in
OUT.partial: its first line holds the settings they are made with, then one line per batch holds the
batch's rows and the sampling generator's state after it. A failed or interrupted scoring keeps that
file, and `--resume` scores only the queries after it, from the saved generator state, so that OUT
equals an uninterrupted scoring's. When every query is scored, OUT is written whole with the ranks
(atomically: an --overwrite'n file stays until then) and OUT.partial is removed."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from treerl.config import Config, flat, load_config
from treerl.curriculum.rscore import check_depth
from treerl.curriculum.sampler import task_and_sampler
from treerl.curriculum.scores import with_ranks
from treerl.curriculum.scoring import score_queries
from treerl.errors import UserError
from treerl.models import load_model, resolve_device, use_threads
from treerl.progress import progress_bar
from treerl.rollout.sampling import TreeShape
from treerl.rundir import append_jsonl, enclosing_run, read_jsonl, write_jsonl
from treerl.tasks.base import Problem, Task

SETTINGS = (
    "seed",
    "model.",
    "task.",
    "rollout.",
    "curriculum.levels",
    "curriculum.pool_size",
    "rscore.",
)
"""The config keys (a prefix ending in '.' covers its section) that the scores depend on:
a resume keeps them."""
RESUME_HINT = "make room, then continue with `treerl score --resume` and the same arguments"


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, an --out that would replace something or cannot be written: a path
    in a run directory, a directory, an existing file (without --overwrite), the file of an
    interrupted scoring (without --resume or --overwrite); --resume needs that file."""
    run = enclosing_run(out.resolve())
    if run:
        raise UserError(
            f"--out {out} is in the run directory {run}, whose files belong to its run; write the "
            f"scores outside it, e.g. --out {run.parent / (run.name + '-scores.jsonl')}"
        )
    if out.is_dir():
        raise UserError(
            f"--out {out} is a directory; give the file to write, e.g. --out {out / 'scores.jsonl'}"
        )
    partial = partial_path(out)
    if resume and not partial.is_file():
        done = f"{out} is complete and " if out.is_file() else ""
        raise UserError(
            f"--resume: {done}{partial} does not exist, so no scoring is left to continue; drop "
            "--resume to score anew (with --overwrite to replace the file)"
        )
    if not (resume or overwrite) and partial.is_file():
        raise UserError(
            f"{partial} holds an interrupted scoring for --out {out}: continue it with --resume, "
            "or score anew with --overwrite"
        )
    if not (resume or overwrite) and out.exists():
        raise UserError(f"--out {out} exists; give --overwrite to replace it, or another --out")


@contextmanager
def writing(path: Path, kept: str) -> Iterator[None]:
    """An OSError while writing `path` (a full disk, no permission) as one line that names
    it and what is kept."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; {kept}") from None


def settings(cfg: Config, limit: int) -> dict[str, Any]:
    """The settings scores are made with (as JSON gives them back): SETTINGS of the
    config, and --limit."""
    chosen = {
        key: value for key, value in flat(cfg.model_dump()).items() if key.startswith(SETTINGS)
    }
    return json.loads(json.dumps({**chosen, "limit": limit}))


def generator_state(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def start_partial(partial: Path, made_with: dict[str, Any]) -> None:
    """A new OUT.partial holding the settings alone; written before the model loads, so an --out
    that cannot be written fails at once."""
    with writing(partial, "nothing was scored"):
        partial.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(partial, [{"settings": made_with}])


def read_partial(partial: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings line and the batch lines of OUT.partial (a torn last line, cut by
    a kill, is left out)."""
    records = read_jsonl(partial)
    batches = records[1:]
    if not (
        records
        and isinstance(records[0], dict)
        and isinstance(records[0].get("settings"), dict)
        and all(
            isinstance(batch, dict)
            and isinstance(batch.get("generator"), str)
            and isinstance(batch.get("rows"), list)
            and all(isinstance(row, dict) for row in batch["rows"])
            for batch in batches
        )
    ):
        raise UserError(
            f"--resume: {partial} is not the file of an interrupted scoring; score "
            "anew with --overwrite"
        )
    return records[0]["settings"], batches


def resume_partial(
    partial: Path, made_with: dict[str, Any], problems: list[Problem]
) -> tuple[list[dict[str, Any]], str | None]:
    """The rows an interrupted scoring kept and the generator state after them, once the settings
    and the queries are checked to be this scoring's. OUT.partial is rewritten without a torn last
    line, so appends stay whole."""
    saved, batches = read_partial(partial)
    differ = sorted(
        key for key in saved.keys() | made_with.keys() if saved.get(key) != made_with.get(key)
    )
    if differ:
        more = f" ({len(differ) - 1} more keys differ)" if differ[1:] else ""
        raise UserError(
            f"--resume: {partial} was scored with {differ[0]}={json.dumps(saved.get(differ[0]))}, "
            f"not {json.dumps(made_with.get(differ[0]))}{more}; resume with the same settings, or "
            "score anew with --overwrite"
        )
    rows = [row for batch in batches for row in batch["rows"]]
    if [row.get("id") for row in rows] != [problem.id for problem in problems[: len(rows)]]:
        raise UserError(
            f"--resume: {partial} scored other queries than this config's pool; score anew with "
            "--overwrite"
        )
    with writing(partial, f"it holds {len(rows):,} scored queries; {RESUME_HINT}"):
        write_jsonl(partial, [{"settings": saved}, *batches])
    return rows, batches[-1]["generator"] if batches else None


def score_rest(
    cfg: Config, task: Task, problems: list[Problem], partial: Path, state: str | None, done: int
) -> list[dict[str, Any]]:
    """Score `problems` (the queries after the first `done`), from generator `state` (None: the
    seed's), each batch appended to OUT.partial with the generator's state after it."""
    model, tokenizer = load_model(cfg.model)
    generator = torch.Generator(device=resolve_device(cfg.model.device)).manual_seed(cfg.seed)
    if state:
        generator.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))
    with progress_bar(cfg.output.progress) as bar:
        job = bar.add_task("score", total=done + len(problems), completed=done, info="")

        def keep(rows: list[dict[str, Any]]) -> None:
            with writing(partial, f"the queries scored before are kept in it; {RESUME_HINT}"):
                append_jsonl(partial, [{"rows": rows, "generator": generator_state(generator)}])
            bar.advance(job, len(rows))

        return score_queries(model, tokenizer, task, problems, cfg, generator, scored=keep)


def score_pool(
    cfg: Config, out: Path, limit: int = 0, overwrite: bool = False, resume: bool = False
) -> list[dict[str, Any]]:
    """Score every query of the training pools of curriculum.levels (the first `limit`
    if > 0); write JSONL."""
    check_out(out, overwrite, resume)
    use_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    task, sampler = task_and_sampler(cfg)
    if any(pool is None for pool in sampler.pools.values()):
        raise UserError(
            f"task '{task.name}' generates problems without end: set curriculum.pool_size=N to "
            "score (and train on) a fixed pool of N problems per level"
        )
    problems = sampler.problems()[: limit or None]
    check_depth(
        cfg.rscore.eligible, TreeShape.for_scoring(cfg).depth, "the scoring trees (rscore.depth)"
    )
    partial, made_with = partial_path(out), settings(cfg, limit)
    if resume:
        rows, state = resume_partial(partial, made_with, problems)
    else:
        start_partial(partial, made_with)
        rows, state = [], None
    if len(rows) < len(problems):
        rows += score_rest(cfg, task, problems[len(rows) :], partial, state, len(rows))
    ranked = with_ranks(rows)
    with writing(out, f"all {len(rows):,} scores are kept in {partial}; {RESUME_HINT}"):
        write_jsonl(out, ranked)
    partial.unlink()
    return ranked


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    rows = score_pool(cfg, out, limit=args.limit, overwrite=args.overwrite, resume=args.resume)
    table = Table(title=f"r-scores of {len(rows)} queries -> {out}")
    for column in ("level", "queries", "mean r-score", "mean leaf accuracy", "mean leaves"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in cfg.curriculum.levels:
        mine = [row for row in rows if row["level"] == level]
        if mine:
            table.add_row(
                level,
                str(len(mine)),
                *(
                    f"{sum(r[k] for r in mine) / len(mine):.3f}"
                    for k in ("r_score", "leaf_acc", "leaves")
                ),
            )
    Console().print(table)
