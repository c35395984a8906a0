"""Rollout speed: treerl's engine against transformers' `model.generate`, and what forking the KV
cache saves when sampling TreeRPO trees.

    .venv/bin/python bench/rollout.py --rounds 5 --prompts 8 --n 8 --max-new-tokens 32
    .venv/bin/python bench/rollout.py --trees --prompts 16 --branching 4 --depth 3 --step-tokens 12

Engine against generate: the same hard arithmetic prompts, each repeated n times, sampled at the
same temperature (no top-k, no top-p) on the embedded tiny model, alternately for --rounds rounds
after a warm-up; the engine also returns every token's log-prob, generate does not. Prints the
median generated tokens per second of each, the ratio (and each round's, `round_speedups`), and
the achieved FLOP/s (2 x parameters per token, prompts included) against the machine's matmul peak.

--trees: the tree sampler against re-encoding every continuation's prompt and prefix from scratch
(plain batched generation per level), trees of the same shape, alternately for --rounds rounds after
a warm-up; median wall seconds, prefix tokens encoded (the engine encodes a repeated prompt or
prefix once, in both), tokens generated, and achieved FLOP/s against the matmul peak. --wider HIDDEN
LAYERS replaces the tiny model by a randomly initialised one of its shape, wider and deeper, where a
token costs more. --device cuda runs both on the GPU.
"""

from __future__ import annotations

import json
import random
import statistics
import time

import torch

from common import options
from probe import matmul_peak, model_shapes
from treerl.models import TINY_DIR, load_policy
from treerl.rollout.engine import generate
from treerl.rollout.tree import sample_trees
from treerl.tasks import get_task
from treerl.tasks.prompts import render_prompt


def hf_generate(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float
) -> int:
    """transformers' sampling over the left-padded batch; the tokens generated up to each row's
    EOS."""
    width = max(map(len, prompt_ids))
    ids = torch.tensor(
        [[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=model.device
    )
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=model.device
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, width:].tolist()
    eos = tokenizer.eos_token_id
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in out)


def engine_vs_generate(model, tokenizer, prompt_ids: list[list[int]], args) -> dict:
    params = sum(p.numel() for p in model.parameters())
    prompt_tokens = sum(map(len, prompt_ids))
    rates: dict[str, list[float]] = {"treerl": [], "generate": []}
    tokens: dict[str, list[int]] = {"treerl": [], "generate": []}
    generator = torch.Generator(model.device).manual_seed(0)
    for round_ in range(args.rounds + 1):
        for name in ("treerl", "generate"):
            t0 = time.perf_counter()
            if name == "treerl":
                gen = generate(
                    model,
                    tokenizer,
                    prompt_ids,
                    max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    generator=generator,
                )
                count = sum(map(len, gen.completion_ids))
            else:
                count = hf_generate(
                    model, tokenizer, prompt_ids, args.max_new_tokens, args.temperature
                )
            seconds = time.perf_counter() - t0
            if round_:  # round 0 warms up
                rates[name].append(count / seconds)
                tokens[name].append(count)
    peak = matmul_peak(
        torch.float32, model_shapes(model.config.to_dict(), len(prompt_ids)), device=args.device
    )
    result = {
        "sequences": len(prompt_ids),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "matmul_peak_gflop_s": round(peak / 1e9, 1),
    }
    for name in rates:
        rate, mean_tokens = statistics.median(rates[name]), statistics.mean(tokens[name])
        flops_per_s = 2 * params * (mean_tokens + prompt_tokens) * rate / mean_tokens
        result[name] = {
            "tok_s": round(rate, 1),
            "tokens_per_call": round(mean_tokens, 1),
            "gflop_s": round(flops_per_s / 1e9, 3),
            "of_matmul_peak": round(flops_per_s / peak, 4),
        }
    result["speedup"] = round(result["treerl"]["tok_s"] / result["generate"]["tok_s"], 2)
    result["round_speedups"] = [  # how far the ratio moves round to round within one run
        round(ours / theirs, 2) for ours, theirs in zip(rates["treerl"], rates["generate"])
    ]
    return result


def reencode(model, tokenizer, prompt_ids, branching, depth, step_tokens, generator) -> dict:
    """Level by level, each unfinished node's N - 1 continuations generated from its full prefix."""
    eos = tokenizer.eos_token_id
    gen = generate(
        model,
        tokenizer,
        [p for p in prompt_ids for _ in range(branching)],
        max_new_tokens=depth * step_tokens,
        temperature=0.7,
        generator=generator,
    )
    rollouts = [(p, c) for p, c in zip(gen.prompt_ids, gen.completion_ids)]
    encoded = sum(map(len, set(map(tuple, gen.prompt_ids))))
    generated = sum(map(len, gen.completion_ids))
    for level in range(1, depth):
        cut = level * step_tokens
        open_rows = [(p, c) for p, c in rollouts if len(c) > cut and eos not in c[:cut]]
        if not open_rows:
            break
        prefixes = [p + c[:cut] for p, c in open_rows for _ in range(branching - 1)]
        gen = generate(
            model,
            tokenizer,
            prefixes,
            max_new_tokens=(depth - level) * step_tokens,
            temperature=0.7,
            generator=generator,
        )
        encoded += sum(map(len, set(map(tuple, prefixes))))
        generated += sum(map(len, gen.completion_ids))
        rollouts += [
            (p[: len(p) - cut], p[len(p) - cut :] + c) for p, c in zip(prefixes, gen.completion_ids)
        ]
    return {"prefix_tokens_encoded": encoded, "generated_tokens": generated}


