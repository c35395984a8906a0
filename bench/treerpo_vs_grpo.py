"""GRPO vs TreeRPO on the arithmetic task with the tiny model, several seeds, equal wall-clock
budget.

    .venv/bin/python bench/treerpo_vs_grpo.py --seeds 0 1 2 --out runs/bench-tvg

GRPO runs the default recipe (`treerl train`). TreeRPO runs the shipped config treerpo_demo for as
many steps as fit in the same seed's GRPO training time, measured by a 10-step probe. Two runs go at
a time, each on one thread. A run whose directory already holds a finished run is read, not redone,
so the bench resumes. Prints one JSON line per run and a summary: greedy held-out accuracy per
level, mean response length, generated tokens per prompt and training seconds.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import train

LEVELS = ["easy", "medium", "hard", "ood"]
TREERPO = "treerpo_demo"


def summary(name: str, seed: int, run: dict, batch_prompts: int) -> dict:
    metrics = run["metrics"]
    return {
        "algo": name,
        "seed": seed,
        "steps": len(metrics),
        "train_s": round(sum(m["timing/step_s"] for m in metrics), 1),
        "generated_tokens_per_prompt": round(
            sum(m["tokens/generated"] for m in metrics) / (batch_prompts * len(metrics)), 1
        ),
        "accuracy": {
            lvl: {"before": run["before"][lvl]["accuracy"], "after": run["after"][lvl]["accuracy"]}
            for lvl in LEVELS
        },
        "response_length_after": {lvl: run["after"][lvl]["response_length"] for lvl in LEVELS},
    }


def treerpo_run(out: Path, seed: int, grpo: dict) -> dict:
    """TreeRPO for as many steps as fit in the GRPO run's training time, measured by a 10-step
    probe."""
    probe = train(
        out / f"treerpo-probe-seed{seed}",
        f"seed={seed}",
        "train.steps=10",
        "eval.problems=1",
        config=TREERPO,
    )
    per_step = sum(m["timing/step_s"] for m in probe["metrics"]) / len(probe["metrics"])
    steps = max(1, round(grpo["train_s"] / per_step))
    return summary(
        "treerpo",
        seed,
        train(out / f"treerpo-seed{seed}", f"seed={seed}", f"train.steps={steps}", config=TREERPO),
        16,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-tvg")
    args = parser.parse_args()
    out = Path(args.out)
    with ThreadPoolExecutor(
        max_workers=2
    ) as pool:  # every GRPO run first, so no worker waits long on its budget
        grpo = {
            s: pool.submit(
                lambda s=s: summary("grpo", s, train(out / f"grpo-seed{s}", f"seed={s}"), 16)
            )
            for s in args.seeds
        }
        tree = {
            s: pool.submit(lambda s=s: treerpo_run(out, s, grpo[s].result())) for s in args.seeds
        }
        rows = [future.result() for s in args.seeds for future in (grpo[s], tree[s])]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"runs": rows}, indent=2))
    (out / "summary.json").write_text(json.dumps({"runs": rows}, indent=2))


if __name__ == "__main__":
    main()
