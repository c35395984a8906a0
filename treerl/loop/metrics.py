"""What a step logs: rewards, accuracy and tree shape over every rank's rollout, the learner's sums,
timings, memory and the curriculum (every key is documented in docs/metrics.md)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from treerl.loop.collect import Rollout
from treerl.parallel import Parallel
from treerl.rollout.tree import TreeStats


def step_metrics(
    step: int,
    rollout: Rollout,
    learner: dict[str, float],
    timings: dict[str, float],
    lr: float,
    levels: list[str],
) -> dict[str, Any]:
    """Rewards and accuracy over leaves, per-prompt group outcomes, tree shape,
    token counts, curriculum."""
    prompts = rollout.prompts
    lengths = torch.tensor(
        [len(p.tree.text_ids(path)) for p in prompts for path, _ in p.tree.leaves()],
        dtype=torch.float,
    )
    correct = torch.cat([p.correct for p in prompts])
    inner = sum(1 for p in prompts for _, node in p.tree.walk() if node.children)
    groups_kept = sum(p.groups_kept for p in prompts)
    known = [p.score for p in prompts if p.score is not None]
    metrics: dict[str, Any] = {
        "step": step,
        "reward/mean": torch.cat([p.rewards for p in prompts]).mean().item(),
        "acc/mean": correct.mean().item(),
        "response_length/mean": lengths.mean().item(),
        "tokens/generated": rollout.stats.generated_tokens,
        "tokens/prefix_reused": rollout.stats.prefix_tokens_saved,
        **prefix_cache_metrics(rollout.stats),
        "kl": None,
        **learner,
        "lr": lr,
        "groups/all_correct": sum(bool(p.correct.min() == 1) for p in prompts) / len(prompts),
        "groups/none_correct": sum(bool(p.correct.max() == 0) for p in prompts) / len(prompts),
        "tree/nodes": sum(1 for p in prompts for path, _ in p.tree.walk() if path),
        "tree/leaves": len(lengths),
        "tree/depth": max(p.tree.depth for p in prompts),
        "tree/groups_kept": groups_kept,
        "tree/groups_pruned": inner - groups_kept,
        **timings,
        "reschedule/weight_mean": sum(p.weight for p in prompts) / len(prompts),
        "reschedule/score_mean": sum(known) / len(known) if known else None,
    }
    for name in prompts[0].terms:
        metrics[f"rewards/{name}/mean"] = torch.cat([p.terms[name] for p in prompts]).mean().item()
    for level, prob in zip(levels, rollout.level_probs):
        metrics[f"curriculum/p/{level}"] = prob
        metrics[f"curriculum/share/{level}"] = sum(p.problem.level == level for p in prompts) / len(
            prompts
        )
    for level in sorted({p.problem.level for p in prompts}):
        metrics[f"acc/{level}"] = (
            torch.cat([p.correct for p in prompts if p.problem.level == level]).mean().item()
        )
    return metrics


def prefix_cache_metrics(stats: TreeStats) -> dict[str, float]:
    """vLLM's prefix cache over the forks of a step's trees: the share of the inherited tokens in
    whole blocks (all it can serve) that it served, and the share of all inherited tokens;
    nothing for other backends."""
    if not stats.prefix_tokens_cacheable:
        return {}
    return {
        "sampler/prefix_cache_hit": stats.prefix_tokens_saved / stats.prefix_tokens_cacheable,
        "sampler/prefix_cache_hit_raw": stats.prefix_tokens_saved / stats.prefix_tokens_inherited,
    }


def memory_metrics(device: torch.device, par: Parallel) -> dict[str, float | None]:
    """GiB, the largest over ranks: the peak GPU memory torch allocated since the last call (null on
    CPU) and the resident memory of the process now (null where /proc is missing)."""
    statm = Path("/proc/self/statm")
    rss = (
        int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        if statm.is_file()
        else None
    )
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gpu_max, rss_max = par.max([gpu or 0.0, rss or 0.0])
    return {
        "memory/gpu_peak_gib": None if gpu is None else gpu_max,
        "memory/rss_gib": None if rss is None else rss_max,
    }


def merged(rollout: Rollout, par: Parallel) -> Rollout:
    """Every rank's rollout in one, for metrics (the training samples left out); timings
    are the slowest rank's."""
    if par.world == 1:
        return rollout
    parts = par.gather(replace(rollout, samples=[]))
    stats = TreeStats()
    for part in parts:
        stats += part.stats
    return Rollout(
        [p for part in parts for p in part.prompts],
        [],
        stats,
        rollout.level_probs,
        {key: max(part.timings[key] for part in parts) for key in rollout.timings},
    )
