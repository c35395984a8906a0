"""What a step logs: rewards, accuracy and tree shape over every rank's rollout, the learner's sums, timings,
memory and the curriculum (every key is documented in docs/metrics.md)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from treerl.parallel import Parallel
from treerl.rollout.tree import TreeStats
from treerl.train.collect import Rollout


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
        **prefix_cache_metrics(rollout.stats),
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


def prefix_cache_metrics(stats: TreeStats) -> dict[str, float]:
    """vLLM's prefix cache over the forks of a step's trees: the share of the inherited tokens in whole blocks
    (all it can serve) that it served, and the share of all inherited tokens; nothing for other backends."""
    if not stats.prefix_tokens_cacheable:
        return {}
    return {"sampler/prefix_cache_hit": stats.prefix_tokens_saved / stats.prefix_tokens_cacheable,
            "sampler/prefix_cache_hit_raw": stats.prefix_tokens_saved / stats.prefix_tokens_inherited}


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
    """Every rank's rollout in one, for metrics (the training samples and advantages left out); timings are the
    slowest rank's."""
    if par.world == 1:
        return rollout
    parts = par.gather(replace(rollout, samples=[], advantages=[]))
    stats = TreeStats()
    for part in parts:
        stats += part.stats
    return Rollout([p for part in parts for p in part.problems], [t for part in parts for t in part.trees], [],
                   [r for part in parts for r in part.rewards], [c for part in parts for c in part.correct], stats,
                   sum(part.groups_kept for part in parts), rollout.level_probs,
                   [w for part in parts for w in part.weights], [x for part in parts for x in part.scores],
                   {key: max(part.timings[key] for part in parts) for key in rollout.timings})
