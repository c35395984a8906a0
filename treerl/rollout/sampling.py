"""Reasoning trees for a set of problems: each problem's prompt rendered and encoded, its tree
sampled, in batches of prompts. Training, `treerl score` and `treerl tree` all sample through here;
grading is `grading.grade_trees`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import Config, RolloutConfig
from treerl.errors import UserError
from treerl.rollout.backend import Forks
from treerl.rollout.engine import context_length
from treerl.rollout.lean_backend import LeanBackend
from treerl.rollout.tree import BRANCHINGS, ReasoningTree, TreeStats, sample_trees
from treerl.tasks.base import Problem, Task


@dataclass(frozen=True)
class TreeShape:
    """How a tree is sampled: `branching` children per inner node, a branch point in every
    `step_tokens` (at its end, or where `branch_at` says) down to `depth` levels, `max_new_tokens`
    per root-to-leaf response. GRPO's n samples: depth 1, step_tokens = the whole budget."""

    branching: int
    depth: int
    step_tokens: int
    max_new_tokens: int
    branch_at: str = "fixed"
    """Where nodes fork (tree.branch_at; `tree.BRANCHINGS`)."""
    branch_top_k: int = 0
    """tree.branch_top_k: the fork points each tree keeps per level, by entropy (0: all)."""

    def forks(self) -> Forks | None:
        """Where its sequences fork (None: a flat sample)."""
        return Forks(self.branching, self.depth, self.step_tokens) if self.depth > 1 else None

    def by_level(self) -> bool:
        """Whether its forks are sampled level by level, each in a call of its own."""
        return self.depth > 1 and BRANCHINGS.lookup(self.branch_at).by_level

    def forks_call(self, prompt_lengths: list[int], level: int) -> tuple[list[int], int, int]:
        """Sampled level by level, the call of a level's forks (1 .. D - 1) at its largest: each
        prompt's N^level fork points (at most branch_top_k with top-k), each a prompt of its own
        prompt and up to level x s tokens, continued by N - 1 rows of at most
        max_new_tokens - (level - 1) s - 1 tokens: (its prompts' lengths, rows, max_new_tokens)."""
        points = self.branching**level
        points = min(points, self.branch_top_k) if self.branch_top_k else points
        prefixed = level * self.step_tokens
        lengths = [length + prefixed for length in prompt_lengths for _ in range(points)]
        budget = self.max_new_tokens - (level - 1) * self.step_tokens - 1
        return lengths, len(lengths) * (self.branching - 1), budget

    @classmethod
    def for_training(cls, cfg: Config, deep: bool) -> TreeShape:
        """A deep tree: rollout.n children per node, tree.depth levels of tree.step_tokens (default
        rollout.max_new_tokens // tree.depth); a flat one: rollout.n full responses of
        rollout.max_new_tokens."""
        budget = cfg.rollout.max_new_tokens
        if not deep:
            return cls(cfg.rollout.n, 1, budget, budget)
        step = cfg.tree.step_tokens or max(1, budget // cfg.tree.depth)
        if budget <= (cfg.tree.depth - 1) * step:
            raise UserError(
                f"a tree of tree.depth={cfg.tree.depth} levels of {step} tokens never reaches its "
                f"last level within rollout.max_new_tokens={budget}; raise rollout.max_new_tokens "
                "or lower tree.step_tokens or tree.depth"
            )
        t = cfg.tree
        return cls(cfg.rollout.n, t.depth, step, budget, t.branch_at, t.branch_top_k)

    @classmethod
    def for_scoring(cls, cfg: Config) -> TreeShape:
        """Re-Schedule's scoring tree: rscore.branching children every rscore.step_tokens,
        rscore.depth levels, a response budget of rscore.max_new_tokens (default
        rollout.max_new_tokens)."""
        r = cfg.rscore
        budget = r.max_new_tokens or cfg.rollout.max_new_tokens
        if budget <= (r.depth - 1) * r.step_tokens:
            raise UserError(
                f"rscore: a response of {budget} tokens never reaches depth {r.depth} with a "
                f"branch every {r.step_tokens} tokens; lower rscore.step_tokens or rscore.depth"
            )
        return cls(r.branching, r.depth, r.step_tokens, budget)


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: Task, problems: list[Problem]
) -> list[list[int]]:
    """Each problem's prompt in the task's template, encoded without special tokens."""
    return [
        tokenizer(task.prompt(p, tokenizer), add_special_tokens=False)["input_ids"]
        for p in problems
    ]


def least_kv_gib(
    backend: LeanBackend,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    per_call: int,
    shape: TreeShape,
) -> float:
    """The least rollout.kv_budget_gib that no lean sampling call of `per_call` of `problems` in
    trees of `shape` can run out of: that of the call of their `per_call` longest prompts
    (`lean_backend.least_blocks`); sampled level by level, the largest of the first call's and
    each level's forks' (`TreeShape.forks_call`)."""
    lengths = sorted((len(ids) for ids in prompt_ids(tokenizer, task, problems)), reverse=True)[
        :per_call
    ]
    rows = len(lengths) * shape.branching
    if not shape.by_level():
        return backend.least_gib(lengths, rows, shape.forks(), shape.max_new_tokens)
    calls = [(lengths, rows, shape.max_new_tokens)] + [
        shape.forks_call(lengths, level) for level in range(1, shape.depth)
    ]
    return max(backend.least_gib(call, call_rows, None, new) for call, call_rows, new in calls)


def check_context(
    model: PreTrainedModel, ids: list[list[int]], problems: list[Problem], max_new_tokens: int
) -> None:
    """A UserError when a prompt and the response budget do not fit the model's context
    (never index past it)."""
    limit = context_length(model)
    for prompt, problem in zip(ids, problems):
        if limit is not None and len(prompt) + max_new_tokens > limit:
            raise UserError(
                f"problem {problem.id}: its prompt of {len(prompt)} tokens and {max_new_tokens} "
                f"new tokens exceed the model's context of {limit}; lower the response budget "
                "(rollout.max_new_tokens) or leave such long problems out of the training data"
            )


def sample_problem_trees(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    shape: TreeShape,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
    rollout: RolloutConfig,
    batch_prompts: int = 0,
    stats: TreeStats | None = None,
) -> list[ReasoningTree]:
    """One tree per problem, `batch_prompts` prompts per sampling call (0 = all in one), through
    rollout.backend; adds to `stats`."""
    chunk = batch_prompts or len(problems)
    trees: list[ReasoningTree] = []
    for start in range(0, len(problems), chunk):
        ids = prompt_ids(tokenizer, task, problems[start : start + chunk])
        check_context(model, ids, problems[start : start + chunk], shape.max_new_tokens)
        chunk_trees, chunk_stats = sample_trees(
            model,
            tokenizer,
            ids,
            branching=shape.branching,
            depth=shape.depth,
            step_tokens=shape.step_tokens,
            max_new_tokens=shape.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            rollout=rollout,
            branch_at=shape.branch_at,
            branch_top_k=shape.branch_top_k,
        )
        trees += chunk_trees
        if stats is not None:
            stats += chunk_stats
    return trees
