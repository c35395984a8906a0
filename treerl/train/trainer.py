"""The RL training loop: sample problems, roll out, verify, compute advantages, update, log, evaluate."""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.distributed.tensor import DTensor

from treerl.algo.advantages import tree_advantages
from treerl.algo.loss import aggregate, clipped_policy_loss, kl_penalty
from treerl.config import Config, OutputConfig, dump_config
from treerl.curriculum.reschedule import ScoreBook, loss_weight
from treerl.curriculum.rscore import leaf_accuracy, r_score
from treerl.curriculum.sampler import ProblemSampler, task_and_sampler
from treerl.curriculum.score import read_scores
from treerl.errors import RunStopped, UserError
from treerl.eval import eval_work, evaluate, print_eval
from treerl.models import DTYPES, load_policy, resolve_device
from treerl.progress import progress_bar, step_done
from treerl.report import write_report
from treerl.rollout.grading import grade_tree
from treerl.rollout.tree import ReasoningTree, TrainingSample, TreeStats, sample_trees
from treerl.tasks import check_levels
from treerl.tasks.base import Problem, Task
from treerl.tasks.prompts import render_prompt
from treerl.trackers import Trackers
from treerl.train.batch import completion_logprobs, make_batch, scatter_completion_values
from treerl.train.checkpoint import (latest_checkpoint, load_trainer_state, read_jsonl, save_checkpoint, write_atomic,
                                     write_json)
from treerl.train.parallel import (Parallel, full_state, gradient_sync, load_optimizer_state, sampling_model,
                                   unwrap, wrap_policy)
from treerl.train.signals import stop_signals
from treerl.train.timing import print_time_summary, time_summary
from treerl.viewer import TREES_FILE, read_trees, tree_record


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


