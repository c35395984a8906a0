"""A TreeRPO tree of the paper's shape, scaled to the CPU: its KV memory against its distinct
tokens, and its time per generated token against flat sampling of as many tokens.

    .venv/bin/python bench/tree_kv.py --prompts 2 --branching 8 --depth 3 --step-tokens 16 \
        --rounds 5

The randomly initialised Qwen2-shaped model of bench/lengths.py (about 41M parameters; it never
emits EOS, so every sequence runs to its budget: the tree's worst case) samples one tree per prompt
(random prompts of 30 tokens) through the lean backend: branching rollouts of depth x step_tokens
tokens, and branching - 1 continuations at every branch point. Reported:
- `distinct_kv_mib`: the KV of the tree's distinct tokens (each prompt once, every generated token
  once);
- `peak_kv_mib`: the blocks the paged cache held at its fullest; goal (issue 21): within 1.2x of
  distinct;
- `copied_kv_mib`: what a cache holding every sequence's whole context would hold (each fork copying
  its prefix);
- `tree_tok_s` and `flat_tok_s`: generated tokens per second of the tree and of flat sampling of as
  many tokens (the same prompts, sequences of the full depth x step_tokens); goal: the tree no
  slower per token.
Median over --rounds rounds after a warm-up. Prints JSON.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from common import options
from lengths import parse_with_model_arguments, random_model
from treerl.rollout.backend import Forks
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import lean_decoder
from treerl.rollout.lean_backend import BLOCK, LeanBackend

EOS = 1


def main() -> None:
    args = parse_with_model_arguments(
        options(__doc__, prompts=2, branching=8, depth=3, step_tokens=16)
    )
    model = random_model(args.hidden, args.layers, args.vocab)
    decoder = lean_decoder(model)
    assert decoder is not None
    rng = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(2, args.vocab, (30,), generator=rng).tolist() for _ in range(args.prompts)
    ]
    budget = args.depth * args.step_tokens
    forks = Forks(args.branching, args.depth, args.step_tokens)
    rows = [p for p in prompts for _ in range(args.branching)]
    token_bytes = LeanBackend(decoder).block_bytes() // BLOCK

    def tree() -> tuple[LeanBackend, list]:
        backend = LeanBackend(decoder)
        keys = row_keys(torch.Generator().manual_seed(0), len(rows), "cpu")
        return backend, backend.sample(rows, keys, budget, Sampling(), EOS, forks)

    backend, sequences = tree()
    generated = sum(len(seq.token_ids) for seq in sequences)
    flat_rows = [prompts[i % len(prompts)] for i in range(-(-generated // budget))]

    def flat() -> None:
        LeanBackend(decoder).sample(
            flat_rows,
            row_keys(torch.Generator().manual_seed(0), len(flat_rows), "cpu"),
            budget,
            Sampling(),
            EOS,
        )

    seconds: dict[str, list[float]] = {"tree": [], "flat": []}
    for round_ in range(args.rounds + 1):
        for name, run in (("tree", tree), ("flat", flat)):
            t0 = time.perf_counter()
            run()
            if round_:  # round 0 warms up
                seconds[name].append(time.perf_counter() - t0)
    distinct = sum(map(len, prompts)) + generated
    paths = sum(len(rows[seq.prompt]) + seq.start + len(seq.token_ids) for seq in sequences)
    assert backend.pool is not None
    tree_tok_s = generated / statistics.median(seconds["tree"])
    flat_tok_s = len(flat_rows) * budget / statistics.median(seconds["flat"])
    mib = 2**20
    print(
        json.dumps(
            {
                "model": {
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "hidden": args.hidden,
                    "layers": args.layers,
                },
                "prompts": args.prompts,
                "branching": args.branching,
                "depth": args.depth,
                "step_tokens": args.step_tokens,
                "sequences": len(sequences),
                "generated_tokens": generated,
                "flat_sequences": len(flat_rows),
                "rounds": args.rounds,
                "threads": args.threads,
                "distinct_kv_mib": round(distinct * token_bytes / mib, 2),
                "peak_kv_mib": round(backend.pool.peak * BLOCK * token_bytes / mib, 2),
                "pool_kv_mib": round(backend.pool.size * BLOCK * token_bytes / mib, 2),
                "copied_kv_mib": round(paths * token_bytes / mib, 2),
                "peak_vs_distinct": round(backend.pool.peak * BLOCK / distinct, 3),
                "tree_tok_s": round(tree_tok_s, 1),
                "flat_tok_s": round(flat_tok_s, 1),
                "tree_vs_flat": round(tree_tok_s / flat_tok_s, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
