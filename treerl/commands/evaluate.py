"""`treerl eval`: a model's accuracy per level (greedy), avg@k and pass@k on a task's held-out
problems or on a benchmark (a named one, or a user's JSONL / parquet file, save_to_disk folder or
cached Hugging Face dataset with the same fields)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from treerl.api import evaluate_task
from treerl.config import load_config
from treerl.errors import UserError
from treerl.eval import print_eval
from treerl.tasks import check_levels, make_task
from treerl.tasks.loaders import (
    BENCHMARKS,
    DATA_SUFFIXES,
    Fields,
    UnknownSource,
    load_problems,
    with_fields,
)

BENCHMARK_TASKS = ("math", "gsm8k")
"""The tasks a user's benchmark file may be graded as (task.name; math unless
the config says gsm8k)."""


def benchmark_overrides(benchmark: str, task_name: str, fields: Fields | None = None) -> list[str]:
    """The config overrides that evaluate a named benchmark, or a user's data (a file, a
    save_to_disk folder, a cached dataset: its `test` split unless it names one), on all of its
    problems."""
    if benchmark in BENCHMARKS:
        task_name = BENCHMARKS[benchmark].task
    elif Path(benchmark).suffix in DATA_SUFFIXES:
        if not Path(benchmark).expanduser().is_file():
            raise UserError(f"--benchmark {benchmark}: no such file")
        task_name = task_name if task_name in BENCHMARK_TASKS else "math"
    else:
        try:
            load_problems(benchmark, fields, "test")
        except UnknownSource as error:
            raise UserError(
                f"--benchmark {benchmark}: not a benchmark; choose from {', '.join(BENCHMARKS)}, "
                f"or give a {' / '.join(DATA_SUFFIXES)} file, a save_to_disk folder or a dataset "
                "in the local Hugging Face cache with the fields problem and answer (rename them "
                f"with task.fields) ({error.reason})"
            ) from None
        task_name = task_name if task_name in BENCHMARK_TASKS else "math"
    return [
        f"task.name={task_name}",
        f"task.eval_data={benchmark}",
        "eval.levels=[all]",
        "eval.problems=0",
    ]


def run(args: argparse.Namespace) -> None:
    overrides = [
        *([f"model.name_or_path={args.model}"] if args.model else []),
        *([f"eval.samples={args.samples}"] if args.samples is not None else []),
    ]
    cfg = load_config(args.config, overrides + list(args.overrides))
    if args.benchmark:
        cfg = load_config(
            args.config,
            overrides
            + benchmark_overrides(args.benchmark, cfg.task.name, with_fields(cfg.task.fields))
            + list(args.overrides),
        )
    if args.save_completions:
        cfg.eval.save_completions = args.save_completions
    task = make_task(cfg.task)
    if cfg.eval.levels and not args.benchmark:
        check_levels(task, cfg.eval.levels, "eval.levels")
    results = evaluate_task(cfg, task, cfg.output.progress and not args.json)
    if args.json:
        print(
            json.dumps(
                {
                    "model": cfg.model.name_or_path,
                    "task": task.name,
                    "benchmark": args.benchmark,
                    "groups": results,
                },
                indent=2,
            )
        )
    else:
        print_eval(
            results,
            title=f"{cfg.model.name_or_path} on {args.benchmark or task.name} (accuracy %, greedy)",
        )
