"""Where to branch: the share of sibling groups whose values disagree, forking every step_tokens
(tree.branch_at=fixed) against forking at each step's most uncertain token (entropy).

    .venv/bin/python bench/branching.py --prompts 64 --seeds 0 1 --out docs/results/branching.json

The same arithmetic problems of each level (drawn from --problem-seed) are sampled as TreeRPO
trees of the demo shape (N = 4 children, depth 3, 12-token steps, 36 tokens, temperature 0.7) on
the embedded tiny model, once per branching and seed; a seed keys the same rollouts in both
branchings (only the forks differ). Each leaf is graded by the task's verifier and the values
backed up. A sibling group disagrees when its values are not all equal (its leaves are not all right
or all wrong); TreeRPO keeps it when they spread at least --prune-tau. Prints JSON: per level,
branching and kind of group (the root's, of independent rollouts, or a fork's, of continuations of
one prefix), the groups, the share that disagree and the share kept, and the disagreeing groups
per 1,000 generated tokens; the mean offset of the fork points in their step (1 .. 12), the tokens
generated and the sampling seconds. Two controls fork as entropy branching does, level by level,
with noise in place of the entropies: `uniform` (a fork point uniform in its step) and `first` (at
its first token), so that the entropy's effect can be told from forking earlier than `fixed`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from common import options
from treerl.config import RolloutConfig
from treerl.models import TINY_DIR, load_policy
from treerl.rollout.grading import grade_trees
from treerl.rollout.sampling import TreeShape, sample_problem_trees
from treerl.rollout.tree import (
    BRANCHINGS,
    Branching,
    Grown,
    ReasoningTree,
    TreeCall,
    TreeStats,
    highest_entropy,
)
from treerl.tasks import get_task


def with_entropies(rule: Callable[[int], torch.Tensor]) -> Branching:
    """A control: entropy branching whose draws' entropies are replaced by rule(length) per
    sequence, so that its fork points fall where the rule puts its highest value."""

    def grow(call: TreeCall) -> Grown:
        def sample(prompts, keys, max_new_tokens, forks):
            drawn = call.sample(prompts, keys, max_new_tokens, forks)
            return [replace(seq, entropies=rule(len(seq.token_ids))) for seq in drawn]

        return highest_entropy(replace(call, sample=sample))

    return Branching(grow, by_level=True)


NOISE = torch.Generator().manual_seed(0)
CONTROLS = {
    "uniform": with_entropies(lambda length: torch.rand(length, generator=NOISE)),
    "first": with_entropies(lambda length: -torch.arange(length, dtype=torch.float)),
}
"""Fork points uniform in their step, and at its first token: whether the entropy's groups disagree
for forking at uncertain tokens or only for forking earlier than `fixed`."""
for name, control in CONTROLS.items():
    BRANCHINGS.add(name, control)


def group_counts(
    trees: list[ReasoningTree], prune_tau: float, step_tokens: int
) -> dict[str, dict[str, int]]:
    """Per kind of group ('root', 'fork'): how many, how many disagree (values not all equal), how
    many TreeRPO keeps (values spread at least prune_tau), and the sum of the fork points' offsets
    in their step (1 .. step_tokens: a fork at depth d after (d - 1) step_tokens + offset
    tokens)."""
    counts = {
        kind: {"groups": 0, "disagree": 0, "kept": 0, "offsets": 0} for kind in ("root", "fork")
    }
    for tree in trees:
        for path, node in tree.walk():
            if node.is_leaf:
                continue
            values = [child.value for child in node.children]
            spread = max(values) - min(values)
            kind = counts["fork" if path else "root"]
            kind["groups"] += 1
            kind["disagree"] += spread > 0
            kind["kept"] += spread >= prune_tau
            if path:
                kind["offsets"] += len(tree.text_ids(path)) - (len(path) - 1) * step_tokens
    return counts


def shares(counts: dict[str, int], tokens: int) -> dict[str, float | int]:
    """The counts of one kind of group as shares, and its disagreeing groups per 1,000 generated
    tokens of the whole trees."""
    groups = max(counts["groups"], 1)
    return {
        "groups": counts["groups"],
        "disagree": round(counts["disagree"] / groups, 4),
        "kept": round(counts["kept"] / groups, 4),
        "disagreeing_per_1k_tokens": round(1000 * counts["disagree"] / max(tokens, 1), 3),
    }


def measure(model, tokenizer, task, problems, shape: TreeShape, args) -> dict:
    """One level's problems in trees of one branching, once per seed: the groups' counts as shares,
    over all seeds and (fork groups) per seed."""
    totals: dict[str, dict[str, int]] = {}
    per_seed, stats, seconds = [], TreeStats(), 0.0
    for seed in args.seeds:
        t0 = time.perf_counter()
        trees = sample_problem_trees(
            model,
            tokenizer,
            task,
            problems,
            shape,
            temperature=args.temperature,
            top_p=1.0,
            generator=torch.Generator().manual_seed(seed),
            rollout=RolloutConfig(),
            stats=stats,
        )
        seconds += time.perf_counter() - t0
        grade_trees(trees, problems, task, tokenizer)
        counts = group_counts(trees, args.prune_tau, args.step_tokens)
        per_seed.append(shares(counts["fork"], 0)["disagree"])
        for kind, kind_counts in counts.items():
            for name, value in kind_counts.items():
                totals.setdefault(kind, {}).setdefault(name, 0)
                totals[kind][name] += value
    forks = totals["fork"]
    return {
        "root_groups": shares(totals["root"], stats.generated_tokens),
        "fork_groups": shares(forks, stats.generated_tokens),
        "fork_groups_disagree_per_seed": per_seed,
        "mean_fork_offset": round(forks["offsets"] / max(forks["groups"], 1), 2),
        "generated_tokens": stats.generated_tokens,
        "sampling_s": round(seconds, 2),
    }


def main() -> None:
    parser = options(
        __doc__,
        prompts=(64, "problems per level"),
        levels=["medium", "hard"],
        seeds=[0, 1],
        problem_seed=0,
        branching=4,
        depth=3,
        step_tokens=12,
        max_new_tokens=36,
        temperature=0.7,
        prune_tau=0.1,
        out="",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_policy(TINY_DIR)
    task = get_task("arithmetic")
    result: dict = {"date": str(date.today()), "args": vars(args), "runs": {}}
    for level in args.levels:
        rng = random.Random(f"{args.problem_seed}-{level}")
        problems = [task.sample(level, rng) for _ in range(args.prompts)]
        for branch_at in ("fixed", "entropy", *CONTROLS):
            shape = TreeShape(
                args.branching, args.depth, args.step_tokens, args.max_new_tokens, branch_at
            )
            result["runs"][f"{level}/{branch_at}"] = measure(
                model, tokenizer, task, problems, shape, args
            )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
