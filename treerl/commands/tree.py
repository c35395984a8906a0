"""`treerl tree`: one reasoning tree as an HTML page, either saved in training (--run) or sampled
now from a model for one problem, in the training tree's shape (rollout.n children, tree.depth
levels of tree.step_tokens)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from treerl.api import tree_records
from treerl.config import Config, load_config
from treerl.curriculum.sampler import task_and_sampler
from treerl.errors import UserError
from treerl.rundir import TREES_FILE, RunDir
from treerl.tasks.base import Problem, Task
from treerl.tree_records import saved_trees
from treerl.viewer import id_by_prefix, pick_trees, render_trees


def find_problem(cfg: Config, problem_id: str, saved: list[dict[str, Any]]) -> tuple[Task, Problem]:
    """(task, problem) for an id, or a unique start of one, among the training pools of
    curriculum.levels, every level's held-out problems (eval.problems of each) and the trees a run
    saved (question and reference are in each record); the first of these when several share it."""
    task, sampler = task_and_sampler(cfg)
    candidates = sampler.problems() + [
        p for level in task.levels for p in task.eval_problems(level, cfg.eval.problems)
    ]
    candidates += [
        Problem(r["question"], r["reference"], str(r["level"]))
        for r in saved
        if r["reference"] is not None
    ]
    by_id = {problem.id: problem for problem in reversed(candidates)}
    found = id_by_prefix(problem_id, by_id)
    if found is not None:
        return task, by_id[found]
    where = "" if saved else f"; for an id from a run's {TREES_FILE}, add --run RUN_DIR"
    raise UserError(
        f"problem '{problem_id}' is not among the {len(candidates)} training-pool, held-out and "
        f"saved problems of task '{task.name}'{where}"
    )


def sample_tree_record(cfg: Config, problem_id: str, saved: list[dict[str, Any]]) -> dict[str, Any]:
    """Sample and grade one problem's deep tree as training would, and return its record."""
    task, problem = find_problem(cfg, problem_id, saved)
    return tree_records(cfg, task, [problem])[0]


def run(args: argparse.Namespace) -> None:
    """--run alone shows the trees saved in training (those of --step and --problem when given);
    --model (or no --run) samples one now, with the run's config if given."""
    run_dir = RunDir(Path(args.run)) if args.run else None
    if run_dir and not args.model:
        records, left_out = pick_trees(saved_trees(run_dir), args.step, args.problem)
    else:
        if not args.problem:
            raise UserError(
                "give --problem ID to sample a tree, or --run RUN_DIR to show one saved in training"
            )
        overrides = [
            *args.overrides,
            *([f"model.name_or_path={args.model}"] if args.model else []),
            *([f"task.name={args.task}"] if args.task else []),
        ]
        cfg = load_config(args.config, overrides, base=run_dir.config_data() if run_dir else None)
        records = [sample_tree_record(cfg, args.problem, saved_trees(run_dir) if run_dir else [])]
        left_out = 0
    out = Path(args.out or (run_dir.path / "tree.html" if run_dir else "tree.html"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_trees(records, left_out), encoding="utf-8")
    shown = f"problem {records[0]['id']}" if len(records) == 1 else f"{len(records)} trees"
    print(f"tree page of {shown}: {out}")