RANK_SEED_STRIDE = 1_000_003
"""Rank r samples with seed + r x this stride (rank 0, like a single process, with the seed itself)."""


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of train.lr."""
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def tree_shape(cfg: Config) -> tuple[int, int]:
    """(depth, step_tokens): TreeRPO's tree, or for the group estimators a depth-1 tree of full responses."""
    if cfg.algo.name != "treerpo":
        return 1, cfg.rollout.max_new_tokens
    return cfg.tree.depth, cfg.tree.step_tokens or max(1, cfg.rollout.max_new_tokens // cfg.tree.depth)


def query_score(tree: ReasoningTree, cfg: Config) -> float:
    """What Re-Schedule ranks a query by: its tree's r-score, or its pass rate for the ACC baseline."""
    return r_score(tree, cfg.rscore.top_m, cfg.rscore.eligible) if cfg.reschedule.rank_by == "rscore" \
        else leaf_accuracy(tree)


def generate_trees(policy, tokenizer, task: Task, cfg: Config, problems: list[Problem], generator: torch.Generator,
                   stats: TreeStats) -> list[ReasoningTree]:
    """One tree per problem, rollout.generation_batch prompts per sampling call (0 = all in one); adds to stats."""
    ro = cfg.rollout
    depth, step_tokens = tree_shape(cfg)
    chunk = ro.generation_batch or len(problems)
    trees: list[ReasoningTree] = []
    for start in range(0, len(problems), chunk):
        prompt_ids = [tokenizer(render_prompt(task.template, p.question, tokenizer), add_special_tokens=False)
                      ["input_ids"] for p in problems[start:start + chunk]]
        chunk_trees, chunk_stats = sample_trees(
            policy, tokenizer, prompt_ids, branching=ro.n, depth=depth, step_tokens=step_tokens,
            max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p, generator=generator)
        trees += chunk_trees
        stats += chunk_stats
    return trees


def collect(policy, tokenizer, task: Task, cfg: Config, step: int, rng: random.Random, generator: torch.Generator,
            sampler: ProblemSampler, book: ScoreBook, par: Parallel = Parallel()) -> Rollout:
    """Sample, grade and score a step's buffer: rollout.batch_prompts prompts (one tree each), generated
    rollout.generation_batch prompts at a time (0 = all at once); with rollout.refill, more rounds while fewer
    than batch_prompts prompts have a sample that survives train.filter_tau. Under torchrun every rank draws the
    same prompts and keeps its share of them; online scores are shared, so every rank ranks queries alike."""
    ro, rs = cfg.rollout, cfg.reschedule
    share = len(par.share(list(range(ro.batch_prompts))))
    timings = {"timing/rollout_s": 0.0, "timing/reward_s": 0.0}
    problems: list[Problem] = []
    trees: list[ReasoningTree] = []
    stats = TreeStats()
    rewards, correct, per_prompt, groups_kept, weights = [], [], [], 0, []
    for _ in range(1 + ro.refill):
        new = par.share(sampler.draw(step, ro.batch_prompts, rng))
        t0 = time.perf_counter()
        trees += generate_trees(policy, tokenizer, task, cfg, new, generator, stats)
        t1 = time.perf_counter()
        timings["timing/rollout_s"] += t1 - t0
        online = []
        for tree, problem in zip(trees[len(problems):], new):
            grades = grade_tree(tree, problem, task, tokenizer)
            rewards.append(torch.tensor([g.reward for g in grades]))
            correct.append(torch.tensor([g.correct for g in grades], dtype=torch.float))
            if rs.rank_by != "off" and rs.scores == "online":
                online.append((problem.id, query_score(tree, cfg)))
        for problem_id, score in (pair for part in par.gather(online) for pair in part):
            book.update(problem_id, score)
        for tree, problem in zip(trees[len(problems):], new):
            weight = 1.0 if rs.rank_by == "off" else loss_weight(book.rank(problem.id), step - 1, cfg.train.steps,
                                                                   rs.mix, rs.w_min, rs.w_max)
            weights.append(weight)
            advantages = tree_advantages(cfg.algo.name, tree, cfg.algo.std_eps, cfg.tree.prune_tau, cfg.tree.norm)
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
    scores = [book.scores.get(problem.id) for problem in problems]
    return Rollout(problems, trees, [sample for group in buffer for sample in group], rewards, correct, stats,
                   groups_kept, sampler.probs(step), weights, scores, timings)


def trainable(sample: TrainingSample, cfg: Config) -> bool:
    """Whether a sample goes through forward and backward: always without train.filter_tau, else unless
    |A| <= tau (a NaN advantage is kept, so that its non-finite loss is seen and the update skipped)."""
    return cfg.train.filter_tau is None or not abs(sample.advantage) <= cfg.train.filter_tau


STAND_IN = TrainingSample(path=(), context_ids=[0], segment_ids=[0], old_logprobs=[0.0], advantage=0.0, weight=0.0)
"""Trained with weight 0 by a rank that has fewer passes to run than another, so that every rank joins each
gradient reduction."""


def update(policy, reference, optimizer, samples: list[TrainingSample], cfg: Config,
           generator: torch.Generator, par: Parallel = Parallel()) -> dict[str, float]:
    """train.epochs passes over the buffer, each in ceil(buffer / train.mini_batch) shuffled mini-batches of equal
    size, one optimizer step each, accumulated over train.micro_batch sequences per pass. Filtered samples skip the
    forward and backward passes, but the loss keeps its mini-batch's denominators (all its sequences and tokens),
    so dropping a zero-advantage sample leaves the gradient unchanged. Under torchrun each rank trains its own
    samples; the denominators, the number of passes and every skip are decided over all ranks, so the update is
    the one a single process would make from all ranks' samples."""
    t = cfg.train
    kept = [trainable(sample, cfg) for sample in samples]
    sums: dict[str, float] = {"loss/policy": 0.0, "entropy": 0.0, "clip_frac": 0.0, "ppo_kl": 0.0}
    if reference is not None:
        sums["kl"] = 0.0
    sums["grad_norm"] = 0.0
    optimizer_steps = skipped = 0
    policy.train()
    buffer_size, kept_size, tokens_kept = par.sum([len(samples), sum(kept),
                                                   sum(len(s.segment_ids) for s, keep in zip(samples, kept) if keep)])
    parts = max(1, math.ceil(buffer_size / t.mini_batch))
    for _ in range(t.epochs):
        order = torch.randperm(len(samples), generator=generator, device=generator.device).tolist()
        for minibatch in (order[i::parts] for i in range(parts)):
            rows_kept = [i for i in minibatch if kept[i]]
            seqs, tokens, trained_rows, trained_tokens = par.sum([
                len(minibatch), sum(len(samples[i].segment_ids) for i in minibatch),
                len(rows_kept), sum(len(samples[i].segment_ids) for i in rows_kept)])
            if not trained_rows:  # nothing with signal in this mini-batch: no step
                continue
            passes = int(par.max([math.ceil(len(rows_kept) / t.micro_batch)])[0])
            optimizer.zero_grad(set_to_none=True)
            step_sums = dict.fromkeys(sums, 0.0)
            for k in range(passes):
                rows = [samples[i] for i in rows_kept[k * t.micro_batch:(k + 1) * t.micro_batch]]
                with gradient_sync(policy, sync=k == passes - 1):
                    for key, value in train_pass(policy, reference, rows, cfg, (seqs, tokens, trained_tokens),
                                                 par.world).items():
                        step_sums[key] += value
            step_sums.update(zip(step_sums, par.sum(list(step_sums.values()))))
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), t.max_grad_norm)
            step_sums["grad_norm"] = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
            if not all(math.isfinite(value) for value in step_sums.values()):
                optimizer.zero_grad(set_to_none=True)   # a non-finite loss or gradient: skip this update
                skipped += 1
                continue
            optimizer.step()
            optimizer_steps += 1
            for key, value in step_sums.items():
                sums[key] += value
    optimizer.zero_grad(set_to_none=True)   # free the gradients before the next rollout needs the memory
    learner: dict[str, float] = {key: value / max(1, optimizer_steps) for key, value in sums.items()}
    learner["train/optimizer_steps"] = optimizer_steps
    learner["train/skipped_updates"] = skipped
    learner["tokens/trained"] = int(tokens_kept)
    learner["filter/dropped_frac"] = (1.0 - kept_size / buffer_size) if buffer_size else 0.0
    return learner


