"""Re-Schedule's scoring pass: for each query, sample the scoring tree (rscore.*), grade its leaves
(a leaf is right when any of rscore.rollouts rollouts from its last branch point is, as the
reference code's rollout_times), and make its score row. `treerl score` runs it before training; the
trainer runs it again at reschedule.rescore_every / rescore_at steps with the current policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import Config, RolloutConfig
from treerl.curriculum.scores import score_row
from treerl.rollout.engine import generate
from treerl.rollout.grading import grade_trees
from treerl.rollout.sampling import TreeShape, sample_problem_trees
from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Problem, Task


def extra_rollouts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    trees: list[ReasoningTree],
    problems: list[Problem],
    shape: TreeShape,
    rollouts: int,
    rollout: RolloutConfig,
    generator: torch.Generator,
) -> None:
    """Complete each deepest leaf `rollouts` more times from its last branch point
    (depth x step_tokens generated tokens) and mark it right when any completion is. Leaves that end
    before that point keep their one outcome, as in the reference code."""
    start = shape.depth * shape.step_tokens
    if rollouts < 1 or start >= shape.max_new_tokens:
        return
    jobs = [
        (tree, leaf, problem, tree.text_ids(path)[:start])
        for tree, problem in zip(trees, problems)
        for path, leaf in tree.leaves()
        if len(path) == shape.depth and len(tree.text_ids(path)) > start
    ]
    if not jobs:
        return
    contexts = [tree.prompt_ids + prefix for tree, _, _, prefix in jobs for _ in range(rollouts)]
    completions = generate(
        model,
        tokenizer,
        contexts,
        max_new_tokens=shape.max_new_tokens - start,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        generator=generator,
        rollout=rollout,
    ).completion_ids
    for j, (_, leaf, problem, prefix) in enumerate(jobs):
        texts = [
            tokenizer.decode(prefix + completions[j * rollouts + r], skip_special_tokens=True)
            for r in range(rollouts)
        ]
        leaf.correct = bool(leaf.correct) or any(
            task.grade(text, problem.reference).correct for text in texts
        )


def score_queries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    cfg: Config,
    generator: torch.Generator,
    scored: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> list[dict[str, Any]]:
    """One score row per problem (rscore.batch_prompts trees sampled together); `scored` is called
    with each batch's rows as they are made, after the batch's last draw from `generator`."""
    shape, r = TreeShape.for_scoring(cfg), cfg.rscore
    rows: list[dict[str, Any]] = []
    for start in range(0, len(problems), r.batch_prompts):
        batch = problems[start : start + r.batch_prompts]
        trees = sample_problem_trees(
            model,
            tokenizer,
            task,
            batch,
            shape,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            generator=generator,
            rollout=cfg.rollout,
        )
        grade_trees(trees, batch, task, tokenizer)
        extra_rollouts(
            model, tokenizer, task, trees, batch, shape, r.rollouts - 1, cfg.rollout, generator
        )
        batch_rows = [score_row(tree, problem, r) for tree, problem in zip(trees, batch)]
        scored(batch_rows)
        rows += batch_rows
    return rows
