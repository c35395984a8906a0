"""The Python API: what the commands do, as functions of a config (docs/api.md runs an example of
each).

    from treerl import load_config, train, evaluate, generate, sample_trees, score

Each function loads the model its config names (model.*); the commands are these functions behind
their arguments."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from treerl import commands  # noqa: F401  (every registry, so that load_config checks each name)
from treerl.algo.treerpo import prune_tau
from treerl.commands.score import score_pool
from treerl.config import Config, ConfigFiles
from treerl.config import load_config as load_config_files
from treerl.curriculum.rscore import greedy_choices
from treerl.curriculum.sampler import task_and_sampler
from treerl.eval import eval_work
from treerl.eval import evaluate as evaluate_model
from treerl.loop import trainer
from treerl.models import load_model, resolve_device, use_threads
from treerl.parallel import close_parallel, init_parallel
from treerl.progress import progress_bar
from treerl.report import write_report
from treerl.rollout.engine import generate as generate_ids
from treerl.rollout.grading import grade_trees
from treerl.rollout.sampling import TreeShape, check_context, prompt_ids, sample_problem_trees
from treerl.tasks import check_levels, make_task
from treerl.tasks.base import Problem, Task
from treerl.tree_records import tree_record


def load_config(config: ConfigFiles = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- the YAML files in order (paths, or shipped configs' names such as
    'treerpo_demo') <- dotted overrides such as 'train.steps=2'; every name is checked against its
    registry, as the commands check it."""
    return load_config_files(config, overrides)


def train(cfg: Config, out: str | Path | None = None, resume: bool = False) -> Path:
    """What `treerl train` does, in this process (or in each process under torchrun): train, write
    the report, print where, and return the run directory: `out`, else output.dir, else
    runs/<timestamp>.
    With resume=True, continue the run in `out` (cfg: its config.yaml, loaded with the overrides a
    resume may change)."""
    par = init_parallel(cfg.train.strategy, resolve_device(cfg.model.device))
    try:
        run_dir = Path(
            out or cfg.output.dir or par.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
        )
        if not resume:
            cfg = cfg.model_copy(deep=True)
            cfg.output.dir = str(run_dir)
        trainer.train(cfg, run_dir, resume=resume, par=par)
        if par.main:
            print(f"report: {write_report(run_dir)}")
        # every rank is done (rank 0 writes the report last) before the process group goes
        par.barrier()
    finally:
        close_parallel()
    if par.main:
        print(f"run directory: {run_dir}")
    return run_dir


def evaluate(cfg: Config) -> dict[str, dict[str, float]]:
    """What `treerl eval` shows: per level (and subject, and `all`) of cfg.task's held-out
    problems (eval.*), the model's accuracy (greedy), mean response length and, with
    eval.samples = k, avg@k and pass@j for j = 1, 2, 4, ... k."""
    task = make_task(cfg.task)
    check_levels(task, cfg.eval.levels or [], "eval.levels")
    return evaluate_task(cfg, task, cfg.output.progress)


def evaluate_task(cfg: Config, task: Task, progress: bool) -> dict[str, dict[str, float]]:
    """`evaluate` on a task whose eval.levels are checked (or need no check:
    a benchmark's `all`)."""
    use_threads(cfg.train.threads)
    model, tokenizer = load_model(cfg.model)
    with progress_bar(progress) as bar:
        job = bar.add_task("eval", total=eval_work(task, cfg.eval), info="")
        return evaluate_model(
            model,
            tokenizer,
            task,
            cfg.eval,
            seed=cfg.seed,
            advance=lambda k: bar.advance(job, k),
            rollout=cfg.rollout,
        )


def generate(cfg: Config, questions: list[str], greedy: bool = False) -> list[str]:
    """One completion per question, each question in the prompt training gives it (task.template,
    the tokenizer's chat template): up to rollout.max_new_tokens, sampled at rollout.temperature
    and rollout.top_p (or greedy) through rollout.backend, from the seed."""
    task = make_task(cfg.task)
    model, tokenizer = load_model(cfg.model)
    problems = [Problem(question, None, "") for question in questions]
    ids = prompt_ids(tokenizer, task, problems)
    check_context(model, ids, problems, cfg.rollout.max_new_tokens)
    device = resolve_device(cfg.model.device)
    return generate_ids(
        model,
        tokenizer,
        ids,
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        greedy=greedy,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        rollout=cfg.rollout,
    ).texts


def sample_trees(cfg: Config, problems: list[Problem] | None = None) -> list[dict[str, Any]]:
    """What `treerl tree` draws: a graded reasoning tree per problem (default: rollout.batch_prompts
    problems drawn from the curriculum's first step, from the seed), rollout.n children per node
    and tree.depth levels of tree.step_tokens, as tree records (trees.jsonl's lines: nested nodes
    with their text, reward and value, the pruned groups, the r-score's picks), which
    treerl.viewer.render_trees draws as a page."""
    task, sampler = task_and_sampler(cfg)
    chosen = problems or sampler.draw(1, cfg.rollout.batch_prompts, random.Random(cfg.seed))
    return tree_records(cfg, task, chosen)


def tree_records(cfg: Config, task: Task, problems: list[Problem]) -> list[dict[str, Any]]:
    """The record of each problem's deep tree, sampled and graded as training samples one."""
    model, tokenizer = load_model(cfg.model)
    trees = sample_problem_trees(
        model,
        tokenizer,
        task,
        problems,
        TreeShape.for_training(cfg, deep=True),
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        generator=torch.Generator(device=resolve_device(cfg.model.device)).manual_seed(cfg.seed),
        rollout=cfg.rollout,
    )
    grade_trees(trees, problems, task, tokenizer)
    r, tau = cfg.rscore, prune_tau(cfg.algo)
    return [
        tree_record(
            tree, problem, tokenizer, tau, greedy_choices(tree, r.top_m, r.eligible, r.child)
        )
        for tree, problem in zip(trees, problems)
    ]


def score(
    cfg: Config, out: str | Path, limit: int = 0, overwrite: bool = False, resume: bool = False
) -> list[dict[str, Any]]:
    """What `treerl score` writes to `out` and returns: the r-score, leaf accuracy and rank of each
    query of the training pools of curriculum.levels (the first `limit` if > 0), from a tree of
    rscore.* per query; the file is reschedule.scores_file's. `overwrite` replaces `out`, `resume`
    continues an interrupted scoring into it."""
    return score_pool(cfg, Path(out), limit, overwrite, resume)