def train_pass(policy, reference, rows: list[TrainingSample], cfg: Config, totals: tuple[float, float, float],
               scale: float) -> dict[str, float]:
    """Forward and backward of scale x loss for these rows of a mini-batch whose totals (sequences, tokens,
    trained tokens, over every rank) normalise the loss; the metric sums of the rows. No rows: a stand-in pass
    that changes no gradient. DDP and FSDP2 average gradients over ranks, so scale is the world size."""
    algo = cfg.algo
    total_seqs, total_tokens, trained_tokens = totals
    if not rows:
        rows, scale = [STAND_IN], 0.0
    device = next(policy.parameters()).device
    batch = make_batch([s.context_ids for s in rows], [s.segment_ids for s in rows]).to(device)
    mask = batch.completion_mask
    old = scatter_completion_values([torch.tensor(s.old_logprobs) for s in rows], batch)
    advantages = torch.tensor([s.advantage for s in rows], device=device)[:, None]
    weights = torch.tensor([s.weight for s in rows], device=device)[:, None]
    logprobs, entropy = completion_logprobs(policy, batch, cfg.rollout.temperature, with_entropy=True)
    pg, clipped = clipped_policy_loss(logprobs, old, advantages, algo.clip_low, algo.clip_high)
    pg = pg * weights

    def agg(values: torch.Tensor) -> torch.Tensor:
        return aggregate(values, mask, algo.loss_agg, total_seqs=total_seqs, total_tokens=total_tokens,
                         norm_len=tree_shape(cfg)[1])

    policy_loss = agg(pg)
    entropy_term = agg(entropy)
    loss = policy_loss - algo.entropy_coef * entropy_term if algo.entropy_coef else policy_loss
    sums = {}
    if reference is not None:
        with torch.no_grad():
            ref_logprobs, _ = completion_logprobs(reference, batch, cfg.rollout.temperature)
        kl = agg(kl_penalty(logprobs, ref_logprobs, algo.kl_estimator))
        loss = loss + algo.kl_coef * kl
        sums["kl"] = kl.item()
    (loss * scale).backward()
    sums["loss/policy"] = policy_loss.item()
    sums["entropy"] = entropy_term.item()
    sums["clip_frac"] = float((clipped * mask).sum()) / trained_tokens
    sums["ppo_kl"] = float(((old - logprobs.detach()) * mask).sum()) / trained_tokens
    return sums if scale else dict.fromkeys(sums, 0.0)


