"""`treerl score`: sample Re-Schedule's tree for every query of the training pools, write each query's r-score,
leaf accuracy and rank as JSONL (for reschedule.scores_file), and print their means per level."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from treerl.config import Config, load_config
from treerl.curriculum.rscore import check_depth
from treerl.curriculum.sampler import task_and_sampler
from treerl.curriculum.scores import with_ranks
from treerl.curriculum.scoring import score_queries
from treerl.errors import UserError
from treerl.models import load_policy, resolve_device
from treerl.progress import progress_bar
from treerl.rollout.sampling import TreeShape
from treerl.rundir import write_jsonl


def score_pool(cfg: Config, out: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Score every query of the training pools of curriculum.levels (the first `limit` if > 0); write JSONL."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    task, sampler = task_and_sampler(cfg)
    if any(pool is None for pool in sampler.pools.values()):
        raise UserError(f"task '{task.name}' generates problems without end: set curriculum.pool_size=N to score "
                        "(and train on) a fixed pool of N problems per level")
    problems = sampler.problems()[:limit or None]
    check_depth(cfg.rscore.eligible, TreeShape.for_scoring(cfg).depth, "the scoring trees (rscore.depth)")
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_policy(cfg.model.name_or_path, cfg.model.dtype, device, cfg.model.trust_remote_code)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    with progress_bar(cfg.output.progress) as bar:
        job = bar.add_task("score", total=len(problems), info="")
        rows = with_ranks(score_queries(model, tokenizer, task, problems, cfg, generator,
                                        advance=lambda n: bar.advance(job, n)))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    return rows


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    rows = score_pool(cfg, out, limit=args.limit)
    table = Table(title=f"r-scores of {len(rows)} queries -> {out}")
    for column in ("level", "queries", "mean r-score", "mean leaf accuracy", "mean leaves"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in cfg.curriculum.levels:
        mine = [row for row in rows if row["level"] == level]
        if mine:
            table.add_row(level, str(len(mine)), *(f"{sum(r[k] for r in mine) / len(mine):.3f}"
                                                   for k in ("r_score", "leaf_acc", "leaves")))
    Console().print(table)