def fork(model, tokenizer, prompt_ids, branching, depth, step_tokens, generator) -> dict:
    """The tree sampler: continuations read their prefix's KV cache."""
    trees, stats = sample_trees(
        model,
        tokenizer,
        prompt_ids,
        temperature=0.7,
        generator=generator,
        branching=branching,
        depth=depth,
        step_tokens=step_tokens,
    )
    return {
        "prefix_tokens_encoded": sum(map(len, set(map(tuple, prompt_ids)))),
        "generated_tokens": stats.generated_tokens,
        "nodes": sum(1 for tree in trees for path, _ in tree.walk() if path),
    }


def fork_vs_reencode(model, tokenizer, prompt_ids: list[list[int]], args) -> dict:
    """Both ways, alternately for --rounds rounds after a warm-up: median seconds, and FLOP/s
    (2 x parameters per token encoded or generated) against the matmul peak."""
    shape = {"branching": args.branching, "depth": args.depth, "step_tokens": args.step_tokens}
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak(
        torch.float32,
        model_shapes(model.config.to_dict(), len(prompt_ids) * args.branching),
        device=args.device,
    )
    seconds: dict[str, list[float]] = {"fork": [], "reencode": []}
    counts: dict[str, dict] = {}
    for round_ in range(args.rounds + 1):
        for name, way in (("fork", fork), ("reencode", reencode)):
            t0 = time.perf_counter()
            counts[name] = way(
                model,
                tokenizer,
                prompt_ids,
                generator=torch.Generator(model.device).manual_seed(0),
                **shape,
            )
            if round_:  # round 0 warms up
                seconds[name].append(time.perf_counter() - t0)
    result = {
        **shape,
        "prompts": len(prompt_ids),
        "rounds": args.rounds,
        "matmul_peak_gflop_s": round(peak / 1e9, 1),
    }
    for name, count in counts.items():
        median = statistics.median(seconds[name])
        flops_per_s = (
            2 * params * (count["prefix_tokens_encoded"] + count["generated_tokens"]) / median
        )
        result[name] = {
            "seconds": round(median, 3),
            **count,
            "gflop_s": round(flops_per_s / 1e9, 3),
            "of_matmul_peak": round(flops_per_s / peak, 4),
        }
    result["speedup"] = round(result["reencode"]["seconds"] / result["fork"]["seconds"], 2)
    return result


def main() -> None:
    parser = options(
        __doc__,
        prompts=8,
        n=(8, "samples per prompt (engine vs generate)"),
        max_new_tokens=32,
        temperature=0.7,
        rounds=5,
        trees=(False, "KV-cache forking against re-encoding instead"),
        branching=4,
        depth=3,
        step_tokens=12,
        level="hard",
        threads=(0, "torch threads; 0 = torch's default"),
        device=("cpu", "cpu, or cuda"),
    )
    parser.add_argument(
        "--wider",
        type=int,
        nargs=2,
        metavar=("HIDDEN", "LAYERS"),
        help="a randomly initialised model of the tiny model's shape, HIDDEN wide (heads of 32, "
        "MLP 3 x HIDDEN) and LAYERS deep, instead of the tiny model: where a token costs more",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(str(TINY_DIR), "float32", "cpu")
    if args.wider:
        hidden, layers = args.wider
        torch.manual_seed(0)
        model = type(model)(
            model.config.__class__(
                **{
                    **model.config.to_dict(),
                    "hidden_size": hidden,
                    "intermediate_size": 3 * hidden,
                    "num_hidden_layers": layers,
                    "num_attention_heads": hidden // 32,
                    "num_key_value_heads": hidden // 32,
                    "layer_types": ["full_attention"] * layers,
                }
            )
        )
    model.to(args.device).eval()
    task, rng = get_task("arithmetic"), random.Random(0)
    prompt_ids = [
        tokenizer(
            render_prompt(task.template, task.sample(args.level, rng).question, tokenizer),
            add_special_tokens=False,
        )["input_ids"]
        for _ in range(args.prompts)
    ]
    if args.trees:
        result = fork_vs_reencode(model, tokenizer, prompt_ids, args)
    else:
        result = engine_vs_generate(
            model, tokenizer, [p for p in prompt_ids for _ in range(args.n)], args
        )
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters()),
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