def step_metrics(step: int, rollout: Rollout, learner: dict[str, float], timings: dict[str, float],
                 lr: float, levels: list[str]) -> dict[str, Any]:
    """Rewards and accuracy over leaves, per-prompt group outcomes, tree shape, token counts, curriculum."""
    lengths = torch.tensor([len(tree.text_ids(path)) for tree in rollout.trees for path, _ in tree.leaves()],
                           dtype=torch.float)
    correct = torch.cat(rollout.correct)
    inner = sum(1 for tree in rollout.trees for _, node in tree.walk() if node.children)
    metrics: dict[str, Any] = {
        "step": step,
        "reward/mean": torch.cat(rollout.rewards).mean().item(),
        "acc/mean": correct.mean().item(),
        "response_length/mean": lengths.mean().item(),
        "tokens/generated": rollout.stats.generated_tokens,
        "tokens/prefix_reused": rollout.stats.prefix_tokens_saved,
        "kl": None,
        **learner,
        "lr": lr,
        "groups/all_correct": sum(bool(c.min() == 1) for c in rollout.correct) / len(rollout.correct),
        "groups/none_correct": sum(bool(c.max() == 0) for c in rollout.correct) / len(rollout.correct),
        "tree/nodes": sum(1 for tree in rollout.trees for path, _ in tree.walk() if path),
        "tree/leaves": len(lengths),
        "tree/depth": max(tree.depth for tree in rollout.trees),
        "tree/groups_kept": rollout.groups_kept,
        "tree/groups_pruned": inner - rollout.groups_kept,
        **timings,
        "reschedule/weight_mean": sum(rollout.weights) / len(rollout.weights),
        "reschedule/score_mean": (sum(known) / len(known)) if (known := [s for s in rollout.scores if s is not None])
        else None,
    }
    for level, p in zip(levels, rollout.level_probs):
        metrics[f"curriculum/p/{level}"] = p
        metrics[f"curriculum/share/{level}"] = sum(q.level == level for q in rollout.problems) / len(rollout.problems)
    for level in sorted({p.level for p in rollout.problems}):
        metrics[f"acc/{level}"] = torch.cat([c for c, p in zip(rollout.correct, rollout.problems)
                                             if p.level == level]).mean().item()
    return metrics


class Run:
    """A run directory: config.yaml, metrics.jsonl, eval.json, checkpoints/."""

    def __init__(self, path: Path):
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.eval_path = path / "eval.json"

    def metrics(self) -> list[dict[str, Any]]:
        """The logged steps; a torn last line (the process was killed while writing it) is left out."""
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []

    def evals(self) -> dict[str, Any]:
        return json.loads(self.eval_path.read_text()) if self.eval_path.is_file() else {}

    def truncate_to(self, step: int) -> None:
        """Forget what was logged after `step` (work lost in a crash, to be redone on resume)."""
        if self.metrics_path.is_file():
            kept = [m for m in self.metrics() if m["step"] <= step]
            write_atomic(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
        write_json(self.eval_path, {k: v for k, v in self.evals().items() if int(k) <= step})
        if (self.path / TREES_FILE).is_file():
            kept = [r for r in read_trees(self.path / TREES_FILE) if r["step"] <= step]
            write_atomic(self.path / TREES_FILE, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    def save_trees(self, records: list[dict[str, Any]]) -> None:
        with (self.path / TREES_FILE).open("a") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))

    def record_eval(self, step: int, results: dict[str, Any]) -> None:
        write_json(self.eval_path, {**self.evals(), str(step): results})


def mixed_precision(cfg: Config, device: torch.device):
    """torch.autocast in model.autocast's dtype, or nothing."""
    if cfg.model.autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cfg.model.autocast])


def memory_metrics(device: torch.device, par: Parallel) -> dict[str, float | None]:
    """GiB, the largest over ranks: the peak GPU memory torch allocated since the last call (null on CPU) and
    the resident memory of the process now (null where /proc is missing)."""
    statm = Path("/proc/self/statm")
    rss = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30 if statm.is_file() else None
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gpu_max, rss_max = par.max([gpu or 0.0, rss or 0.0])
    return {"memory/gpu_peak_gib": None if gpu is None else gpu_max, "memory/rss_gib": None if rss is None else rss_max}


