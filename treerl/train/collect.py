"""One step's rollout: draw problems from the curriculum, sample and grade a reasoning tree for each, score the
queries, and turn every tree into training samples with the estimator's advantages and Re-Schedule's weights."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import torch

from treerl.algo.advantages import AdvantageParams, Estimator
from treerl.config import Config
from treerl.curriculum.sampler import ProblemSampler
from treerl.curriculum.weights import QueryWeights
from treerl.parallel import Parallel
from treerl.rollout.grading import grade_tree
from treerl.rollout.sampling import TreeShape, sample_problem_trees
from treerl.rollout.tree import Path, ReasoningTree, TrainingSample, TreeStats
from treerl.tasks.base import Problem, Task
from treerl.train.update import trainable


@dataclass
class Rollout:
    """One step's training data: a reasoning tree per prompt, its leaves graded, one sample per kept node."""
    problems: list[Problem]
    trees: list[ReasoningTree]
    samples: list[TrainingSample]
    rewards: list[torch.Tensor]
    """Leaf rewards of each tree."""
    correct: list[torch.Tensor]
    """Whether each leaf's answer is right."""
    stats: TreeStats
    """Tokens sampled, and prefix tokens not re-encoded thanks to forked KV caches."""
    groups_kept: int
    """Sibling groups that carry advantages (TreeRPO prunes those whose values hardly differ)."""
    level_probs: list[float]
    """The schedule's p(t) over curriculum.levels at this step."""
    weights: list[float]
    """Re-Schedule's loss weight of each problem (1.0 when off)."""
    scores: list[float | None]
    """Each problem's score (r-score or pass rate) as ranked this step; None when it has none."""
    timings: dict[str, float]
    """Seconds spent generating (timing/rollout_s) and grading and scoring (timing/reward_s)."""
    advantages: list[dict[Path, float]] = field(default_factory=list)
    """Each tree's advantages by node path, as the estimator gave them (the nodes trained on)."""


def collect(policy, tokenizer, task: Task, cfg: Config, step: int, estimator: Estimator, rng: random.Random,
            generator: torch.Generator, sampler: ProblemSampler, weights: QueryWeights,
            par: Parallel = Parallel()) -> Rollout:
    """Sample, grade and score a step's buffer: rollout.batch_prompts prompts (one tree each), generated
    rollout.generation_batch prompts at a time (0 = all at once); with rollout.refill, more rounds while fewer
    than batch_prompts prompts have a sample that survives train.filter_tau. Under torchrun every rank draws the
    same prompts and keeps its share of them; online scores are shared, so every rank ranks queries alike."""
    ro = cfg.rollout
    shape = TreeShape.for_training(cfg, estimator.deep)
    params = AdvantageParams.from_config(cfg)
    share = len(par.share(list(range(ro.batch_prompts))))
    timings = {"timing/rollout_s": 0.0, "timing/reward_s": 0.0}
    problems: list[Problem] = []
    trees: list[ReasoningTree] = []
    stats = TreeStats()
    rewards, correct, per_prompt, groups_kept, step_weights, tree_advantages = [], [], [], 0, [], []
    for _ in range(1 + ro.refill):
        new = par.share(sampler.draw(step, ro.batch_prompts, rng))
        t0 = time.perf_counter()
        trees += sample_problem_trees(policy, tokenizer, task, new, shape, temperature=ro.temperature,
                                      top_p=ro.top_p, generator=generator, rollout=ro,
                                      batch_prompts=ro.generation_batch, stats=stats)
        t1 = time.perf_counter()
        timings["timing/rollout_s"] += t1 - t0
        online = []
        for tree, problem in zip(trees[len(problems):], new):
            grades = grade_tree(tree, problem, task, tokenizer)
            rewards.append(torch.tensor([g.reward for g in grades]))
            correct.append(torch.tensor([g.correct for g in grades], dtype=torch.float))
            if (score := weights.online_score(tree)) is not None:
                online.append((problem.id, score))
        weights.update(pair for part in par.gather(online) for pair in part)
        for tree, problem in zip(trees[len(problems):], new):
            weight = weights.weight(problem.id, step)
            step_weights.append(weight)
            advantages = estimator.advantages(tree, params)
            tree_advantages.append(advantages)
            groups_kept += len({path[:-1] for path in advantages})
            per_prompt.append([replace(sample, weight=weight) for sample in tree.training_samples(advantages)])
        problems += new
        timings["timing/reward_s"] += time.perf_counter() - t1
        if not ro.refill:
            break
        with_signal = [group for group in per_prompt if any(trainable(sample, cfg) for sample in group)]
        if not par.max([len(with_signal) < share])[0]:
            break
    buffer = with_signal[:share] if ro.refill else per_prompt
    scores = [weights.score(problem.id) for problem in problems]
    return Rollout(problems, trees, [sample for group in buffer for sample in group], rewards, correct, stats,
                   groups_kept, sampler.probs(step), step_weights, scores, timings, tree_advantages)
