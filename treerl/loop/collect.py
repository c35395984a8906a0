"""One step's rollout: draw problems from the curriculum, sample and grade a reasoning tree for
each, score the queries, and turn every tree into training samples with the estimator's advantages
and Re-Schedule's weights. What a step knows of a prompt is one record (PromptRollout): a new
per-prompt field touches that class alone."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import torch

from treerl.algo.advantages import Advantages, Estimator
from treerl.config import Config
from treerl.curriculum.sampler import ProblemSampler
from treerl.curriculum.weights import QueryWeights
from treerl.loop.update import trainable
from treerl.parallel import Parallel
from treerl.rollout.grading import grade_trees
from treerl.rollout.sampling import TreeShape, sample_problem_trees
from treerl.rollout.tree import Path, ReasoningTree, TrainingSample, TreeStats
from treerl.tasks.base import Grade, Problem, Task


@dataclass
class PromptRollout:
    """One prompt's part of a step: its reasoning tree, the leaves' grades, and what
    training makes of them."""

    problem: Problem
    tree: ReasoningTree
    rewards: torch.Tensor
    """[leaves] the leaves' rewards, in the order of tree.leaves()."""
    correct: torch.Tensor
    """[leaves] 1.0 where a leaf's answer is right."""
    weight: float
    """Re-Schedule's loss weight of the prompt (1.0 when off)."""
    advantages: dict[Path, float]
    """The estimator's advantage of each node trained on, by node path."""
    score: float | None = None
    """The prompt's score (r-score or pass rate) as ranked at the end of the step;
    None when it has none."""
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """[leaves] each of the user's reward functions' values, by its name (none without them)."""

    @property
    def groups_kept(self) -> int:
        """Sibling groups that carry advantages (TreeRPO prunes those whose
        values hardly differ)."""
        return len({path[:-1] for path in self.advantages})


@dataclass
class Rollout:
    """One step's training data: a record per prompt, and the samples trained on
    (one per kept node)."""

    prompts: list[PromptRollout]
    samples: list[TrainingSample]
    stats: TreeStats
    """Tokens sampled, and prefix tokens not re-encoded thanks to forked KV caches."""
    level_probs: list[float]
    """The schedule's p(t) over curriculum.levels at this step."""
    timings: dict[str, float]
    """Seconds spent generating (timing/rollout_s) and grading and scoring (timing/reward_s)."""


def collect(
    policy,
    tokenizer,
    task: Task,
    cfg: Config,
    step: int,
    estimator: Estimator,
    rng: random.Random,
    generator: torch.Generator,
    sampler: ProblemSampler,
    weights: QueryWeights,
    par: Parallel = Parallel(),
) -> Rollout:
    """Sample, grade and score a step's buffer: rollout.batch_prompts prompts (one tree each),
    generated rollout.generation_batch prompts at a time (0 = all at once); with rollout.refill,
    more rounds while fewer than batch_prompts prompts have a sample that survives train.filter_tau.
    Under torchrun every rank draws the same prompts and keeps its share of them; online scores are
    shared, so every rank ranks queries alike, and the estimator sees every rank's trees of a round,
    so that one that normalises over the step sees all of it."""
    ro = cfg.rollout
    shape = TreeShape.for_training(cfg, estimator.deep)
    share = len(par.share(list(range(ro.batch_prompts))))
    timings = {"timing/rollout_s": 0.0, "timing/reward_s": 0.0}
    prompts: list[PromptRollout] = []
    stats = TreeStats()
    for _ in range(1 + ro.refill):
        new = par.share(sampler.draw(step, ro.batch_prompts, rng))
        t0 = time.perf_counter()
        trees = sample_problem_trees(
            policy,
            tokenizer,
            task,
            new,
            shape,
            temperature=ro.temperature,
            top_p=ro.top_p,
            generator=generator,
            rollout=ro,
            batch_prompts=ro.generation_batch,
            stats=stats,
        )
        t1 = time.perf_counter()
        timings["timing/rollout_s"] += t1 - t0
        grades = grade_trees(trees, new, task, tokenizer)
        online = [(problem.id, weights.online_score(tree)) for tree, problem in zip(trees, new)]
        weights.update(
            (problem_id, score)
            for part in par.gather(online)
            for problem_id, score in part
            if score is not None
        )
        for problem, tree, graded, advantages in zip(
            new, trees, grades, step_advantages(estimator, trees, cfg, par)
        ):
            prompts.append(
                PromptRollout(
                    problem,
                    tree,
                    torch.tensor([g.reward for g in graded]),
                    torch.tensor([g.correct for g in graded], dtype=torch.float),
                    weights.weight(problem.id, step),
                    advantages,
                    terms=reward_terms(graded),
                )
            )
        timings["timing/reward_s"] += time.perf_counter() - t1
        if not ro.refill:
            break
        with_signal = [
            p for p in prompts if any(trainable(sample, cfg) for sample in training_samples(p))
        ]
        if not par.max([len(with_signal) < share])[0]:
            break
    for prompt in prompts:
        prompt.score = weights.score(prompt.problem.id)
    buffer = with_signal[:share] if ro.refill else prompts
    return Rollout(
        prompts,
        [sample for prompt in buffer for sample in training_samples(prompt)],
        stats,
        sampler.probs(step),
        timings,
    )


def reward_terms(graded: list[Grade]) -> dict[str, torch.Tensor]:
    """[leaves] each of the user's reward functions' values, by its name."""
    names = graded[0].terms if graded else {}
    return {name: torch.tensor([grade.terms[name] for grade in graded]) for name in names}


def step_advantages(
    estimator: Estimator, trees: list[ReasoningTree], cfg: Config, par: Parallel
) -> list[Advantages]:
    """The estimator's advantages of this rank's trees, computed over every
    rank's trees of the round."""
    if par.world == 1:
        return estimator.advantages(trees, cfg.algo.params)
    parts = par.gather(trees)
    every = estimator.advantages([tree for part in parts for tree in part], cfg.algo.params)
    start = sum(len(part) for part in parts[: par.rank])
    return every[start : start + len(trees)]


def training_samples(prompt: PromptRollout) -> list[TrainingSample]:
    """One sample per node the estimator gave an advantage, weighted by the
    prompt's Re-Schedule weight."""
    return [
        replace(sample, weight=prompt.weight)
        for sample in prompt.tree.training_samples(prompt.advantages)
    ]
