"""The default demo in fp32 and under bf16 autocast, several seeds: the learning curve both ways,
and step times.

    .venv/bin/python bench/precision.py --seeds 0 1 2 --out runs/bench-precision

Each seed runs `treerl train` with all defaults (the README's demo), once as it is (fp32) and once
with model.autocast=bfloat16, on all cores one run at a time as the demo does (--threads 0
--jobs 1), or --jobs runs side by side on --threads threads each. Finished runs are read back, not
redone. Writes summary.json (per run: held-out greedy accuracy before and after per level, the
training accuracy on hard per --window steps, median seconds per step, per rollout and per update)
and precision.png (training accuracy on hard, the mean over seeds of each precision, every seed in a
thin line).
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

from common import options

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runs import train  # noqa: E402

PRECISIONS = {"fp32": [], "bf16": ["model.autocast=bfloat16"]}


def run(out: Path, precision: str, seed: int, threads: int, window: int) -> dict:
    result = train(
        out / precision / f"seed{seed}",
        f"seed={seed}",
        f"train.threads={threads}",
        *PRECISIONS[precision],
    )
    metrics = result["metrics"]
    hard = [m["acc/hard"] for m in metrics if "acc/hard" in m]
    return {
        "precision": precision,
        "seed": seed,
        "heldout": {
            level: {
                "before": result["before"][level]["accuracy"],
                "after": result["after"][level]["accuracy"],
            }
            for level in result["after"]
        },
        "train_acc_hard": [
            round(statistics.mean(hard[i : i + window]), 4) for i in range(0, len(hard), window)
        ],
        "step_s": round(statistics.median(m["timing/step_s"] for m in metrics), 4),
        "rollout_s": round(statistics.median(m["timing/rollout_s"] for m in metrics), 4),
        "update_s": round(statistics.median(m["timing/update_s"] for m in metrics), 4),
    }


def mean_over_seeds(runs: list[dict]) -> dict:
    return {
        "hard_after": round(statistics.mean(r["heldout"]["hard"]["after"] for r in runs), 4),
        "step_s": round(statistics.mean(r["step_s"] for r in runs), 4),
        "update_s": round(statistics.mean(r["update_s"] for r in runs), 4),
        "train_acc_hard": [
            round(statistics.mean(v), 4) for v in zip(*(r["train_acc_hard"] for r in runs))
        ],
    }


def plot(rows: list[dict], window: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for precision, color in zip(PRECISIONS, ("tab:blue", "tab:orange")):
        curves = [row["train_acc_hard"] for row in rows if row["precision"] == precision]
        steps = [window * (i + 1) for i in range(len(curves[0]))]
        for curve in curves:
            ax.plot(steps, curve, color=color, alpha=0.3, linewidth=1)
        ax.plot(
            steps,
            [statistics.mean(values) for values in zip(*curves)],
            color=color,
            linewidth=2.5,
            label=f"{precision} (mean of {len(curves)} seeds)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel(f"training accuracy on hard (mean over {window} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = options(
        __doc__,
        seeds=[0, 1, 2],
        threads=(0, "torch threads per run; 0 = all cores"),
        jobs=(1, "runs side by side"),
        window=100,
        out="runs/bench-precision",
    ).parse_args()
    out = Path(args.out)
    jobs = [(precision, seed) for seed in args.seeds for precision in PRECISIONS]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(out, *job, args.threads, args.window), jobs))
    summary = {
        "runs": rows,
        "mean": {
            precision: mean_over_seeds([r for r in rows if r["precision"] == precision])
            for precision in PRECISIONS
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(rows, args.window, out / "precision.png")
    print(json.dumps(summary["mean"], indent=2))


if __name__ == "__main__":
    main()
