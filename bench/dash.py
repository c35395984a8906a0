"""DASH against standard GRPO on the tiny model: wall-clock time to a held-out accuracy target,
several seeds.

    .venv/bin/python bench/dash.py --seeds 0 1 2 --target 0.70 --out runs/bench-dash

Both run the default recipe (arithmetic, medium + hard, 16 prompts x 8 samples, 2 optimizer steps
per buffer, lr 5e-5) with backpropagation in micro-batches of 8 sequences, and evaluate greedy
accuracy on 200 held-out hard problems every `--every` steps. They differ only in how they sample
and what they train on:
- `standard`: each micro-batch's rollouts are generated just before its update
  (rollout.generation_batch=1, one prompt x 8 samples = one micro-batch), and every sample is
  trained on (no filtering);
- `dash`: the whole buffer is generated in one call (rollout.generation_batch=0) and samples with
  |A| <= 0.1 skip forward and backward (train.filter_tau=0.1, the paper's tau).
Both train for --steps steps. Time to target is the training time (evaluation excluded, from
metrics.jsonl) up to the first evaluation that reaches the target; final accuracy is that of the
last step. The two methods of a seed run side by side (--jobs runs at a time), one thread each, so
their ratio is measured in one run on the same machine state. Finished runs are read back, not
redone. Writes summary.json.

With --read-only nothing is trained: the runs in --out are summarised as they stand. A run stopped
(by a time limit) before it reached the target gives a lower bound, `train_s_to_target_at_least`
(its training time so far), and the seed's ratio is then `speedup_to_target_at_least`.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import options
from runs import read, train

COMMON = ["train.micro_batch=8", "eval.levels=[hard]", "eval.problems=200"]
METHODS = {
    "standard": ["rollout.generation_batch=1", "train.filter_tau=null"],
    "dash": ["rollout.generation_batch=0", "train.filter_tau=0.1"],
}


def run(
    out: Path, seed: int, method: str, target: float, every: int, steps: int, read_only: bool
) -> dict:
    """Train for `steps` steps with an evaluation every `every`; time to the first evaluation at the
    target."""
    run_dir = out / f"{method}-seed{seed}"
    result = (
        read(run_dir)
        if read_only
        else train(
            run_dir,
            f"seed={seed}",
            f"train.steps={steps}",
            f"eval.every={every}",
            *COMMON,
            *METHODS[method],
        )
    )
    metrics, evals = result["metrics"], result["evals"]
    hard = {int(s): evals[s]["hard"]["accuracy"] for s in evals}
    reached = min((s for s, acc in hard.items() if s > 0 and acc >= target), default=None)
    train_s = round(sum(m["timing/step_s"] for m in metrics), 1)
    return {
        "method": method,
        "seed": seed,
        "steps": len(metrics),
        "finished": len(metrics) == steps,
        "target": target,
        "reached_at_step": reached,
        "train_s_to_target": round(sum(m["timing/step_s"] for m in metrics[:reached]), 1)
        if reached
        else None,
        "train_s_to_target_at_least": train_s if reached is None and len(metrics) < steps else None,
        "train_s": train_s,
        "hard_before": hard[0],
        "hard_final": hard[max(hard)],
        "hard_best": max(hard.values()),
        "hard_by_step": {str(s): hard[s] for s in sorted(hard)},
        "mean_rollout_s": round(statistics.mean(m["timing/rollout_s"] for m in metrics), 3),
        "mean_update_s": round(statistics.mean(m["timing/update_s"] for m in metrics), 3),
        "dropped_frac": round(statistics.mean(m["filter/dropped_frac"] for m in metrics), 3),
    }


def main() -> None:
    args = options(
        __doc__,
        seeds=[0, 1, 2],
        target=(0.70, "greedy accuracy on hard to reach"),
        every=(25, "evaluate every this many steps"),
        steps=300,
        jobs=(
            2,
            "runs at a time (2 on the 2-core machine: the two arms of a seed side by side; "
            "6 on a GPU machine)",
        ),
        out="runs/bench-dash",
        read_only=(False, "summarise the runs in --out, train nothing"),
    ).parse_args()
    out = Path(args.out)
    jobs = [(seed, method) for seed in args.seeds for method in METHODS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(
            zip(
                jobs,
                pool.map(
                    lambda job: run(out, *job, args.target, args.every, args.steps, args.read_only),
                    jobs,
                ),
            )
        )
    rows = []
    for seed in args.seeds:
        standard, dash = done[(seed, "standard")], done[(seed, "dash")]
        ratio = {"seed": seed}
        if standard["train_s_to_target"] and dash["train_s_to_target"]:
            ratio["speedup_to_target"] = round(
                standard["train_s_to_target"] / dash["train_s_to_target"], 2
            )
        elif standard["train_s_to_target_at_least"] and dash["train_s_to_target"]:
            ratio["speedup_to_target_at_least"] = round(
                standard["train_s_to_target_at_least"] / dash["train_s_to_target"], 2
            )
        rows += [standard, dash, ratio]
        for row in rows[-3:]:
            print(json.dumps(row), flush=True)
    (out / "summary.json").write_text(json.dumps({"target": args.target, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
