"""Where one GRPO step of the tiny model spends its time: a torch.profiler table per phase, against
its floor.

    .venv/bin/python bench/profile_step.py --prompts 8 --n 8 --max-new-tokens 32

The step of bench/vs_trl.py at equal work: the engine samples --prompts hard arithmetic
prompts x --n, then one update trains every sample (the clipped loss, backward, gradient clipping,
AdamW). Each phase is timed over --rounds rounds after a warm-up and profiled over the last ones.
Prints JSON: per phase the median seconds, the matmul FLOPs it must do (2 x parameters per token
encoded when sampling; 6 x parameters per token trained, each distinct prompt once), the floor those
FLOPs set at the machine's matmul peak (bench/probe.py), and the ops that take the most time with
their shares.
"""

from __future__ import annotations

import json
import random
import statistics
import time

import torch
from torch.profiler import profile

from common import options
from probe import matmul_peak, model_shapes
from treerl.algo.loss import clipped_policy_loss, token_mean
from treerl.config import AlgoConfig
from treerl.loop.batch import completion_logprobs, make_batch, scatter_completion_values
from treerl.models import TINY_DIR, load_policy
from treerl.rollout.engine import generate
from treerl.tasks import get_task
from treerl.tasks.prompts import render_prompt


def top_ops(prof, count: int) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
            "us_per_call": round(e.self_cpu_time_total / e.count, 1),
        }
        for e in events[:count]
    ]


def timed(phase, rounds: int, top: int) -> dict:
    phase()  # warm-up
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        phase()
        seconds.append(time.perf_counter() - t0)
    with profile() as prof:
        for _ in range(3):
            phase()
    return {"seconds": round(statistics.median(seconds), 4), "top_ops": top_ops(prof, top)}


def main() -> None:
    args = options(
        __doc__, prompts=8, n=8, max_new_tokens=32, temperature=0.7, rounds=10, top=8
    ).parse_args()
    model, tokenizer = load_policy(str(TINY_DIR), "float32", "cpu")
    params = sum(p.numel() for p in model.parameters())
    task, rng = get_task("arithmetic"), random.Random(0)
    prompts = [
        tokenizer(
            render_prompt(task.template, task.sample("hard", rng).question, tokenizer),
            add_special_tokens=False,
        )["input_ids"]
        for _ in range(args.prompts)
    ]
    rows = [p for p in prompts for _ in range(args.n)]
    generator = torch.Generator().manual_seed(0)

    def sample():
        return generate(
            model,
            tokenizer,
            rows,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            generator=generator,
        )

    gen = sample()
    batch = make_batch(gen.prompt_ids, gen.completion_ids, tokenizer.pad_token_id)
    old = scatter_completion_values(gen.logprobs, batch)
    advantages = torch.randn(len(rows), 1, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)

    def update():
        model.train()
        logprobs, entropy = completion_logprobs(model, batch, args.temperature, with_entropy=True)
        loss, _ = clipped_policy_loss(
            logprobs, old, advantages, AlgoConfig(clip_low=0.2, clip_high=0.28)
        )
        mask = batch.completion_mask
        token_mean(loss, mask, mask.shape[0], float(mask.sum()), None).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    generated = sum(map(len, gen.completion_ids))
    prompt_tokens = sum(map(len, rows))
    distinct_prompt_tokens = sum(map(len, prompts))
    peak = matmul_peak(
        torch.float32, model_shapes(model.config.to_dict(), len(rows) * args.max_new_tokens)
    )
    phases = {
        "sampling": (sample, 2 * params * (generated + prompt_tokens)),
        "update": (update, 6 * params * (generated + distinct_prompt_tokens)),
    }
    result = {
        "threads": torch.get_num_threads(),
        "sequences": len(rows),
        "generated_tokens": generated,
        "matmul_peak_gflop_s": round(peak / 1e9, 1),
    }
    for name, (phase, flops) in phases.items():
        measured = timed(phase, args.rounds, args.top)
        result[name] = {
            "seconds": measured["seconds"],
            "gflop": round(flops / 1e9, 2),
            "floor_s": round(flops / peak, 4),
            "of_matmul_peak": round(flops / peak / measured["seconds"], 3),
            "top_ops": measured["top_ops"],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
