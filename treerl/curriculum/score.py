"""`treerl score`: sample a Re-Schedule tree per training query and write its r-score, leaf accuracy and rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from treerl.config import Config
from treerl.curriculum.reschedule import ranks
from treerl.curriculum.rscore import leaf_accuracy, r_score
from treerl.curriculum.sampler import task_and_sampler
from treerl.errors import UserError
from treerl.models import load_policy, resolve_device
from treerl.progress import progress_bar
from treerl.rollout.grading import grade_tree
from treerl.rollout.tree import sample_trees
from treerl.tasks.prompts import render_prompt
from treerl.train.checkpoint import write_atomic

SCORE_KEYS = {"rscore": "r_score", "acc": "leaf_acc"}
"""reschedule.rank_by -> the score file's field it ranks by."""


def score_queries(cfg: Config, out: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Score every query of the training pools of curriculum.levels (the first `limit` if > 0); write JSONL."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    task, sampler = task_and_sampler(cfg)
    if any(pool is None for pool in sampler.pools.values()):
        raise UserError(f"task '{task.name}' generates problems without end: set curriculum.pool_size=N to score "
                        "(and train on) a fixed pool of N problems per level")
    problems = sampler.problems()[:limit or None]
    r = cfg.rscore
    budget = r.max_new_tokens or cfg.rollout.max_new_tokens
    if budget <= (r.depth - 1) * r.step_tokens:
        raise UserError(f"rscore: a response of {budget} tokens never reaches depth {r.depth} with a branch every "
                        f"{r.step_tokens} tokens; lower rscore.step_tokens or rscore.depth")
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_policy(cfg.model.name_or_path, cfg.model.dtype, device, cfg.model.trust_remote_code)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    with progress_bar(cfg.output.progress) as bar:
        job = bar.add_task("score", total=len(problems), info="")
        for start in range(0, len(problems), r.batch_prompts):
            batch = problems[start:start + r.batch_prompts]
            prompt_ids = [tokenizer(render_prompt(task.template, p.question, tokenizer),
                                    add_special_tokens=False)["input_ids"] for p in batch]
            trees, _ = sample_trees(model, tokenizer, prompt_ids, branching=r.branching, depth=r.depth,
                                    step_tokens=r.step_tokens, max_new_tokens=budget,
                                    temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, generator=generator)
            for tree, problem in zip(trees, batch):
                grade_tree(tree, problem, task, tokenizer)
                rows.append({"id": problem.id, "level": problem.level, "r_score": r_score(tree, r.top_m, r.eligible),
                             "leaf_acc": leaf_accuracy(tree), "leaves": len(tree.leaves()),
                             "nodes": sum(1 for path, _ in tree.walk() if path), "depth": tree.depth})
            bar.advance(job, len(batch))
    rank = ranks({row["id"]: row["r_score"] for row in rows})
    for row in rows:
        row["rank"] = rank[row["id"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def read_scores(path: str | None, rank_by: str) -> dict[str, float]:
    """{problem id: score} from a `treerl score` file: the r-score, or the leaf accuracy for rank_by=acc."""
    if path is None:
        raise UserError("reschedule.scores=static needs reschedule.scores_file (write one with `treerl score`), "
                        "or set reschedule.scores=online")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"reschedule.scores_file '{path}' does not exist; write it with `treerl score --out {path}`")
    key = SCORE_KEYS[rank_by]
    scores: dict[str, float] = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            scores[str(row["id"])] = float(row[key])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a score row (a JSON object with 'id' and '{key}'); "
                            "write the file with `treerl score`") from None
    return scores
