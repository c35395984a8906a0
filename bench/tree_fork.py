"""What forking the KV cache saves when sampling TreeRPO trees: the tree sampler against re-encoding
every continuation's prompt and prefix from scratch (plain batched generation per level).

    .venv/bin/python bench/tree_fork.py --prompts 16 --branching 4 --depth 3 --step-tokens 12

Both sample trees of the same shape (same prompts, N, D, step) on the shipped tiny model; prints JSON with
wall seconds and the prefix tokens each encodes. Token counts are exact; times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from treerl.models import load_policy
from treerl.rollout.engine import generate
from treerl.rollout.tree import sample_trees
from treerl.tasks import get_task


def reencode(model, tokenizer, prompt_ids, branching, depth, step_tokens, generator) -> dict:
    """Level by level, each unfinished node's N - 1 continuations generated from its full prefix."""
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    gen = generate(model, tokenizer, [p for p in prompt_ids for _ in range(branching)],
                   max_new_tokens=depth * step_tokens, temperature=0.7, generator=generator)
    rollouts = [(p, c) for p, c in zip(gen.prompt_ids, gen.completion_ids)]
    encoded = sum(len(p) for p in gen.prompt_ids)
    for level in range(1, depth):
        cut = level * step_tokens
        open_rows = [(p, c) for p, c in rollouts if len(c) > cut and eos not in c[:cut]]
        if not open_rows:
            break
        prefixes = [p + c[:cut] for p, c in open_rows for _ in range(branching - 1)]
        gen = generate(model, tokenizer, prefixes, max_new_tokens=(depth - level) * step_tokens, temperature=0.7,
                       generator=generator)
        encoded += sum(len(p) for p in prefixes)
        rollouts += [(p[:len(p) - cut], p[len(p) - cut:] + c) for p, c in zip(prefixes, gen.completion_ids)]
    return {"seconds": round(time.perf_counter() - start, 2), "prefix_tokens_encoded": encoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--branching", type=int, default=4)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--step-tokens", type=int, default=12)
    parser.add_argument("--level", default="hard")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_policy("tiny", "float32", "cpu")
    task, rng = get_task("arithmetic"), random.Random(0)
    prompt_ids = [tokenizer(task.sample(args.level, rng).question, add_special_tokens=False)["input_ids"]
                  for _ in range(args.prompts)]
    shape = {"branching": args.branching, "depth": args.depth, "step_tokens": args.step_tokens}
    start = time.perf_counter()
    trees, stats = sample_trees(model, tokenizer, prompt_ids, temperature=0.7,
                                generator=torch.Generator().manual_seed(0), **shape)
    forked = {"seconds": round(time.perf_counter() - start, 2),
              "prefix_tokens_encoded": sum(map(len, prompt_ids)) * args.branching + stats.refed_tokens,
              "generated_tokens": stats.generated_tokens,
              "nodes": sum(1 for tree in trees for path, _ in tree.walk() if path)}
    baseline = reencode(model, tokenizer, prompt_ids, generator=torch.Generator().manual_seed(0), **shape)
    print(json.dumps({**shape, "prompts": args.prompts, "fork": forked, "reencode": baseline}, indent=2))


if __name__ == "__main__":
    main()