def merged(rollout: Rollout, par: Parallel) -> Rollout:
    """Every rank's rollout in one, for metrics (the training samples left out); timings are the slowest rank's."""
    if par.world == 1:
        return rollout
    parts = par.gather(replace(rollout, samples=[]))
    stats = TreeStats()
    for part in parts:
        stats += part.stats
    return Rollout([p for part in parts for p in part.problems], [t for part in parts for t in part.trees], [],
                   [r for part in parts for r in part.rewards], [c for part in parts for c in part.correct], stats,
                   sum(part.groups_kept for part in parts), rollout.level_probs,
                   [w for part in parts for w in part.weights], [x for part in parts for x in part.scores],
                   {key: max(part.timings[key] for part in parts) for key in rollout.timings})


def train(cfg: Config, run_dir: Path, resume: bool = False, console: Console | None = None,
          par: Parallel | None = None) -> dict[str, Any]:
    """Train from cfg into run_dir (or continue the run there); returns {'before': eval, 'after': eval}.
    Under torchrun, pass the Parallel of init_parallel: only rank 0 writes and prints."""
    console = console or Console(quiet=par is not None and not par.main)
    par = par or Parallel(device=resolve_device(cfg.model.device))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    if cfg.rollout.refill and cfg.train.filter_tau is None:
        raise UserError("rollout.refill resamples prompts whose samples are all filtered: set train.filter_tau "
                        "(for example 0 to drop zero-advantage groups)")
    if cfg.rollout.batch_prompts < par.world:
        raise UserError(f"rollout.batch_prompts={cfg.rollout.batch_prompts} gives some of the {par.world} processes "
                        f"no prompt; set it to at least {par.world}")
    task, sampler = task_and_sampler(cfg)
    check_levels(task, cfg.eval.levels or [], "eval.levels")
    sampler.probs(1)
    book = ScoreBook(read_scores(cfg.reschedule.scores_file, cfg.reschedule.rank_by)
                     if cfg.reschedule.rank_by != "off" and cfg.reschedule.scores == "static" else None)
    tree_advantages(cfg.algo.name, ReasoningTree.from_leaf_rewards([1, 0]))
    run = Run(run_dir)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    device = par.device
    model, tokenizer = load_policy(str(checkpoint) if checkpoint else cfg.model.name_or_path, cfg.model.dtype, device,
                                   cfg.model.trust_remote_code)
    if cfg.train.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    policy = wrap_policy(model, par)
    reference = (load_policy(cfg.model.name_or_path, cfg.model.dtype, device, cfg.model.trust_remote_code)[0].eval()
                 if cfg.algo.kl_coef > 0 else None)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    rng = random.Random(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + RANK_SEED_STRIDE * par.rank)
    start = 0
    par.barrier()   # every rank has looked at run_dir before rank 0 writes there
    if checkpoint:
        state = load_trainer_state(checkpoint)
        load_optimizer_state(policy, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"]["problems"])
        sampling = state["rng"]["sampling"]
        if par.rank < len(sampling):
            generator.set_state(sampling[par.rank])
        else:   # resumed on more processes than the run was saved with: a fresh stream for this rank
            generator.manual_seed(cfg.seed + RANK_SEED_STRIDE * par.rank + state["step"])
        sampler.load_state_dict(state["curriculum"]["sampler"])
        book.load_state_dict(state["curriculum"]["scores"])
        start = state["step"]
        if par.main:
            run.truncate_to(start)
        console.print(f"resuming {run_dir} from step {start}")
    elif resume:
        if par.main:
            run.truncate_to(0)
    elif par.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")

    spent = {"eval": 0.0, "checkpoint": 0.0}

    def checkpoint_now(step: int) -> None:
        """Collective: every rank hands its part (sharded weights, its sampling RNG); rank 0 writes."""
        t0 = time.perf_counter()
        model_state, optimizer_state = full_state(policy, optimizer)
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                 "rng": {"problems": rng.getstate(), "sampling": par.gather(generator.get_state())},
                 "curriculum": {"sampler": sampler.state_dict(), "scores": book.state_dict()}}
        if par.main:
            save_checkpoint(run_dir, step, unwrap(policy), model_state, tokenizer, state,
                            keep=cfg.train.keep_checkpoints)
        par.barrier()
        spent["checkpoint"] += time.perf_counter() - t0

    trackers = Trackers(cfg.output if par.main else OutputConfig(), run_dir, cfg.model_dump())
    with stop_signals() as stop, progress_bar(cfg.output.progress and par.main) as bar, closing(trackers):
        bad_steps = 0

        def run_eval(step: int) -> None:
            t0 = time.perf_counter()
            job = bar.add_task(f"eval @ step {step}", total=eval_work(task, cfg.eval), info="")
            with sampling_model(policy) as sampling_policy, mixed_precision(cfg, device):
                results = evaluate(sampling_policy, tokenizer, task, cfg.eval, seed=cfg.seed,
                                   advance=lambda k: bar.advance(job, k * par.world), par=par)
            bar.remove_task(job)
            if par.main:
                run.record_eval(step, results)
                trackers.log_eval(step, results)
            spent["eval"] += time.perf_counter() - t0

        if "0" not in par.broadcast(run.evals()):
            run_eval(0)
        job = bar.add_task("train", total=cfg.train.steps, completed=start, info="")
        for step in range(start + 1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            with sampling_model(policy) as sampling_policy, mixed_precision(cfg, device):
                rollout = collect(sampling_policy, tokenizer, task, cfg, step, rng, generator, sampler, book, par)
            t1 = time.perf_counter()
            with mixed_precision(cfg, device):
                learner = update(policy, reference, optimizer, rollout.samples, cfg, generator, par)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            t2 = time.perf_counter()
            metrics = step_metrics(step, merged(rollout, par), learner,
                                   {**rollout.timings, "timing/update_s": t2 - t1, "timing/step_s": t2 - t0}, lr,
                                   cfg.curriculum.levels)
            metrics["throughput/rollout_tok_s"] = metrics["tokens/generated"] / max(metrics["timing/rollout_s"], 1e-9)
            metrics["throughput/train_tok_s"] = (metrics["tokens/trained"] * cfg.train.epochs
                                                 / max(metrics["timing/update_s"], 1e-9))
            metrics.update(memory_metrics(device, par))
            if par.main:
                run.log(metrics)
                trackers.log(metrics)
                if cfg.output.save_trees:
                    run.save_trees([tree_record(tree, problem, tokenizer, cfg.tree.prune_tau, cfg.rscore.top_m,
                                                cfg.rscore.eligible, step)
                                    for tree, problem in zip(rollout.trees[:cfg.output.save_trees],
                                                             rollout.problems)])
            step_done(bar, job, f"reward {metrics['reward/mean']:.3f}  acc {metrics['acc/mean']:.3f}  "
                                f"{metrics['timing/step_s']:.2f} s/step")
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                run_eval(step)
            if cfg.train.save_every and step % cfg.train.save_every == 0:
                checkpoint_now(step)
            bad_steps = bad_steps + 1 if learner["train/skipped_updates"] else 0
            if bad_steps >= cfg.train.max_bad_steps:
                checkpoint_now(step)
                raise UserError(f"the loss or gradient was not finite in {bad_steps} steps in a row (up to step {step}), "
                                f"so their updates were skipped; the last good state is saved in "
                                f"{run_dir}/checkpoints/step_{step}. Lower train.lr (or check the rewards) and "
                                f"continue with --resume {run_dir}")
            if par.max([stop.signal is not None])[0]:   # one rank asked to stop: all stop after this step
                if not (cfg.train.save_every and step % cfg.train.save_every == 0):
                    checkpoint_now(step)
                name = stop.signal.name if stop.signal is not None else "a signal to another process"
                raise RunStopped(f"stopped by {name} after step {step} of {cfg.train.steps}; the "
                                 f"checkpoint is saved: continue with treerl train --resume {run_dir}")
        final = cfg.train.steps
        if str(final) not in par.broadcast(run.evals()):
            run_eval(final)
    saved = par.broadcast(latest_checkpoint(run_dir))
    if saved is None or saved.name != f"step_{final}":
        checkpoint_now(final)
    evals = par.broadcast(run.evals())
    before, after = evals["0"], evals[str(final)]
    print_eval(after, before, title=f"held-out accuracy (%), step 0 -> {final}", console=console)
    if par.main:
        timing = time_summary(run.metrics(), spent["eval"], spent["checkpoint"])
        write_json(run_dir / "timing.json", timing)
        print_time_summary(timing, console)
        console.print(f"report: {write_report(run_dir)}")
    return {"before": before, "after": after}
